//! Issue 22: `SessionHandle::snapshot` shows what a live session holds:
//! connections, calls and handlers in flight, channels, queue depths.

mod common {
    pub mod testbed;
}
use common::testbed::*;
use vox_core::session::{SessionBuilder, SessionError, SessionHandle, SessionSnapshot};
use vox_core::wire::{ConnectionSettings, Metadata};

/// Takes snapshots until `done` holds (the run loop answers between
/// events, so the state the test waits for shows up after a few turns).
async fn snapshot_until(handle: &SessionHandle, done: impl Fn(&SessionSnapshot) -> bool) -> SessionSnapshot {
    for _ in 0..10_000 {
        let s = handle.snapshot().await.expect("snapshot of a live session");
        if done(&s) {
            return s;
        }
        tokio::task::yield_now().await;
    }
    panic!("the snapshot never showed the expected state");
}

#[tokio::test]
async fn session_snapshot_shows_calls_handlers_and_connections_in_flight() {
    let (server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = client.root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, ()>(mid("wait_forever"), &(), vec![]).await });
    let conn = client.handle.open_connection(ConnectionSettings::default(), Metadata::new()).await.expect("open");

    let on_server = snapshot_until(&server.handle, |s| {
        s.connections.len() == 2 && s.connections[0].calls.as_ref().is_some_and(|c| c.handlers_in_flight == 1)
    })
    .await;
    let handling = &on_server.connections[0].incoming;
    assert_eq!(handling.len(), 1, "the call being handled");
    assert_eq!((handling[0].method, handling[0].state.as_str()), (mid("wait_forever"), "running"));
    assert_eq!(on_server.phase, "established");
    assert_eq!(on_server.generation, 1);
    assert_eq!(on_server.connections[1].id, conn.id.0);
    assert_eq!(on_server.connections[1].state, "open");
    assert!(!on_server.draining && !on_server.root_released);
    assert!(on_server.outbound_capacity > 0);

    let on_client =
        snapshot_until(&client.handle, |s| s.connections[0].calls.as_ref().is_some_and(|c| c.calls_in_flight == 1))
            .await;
    assert_eq!(on_client.connections.len(), 2, "the root and the virtual connection");
    let calls = &on_client.connections[0].outgoing;
    assert_eq!(calls.len(), 1, "the call awaiting its response");
    assert_eq!((calls[0].method, calls[0].state.as_str()), (mid("wait_forever"), "waiting"));
    let text = on_client.to_string();
    assert!(text.starts_with("session established (generation 1)"), "{text}");
    assert!(text.contains("connection 0 (open): 1 calls, 0 handlers in flight"), "{text}");
    assert!(text.contains(&format!("connection {} (open)", conn.id.0)), "{text}");
    assert!(text.contains(&format!("call {} method {}", calls[0].request_id, mid("wait_forever"))), "{text}");

    call.abort();
    drop(conn);
    client.handle.shutdown().expect("shutdown");
    client.handle.closed().await;
    assert!(matches!(client.handle.snapshot().await, Err(SessionError::Closed(_))), "no snapshot of an ended session");
}

#[tokio::test]
async fn session_snapshot_shows_each_channel_with_its_end_state_and_credit() {
    let (server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let (tx, rx) = vox_core::driver::channel::<i32>();
    let caller = client.root.caller.clone();
    let call =
        tokio::spawn(
            async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().expect("caller end")]).await },
        );

    let on_client = snapshot_until(&client.handle, |s| !s.connections[0].channel_list.is_empty()).await;
    let ch = &on_client.connections[0].channel_list[0];
    assert_eq!((ch.end.as_str(), ch.state.as_str(), ch.queued), ("sender", "open", 0));
    assert_eq!(ch.credit, Some(vox_core::driver::DEFAULT_INITIAL_CREDIT), "nothing sent yet");
    assert!(on_client.to_string().contains(&format!("channel {} (sender, open): credit 16, 0 queued", ch.id)));

    let on_server =
        snapshot_until(&server.handle, |s| s.connections[0].channel_list.iter().any(|c| c.state == "open")).await;
    let ch = &on_server.connections[0].channel_list[0];
    assert_eq!((ch.end.as_str(), ch.state.as_str()), ("receiver", "open"));

    drop(tx);
    assert_eq!(call.await.expect("task").expect("sum"), 0, "closing the empty stream ends the call");
}
