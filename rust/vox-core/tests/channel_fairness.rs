//! A channel end never holds its worker for as long as it finds work: a
//! `Tx::send` that always finds credit and an `Rx::recv` that always finds
//! an item count against tokio's cooperative budget, so a loop over either
//! yields now and then to the tasks sharing its worker (the writer that
//! drains the sends, the receive loop that feeds the queue, the task that
//! sends the grants).
//!
//! Each test runs on a current-thread runtime (one worker for everything)
//! and counts how many operations its loop completes before a task spawned
//! beside it first runs. Without the budget that count is the whole loop.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vox_core::driver::{TrySendError, channel_with_credit};
use vox_core::session::SessionBuilder;

/// More than tokio's per-poll budget (128), less than the channel's credit.
const ITEMS: i32 = 1000;

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A task that records when it first runs.
fn witness() -> Arc<AtomicBool> {
    let ran = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(true, Ordering::SeqCst) }
    });
    ran
}

#[tokio::test]
async fn tx_send_with_credit_left_yields_to_other_tasks() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (mut tx, rx) = channel_with_credit::<i32>(1024);
    let call = tokio::spawn({
        let caller = c.root.caller.clone();
        async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await }
    });
    // Before the call binds the channel, sends are kept for it without
    // touching the runtime; `try_send` hands its item back until then.
    // Once one is taken, the channel is bound and 1,023 credits are left,
    // more than ITEMS.
    within("the channel bound", async {
        loop {
            match tx.try_send(0) {
                Ok(()) => break,
                Err(TrySendError::Full(_)) => tokio::task::yield_now().await,
                Err(TrySendError::Closed(_, e)) => panic!("channel ended: {e}"),
            }
        }
    })
    .await;
    let ran = witness();
    let mut before = None;
    for i in 0..ITEMS {
        tx.send(&i).await.expect("sent");
        if before.is_none() && ran.load(Ordering::SeqCst) {
            before = Some(i);
        }
    }
    let before = before.expect("the other task ran only after the sender's loop");
    assert!(before <= 128, "the sender yielded only after {before} sends with credit left");
    tx.close().await.expect("close");
    let total = within("sum", call).await.expect("join").expect("sum");
    assert_eq!(total, (0..i64::from(ITEMS)).sum::<i64>());
}

#[tokio::test]
async fn rx_recv_with_items_queued_yields_to_other_tasks() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (tx, mut rx) = channel_with_credit::<i32>(1024);
    // The handler sends every item within its credit and returns; its
    // response leaves after them, so once the call returns all items are
    // queued on our side.
    within("generate", c.root.caller.call::<_, ()>(mid("generate"), &(ITEMS as u32), vec![tx.into_arg().unwrap()]))
        .await
        .expect("generate");
    let ran = witness();
    let mut before = None;
    for i in 0..ITEMS {
        assert_eq!(rx.recv().await.expect("recv"), Some(i));
        if before.is_none() && ran.load(Ordering::SeqCst) {
            before = Some(i);
        }
    }
    let before = before.expect("the other task ran only after the receiver's loop");
    assert!(before <= 128, "the receiver yielded only after {before} items it found queued");
    assert_eq!(within("the close", rx.recv()).await.expect("recv"), None);
}
