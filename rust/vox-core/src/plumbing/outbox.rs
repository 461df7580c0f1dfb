//! A channel's items waiting for the writer behind one place in the
//! outbound queue.
//!
//! A stream's sender usually sends faster than one write per item. Queuing
//! each item as its own message cost a queue place (a semaphore permit), a
//! push and a pop per item, and the writer then gathered them again into a
//! `ChannelItems` run (`item_runs.rs`). Instead, the first item queued
//! after the writer last emptied the outbox takes one place in the queue
//! (a marker), and the items sent after it, while that marker waits, join
//! the outbox under its small lock. The writer, when it reaches the marker,
//! takes every item the outbox holds at that moment.
//!
//! Order is kept: the marker holds the place of the first of its items, the
//! rest follow it, and nothing of this channel can be queued between them
//! that must come after an item (the channel's `CloseChannel` is queued only
//! after its sender's last send; rule `rpc.channel.close`). Items may
//! overtake other channels' messages and their call's `Response`, which
//! nothing orders against them (rule `rpc.channel.lifecycle`); never the
//! `Request` that announced the channel, which was queued before the
//! channel's first item (rule `rpc.channel.unknown`).
//!
//! Bounded by credit: each item in the outbox spent one credit of its
//! channel before it joined, so an outbox never holds more than the
//! channel's receive window (`ChannelLimits::max_receive_window`).

use crate::sync::{Arc, Mutex};
use crate::wire::{Blob, ChannelId, ConnectionId};

/// One sending channel's items not yet taken by the writer.
#[derive(Debug)]
pub struct ChannelOutbox {
    connection_id: ConnectionId,
    id: ChannelId,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    items: Vec<Blob>,
    /// A marker for this outbox is in the queue, not yet taken by the writer.
    marked: bool,
}

/// What [`ChannelOutbox::join`] did with an item.
#[derive(Debug)]
pub(crate) enum Joined {
    /// The item is in the outbox, behind a marker already queued.
    Behind,
    /// The outbox has no marker queued: the item needs a place in the queue
    /// ([`ChannelOutbox::lead`]); it is handed back.
    NeedsPlace(Blob),
}

impl ChannelOutbox {
    /// An empty outbox for channel `id` of connection `connection_id`.
    pub(crate) fn new(connection_id: ConnectionId, id: ChannelId) -> Arc<ChannelOutbox> {
        Arc::new(ChannelOutbox { connection_id, id, state: Mutex::new(State::default()) })
    }

    /// The connection and channel the items belong to.
    pub(crate) fn channel(&self) -> (ConnectionId, ChannelId) {
        (self.connection_id, self.id)
    }

    /// Runs `admit` and, if it allows, adds `item` behind the queued marker.
    /// `admit` runs under the outbox's lock, so a marker cannot be taken
    /// between the check and the join (the caller spends the item's credit
    /// in it). Without a queued marker, `admit` is not run and the item is
    /// handed back.
    pub(crate) fn join<E>(&self, item: Blob, admit: impl FnOnce() -> Result<(), E>) -> Result<Joined, (E, Blob)> {
        let mut st = self.state.lock();
        if !st.marked {
            return Ok(Joined::NeedsPlace(item));
        }
        match admit() {
            Ok(()) => {
                st.items.push(item);
                Ok(Joined::Behind)
            }
            Err(e) => Err((e, item)),
        }
    }

    /// Adds `item` as the first of a new run; returns whether the caller
    /// must queue a marker (false if one was queued meanwhile, which only
    /// another sender of the same channel could do).
    pub(crate) fn lead(&self, item: Blob) -> bool {
        let mut st = self.state.lock();
        st.items.push(item);
        !std::mem::replace(&mut st.marked, true)
    }

    /// The writer reached the marker: moves every item into `into` (which
    /// must be empty; its storage is kept for the next run) and clears the
    /// marker, so the next item queues a new one.
    pub(crate) fn take(&self, into: &mut Vec<Blob>) {
        let mut st = self.state.lock();
        std::mem::swap(&mut st.items, into);
        st.marked = false;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn item(n: u8) -> Blob {
        Blob::from(vec![n])
    }

    // rule: rpc.channel.close — items leave in the order they were sent:
    // the first one leads (takes a place in the queue), the next ones join
    // behind it until the writer takes them all.
    #[test]
    fn rpc_channel_close_outbox_keeps_send_order_behind_one_marker() {
        let outbox = ChannelOutbox::new(ConnectionId(1), ChannelId(3));
        let Ok(Joined::NeedsPlace(first)) = outbox.join(item(1), || Ok::<(), ()>(())) else {
            panic!("no marker yet: the first item needs a place")
        };
        assert!(outbox.lead(first), "the first item queues the marker");
        for n in 2..=4 {
            assert!(matches!(outbox.join(item(n), || Ok::<(), ()>(())), Ok(Joined::Behind)));
        }
        let mut taken = Vec::new();
        outbox.take(&mut taken);
        assert_eq!(taken.iter().map(|b| b.bytes()[0]).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(
            matches!(outbox.join(item(5), || Ok::<(), ()>(())), Ok(Joined::NeedsPlace(_))),
            "once taken, the next item needs a new marker"
        );
    }

    // rule: rpc.flow-control.credit — an item the admission refuses (no
    // credit) is handed back and does not join.
    #[test]
    fn rpc_flow_control_credit_outbox_join_refused_hands_the_item_back() {
        let outbox = ChannelOutbox::new(ConnectionId(1), ChannelId(3));
        assert!(outbox.lead(item(1)));
        let Err(("no credit", back)) = outbox.join(item(2), || Err("no credit")) else { panic!("refused") };
        assert_eq!(back.bytes()[..], [2]);
        let mut taken = Vec::new();
        outbox.take(&mut taken);
        assert_eq!(taken.len(), 1, "only the admitted item");
    }
}
