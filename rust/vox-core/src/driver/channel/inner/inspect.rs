//! Inspection: counters, a channel's state kind, and the one-line
//! description of a channel that errors and traces show.

use super::Inner;
use crate::driver::channel::error::{ChannelStats, ChannelView};
use crate::driver::channel::state::{ChannelState, Closing, Early, Half, Role, StateKind};
use crate::wire::ChannelId;

impl Inner {
    pub(in crate::driver::channel) fn stats(&self) -> ChannelStats {
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

    pub(in crate::driver::channel) fn channels(&self) -> Vec<ChannelView> {
        let mut views: Vec<_> = self
            .channels
            .iter()
            .map(|(id, entry)| {
                let (credit, queued) = match &entry.state {
                    ChannelState::Pending(Early::Receiving { items, outstanding, .. }) => {
                        (Some(*outstanding), items.len())
                    }
                    ChannelState::Pending(Early::Sending { credit, .. })
                    | ChannelState::Open(Half::Sending { credit }) => (Some(*credit), 0),
                    ChannelState::Open(Half::Receiving(r)) => (Some(r.outstanding), r.queue.len()),
                    ChannelState::Closing(Closing::ReceiverDraining { queue }) => (None, queue.len()),
                    ChannelState::Closing(_) | ChannelState::Closed(_) => (None, 0),
                };
                let end = match entry.role() {
                    Role::Sender => "sender",
                    Role::Receiver => "receiver",
                };
                let state = match entry.state.kind() {
                    StateKind::Pending => "pending",
                    StateKind::Open => "open",
                    StateKind::Closing => "closing",
                    StateKind::Closed => "closed",
                };
                ChannelView { id: id.0, end: end.into(), state: state.into(), credit, queued }
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }

    pub(in crate::driver::channel) fn state_kind(&self, id: ChannelId) -> Option<StateKind> {
        self.channels.get(&id).map(|entry| entry.state.kind())
    }

    pub(in crate::driver::channel) fn describe(&self, id: ChannelId) -> String {
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
