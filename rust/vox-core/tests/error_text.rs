//! Issue 18, points 7 and 8: `connect_waiting` keeps trying until its
//! timeout, and errors name what they are about.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::testbed::*;
use std::time::Duration;
use vox_core::driver::CallError;
use vox_core::link::{Backoff, ConnectError, LinkSource, TcpSource, connect_waiting};
use vox_core::service::{OpenClient, ServiceRouter};
use vox_core::session::SessionBuilder;

/// A port nothing listens on: bound, then released.
async fn closed_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

#[tokio::test(start_paused = true)]
async fn session_initial_connect_waiting_keeps_trying_until_its_timeout() {
    let addr = closed_port().await;
    let source = TcpSource { addr: addr.to_string(), config: Default::default() };
    let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), factor: 2 };
    let timeout = Duration::from_secs(2);
    match connect_waiting(&source, &backoff, timeout).await {
        Err(ConnectError::TimedOut { waited, attempts, last }) => {
            assert!(waited >= timeout, "gave up after {waited:?} of {timeout:?} ({attempts} attempts)");
            assert!(waited < timeout + Duration::from_millis(100), "{waited:?}");
            assert!(last.to_string().contains(&addr.to_string()), "{last}");
        }
        Err(other) => panic!("expected a timeout, got {other}"),
        Ok(_) => panic!("nothing listens there"),
    }
}

#[tokio::test]
async fn connect_error_names_the_address_nothing_listens_on() {
    let addr = closed_port().await;
    let source = TcpSource { addr: addr.to_string(), config: Default::default() };
    let Err(e) = source.dial().await else { panic!("nothing listens there") };
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn connection_open_rejection_reason_is_in_the_error_text() {
    let router = ServiceRouter::new();
    let (_server, client) = memory_sessions(SessionBuilder::new().acceptor(router), SessionBuilder::new()).await;
    let err = client.handle.open::<GreeterClient>(Default::default()).await.expect_err("no such service");
    let text = err.to_string();
    assert!(text.contains("rejected") && text.contains("Greeter"), "{text}");
}

/// A service the server does not have.
#[vox_core::service]
pub trait Greeter {
    /// Greets.
    async fn greet(&self, name: String) -> String;
}

/// A service with a stricter signature.
#[vox_core::service]
pub trait Strict {
    /// Takes a number where the other sends a string; same method id.
    async fn greet(&self, n: u32) -> u32;
}

#[derive(Clone)]
struct Numbers;

impl Strict for Numbers {
    async fn greet(&self, n: u32) -> u32 {
        n
    }
}

#[tokio::test]
async fn rpc_invalid_payload_error_names_the_method() {
    // `Greeter.greet` and `Strict.greet` differ in the service name, so
    // route Greeter's id to the strict handler by hand.
    let (_server, client) =
        memory_sessions(SessionBuilder::new().handler(StrictDispatcher::new(Numbers)), SessionBuilder::new()).await;
    let r: Result<u32, CallError> =
        client.root.caller.call(vox_core::wire::MethodId::from_names("Strict", "greet"), &"not a number", vec![]).await;
    match r {
        Err(CallError::InvalidPayload(reason)) => assert!(reason.contains("Strict.greet"), "{reason}"),
        other => panic!("expected InvalidPayload, got {other:?}"),
    }
}
