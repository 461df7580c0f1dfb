//! Issue 18, point 6: sending on a `Tx` before its call is made. Up to the
//! channel's initial credit of items are kept and go out right after the
//! call's `Request`, in order; a close or a drop before the call goes out
//! after them (rules `rpc.channel.early-items`, `rpc.flow-control.credit`,
//! `rpc.channel.close`). And `Tx::try_send`, before and after the call.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use vox_core::driver::{channel, channel_with_credit};
use vox_core::session::SessionBuilder;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn rpc_channel_early_items_fill_the_stream_then_call() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (mut tx, rx) = channel::<i32>();
    // No call yet: these complete at once (the initial credit is 16).
    for i in 0..16 {
        within("an early send", tx.send(&i)).await.expect("kept for the call");
    }
    within("an early close", tx.close()).await.expect("kept for the call");
    let total: i64 =
        within("sum", c.root.caller.call(mid("sum"), &(), vec![rx.into_arg().unwrap()])).await.expect("sum");
    assert_eq!(total, (0..16).sum::<i64>());
}

#[tokio::test]
async fn rpc_channel_early_items_keep_their_order_with_later_sends() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (mut tx_in, rx_in) = channel_with_credit::<String>(4);
    let (tx_out, mut rx_out) = channel::<String>();
    for s in ["a", "b", "c", "d"] {
        within("an early send", tx_in.send(&s.to_string())).await.expect("kept");
    }
    // Beyond the credit, a send waits for the call: run it meanwhile.
    let call = tokio::spawn({
        let caller = c.root.caller.clone();
        async move {
            caller
                .call::<_, ()>(mid("transform"), &(), vec![rx_in.into_arg().unwrap(), tx_out.into_arg().unwrap()])
                .await
        }
    });
    for s in ["e", "f"] {
        within("a send after the call", tx_in.send(&s.to_string())).await.expect("sent");
    }
    tx_in.close().await.expect("close");
    let mut got = Vec::new();
    while let Some(s) = within("an item", rx_out.recv()).await.expect("recv") {
        got.push(s);
    }
    assert_eq!(got, ["A", "B", "C", "D", "E", "F"]);
    within("the call", call).await.expect("join").expect("transform");
}

#[tokio::test]
async fn rpc_channel_early_items_of_a_dropped_sender_arrive_then_the_close() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (mut tx, rx) = channel::<i32>();
    for i in [5, 6, 7] {
        tx.send(&i).await.expect("kept");
    }
    drop(tx);
    let total: i64 =
        within("sum", c.root.caller.call(mid("sum"), &(), vec![rx.into_arg().unwrap()])).await.expect("sum");
    assert_eq!(total, 18);
}

// rule: rpc.flow-control.credit — `Tx::try_send` never waits: before its
// call binds the channel it hands the item back as `Full`; once bound, an
// item it accepts reaches the receiver like a sent one, in order.
#[tokio::test]
async fn rpc_flow_control_credit_try_send_hands_back_or_delivers() {
    use vox_core::driver::TrySendError;
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (mut tx, rx) = channel_with_credit::<i32>(0);
    assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))), "unbound, no credit: handed back");
    let call = tokio::spawn({
        let caller = c.root.caller.clone();
        async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await }
    });
    // Waits for the call to bind the channel and the handler's first grant.
    within("the first send", tx.send(&1)).await.expect("sent");
    for mut item in [2, 3] {
        within("try_send accepting the item", async {
            loop {
                match tx.try_send(item) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        item = back;
                        tokio::task::yield_now().await;
                    }
                    Err(TrySendError::Closed(_, e)) => panic!("the channel ended: {e}"),
                }
            }
        })
        .await;
    }
    within("close", tx.close()).await.expect("close");
    let total = within("the call", call).await.expect("join").expect("sum");
    assert_eq!(total, 6, "every accepted item arrived");
}
