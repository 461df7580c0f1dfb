//! Issue 18: a server people can run. Rule `rpc.caller.liveness` (a side
//! that serves a handler keeps its session until the peer ends it), serving
//! many clients, graceful shutdown.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use vox_core::session::SessionBuilder;

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
