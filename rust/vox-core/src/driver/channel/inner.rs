//! The transitions. Every method is one event: it checks the guard of the
//! current state and either performs one transition or returns a typed error,
//! leaving the state untouched. Peer-driven methods never panic.
//!
//! The events are grouped by who causes them, one submodule each: opening
//! channels (`opening`), the local sender (`sender`) and receiver
//! (`receiver`), the peer (`remote`), the flush of what is owed to the peer
//! (`outbound`), and inspection (`inspect`); the receive-window arithmetic is
//! `window`. This file holds the registry's state and the helpers they share.

use crate::wire::{IdMap, id_map};

use super::RegistryConfig;
use super::error::{ChannelStats, CloseCause, ItemOutcome, LossCause, RemoteOutcome, ViolationKind};
use super::state::{ChannelEntry, ChannelState, Closed, Role, Tombstone, Tombstones};
use crate::id_window::{IdWindow, Seen};
use crate::wire::{ChannelId, IdAllocator};
use outbound::DueQueue;
use remote::{Msg, Verdict, judge_ended};

mod inspect;
mod opening;
mod outbound;
mod receiver;
mod remote;
mod sender;
mod window;

fn ended(role: Role, cause: CloseCause, peer_ended: bool, observed: bool) -> ChannelState {
    ChannelState::Closed(Box::new(Closed { role, cause, peer_ended, observed }))
}

/// Where a local handle's event lands.
enum Gate<E> {
    /// The entry is in the map, with the right role, bound.
    Live,
    /// The entry is gone but remembered: the handle gets the recorded end.
    Remembered(CloseCause),
    /// The event is refused.
    Refused(E),
}

#[derive(Debug)]
pub(super) struct Inner {
    config: RegistryConfig,
    channels: IdMap<ChannelId, ChannelEntry>,
    local_ids: IdAllocator,
    /// The highest id we allocated: our ids at or below it are "known".
    highest_local: Option<u64>,
    /// The ids the peer announced: exactly for the most recent ones, and
    /// whether older ones were forgotten (rule `rpc.channel.unknown`).
    remote_ids: IdWindow,
    outbound: DueQueue,
    tombstones: Tombstones,
    lost: Option<LossCause>,
    counters: ChannelStats,
}

impl Inner {
    pub(super) fn new(config: RegistryConfig) -> Inner {
        Inner {
            local_ids: IdAllocator::new(config.local_parity),
            tombstones: Tombstones::new(config.tombstones),
            config,
            channels: id_map(),
            highest_local: None,
            remote_ids: IdWindow::default(),
            outbound: DueQueue::default(),
            lost: None,
            counters: ChannelStats::default(),
        }
    }

    fn note_depth(&mut self, depth: usize) {
        self.counters.max_queue_depth = self.counters.max_queue_depth.max(depth);
    }

    /// Whether `id` was allocated by us or announced by the peer at some
    /// point, or may have been (older than the peer's remembered window).
    /// Ours are allocated consecutively, so the high-water mark is exact;
    /// the peer's may skip ids, so they are judged by the window (rule
    /// `rpc.channel.unknown`).
    fn is_known(&self, id: ChannelId) -> bool {
        if id.0 == 0 {
            return false;
        }
        if id.parity() == self.config.local_parity {
            return self.highest_local.is_some_and(|h| id.0 <= h);
        }
        self.remote_ids.seen(id.0) != Seen::Never
    }

    /// Removes a terminal entry once its handle has observed the end and no
    /// flush is owed for it; it lives on as a tombstone.
    fn settle(&mut self, id: ChannelId) {
        let done = match self.channels.get(&id) {
            Some(entry) => {
                !self.outbound.is_queued(id) && matches!(&entry.state, ChannelState::Closed(c) if c.observed)
            }
            None => false,
        };
        if !done {
            return;
        }
        if let Some(ChannelEntry { state: ChannelState::Closed(closed), .. }) = self.channels.remove(&id) {
            if self.lost.is_none() {
                self.tombstones
                    .insert(id, Tombstone { role: closed.role, cause: closed.cause, peer_ended: closed.peer_ended });
            }
        }
    }

    /// After connection loss, the handle holding `role` has seen the loss:
    /// its entry has nothing left to do. A call from the wrong end (a bug in
    /// the caller) must not take the other handle's entry with it.
    fn forget_after_loss(&mut self, id: ChannelId, role: Role) {
        if self.channels.get(&id).is_some_and(|entry| entry.role() == role) {
            self.channels.remove(&id);
        }
    }

    /// A message for an id with no entry: judged by its tombstone, tolerated
    /// as late if the id was known, a violation otherwise.
    fn absent(&mut self, id: ChannelId, msg: Msg) -> Result<Verdict, ViolationKind> {
        if let Some(tombstone) = self.tombstones.get_mut(id) {
            return judge_ended(tombstone.role, &mut tombstone.peer_ended, msg);
        }
        if self.is_known(id) {
            // rule: rpc.channel.crossing — older than the tombstone window: tolerated, counted.
            self.counters.late_messages = self.counters.late_messages.saturating_add(1);
            tracing::debug!(channel = %id, message = ?msg, "late channel message for a forgotten id, discarded");
            return Ok(Verdict::Late);
        }
        // rule: rpc.channel.unknown — never announced: no state is created.
        Err(ViolationKind::UnknownChannel)
    }

    fn tolerated(&mut self, id: ChannelId, verdict: Verdict) -> RemoteOutcome {
        match verdict {
            Verdict::Late => RemoteOutcome::DiscardedLate,
            Verdict::GrantAfterReset => {
                self.counters.grants_after_reset_ignored = self.counters.grants_after_reset_ignored.saturating_add(1);
                tracing::debug!(channel = %id, "grant after the receiver's own reset, ignored");
                RemoteOutcome::GrantAfterResetIgnored
            }
            Verdict::Crossing | Verdict::DiscardAfterReset => {
                self.counters.crossing_ignored = self.counters.crossing_ignored.saturating_add(1);
                tracing::debug!(channel = %id, "channel message crossed our close or reset, ignored");
                RemoteOutcome::CrossingIgnored
            }
        }
    }

    fn discard_after_reset(&mut self, id: ChannelId) -> ItemOutcome {
        self.counters.items_discarded_after_reset = self.counters.items_discarded_after_reset.saturating_add(1);
        tracing::debug!(channel = %id, "channel item arrived after our reset, discarded");
        ItemOutcome::DiscardedAfterReset
    }

    fn drop_unread(&mut self, id: ChannelId, count: usize) {
        if count > 0 {
            let count64 = u64::try_from(count).unwrap_or(u64::MAX);
            self.counters.items_dropped_unread = self.counters.items_dropped_unread.saturating_add(count64);
            tracing::debug!(channel = %id, count, "receiver went away with items still queued, dropped");
        }
    }

    /// Our channel id allocator, to continue from in a successor registry
    /// (a resumed session never reuses an old attachment's channel ids).
    pub(super) fn local_ids(&self) -> IdAllocator {
        self.local_ids.continuation()
    }

    /// Starts allocating where `ids` stands (a fresh registry only).
    pub(super) fn continue_local_ids(&mut self, ids: IdAllocator) {
        self.local_ids = ids;
    }
}
