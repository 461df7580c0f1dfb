//! Volume through one channel with credit 16 and a deliberately slow
//! receiver (rules `rpc.channel`, `rpc.flow-control.credit`): every item
//! arrives, in order, exactly once, and the receive buffer never grows past
//! the window: the credit itself when window growth is off
//! (`max_receive_window = 0`), `max_receive_window` when it is on.
//!
//! The memory case sends 1,000,000 items (about 17 s in a debug build on two
//! cores, a few seconds in release); TCP sends 100,000.

mod common {
    pub mod testbed;
}

use common::testbed::*;
use std::time::{Duration, Instant};
use vox_core::driver::{Call, Handler, channel_with_credit};
use vox_core::session::{Session, SessionBuilder};
use vox_core::test_util::channel::DEFAULT_MAX_RECEIVE_WINDOW;

const CREDIT: u32 = 16;

/// Hang detector only: far above the expected run time.
const PATIENCE: Duration = Duration::from_secs(300);

const MEMORY_ITEMS: u64 = 1_000_000;

/// `count_up(n)`: sends `0..n` as `u64` on `Tx<u64>` 0, then closes.
fn stress_builder() -> SessionBuilder {
    let tb = testbed();
    SessionBuilder::new().handler(move |mut call: Call| {
        let tb = tb.clone();
        async move {
            if call.method_id != mid("count_up") {
                return tb.handle(call).await;
            }
            let n: u64 = match call.decode_args() {
                Ok(n) => n,
                Err(e) => return call.reply.invalid_payload(e),
            };
            let mut tx = match call.channels.tx::<u64>(0) {
                Ok(tx) => tx,
                Err(e) => return call.reply.invalid_payload(e),
            };
            for i in 0..n {
                if let Err(e) = tx.send(&i).await {
                    return call.reply.user_error(&e.to_string());
                }
            }
            match tx.close().await {
                Ok(()) => call.reply.ok(&n),
                Err(e) => call.reply.user_error(&e.to_string()),
            }
        }
    })
}

/// A short busy pause: keeps the receiver from draining as fast as the
/// sender fills, without sleeping.
fn busy_pause() {
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(200) {
        std::hint::spin_loop();
    }
}

async fn stream_slowly(client: &Session, n: u64, window_bound: usize) {
    let caller = &client.root.caller;
    let (tx, mut rx) = channel_with_credit::<u64>(CREDIT);
    let call = caller.call::<_, u64>(mid("count_up"), &n, vec![tx.into_arg().unwrap()]);
    let drain = async move {
        let mut expected = 0u64;
        while let Some(v) = rx.recv().await.expect("recv") {
            assert_eq!(v, expected, "items arrive in order, none lost or repeated");
            expected += 1;
            tokio::task::yield_now().await;
            if expected % 10_000 == 0 {
                busy_pause();
            }
        }
        expected
    };
    let started = Instant::now();
    let (sent, received) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(call, drain) }).await.expect("hang detector");
    assert_eq!(sent.expect("call"), n);
    assert_eq!(received, n);
    let stats = caller.channel_stats();
    assert!(stats.max_queue_depth <= window_bound, "the receive buffer is bounded by the window: {stats:?}");
    eprintln!("{n} items in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_flow_control_credit_many_items_slow_receiver_memory_complete_and_in_order() {
    // Window growth off: the receive buffer is the credit, exactly.
    let mut fixed = SessionBuilder::new();
    fixed.config_mut().max_receive_window = 0;
    let (_server, client) = memory_sessions(stress_builder(), fixed).await;
    stream_slowly(&client, MEMORY_ITEMS, CREDIT as usize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_flow_control_credit_many_items_slow_receiver_tcp_complete_and_in_order() {
    // Default: the window may grow while the receiver keeps up, never past
    // `max_receive_window`.
    let (_server, client) = tcp_sessions(stress_builder(), SessionBuilder::new()).await;
    stream_slowly(&client, 100_000, DEFAULT_MAX_RECEIVE_WINDOW as usize).await;
}
