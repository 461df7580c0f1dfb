//! The `vox.channel-items` handshake feature (`docs/spec/wire.md` section
//! 5.4): several items of one channel in one `ChannelItems` message, each
//! still spending a credit, sent only to a peer that agreed. A raw peer says
//! what a correct runtime never would.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}

use common::raw_peer::*;
use common::testbed::*;
use serde::Serialize;
use vox_core::driver::channel;
use vox_core::session::SessionBuilder;
use vox_core::wire::{
    self, Blob, CHANNEL_ITEMS_FEATURE, ChannelDecl, ChannelDirection, ChannelId, ConnectionSettings, MAX_CHANNEL_ITEMS,
    Metadata, Parity, Payload, RequestId, ResponseBody,
};

fn blob<T: Serialize + ?Sized>(value: &T) -> Blob {
    Blob::from(wire::encode("test value", value).expect("encode"))
}

/// A call of the testbed's `sum` (it adds the `i32`s of channel 1, which
/// has `credit` items of initial credit).
fn sum_request(id: u64, credit: u32) -> Payload {
    Payload::Request {
        id: RequestId(id),
        method_id: mid("sum"),
        args: blob(&()),
        channels: vec![ChannelDecl {
            id: ChannelId(1),
            direction: ChannelDirection::CallerToHandler,
            initial_credit: credit,
        }],
        metadata: Metadata::new(),
    }
}

fn items(values: &[i32]) -> Payload {
    Payload::ChannelItems { id: ChannelId(1), items: values.iter().map(blob).collect() }
}

// rule: rpc.channel.item — a ChannelItems counts as that many items, in
// order, between peers that agreed on the feature.
#[tokio::test]
async fn rpc_channel_item_a_batch_is_its_items_in_order() {
    let (_server, mut raw) = raw_initiator_offering(server_builder(), Parity::Odd, true).await;
    assert!(raw.negotiated.channel_items, "the runtime accepts {CHANNEL_ITEMS_FEATURE}");
    raw.send(0, sum_request(1, 4)).await;
    raw.send(0, items(&[1, 2, 3])).await;
    raw.send(0, Payload::ChannelItem { id: ChannelId(1), item: blob(&4i32) }).await;
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Response { .. })).await;
    assert_eq!(
        m.payload,
        Payload::Response { id: RequestId(1), ret: ResponseBody::Ok(blob(&10i64)), metadata: Metadata::new() }
    );
}

// rule: rpc.flow-control.credit — each item of a batch spends a credit: a
// batch of more items than the credit left is a violation.
#[tokio::test]
async fn rpc_flow_control_credit_a_batch_beyond_the_credit_is_a_protocol_error() {
    let (_server, mut raw) = raw_initiator_offering(server_builder(), Parity::Odd, true).await;
    raw.send(0, sum_request(1, 2)).await;
    raw.send(0, items(&[1, 2, 3])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("credit"), "{d}");
}

// rule: rpc.channel.item — a batch carries at least one item.
#[tokio::test]
async fn rpc_channel_item_an_empty_batch_is_a_protocol_error() {
    let (_server, mut raw) = raw_initiator_offering(server_builder(), Parity::Odd, true).await;
    raw.send(0, sum_request(1, 4)).await;
    raw.send(0, items(&[])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("no item"), "{d}");
}

// rule: session.decode.bounded — at most MAX_CHANNEL_ITEMS items, refused
// while decoding.
#[tokio::test]
async fn session_decode_bounded_a_batch_over_the_maximum_is_refused() {
    let (_server, mut raw) = raw_initiator_offering(server_builder(), Parity::Odd, true).await;
    raw.send(0, sum_request(1, 1024)).await;
    let many: Vec<i32> = (0..=MAX_CHANNEL_ITEMS as i32).collect();
    raw.send(0, items(&many)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("MAX_CHANNEL_ITEMS"), "{d}");
}

// rule: session.message — ChannelItems only after both sides listed the
// feature in the handshake.
#[tokio::test]
async fn session_message_a_batch_without_the_feature_is_a_protocol_error() {
    let (_server, mut raw) = raw_initiator_offering(server_builder(), Parity::Odd, false).await;
    assert!(!raw.negotiated.channel_items);
    raw.send(0, sum_request(1, 4)).await;
    raw.send(0, items(&[1, 2])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains(CHANNEL_ITEMS_FEATURE), "{d}");
}

// rule: rpc.channel.item — the runtime sends the items of one channel that
// are queued one after another as one ChannelItems to a peer that agreed.
// (A current-thread runtime: the writer runs only once the test task
// waits, so all ten are queued before it.)
#[tokio::test]
async fn rpc_channel_item_items_queued_together_leave_as_one_batch() {
    let (client, mut raw) = raw_acceptor_accepting(SessionBuilder::new(), ConnectionSettings::default(), true).await;
    assert!(raw.negotiated.channel_items, "the runtime offers {CHANNEL_ITEMS_FEATURE}");
    let (mut tx, rx) = channel::<i32>();
    let caller = client.root.caller.clone();
    let _call = tokio::spawn(async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let Payload::Request { channels, .. } = m.payload else { unreachable!("matched above") };
    for v in 0..10 {
        tx.send(&v).await.expect("credit for ten");
    }
    let m = raw.recv_until(|m| matches!(m.payload, Payload::ChannelItem { .. } | Payload::ChannelItems { .. })).await;
    let values: Vec<i32> = (0..10).collect();
    assert_eq!(m.payload, Payload::ChannelItems { id: channels[0].id, items: values.iter().map(blob).collect() });
}
