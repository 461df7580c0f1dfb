//! Issue 18: a server people can run. Rule `rpc.caller.liveness` (a side
//! that serves a handler keeps its session until the peer ends it), serving
//! many clients, graceful shutdown.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use std::sync::Arc;
use vox_core::driver::{BoxFuture, Call, CallError, Handler};
use vox_core::service::Server;
use vox_core::session::{CloseReason, SessionBuilder};

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Exactly the loop a new user writes from the `Listener::accept` docs: the
/// task keeps only the handle, so the accepted `Session` (and its root
/// caller) is dropped at once. The server serves a handler on the root, so
/// the session must stay up until the client ends it.
#[tokio::test]
async fn rpc_caller_liveness_natural_accept_loop_keeps_serving() {
    let listener = SessionBuilder::new().handler(testbed()).listen("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok(s) = listener.accept().await {
            let handle = s.handle.clone();
            tokio::spawn(async move {
                let _ = handle.closed().await;
            });
        }
    });
    for client_no in 0..3 {
        let client = within("connect", SessionBuilder::new().connect(addr)).await.expect("connect");
        for i in 0..5 {
            let text = format!("client {client_no} call {i}");
            let got: String = within("echo", client.root.caller.call(mid("echo"), &text, vec![]))
                .await
                .expect("the session keeps serving");
            assert_eq!(got, text);
            tokio::task::yield_now().await;
        }
        assert!(client.handle.close_reason().is_none(), "{:?}", client.handle.close_reason());
        client.handle.shutdown().expect("shutdown");
        within("the client to close", client.handle.closed()).await;
    }
    server.abort();
}

/// A handler whose `gated` method waits until the test opens the gate, so
/// the test knows exactly which calls are in flight.
#[derive(Clone)]
struct Gated {
    started: Arc<tokio::sync::Semaphore>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Handler for Gated {
    fn handle(&self, call: Call) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move {
            if call.method_id == mid("gated") {
                this.started.add_permits(1);
                let _open = this.gate.acquire().await;
                call.reply.ok(&"done".to_string());
            } else if call.method_id == mid("echo") {
                match call.decode_args::<String>() {
                    Ok(s) => call.reply.ok(&s),
                    Err(e) => call.reply.invalid_payload(e),
                }
            } else {
                call.reply.unknown_method();
            }
        })
    }
}

/// 100 clients each have a call in flight when the server shuts down: those
/// calls complete, calls made after the drain reached a session are refused
/// (`Rejected`: they never ran), and the shutdown returns once every
/// session has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_graceful_shutdown_completes_in_flight_calls_and_refuses_new_ones() {
    const CLIENTS: usize = 100;
    let gated =
        Gated { started: Arc::new(tokio::sync::Semaphore::new(0)), gate: Arc::new(tokio::sync::Semaphore::new(0)) };
    let serving = Server::with_builder(SessionBuilder::new().handler(gated.clone()))
        .grace_period(PATIENCE)
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = serving.local_addr();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(within("connect", SessionBuilder::new().connect(addr)).await.expect("connect"));
    }
    let mut in_flight = Vec::new();
    for c in &clients {
        let caller = c.root.caller.clone();
        in_flight.push(tokio::spawn(async move { caller.call::<_, String>(mid("gated"), &(), vec![]).await }));
    }
    // Every handler is running.
    let _all = within("handlers to start", gated.started.acquire_many(CLIENTS as u32)).await.expect("semaphore");
    assert_eq!(serving.sessions(), CLIENTS);
    let shutdown = tokio::spawn(serving.shutdown());
    // Each client sees its session refuse new calls once the drain reached it.
    for c in &clients {
        let refused = within("a refusal", async {
            loop {
                match c.root.caller.call::<_, String>(mid("echo"), &"new".to_string(), vec![]).await {
                    Ok(_) => tokio::task::yield_now().await,
                    Err(e) => return e,
                }
            }
        })
        .await;
        assert!(matches!(refused, CallError::Rejected(ref r) if r.contains("shutting down")), "{refused:?}");
    }
    assert!(!shutdown.is_finished(), "the shutdown must wait for the calls in flight");
    gated.gate.add_permits(CLIENTS);
    for call in in_flight {
        let got = within("an in-flight call", call).await.expect("join");
        assert_eq!(got.expect("an in-flight call completes"), "done");
    }
    let report = within("the shutdown", shutdown).await.expect("join");
    assert_eq!(report.drained, CLIENTS);
    assert_eq!(report.sessions_served, CLIENTS as u64);
    for c in &clients {
        assert_eq!(within("the client session to end", c.handle.closed()).await, CloseReason::PeerClosed);
    }
}

#[tokio::test]
async fn serve_limits_the_number_of_sessions() {
    let serving = Server::with_builder(SessionBuilder::new().handler(testbed()))
        .max_sessions(2)
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = serving.local_addr();
    let a = within("connect", SessionBuilder::new().connect(addr)).await.expect("a");
    let b = within("connect", SessionBuilder::new().connect(addr)).await.expect("b");
    for s in [&a, &b] {
        let _: String =
            within("echo", s.root.caller.call(mid("echo"), &"x".to_string(), vec![])).await.expect("served");
    }
    let c = within("connect", SessionBuilder::new().connect(addr)).await.expect("c completes its handshake");
    // The third is ended right after its handshake.
    within("the third session to end", c.handle.closed()).await;
    let report = serving.shutdown().await;
    assert_eq!((report.sessions_served, report.sessions_refused), (2, 1));
}
