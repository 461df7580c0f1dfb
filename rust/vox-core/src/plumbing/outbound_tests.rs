//! The writer with channel outboxes, end to end over a memory link: what
//! the peer decodes, in order.

use super::outbound::{Finish, Outbound, spawn_writer};
use super::outbox::{ChannelOutbox, Joined};
use crate::conduit::{self, ConduitRx};
use crate::link::{LinkConfig, memory_pair};
use crate::wire::{Blob, ChannelId, ConduitMsg, ConnectionId, Message, Payload, SPLICE_MIN};
use tokio::sync::oneshot;

const CONN: ConnectionId = ConnectionId(1);

fn small(n: u8) -> Blob {
    Blob::from(vec![n])
}

/// A writer (channel items on) over a memory link, and the peer's end.
fn writer_over_memory() -> (Outbound, Writer, ConduitRx, oneshot::Sender<Finish>) {
    let (a, b) = memory_pair(LinkConfig::default());
    let (tx, _) = conduit::bare(a);
    let (_, rx) = conduit::bare(b);
    let (finish_tx, finish_rx) = oneshot::channel();
    let (outbound, writer) = spawn_writer(tx, 8, finish_rx, true);
    (outbound, writer, rx, finish_tx)
}

type Writer = tokio::task::JoinHandle<Result<(), super::outbound::WriterError>>;

/// A channel's items, flattened from the messages that carried them, and
/// how many messages carried them.
fn items_of(seen: &[Message], channel: ChannelId) -> (Vec<u8>, usize) {
    let mut items = Vec::new();
    let mut messages = 0;
    for m in seen {
        match &m.payload {
            Payload::ChannelItem { id, item } if *id == channel => {
                items.push(item.bytes()[0]);
                messages += 1;
            }
            Payload::ChannelItems { id, items: run } if *id == channel => {
                items.extend(run.iter().map(|b| b.bytes()[0]));
                messages += 1;
            }
            _ => {}
        }
    }
    (items, messages)
}

// rule: rpc.channel.close — a channel's items reach the peer in the order
// they were sent, whether they joined an outbox behind its marker, were
// too large to join a run, or came after other messages were queued; and
// a message queued after the marker follows the items taken with it.
#[tokio::test]
async fn rpc_channel_close_writer_sends_outbox_items_in_send_order() {
    let (outbound, writer, mut rx, _finish) = writer_over_memory();
    let (ch, other) = (ChannelId(3), ChannelId(5));
    let outbox = ChannelOutbox::new(CONN, ch);
    let admit = || Ok::<(), ()>(());

    // Queued before the marker: a run of one the outbox's first item ends.
    let before = Message { connection_id: CONN, payload: Payload::ChannelItem { id: other, item: small(8) } };
    outbound.try_reserve().expect("room").send(before);
    let permit = outbound.try_reserve().expect("room");
    let Ok(Joined::NeedsPlace(first)) = outbox.join(small(1), admit) else { panic!("the first item leads") };
    assert!(outbox.lead(first));
    permit.send_outbox(outbox.clone());
    let big = vec![3u8; SPLICE_MIN + 1];
    for item in [small(2), Blob::from(big), small(4)] {
        assert!(matches!(outbox.join(item, admit), Ok(Joined::Behind)));
    }
    let other_item = Message { connection_id: CONN, payload: Payload::ChannelItem { id: other, item: small(9) } };
    outbound.try_reserve().expect("room").send(other_item);
    // Sent after the other channel's item was queued, still before the
    // writer reached the marker: it goes with the marker's run.
    assert!(matches!(outbox.join(small(5), admit), Ok(Joined::Behind)));
    outbound.try_reserve().expect("room").send(Message { connection_id: CONN, payload: Payload::Ping { nonce: 7 } });

    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(Message { payload: Payload::Ping { .. }, .. })) {
        match rx.recv().await.expect("decodes") {
            Some(ConduitMsg::Message(m)) => seen.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(items_of(&seen, ch).0, [1, 2, 3, 4, 5], "{seen:?}");
    assert!(
        seen.iter()
            .any(|m| matches!(&m.payload, Payload::ChannelItem { id, item } if *id == ch && item.len() > SPLICE_MIN)),
        "the large item keeps its own message"
    );
    let position = |f: &dyn Fn(&Payload) -> bool| seen.iter().position(|m| f(&m.payload)).expect("present");
    let carries = |m: &Message, c: ChannelId| items_of(std::slice::from_ref(m), c).1 > 0;
    let first_of_ch = seen.iter().position(|m| carries(m, ch)).expect("items");
    let last_of_ch = seen.iter().rposition(|m| carries(m, ch)).expect("items");
    assert_eq!(items_of(&seen, other).0, [8, 9], "{seen:?}");
    assert!(position(&|p| matches!(p, Payload::ChannelItem { item, .. } if item.bytes()[..] == [8])) < first_of_ch);
    assert!(last_of_ch < position(&|p| matches!(p, Payload::ChannelItem { item, .. } if item.bytes()[..] == [9])));
    assert!(matches!(outbox.join(small(6), admit), Ok(Joined::NeedsPlace(_))), "the writer took the run");
    drop(outbound);
    writer.await.expect("writer task").expect("writer ends cleanly");
}

// A marker with no item behind it (never made by the gate, which queues
// one only with an item) is written as nothing.
#[tokio::test]
async fn writer_skips_an_empty_outbox() {
    let (outbound, writer, mut rx, _finish) = writer_over_memory();
    outbound.try_reserve().expect("room").send_outbox(ChannelOutbox::new(CONN, ChannelId(3)));
    outbound.try_reserve().expect("room").send(Message { connection_id: CONN, payload: Payload::Ping { nonce: 1 } });
    let first = rx.recv().await.expect("decodes");
    assert!(
        matches!(first, Some(ConduitMsg::Message(Message { payload: Payload::Ping { nonce: 1 }, .. }))),
        "{first:?}"
    );
    drop(outbound);
    writer.await.expect("writer task").expect("writer ends cleanly");
}
