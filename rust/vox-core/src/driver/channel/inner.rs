//! The transitions. Every method is one event: it checks the guard of the
//! current state and either performs one transition or returns a typed error,
//! leaving the state untouched. Peer-driven methods never panic.

use std::collections::{HashMap, HashSet, VecDeque};
use std::mem;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::RegistryConfig;
use super::Wakeups;
use super::error::{
    ChannelStats, CloseCause, ItemOutcome, LocalError, LossCause, RecvError, RemoteOutcome, SendError, ViolationKind,
};
use super::state::{
    ChannelState, Closed, Closing, Early, Entry, Half, ItemQueue, RecvHalf, Role, StateKind, Tombstone, Tombstones,
    WakerSlot,
};
use crate::id_window::{IdWindow, Seen};
use crate::mutant;
use crate::wire::{ChannelDecl, ChannelDirection, ChannelId, IdAllocator, Metadata, Payload};
use remote::{Msg, Verdict, judge_ended};

mod remote;

/// Control messages owed to the peer: a FIFO of channel ids, each present at
/// most once (guarded by `queued`); what to send is read from the channel's
/// state at flush time, so repeated events coalesce. The membership set lives
/// here rather than as a flag in each map entry: only channels with a flush
/// owed pay for it, and a flag would make every entry a word larger.
#[derive(Debug, Default)]
struct Outbound {
    fifo: VecDeque<ChannelId>,
    queued: HashSet<ChannelId>,
    waker: Option<Waker>,
}

impl Outbound {
    fn due(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.queued.insert(id) {
            self.fifo.push_back(id);
        }
        wake.push(self.waker.take());
    }

    fn pop(&mut self) -> Option<ChannelId> {
        let id = self.fifo.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }

    fn is_queued(&self, id: ChannelId) -> bool {
        self.queued.contains(&id)
    }

    fn clear(&mut self) {
        self.fifo.clear();
        self.queued.clear();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

fn send_error_for(cause: &CloseCause) -> SendError {
    match cause {
        CloseCause::Closed => SendError::Closed,
        CloseCause::Reset => SendError::Reset,
        CloseCause::ConnectionLost(loss) => SendError::ConnectionLost(loss.clone()),
    }
}

fn recv_result_for(cause: &CloseCause) -> Result<Option<Bytes>, RecvError> {
    match cause {
        CloseCause::Closed => Ok(None),
        CloseCause::Reset => Err(RecvError::Reset),
        CloseCause::ConnectionLost(loss) => Err(RecvError::ConnectionLost(loss.clone())),
    }
}

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
    channels: HashMap<ChannelId, Entry>,
    local_ids: IdAllocator,
    /// The highest id we allocated: our ids at or below it are "known".
    highest_local: Option<u64>,
    /// The ids the peer announced: exactly for the most recent ones, and
    /// whether older ones were forgotten (rule `rpc.channel.unknown`).
    remote_ids: IdWindow,
    outbound: Outbound,
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
            channels: HashMap::new(),
            highest_local: None,
            remote_ids: IdWindow::default(),
            outbound: Outbound::default(),
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
        if let Some(Entry { state: ChannelState::Closed(closed), .. }) = self.channels.remove(&id) {
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

    // --- local events, caller side

    /// Our channel id allocator, to continue from in a successor registry
    /// (a resumed session never reuses an old attachment's channel ids).
    pub(super) fn local_ids(&self) -> IdAllocator {
        self.local_ids.continuation()
    }

    /// Starts allocating where `ids` stands (a fresh registry only).
    pub(super) fn continue_local_ids(&mut self, ids: IdAllocator) {
        self.local_ids = ids;
    }

    pub(super) fn create_outgoing(
        &mut self,
        direction: ChannelDirection,
        initial_credit: u32,
    ) -> Result<ChannelDecl, LocalError> {
        if let Some(loss) = &self.lost {
            return Err(LocalError::ConnectionLost(loss.clone()));
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(LocalError::TooManyChannels { max: self.config.max_channels });
        }
        if initial_credit > self.config.max_initial_credit {
            return Err(LocalError::CreditAboveLimit { credit: initial_credit, max: self.config.max_initial_credit });
        }
        // rule: rpc.channel.allocation — caller allocates, local parity, increasing.
        let raw = self.local_ids.allocate().ok_or(LocalError::IdSpaceExhausted)?;
        self.highest_local = Some(raw);
        let id = ChannelId(raw);
        let half = match direction {
            ChannelDirection::CallerToHandler => Half::Sending { credit: initial_credit },
            ChannelDirection::HandlerToCaller => Half::Receiving(RecvHalf::new(initial_credit)),
        };
        self.channels.insert(id, Entry { waker: WakerSlot::new(), state: ChannelState::Open(half) });
        Ok(ChannelDecl { id, direction, initial_credit })
    }

    // --- remote announce

    pub(super) fn on_remote_announce(&mut self, decls: &[ChannelDecl]) -> Result<(), super::Violation> {
        if self.lost.is_some() {
            return Ok(());
        }
        let remote = self.config.local_parity.opposite();
        let mut highest = self.remote_ids.highest();
        // Validate everything first so a bad request leaves no partial state.
        for (index, decl) in decls.iter().enumerate() {
            let fail = |kind| Err(super::Violation { id: decl.id, kind });
            let raw = decl.id.0;
            if raw == 0 {
                return fail(ViolationKind::ReservedId);
            }
            // rule: rpc.channel.allocation — the announcer uses its own parity.
            if decl.id.parity() != remote {
                return fail(ViolationKind::WrongParity);
            }
            if let Some(h) = highest {
                if raw <= h {
                    let seen =
                        raw == h || self.channels.contains_key(&decl.id) || self.tombstones.get(decl.id).is_some();
                    return fail(if seen { ViolationKind::Duplicate } else { ViolationKind::NotIncreasing });
                }
            }
            if decl.initial_credit > self.config.max_initial_credit {
                return fail(ViolationKind::CreditAboveLimit {
                    credit: decl.initial_credit,
                    max: self.config.max_initial_credit,
                });
            }
            if self.channels.len().saturating_add(index).saturating_add(1) > self.config.max_channels {
                return fail(ViolationKind::TooManyChannels { max: self.config.max_channels });
            }
            highest = Some(raw);
        }
        for decl in decls {
            // The handler holds the other end from the caller: CallerToHandler means we receive.
            let early = match decl.direction {
                ChannelDirection::CallerToHandler => Early::Receiving {
                    items: ItemQueue::new(),
                    window: decl.initial_credit,
                    outstanding: decl.initial_credit,
                    closed: false,
                },
                ChannelDirection::HandlerToCaller => Early::Sending { credit: decl.initial_credit, reset: false },
            };
            self.channels.insert(decl.id, Entry { waker: WakerSlot::new(), state: ChannelState::Pending(early) });
            self.remote_ids.insert(decl.id.0);
        }
        Ok(())
    }

    pub(super) fn bind(&mut self, id: ChannelId) -> Result<(), LocalError> {
        if let Some(loss) = &self.lost {
            return Err(LocalError::ConnectionLost(loss.clone()));
        }
        let entry = self.channels.get_mut(&id).ok_or(LocalError::UnknownChannel(id))?;
        let ChannelState::Pending(early) = &mut entry.state else {
            return Err(LocalError::AlreadyBound(id));
        };
        // rule: rpc.channel.early-items — early items first, then the early close/reset.
        entry.state = match early {
            Early::Receiving { items, window, outstanding, closed } => {
                let queue = mem::take(items);
                match (*closed, queue.is_empty()) {
                    (true, true) => ended(Role::Receiver, CloseCause::Closed, true, false),
                    (true, false) => ChannelState::Closing(Closing::ReceiverDraining { queue }),
                    (false, _) => ChannelState::Open(Half::Receiving(RecvHalf {
                        queue,
                        window: *window,
                        outstanding: *outstanding,
                        consumed_since_grant: 0,
                        grant_pending: 0,
                    })),
                }
            }
            Early::Sending { credit, reset } => {
                if *reset {
                    ended(Role::Sender, CloseCause::Reset, true, false)
                } else {
                    ChannelState::Open(Half::Sending { credit: *credit })
                }
            }
        };
        Ok(())
    }

    // --- local sender

    fn send_gate(&mut self, id: ChannelId) -> Gate<SendError> {
        if let Some(loss) = &self.lost {
            // The handle has now seen the end; nothing else needs the entry.
            let error = SendError::ConnectionLost(loss.clone());
            self.forget_after_loss(id, Role::Sender);
            return Gate::Refused(error);
        }
        match self.channels.get(&id) {
            Some(entry) if entry.role() != Role::Sender => Gate::Refused(SendError::WrongDirection(id)),
            Some(Entry { state: ChannelState::Pending(_), .. }) => Gate::Refused(SendError::NotBound(id)),
            Some(_) => Gate::Live,
            None => match self.tombstones.get(id) {
                Some(t) if t.role == Role::Sender => Gate::Remembered(t.cause.clone()),
                Some(_) => Gate::Refused(SendError::WrongDirection(id)),
                None => Gate::Refused(SendError::UnknownChannel(id)),
            },
        }
    }

    /// The gate of every sender event: `Ok` when the entry is live, bound and
    /// ours to send on; otherwise the error the handle should see.
    fn sender_end(&mut self, id: ChannelId) -> Result<(), SendError> {
        match self.send_gate(id) {
            Gate::Live => Ok(()),
            Gate::Remembered(cause) => Err(send_error_for(&cause)),
            Gate::Refused(error) => Err(error),
        }
    }

    pub(super) fn poll_credit(&mut self, id: ChannelId, cx: &Context<'_>) -> Poll<Result<(), SendError>> {
        if let Err(error) = self.sender_end(id) {
            return Poll::Ready(Err(error));
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            return Poll::Ready(Err(SendError::UnknownChannel(id)));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { credit }) => {
                // rule: rpc.flow-control.credit — wait at zero.
                if *credit > 0 {
                    (Poll::Ready(Ok(())), false)
                } else {
                    entry.waker.register(cx);
                    (Poll::Pending, false)
                }
            }
            ChannelState::Closing(Closing::SenderClosePending) => (Poll::Ready(Err(SendError::Closed)), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Poll::Ready(Err(send_error_for(&closed.cause))), true)
            }
            _ => (Poll::Ready(Err(SendError::WrongDirection(id))), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(super) fn spend_credit(&mut self, id: ChannelId) -> Result<(), SendError> {
        self.sender_end(id)?;
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(SendError::UnknownChannel(id));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { credit }) => match credit.checked_sub(1) {
                Some(left) => {
                    *credit = left;
                    (Ok(()), false)
                }
                None => (Err(SendError::NoCredit(id)), false),
            },
            ChannelState::Closing(Closing::SenderClosePending) => (Err(SendError::Closed), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Err(send_error_for(&closed.cause)), true)
            }
            _ => (Err(SendError::WrongDirection(id)), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(super) fn refund_credit(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.lost.is_some() {
            return;
        }
        if let Some(entry) = self.channels.get_mut(&id) {
            // Once closed or reset the credit no longer matters; only an open
            // sender gets it back.
            if let ChannelState::Open(Half::Sending { credit }) = &mut entry.state {
                match credit.checked_add(1) {
                    Some(more) => *credit = more,
                    None => tracing::warn!(channel = %id, "credit refund would overflow, ignored"),
                }
                wake.push(entry.waker.take());
            }
        }
    }

    pub(super) fn local_close(&mut self, id: ChannelId, wake: &mut Wakeups) -> Result<(), SendError> {
        self.sender_end(id)?;
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(SendError::UnknownChannel(id));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { .. }) => {
                // rule: rpc.channel.close — the close goes out through the flush,
                // which the driver polls after enqueueing the items already sent.
                entry.state = ChannelState::Closing(Closing::SenderClosePending);
                drop(entry.waker.take());
                self.outbound.due(id, wake);
                (Ok(()), false)
            }
            ChannelState::Closing(Closing::SenderClosePending) => (Err(SendError::Closed), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Err(send_error_for(&closed.cause)), true)
            }
            _ => (Err(SendError::WrongDirection(id)), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(super) fn sender_dropped(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.lost.is_some() {
            self.forget_after_loss(id, Role::Sender);
            return;
        }
        let Some(entry) = self.channels.get_mut(&id) else { return };
        if entry.role() != Role::Sender {
            tracing::debug!(channel = %id, "sender_dropped on a channel where this side receives, ignored");
            return;
        }
        drop(entry.waker.take());
        match &mut entry.state {
            ChannelState::Open(Half::Sending { .. }) => {
                entry.state = ChannelState::Closing(Closing::SenderClosePending);
                let wake = if mutant::active("drop_wake_skipped") { &mut Wakeups::default() } else { wake };
                self.outbound.due(id, wake);
            }
            ChannelState::Closed(closed) => {
                closed.observed = true;
                self.settle(id);
            }
            // Pending has no handle yet; a close already owed stays owed.
            _ => {}
        }
    }

    // --- local receiver

    fn recv_gate(&mut self, id: ChannelId) -> Gate<RecvError> {
        if let Some(loss) = &self.lost {
            // rule: session.protocol-error — after loss the handle sees the loss, not items.
            let error = RecvError::ConnectionLost(loss.clone());
            self.forget_after_loss(id, Role::Receiver);
            return Gate::Refused(error);
        }
        match self.channels.get(&id) {
            Some(entry) if entry.role() != Role::Receiver => Gate::Refused(RecvError::WrongDirection(id)),
            Some(Entry { state: ChannelState::Pending(_), .. }) => Gate::Refused(RecvError::NotBound(id)),
            Some(_) => Gate::Live,
            None => match self.tombstones.get(id) {
                Some(t) if t.role == Role::Receiver => Gate::Remembered(t.cause.clone()),
                Some(_) => Gate::Refused(RecvError::WrongDirection(id)),
                None => Gate::Refused(RecvError::UnknownChannel(id)),
            },
        }
    }

    pub(super) fn poll_recv(
        &mut self,
        id: ChannelId,
        cx: &Context<'_>,
        wake: &mut Wakeups,
    ) -> Poll<Result<Option<Bytes>, RecvError>> {
        match self.recv_gate(id) {
            Gate::Live => {}
            Gate::Remembered(cause) => return Poll::Ready(recv_result_for(&cause)),
            Gate::Refused(error) => return Poll::Ready(Err(error)),
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            return Poll::Ready(Err(RecvError::UnknownChannel(id)));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Receiving(half)) => match half.queue.pop_front() {
                Some(item) => {
                    if half.consumed(item.len(), self.config.max_receive_window) {
                        self.outbound.due(id, wake);
                    }
                    (Poll::Ready(Ok(Some(item))), false)
                }
                None => {
                    if half.waiting_on_empty() {
                        self.outbound.due(id, wake);
                    }
                    entry.waker.register(cx);
                    (Poll::Pending, false)
                }
            },
            ChannelState::Closing(Closing::ReceiverDraining { queue }) => match queue.pop_front() {
                // rule: rpc.channel.close — items delivered before the close are never lost.
                Some(item) => (Poll::Ready(Ok(Some(item))), false),
                None => {
                    entry.state = ended(Role::Receiver, CloseCause::Closed, true, true);
                    (Poll::Ready(Ok(None)), true)
                }
            },
            ChannelState::Closing(Closing::ReceiverResetPending) => (Poll::Ready(Err(RecvError::Reset)), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Poll::Ready(recv_result_for(&closed.cause)), true)
            }
            _ => (Poll::Ready(Err(RecvError::WrongDirection(id))), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    /// The receiver stops: reset if the sender may still send, otherwise just
    /// finish. Unread items are dropped, counted and traced.
    fn receiver_stops(&mut self, id: ChannelId, wake: &mut Wakeups) -> Result<(), RecvError> {
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(RecvError::UnknownChannel(id));
        };
        drop(entry.waker.take());
        let (result, dropped) = match &mut entry.state {
            ChannelState::Open(Half::Receiving(half)) => {
                // rule: rpc.channel.reset — the reset leaves through the flush; a
                // grant still owed is superseded by it.
                let dropped = half.queue.len();
                entry.state = ChannelState::Closing(Closing::ReceiverResetPending);
                self.outbound.due(id, wake);
                (Ok(()), dropped)
            }
            ChannelState::Closing(Closing::ReceiverDraining { queue }) => {
                // The sender already closed: there is nothing to stop.
                let dropped = queue.len();
                entry.state = ended(Role::Receiver, CloseCause::Closed, true, true);
                (Ok(()), dropped)
            }
            ChannelState::Closing(Closing::ReceiverResetPending) => (Ok(()), 0),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                let result = match &closed.cause {
                    CloseCause::ConnectionLost(loss) => Err(RecvError::ConnectionLost(loss.clone())),
                    CloseCause::Closed | CloseCause::Reset => Ok(()),
                };
                (result, 0)
            }
            _ => (Err(RecvError::WrongDirection(id)), 0),
        };
        self.drop_unread(id, dropped);
        self.settle(id);
        result
    }

    pub(super) fn local_reset(&mut self, id: ChannelId, wake: &mut Wakeups) -> Result<(), RecvError> {
        match self.recv_gate(id) {
            Gate::Live => self.receiver_stops(id, wake),
            // Already ended; a reset has nothing left to stop.
            Gate::Remembered(_) => Ok(()),
            Gate::Refused(error) => Err(error),
        }
    }

    pub(super) fn receiver_dropped(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if let Gate::Live = self.recv_gate(id) {
            let wake = if mutant::active("drop_wake_skipped") { &mut Wakeups::default() } else { wake };
            // Never fails for a live receiver; the only errors are about the loss.
            let _ = self.receiver_stops(id, wake);
        }
    }

    // --- outbound flush

    pub(super) fn poll_outbound(&mut self, cx: &Context<'_>, out: &mut Vec<Payload>) -> Poll<()> {
        let before = out.len();
        while let Some(id) = self.outbound.pop() {
            // An entry removed meanwhile (e.g. by connection loss) owes nothing.
            let Some(entry) = self.channels.get_mut(&id) else { continue };
            match &mut entry.state {
                ChannelState::Open(Half::Receiving(half)) if half.grant_pending != 0 => {
                    // rule: rpc.flow-control.credit — the sender only holds credit once told.
                    out.push(Payload::GrantCredit { id, additional: half.grant_pending });
                    half.outstanding = half.outstanding.saturating_add(half.grant_pending);
                    half.grant_pending = 0;
                }
                ChannelState::Closing(Closing::SenderClosePending) => {
                    out.push(Payload::CloseChannel { id, metadata: Metadata::default() });
                    entry.state = ended(Role::Sender, CloseCause::Closed, false, true);
                }
                ChannelState::Closing(Closing::ReceiverResetPending) => {
                    out.push(Payload::ResetChannel { id, metadata: Metadata::default() });
                    entry.state = ended(Role::Receiver, CloseCause::Reset, false, true);
                }
                // Superseded since it became due (e.g. our close crossed the peer's reset).
                _ => {}
            }
            self.settle(id);
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            register(&mut self.outbound.waker, cx);
            Poll::Pending
        }
    }

    // --- inspection

    pub(super) fn stats(&self) -> ChannelStats {
        let mut stats = self.counters.clone();
        for entry in self.channels.values() {
            match entry.state.kind() {
                StateKind::Pending => stats.pending += 1,
                StateKind::Open => stats.open += 1,
                StateKind::Closing => stats.closing += 1,
                StateKind::Closed => stats.closed += 1,
            }
        }
        stats.tombstones = self.tombstones.len();
        stats
    }

    pub(super) fn state_kind(&self, id: ChannelId) -> Option<StateKind> {
        self.channels.get(&id).map(|entry| entry.state.kind())
    }

    pub(super) fn describe(&self, id: ChannelId) -> String {
        let lost = match &self.lost {
            Some(loss) => format!(" [connection lost: {loss}]"),
            None => String::new(),
        };
        let text = match self.channels.get(&id) {
            Some(entry) => {
                let role = match entry.role() {
                    Role::Sender => "send",
                    Role::Receiver => "recv",
                };
                let owed = if self.outbound.is_queued(id) { ", flush owed" } else { "" };
                let state = match &entry.state {
                    ChannelState::Pending(Early::Receiving { items, outstanding, closed, .. }) => {
                        format!("Pending(items={}, credit={outstanding}, closed={closed})", items.len())
                    }
                    ChannelState::Pending(Early::Sending { credit, reset }) => {
                        format!("Pending(credit={credit}, reset={reset})")
                    }
                    ChannelState::Open(Half::Sending { credit }) => format!("Open(credit={credit})"),
                    ChannelState::Open(Half::Receiving(h)) => format!(
                        "Open(queue={}, credit={}, consumed={}, grant={})",
                        h.queue.len(),
                        h.outstanding,
                        h.consumed_since_grant,
                        h.grant_pending
                    ),
                    ChannelState::Closing(Closing::SenderClosePending) => "Closing(close owed)".to_owned(),
                    ChannelState::Closing(Closing::ReceiverDraining { queue }) => {
                        format!("Closing(draining {})", queue.len())
                    }
                    ChannelState::Closing(Closing::ReceiverResetPending) => "Closing(reset owed)".to_owned(),
                    ChannelState::Closed(c) => {
                        format!("Closed({:?}, peer_ended={}, observed={})", c.cause, c.peer_ended, c.observed)
                    }
                };
                format!("{role} {state}{owed}")
            }
            None => match self.tombstones.get(id) {
                Some(t) => format!("gone, tombstone({:?}, {:?}, peer_ended={})", t.role, t.cause, t.peer_ended),
                None if self.is_known(id) => "gone, forgotten".to_owned(),
                None => "absent".to_owned(),
            },
        };
        format!("{text}{lost}")
    }
}

/// A receive window only grows while it holds at most this many bytes of
/// items the size of the last one taken (see [`RecvHalf::consumed`]).
const GROWN_WINDOW_BYTES: usize = 256 * 1024;

impl RecvHalf {
    pub(super) fn new(window: u32) -> RecvHalf {
        RecvHalf { queue: ItemQueue::new(), window, outstanding: window, consumed_since_grant: 0, grant_pending: 0 }
    }

    /// The consumer took one item of `item_len` bytes. Returns whether a
    /// grant became due: with a window W > 0, consumed items are granted back
    /// in batches of `max(1, W / 2)` so grants stay cheap yet the sender
    /// never starves.
    ///
    /// The window also grows here (receive-window tuning): if the consumer
    /// has emptied the queue when a grant falls due, the window and not the
    /// consumer sets the pace, so the grant also doubles the window, up to
    /// `max_window` items (`RegistryConfig::max_receive_window`) and to
    /// [`GROWN_WINDOW_BYTES`] worth of items of this size. A window never
    /// shrinks below the initial credit, and a slow consumer never grows it.
    fn consumed(&mut self, item_len: usize, max_window: u32) -> bool {
        if self.window == 0 {
            return false;
        }
        self.consumed_since_grant = self.consumed_since_grant.saturating_add(1);
        let batch = (self.window / 2).max(1);
        if self.consumed_since_grant < batch {
            return false;
        }
        // Bounded by the window through the receiver invariant.
        self.grant_pending = self.grant_pending.saturating_add(self.consumed_since_grant);
        self.consumed_since_grant = 0;
        if self.queue.is_empty() {
            let by_bytes = u32::try_from(GROWN_WINDOW_BYTES / item_len.max(1)).unwrap_or(u32::MAX);
            let grown = self.window.saturating_mul(2).min(max_window).min(by_bytes);
            if grown > self.window {
                // Window and pending grant grow together: the invariant holds.
                self.grant_pending = self.grant_pending.saturating_add(grown - self.window);
                self.window = grown;
            }
        }
        true
    }

    /// The consumer waits on an empty queue. With a zero window nothing is
    /// ever granted back by consumption, so grant one item at a time, when
    /// the sender holds no credit and no grant is on its way already.
    fn waiting_on_empty(&mut self) -> bool {
        if self.window == 0 && self.outstanding == 0 && self.grant_pending == 0 {
            self.grant_pending = 1;
            return true;
        }
        false
    }
}
