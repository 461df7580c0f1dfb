//! The writer's coalescing of channel items (feature `vox.channel-items`,
//! `docs/spec/wire.md` section 5.4): items of one channel that are queued
//! one right after another go out as one `ChannelItems`, so the peer
//! decodes, routes and wakes once per run instead of once per item. Credit
//! is still spent per item, by the sender before it queues each one; this
//! only changes how queued items are framed. Sans-IO: messages in, messages
//! out, in the same order.

use crate::wire::{Blob, ChannelId, ConnectionId, MAX_CHANNEL_ITEMS, Message, Payload, SPLICE_MIN};

/// Consecutive items of one channel, not yet written.
#[derive(Debug)]
struct Run {
    connection_id: ConnectionId,
    id: ChannelId,
    items: Vec<Blob>,
}

/// Gathers runs of items as the writer takes messages from its queue.
#[derive(Debug)]
pub(crate) struct ItemRuns {
    /// Both sides agreed on the feature; otherwise every message passes as is.
    on: bool,
    run: Option<Run>,
}

impl ItemRuns {
    pub(crate) fn new(on: bool) -> ItemRuns {
        ItemRuns { on, run: None }
    }

    /// Whether a channel item may join a run: small enough to be copied
    /// into a batch, with the feature on. Any other message is written as
    /// it is, after the run in progress ([`take`](Self::take)).
    pub(crate) fn joins(&self, item: &Blob) -> bool {
        // A large item keeps its own message: the writer sends it from its
        // own storage, not copied into a batch.
        self.on && item.len() < SPLICE_MIN && !item.is_rope()
    }

    /// Adds an item [`joins`](Self::joins) accepted; returns the run it
    /// ended (another channel's, or a full one), to be written first.
    pub(crate) fn add(&mut self, connection_id: ConnectionId, id: ChannelId, item: Blob) -> Option<Message> {
        if let Some(run) = &mut self.run
            && run.connection_id == connection_id
            && run.id == id
            && run.items.len() < MAX_CHANNEL_ITEMS
        {
            run.items.push(item);
            return None;
        }
        let ended = self.take();
        self.run = Some(Run { connection_id, id, items: vec![item] });
        ended
    }

    /// How many items the run in progress holds.
    pub(crate) fn held(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.items.len())
    }

    /// The run in progress, as one message (a run of one stays a
    /// `ChannelItem`); call before every flush, so nothing waits here.
    pub(crate) fn take(&mut self) -> Option<Message> {
        let Run { connection_id, id, mut items } = self.run.take()?;
        let payload = if items.len() == 1 {
            Payload::ChannelItem { id, item: items.pop().unwrap_or_default() }
        } else {
            Payload::ChannelItems { id, items }
        };
        Some(Message { connection_id, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(conn: u64, id: u64, n: u8) -> Message {
        Message {
            connection_id: ConnectionId(conn),
            payload: Payload::ChannelItem { id: ChannelId(id), item: vec![n].into() },
        }
    }

    fn grant(conn: u64, id: u64) -> Message {
        Message {
            connection_id: ConnectionId(conn),
            payload: Payload::GrantCredit { id: ChannelId(id), additional: 1 },
        }
    }

    /// Feeds everything as the writer does, then takes the last run: what
    /// would be written.
    fn written(on: bool, input: Vec<Message>) -> Vec<Message> {
        let mut runs = ItemRuns::new(on);
        let mut out = Vec::new();
        for m in input {
            match m {
                Message { connection_id, payload: Payload::ChannelItem { id, item } } if runs.joins(&item) => {
                    out.extend(runs.add(connection_id, id, item));
                }
                m => {
                    out.extend(runs.take());
                    out.push(m);
                }
            }
        }
        out.extend(runs.take());
        out
    }

    fn items(conn: u64, id: u64, ns: &[u8]) -> Message {
        Message {
            connection_id: ConnectionId(conn),
            payload: Payload::ChannelItems { id: ChannelId(id), items: ns.iter().map(|n| vec![*n].into()).collect() },
        }
    }

    // rule: rpc.channel.item — a run of one channel's items becomes one
    // ChannelItems; every other message, and the order of all, is kept.
    #[test]
    fn rpc_channel_item_consecutive_items_of_one_channel_become_one_message_in_order() {
        let input = vec![
            item(0, 1, 1),
            item(0, 1, 2),
            item(0, 1, 3),
            grant(0, 2),
            item(0, 1, 4),
            item(2, 1, 5),
            item(2, 1, 6),
            item(0, 3, 7),
        ];
        assert_eq!(
            written(true, input.clone()),
            vec![items(0, 1, &[1, 2, 3]), grant(0, 2), item(0, 1, 4), items(2, 1, &[5, 6]), item(0, 3, 7)],
            "runs end at another message, another connection and another channel"
        );
        assert_eq!(written(false, input.clone()), input, "without the feature every message passes as is");
    }

    #[test]
    fn rpc_channel_item_runs_hold_at_most_the_maximum_and_leave_large_items_alone() {
        let many: Vec<Message> = (0..(MAX_CHANNEL_ITEMS + 1) as u64).map(|n| item(0, 1, n as u8)).collect();
        let out = written(true, many);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0].payload, Payload::ChannelItems { items, .. } if items.len() == MAX_CHANNEL_ITEMS));
        assert_eq!(out[1], item(0, 1, MAX_CHANNEL_ITEMS as u8));

        let large = Message {
            connection_id: ConnectionId(0),
            payload: Payload::ChannelItem { id: ChannelId(1), item: vec![9; SPLICE_MIN].into() },
        };
        assert_eq!(
            written(true, vec![item(0, 1, 1), large.clone(), item(0, 1, 2)]),
            vec![item(0, 1, 1), large, item(0, 1, 2)],
            "a large item is its own message and ends the run"
        );
        let mut runs = ItemRuns::new(true);
        assert!(runs.take().is_none(), "nothing to take");
        assert!(runs.add(ConnectionId(0), ChannelId(1), vec![1].into()).is_none());
        assert!(runs.add(ConnectionId(0), ChannelId(1), vec![2].into()).is_none());
        assert_eq!(runs.held(), 2, "the items wait in the run");
        assert_eq!(runs.take(), Some(items(0, 1, &[1, 2])));
        assert_eq!(runs.held(), 0);
    }
}
