//! Abuse budgets over time (rule `session.abuse-budget`): a peer that keeps
//! to a budget's sustained rate is never refused, however its events are
//! spaced, and one that goes beyond it is. Driven on a paused clock, so the
//! spacing is exact.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::{RawPeer, raw_initiator};
use common::testbed::server_builder;
use std::time::Duration;
use vox_core::session::{AbuseBudgets, BudgetConfig, SessionBuilder};
use vox_core::wire::{Message, Parity, Payload};

/// Pings: a burst of 2, 1,000 per second (one token per millisecond).
fn builder() -> SessionBuilder {
    let mut b = server_builder();
    b.config_mut().keepalive = None;
    b.config_mut().budgets =
        AbuseBudgets { pings: BudgetConfig { burst: 2, per_second: 1000 }, ..AbuseBudgets::UNLIMITED };
    b
}

/// Sends a ping and says whether it was answered (`false`: the session
/// refused it with a ProtocolError).
async fn ping(raw: &mut RawPeer, nonce: u64) -> bool {
    raw.send(0, Payload::Ping { nonce }).await;
    loop {
        match raw.recv().await {
            Some(Message { payload: Payload::Pong { nonce: n }, .. }) if n == nonce => return true,
            Some(Message { payload: Payload::ProtocolError { description }, .. }) => {
                assert!(description.contains("abuse budget `pings` exceeded"), "{description}");
                return false;
            }
            Some(_) => {}
            None => panic!("link closed without a ProtocolError"),
        }
    }
}

// Two pings 0.9 ms apart every 2 ms: exactly the sustained rate, with half
// of the gaps shorter than the refill's millisecond. Time that passes in
// those short gaps still counts towards the next refill.
#[tokio::test(start_paused = true)]
async fn session_abuse_budget_sustained_rate_with_sub_millisecond_gaps_is_never_refused() {
    let (_session, mut raw) = raw_initiator(builder(), Parity::Odd).await;
    for pair in 0..20u64 {
        assert!(ping(&mut raw, 2 * pair).await, "ping {} refused", 2 * pair);
        tokio::time::advance(Duration::from_micros(900)).await;
        assert!(ping(&mut raw, 2 * pair + 1).await, "ping {} refused", 2 * pair + 1);
        tokio::time::advance(Duration::from_micros(1100)).await;
    }
}

// Beyond the rate: a ping every 2/3 ms (1.5 times the rate) runs the bucket
// dry once the burst is spent, so the first test is not passing vacuously.
#[tokio::test(start_paused = true)]
async fn session_abuse_budget_above_the_sustained_rate_is_refused() {
    let (_session, mut raw) = raw_initiator(builder(), Parity::Odd).await;
    for nonce in 0..60u64 {
        if !ping(&mut raw, nonce).await {
            assert!(nonce >= 2, "refused within the burst, at ping {nonce}");
            return;
        }
        tokio::time::advance(Duration::from_micros(667)).await;
    }
    panic!("60 pings at 1.5 times the rate were all answered");
}
