//! The per-channel state machine's data: one enum, the data of each state inside it.

use crate::wire::{IdMap, id_map};
use std::collections::VecDeque;
use std::task::{Context, Waker};

use bytes::Bytes;

use super::error::CloseCause;
use crate::wire::ChannelId;

/// Which end of a channel this side holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// We send items, spend credit, send `CloseChannel`.
    Sender,
    /// We receive items, grant credit, send `ResetChannel`.
    Receiver,
}

/// The lifecycle phase of a channel, without its data (see [`ChannelState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Announced by the peer, not bound by the handler yet.
    Pending,
    /// Items may flow.
    Open,
    /// Close or reset sent or received; draining or waiting for the flush.
    Closing,
    /// Terminal; waiting for the local handle to observe the end.
    Closed,
}

/// A FIFO of channel items that costs one pointer while nothing was ever
/// queued: most channels are idle most of the time, and every map entry pays
/// for the largest state. The buffer is allocated on the first item and kept
/// (moved along with the queue between states) so a busy channel does not
/// allocate per item.
#[derive(Debug, Default)]
#[allow(clippy::box_collection, reason = "the box is what makes an unused queue one pointer instead of four words")]
pub struct ItemQueue(Option<Box<VecDeque<Bytes>>>);

impl ItemQueue {
    /// An empty queue, without an allocation.
    pub const fn new() -> ItemQueue {
        ItemQueue(None)
    }

    /// Appends an item.
    pub fn push_back(&mut self, item: Bytes) {
        self.0.get_or_insert_with(Box::default).push_back(item);
    }

    /// Takes the oldest item.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        self.0.as_mut()?.pop_front()
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The state of one channel, with everything the registry knows about it.
#[derive(Debug)]
pub enum ChannelState {
    /// Handler side: announced in an inbound request, not yet bound
    /// ([rpc.channel.early-items]).
    Pending(Early),
    /// Bound (or created locally) and live.
    Open(Half),
    /// Ending: close or reset sent or received, not finished yet.
    Closing(Closing),
    /// Terminal. Removed from the map (into the tombstone window) once the
    /// local handle has observed the end and no flush is owed for it. Boxed:
    /// a channel is terminal only briefly, and unboxed its cause would make
    /// every entry of the map larger.
    Closed(Box<Closed>),
}

impl ChannelState {
    /// The phase, without the data.
    pub fn kind(&self) -> StateKind {
        match self {
            ChannelState::Pending(_) => StateKind::Pending,
            ChannelState::Open(_) => StateKind::Open,
            ChannelState::Closing(_) => StateKind::Closing,
            ChannelState::Closed(_) => StateKind::Closed,
        }
    }

    /// Our end of the channel: every live state belongs to one role only,
    /// and a terminal one records it.
    pub fn role(&self) -> Role {
        match self {
            ChannelState::Pending(Early::Receiving { .. })
            | ChannelState::Open(Half::Receiving(_))
            | ChannelState::Closing(Closing::ReceiverDraining { .. } | Closing::ReceiverResetPending) => Role::Receiver,
            ChannelState::Pending(Early::Sending { .. })
            | ChannelState::Open(Half::Sending { .. })
            | ChannelState::Closing(Closing::SenderClosePending) => Role::Sender,
            ChannelState::Closed(closed) => closed.role,
        }
    }
}

/// What a pending channel has collected before the handler binds it.
#[derive(Debug)]
pub enum Early {
    /// We will receive: items the sender sent early, bounded by the initial
    /// credit because no grant can have been sent yet.
    Receiving {
        /// Early items, in arrival order.
        items: ItemQueue,
        /// The receive window (the announced initial credit).
        window: u32,
        /// Credit the sender still holds (`window - items.len()`).
        outstanding: u32,
        /// The sender already closed; applied after the items on bind.
        closed: bool,
    },
    /// We will send: grants and a reset the receiver sent early.
    Sending {
        /// Initial credit plus early grants.
        credit: u32,
        /// The receiver already reset; the first send after bind reports it.
        reset: bool,
    },
}

/// The live half of an open channel.
#[derive(Debug)]
pub enum Half {
    /// We send.
    Sending {
        /// Items we may still send before the next grant.
        credit: u32,
    },
    /// We receive.
    Receiving(RecvHalf),
}

/// Receiver bookkeeping. Invariant (window > 0):
/// `outstanding + queue.len() + consumed_since_grant + grant_pending == window`,
/// so the queue never holds more than the window ("credit is the buffer").
#[derive(Debug)]
pub struct RecvHalf {
    /// Delivered items not yet taken by `poll_recv`.
    pub queue: ItemQueue,
    /// The window W: the channel's initial credit, grown while the consumer
    /// keeps up (see `RecvHalf::consumed`).
    pub window: u32,
    /// Credit the sender holds right now, as far as it has been told.
    pub outstanding: u32,
    /// Items taken since the last grant was scheduled.
    pub consumed_since_grant: u32,
    /// Credit scheduled for the next `GrantCredit`, not yet flushed.
    pub grant_pending: u32,
}

/// Sub-states of an ending channel.
#[derive(Debug)]
pub enum Closing {
    /// We are the sender and closed; our `CloseChannel` waits for the flush.
    SenderClosePending,
    /// We are the receiver and the sender closed; queued items are still to
    /// be taken before the receiver sees the end.
    ReceiverDraining {
        /// Items delivered before the close.
        queue: ItemQueue,
    },
    /// We are the receiver and reset; our `ResetChannel` waits for the flush.
    /// Items still arriving are discarded and counted.
    ReceiverResetPending,
}

/// A terminal channel.
#[derive(Debug)]
pub struct Closed {
    /// Our end of the channel, as it was while live.
    pub role: Role,
    /// How it ended.
    pub cause: CloseCause,
    /// The peer's own terminal message (close from a sending peer, reset from
    /// a receiving peer) has arrived, so a second one is a violation.
    pub peer_ended: bool,
    /// The local handle has seen the end (or is gone).
    pub observed: bool,
}

/// A map entry: the state plus the waker, which outlives state changes.
#[derive(Debug)]
pub(super) struct ChannelEntry {
    /// The local handle's waker (sender in `poll_credit`, receiver in
    /// `poll_recv`); kept here because it must survive the transition that
    /// has to wake it.
    pub(super) waker: WakerSlot,
    /// The state.
    pub(super) state: ChannelState,
}

impl ChannelEntry {
    /// Our end of the channel; fixed at creation. Read from the state rather
    /// than stored: a field would make every entry of the map a word larger.
    pub(super) fn role(&self) -> Role {
        self.state.role()
    }
}

/// The local handle's waker, one pointer while the handle never waited: an
/// inline `Option<Waker>` is two words in every map entry, and most idle
/// channels (a kept sender with credit, a receiver nobody polls) never
/// register one. The box is allocated on the first registration and kept,
/// like [`ItemQueue`]'s buffer, so a handle that waits per item does not
/// allocate per wait.
#[derive(Debug, Default)]
pub(super) struct WakerSlot(Option<Box<Option<Waker>>>);

impl WakerSlot {
    /// An empty slot, without an allocation.
    pub(super) const fn new() -> WakerSlot {
        WakerSlot(None)
    }

    /// Keeps `cx`'s waker (unless the one held already wakes the same task).
    pub(super) fn register(&mut self, cx: &Context<'_>) {
        let slot: &mut Option<Waker> = self.0.get_or_insert_with(Box::default);
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }

    /// Takes the waker, if one is registered.
    pub(super) fn take(&mut self) -> Option<Waker> {
        self.0.as_mut()?.take()
    }
}

/// What is remembered about a recently removed channel.
#[derive(Clone, Debug)]
pub(super) struct Tombstone {
    pub(super) role: Role,
    pub(super) cause: CloseCause,
    pub(super) peer_ended: bool,
}

/// The most recent `capacity` terminal ids, oldest evicted first, so late
/// messages for them are judged precisely while memory stays bounded.
#[derive(Debug)]
pub(super) struct Tombstones {
    capacity: usize,
    order: VecDeque<ChannelId>,
    by_id: IdMap<ChannelId, Tombstone>,
}

impl Tombstones {
    pub(super) fn new(capacity: usize) -> Tombstones {
        Tombstones { capacity, order: VecDeque::new(), by_id: id_map() }
    }

    pub(super) fn insert(&mut self, id: ChannelId, tombstone: Tombstone) {
        if self.capacity == 0 {
            return;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(id);
        self.by_id.insert(id, tombstone);
    }

    pub(super) fn get(&self, id: ChannelId) -> Option<&Tombstone> {
        self.by_id.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: ChannelId) -> Option<&mut Tombstone> {
        self.by_id.get_mut(&id)
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn clear(&mut self) {
        self.order.clear();
        self.by_id.clear();
    }
}
