//! Session and connection rules (PROTOCOL.md sections 5 and 6), one test per
//! rule, named after it. Violations are produced with a raw protocol peer.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::*;
use common::testbed::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::{Call, CallError, ChannelError, Fault, channel};
use vox_core::session::{
    AcceptDecision, CloseReason, ConnectionHandle, ConnectionRequest, Session, SessionBuilder, SessionError,
};
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ConnectionId, ConnectionSettings, Message, Metadata, Parity,
    Payload, RequestId, ResponseBody,
};

// ------------------------------------------------------------------ helpers

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("hang: {what}"))
}

fn enc<T: serde::Serialize>(v: &T) -> Blob {
    Blob::from(wire::encode("test value", v).unwrap())
}

fn request(id: u64, method: &str, args: &impl serde::Serialize) -> Payload {
    Payload::Request {
        id: RequestId(id),
        method_id: mid(method),
        args: enc(args),
        channels: vec![],
        metadata: Metadata::new(),
    }
}

fn open(parity: Parity) -> Payload {
    Payload::OpenConnection { parity, settings: ConnectionSettings::default(), metadata: Metadata::new() }
}

fn accept() -> Payload {
    Payload::AcceptConnection { settings: ConnectionSettings::default(), metadata: Metadata::new() }
}

fn close() -> Payload {
    Payload::CloseConnection { metadata: Metadata::new() }
}

fn ok_response(id: RequestId, value: &impl serde::Serialize) -> Payload {
    Payload::Response { id, ret: ResponseBody::Ok(enc(value)), metadata: Metadata::new() }
}

fn is_on(m: &Message, conn: u64) -> bool {
    m.connection_id == ConnectionId(conn)
}

/// Sends `Ping { nonce }` and returns everything the runtime sent before
/// the matching `Pong`. The runtime handles messages in order, so whatever
/// it queued in answer to earlier messages comes first.
async fn barrier(raw: &mut RawPeer, nonce: u64) -> Vec<Message> {
    raw.send(0, Payload::Ping { nonce }).await;
    let mut before = Vec::new();
    loop {
        match raw.recv().await {
            Some(Message { payload: Payload::Pong { nonce: n }, .. }) if n == nonce => return before,
            Some(m) => {
                assert!(!matches!(m.payload, Payload::ProtocolError { .. }), "unexpected protocol error: {m:?}");
                before.push(m)
            }
            None => panic!("link closed while waiting for Pong {nonce}"),
        }
    }
}

/// A raw initiator that has opened virtual connection `id` (accepted).
async fn raw_with_connection(server: SessionBuilder, id: u64, parity: Parity) -> (Session, RawPeer) {
    let (s, mut raw) = raw_initiator(server, Parity::Odd).await;
    raw.send(id, open(parity)).await;
    let m = raw.recv_until(|m| is_on(m, id)).await;
    assert!(matches!(m.payload, Payload::AcceptConnection { .. }), "{m:?}");
    (s, raw)
}

/// The runtime (initiator) opens a virtual connection that the raw acceptor
/// accepts; returns the handle and the id.
async fn runtime_opens(client: &Session, raw: &mut RawPeer) -> ConnectionHandle {
    let h = client.handle.clone();
    let pending = tokio::spawn(async move { h.open_connection(ConnectionSettings::default(), Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    raw.send(m.connection_id.0, accept()).await;
    let conn = within("open", pending).await.unwrap().expect("accepted");
    assert_eq!(conn.id, m.connection_id);
    conn
}

async fn assert_local_protocol_error(s: &Session, rule: &str) {
    match within("closed", s.handle.closed()).await {
        CloseReason::LocalProtocolError(d) => assert!(d.contains(rule), "{d}"),
        other => panic!("expected LocalProtocolError, got {other:?}"),
    }
}

// ------------------------------------------------------- session.message

#[tokio::test]
async fn session_message_connection_id_ping_on_connection_3_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(3, Payload::Ping { nonce: 1 }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("session.message.connection-id"), "{d}");
    assert_local_protocol_error(&s, "session.message.connection-id").await;
}

#[tokio::test]
async fn session_message_connection_id_pong_and_protocol_error_on_open_virtual_connection_are_violations() {
    for payload in [Payload::Pong { nonce: 5 }, Payload::ProtocolError { description: "off root".into() }] {
        let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
        raw.send(1, payload.clone()).await;
        let d = raw.expect_protocol_error().await;
        assert!(d.contains("session.message.connection-id"), "{payload:?}: {d}");
        assert_local_protocol_error(&s, "session.message.connection-id").await;
    }
}

// ------------------------------------------------------ session.protocol-error

#[tokio::test]
async fn session_protocol_error_violation_tears_down_and_fails_pending_calls() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let echo = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    let (tx, mut rx) = channel::<i32>();
    let caller = client.root.caller.clone();
    let generate =
        tokio::spawn(async move { caller.call::<_, ()>(mid("generate"), &3u32, vec![tx.into_arg().unwrap()]).await });
    let mut requests = 0;
    while requests < 2 {
        if matches!(raw.recv().await.expect("link open").payload, Payload::Request { .. }) {
            requests += 1;
        }
    }
    // Violation: CloseConnection for the root.
    raw.send(0, close()).await;
    let d = raw.expect_protocol_error().await; // also checks the link closes
    assert!(d.contains("connection.root"), "{d}");
    for call in [within("echo", echo).await.unwrap().map(|_| ()), within("generate", generate).await.unwrap()] {
        match call {
            Err(CallError::ProtocolError { fault: Fault::Peer, description: e }) => {
                assert!(e.contains("connection.root"), "{e}")
            }
            other => panic!("pending call must fail with ProtocolError, got {other:?}"),
        }
    }
    match within("channel", rx.recv()).await {
        Err(ChannelError::ProtocolError { fault: Fault::Peer, description: e }) => {
            assert!(e.contains("connection.root"), "{e}")
        }
        other => panic!("live channel must report the protocol error, got {other:?}"),
    }
    assert_local_protocol_error(&client, "connection.root").await;
}

#[tokio::test]
async fn session_protocol_error_from_peer_ends_session_with_peer_text() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let echo = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let text = "raw peer says: you broke rule X";
    raw.send(0, Payload::ProtocolError { description: text.into() }).await;
    assert_eq!(within("closed", client.handle.closed()).await, CloseReason::PeerProtocolError(text.into()));
    assert_eq!(
        within("echo", echo).await.unwrap(),
        Err(CallError::ProtocolError { fault: Fault::Local, description: text.into() })
    );
    // The link is closed: the raw side reaches end of stream.
    while let Some(m) = raw.recv().await {
        assert!(!matches!(m.payload, Payload::Request { .. }), "nothing new after the teardown: {m:?}");
    }
}

// ----------------------------------------------------------- session.keepalive

#[tokio::test]
async fn session_keepalive_pong_with_same_nonce_while_a_connection_is_congested() {
    let (_s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    // generate(1_000_000) into a channel with credit 4 that the raw peer
    // never grants more to: the connection's sender is stuck at zero credit.
    raw.send(
        1,
        Payload::Request {
            id: RequestId(1),
            method_id: mid("generate"),
            args: enc(&1_000_000u32),
            channels: vec![ChannelDecl {
                id: ChannelId(1),
                direction: ChannelDirection::HandlerToCaller,
                initial_credit: 4,
            }],
            metadata: Metadata::new(),
        },
    )
    .await;
    let mut items = 0;
    while items < 4 {
        if matches!(raw.recv().await.expect("open").payload, Payload::ChannelItem { .. }) {
            items += 1;
        }
    }
    for nonce in [0xFEED_u64, u64::MAX, 0] {
        let before = barrier(&mut raw, nonce).await;
        assert!(
            !before.iter().any(|m| matches!(m.payload, Payload::ChannelItem { .. })),
            "no item beyond the credit: {before:?}"
        );
    }
    // Still congested, not dead: a grant lets exactly that many items out.
    raw.send(1, Payload::GrantCredit { id: ChannelId(1), additional: 2 }).await;
    let mut more = 0;
    while more < 2 {
        if matches!(raw.recv().await.expect("open").payload, Payload::ChannelItem { .. }) {
            more += 1;
        }
    }
    let before = barrier(&mut raw, 9).await;
    assert!(!before.iter().any(|m| matches!(m.payload, Payload::ChannelItem { .. })), "{before:?}");
}

#[tokio::test(start_paused = true)]
async fn session_keepalive_missing_pong_tears_down_with_keepalive_timeout() {
    let interval = Duration::from_secs(1);
    let timeout = Duration::from_secs(3);
    let (client, mut raw) =
        raw_acceptor(SessionBuilder::new().keepalive(interval, timeout), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let echo = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    let start = tokio::time::Instant::now();
    // The runtime pings; the raw peer reads but never answers.
    let mut pings = 0;
    let mut request = false;
    while let Some(m) = raw.recv().await {
        match m.payload {
            Payload::Ping { .. } => pings += 1,
            Payload::Request { .. } => request = true,
            _ => {}
        }
    }
    assert!(request && pings >= 1, "request {request}, pings {pings}");
    assert_eq!(within("closed", client.handle.closed()).await, CloseReason::KeepaliveTimeout);
    let waited = start.elapsed();
    assert!(waited >= timeout && waited <= timeout + interval, "torn down after {waited:?}");
    assert_eq!(within("echo", echo).await.unwrap(), Err(CallError::ConnectionClosed));
}

#[tokio::test(start_paused = true)]
async fn session_keepalive_answered_pings_keep_the_session_alive() {
    let (client, mut raw) = raw_acceptor(
        SessionBuilder::new().keepalive(Duration::from_secs(1), Duration::from_secs(3)),
        ConnectionSettings::default(),
    )
    .await;
    let start = tokio::time::Instant::now();
    let mut nonces = Vec::new();
    while nonces.len() < 10 {
        match raw.recv().await.expect("session must stay up").payload {
            Payload::Ping { nonce } => {
                raw.send(0, Payload::Pong { nonce }).await;
                nonces.push(nonce);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(start.elapsed() >= Duration::from_secs(9), "{:?}", start.elapsed());
    let mut sorted = nonces.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), nonces.len(), "fresh nonce per ping: {nonces:?}");
    assert_eq!(client.handle.close_reason(), None);
    let caller = client.root.caller.clone();
    let echo = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let Payload::Request { id, .. } = m.payload else { unreachable!() };
    raw.send(0, ok_response(id, &"y".to_string())).await;
    assert_eq!(within("echo", echo).await.unwrap(), Ok("y".to_string()));
}

// ----------------------------------------------------------- session.symmetry

async fn check_symmetry(server: Session, client: Session) {
    let (hello_server, hello_client) = ("from server".to_string(), "from client".to_string());
    let from_server = server.root.caller.call::<_, String>(mid("echo"), &hello_server, vec![]);
    let from_client = client.root.caller.call::<_, String>(mid("echo"), &hello_client, vec![]);
    let (a, b) = within("calls", async { tokio::join!(from_server, from_client) }).await;
    assert_eq!(a.unwrap(), "from server");
    assert_eq!(b.unwrap(), "from client");
    // The acceptor side opens a virtual connection to the initiator too.
    let conn = within("open", server.handle.open_connection(ConnectionSettings::default(), Metadata::new()))
        .await
        .expect("server opens");
    assert_eq!(conn.id.parity(), server.negotiated.local_parity);
    let r: i64 = within("divide", conn.caller.call(mid("divide"), &(9i64, 3i64), vec![])).await.unwrap();
    assert_eq!(r, 3);
}

#[tokio::test]
async fn session_symmetry_server_calls_client_on_root_memory() {
    let (server, client) = memory_sessions(server_builder(), server_builder()).await;
    check_symmetry(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_symmetry_server_calls_client_on_root_tcp() {
    let (server, client) = tcp_sessions(
        server_builder(),
        SessionBuilder::new().handler(testbed()).acceptor(|_: &ConnectionRequest| AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(Arc::new(testbed())),
        }),
    )
    .await;
    check_symmetry(server, client).await;
}

#[tokio::test]
async fn session_symmetry_client_without_handler_answers_unknown_method() {
    let (server, _client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let r = within("call", server.root.caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![])).await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{:?}", r);
}

// -------------------------------------------------- session.connection-settings

#[tokio::test]
async fn session_connection_settings_advertised_for_root_and_virtual_connections() {
    let client_root = ConnectionSettings { max_concurrent_requests: 9, max_initial_credit: 99 };
    let raw_root = ConnectionSettings { max_concurrent_requests: 8, max_initial_credit: 88 };
    let (client, mut raw) =
        raw_acceptor(SessionBuilder::new().root_settings(client_root.clone()), raw_root.clone()).await;
    assert_eq!(client.negotiated.peer_root, raw_root);
    assert_eq!(raw.negotiated.peer_root, client_root);

    // Virtual: the opener's settings travel in OpenConnection, the
    // acceptor's in AcceptConnection, and the latter bind the opener.
    let virt = ConnectionSettings { max_concurrent_requests: 3, max_initial_credit: 7 };
    let h = client.handle.clone();
    let v = virt.clone();
    let pending = tokio::spawn(async move { h.open_connection(v, Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    let id = m.connection_id;
    let Payload::OpenConnection { settings, .. } = m.payload else { unreachable!() };
    assert_eq!(settings, virt);
    let raw_virt = ConnectionSettings { max_concurrent_requests: 1, max_initial_credit: 16 };
    raw.send(id.0, Payload::AcceptConnection { settings: raw_virt, metadata: Metadata::new() }).await;
    let conn = within("open", pending).await.unwrap().expect("accepted");

    // The peer allows one request at a time: the second call waits.
    let calls: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|s| {
            let c = conn.caller.clone();
            tokio::spawn(async move { c.call::<_, String>(mid("echo"), &s.to_string(), vec![]).await })
        })
        .collect();
    let first = raw.recv_until(|m| m.connection_id == id).await;
    let Payload::Request { id: first_id, args, .. } = first.payload else { panic!("{first:?}") };
    for n in 0..3 {
        let before = barrier(&mut raw, 100 + n).await;
        assert!(!before.iter().any(|m| m.connection_id == id), "second request sent over the limit: {before:?}");
    }
    let echoed: String = wire::decode("args", args.bytes()).unwrap();
    raw.send(id.0, ok_response(first_id, &echoed)).await;
    let second = raw.recv_until(|m| m.connection_id == id).await;
    let Payload::Request { id: second_id, args, .. } = second.payload else { panic!("{second:?}") };
    let echoed2: String = wire::decode("args", args.bytes()).unwrap();
    raw.send(id.0, ok_response(second_id, &echoed2)).await;
    let mut got = Vec::new();
    for c in calls {
        got.push(within("call", c).await.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
}

#[tokio::test]
async fn session_connection_settings_acceptor_sees_opener_settings_and_answers_its_own() {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let mine = ConnectionSettings { max_concurrent_requests: 2, max_initial_credit: 5 };
    let mine2 = mine.clone();
    let server = SessionBuilder::new().acceptor(move |req: &ConnectionRequest| {
        *seen2.lock().unwrap() = Some(req.peer_settings.clone());
        AcceptDecision::Accept { settings: mine2.clone(), metadata: Metadata::new(), handler: None }
    });
    let (_s, mut raw) = raw_initiator(server, Parity::Odd).await;
    let theirs = ConnectionSettings { max_concurrent_requests: 11, max_initial_credit: 12 };
    raw.send(1, Payload::OpenConnection { parity: Parity::Odd, settings: theirs.clone(), metadata: Metadata::new() })
        .await;
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert_eq!(m.payload, Payload::AcceptConnection { settings: mine, metadata: Metadata::new() });
    assert_eq!(seen.lock().unwrap().clone(), Some(theirs));
}

// ------------------------------------------------------------- connection.root

#[tokio::test]
async fn connection_root_exists_from_the_handshake_on() {
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    // The first message after the handshake may be a call on connection 0.
    raw.send(0, request(1, "echo", &"first".to_string())).await;
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Response { .. })).await;
    assert_eq!(
        m,
        Message { connection_id: ConnectionId::ROOT, payload: ok_response(RequestId(1), &"first".to_string()) }
    );
}

#[tokio::test]
async fn connection_root_close_from_peer_is_protocol_error_initiator_side() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    raw.send(0, close()).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.root"), "{d}");
    assert_local_protocol_error(&client, "connection.root").await;
}

#[tokio::test]
async fn connection_root_open_connection_with_id_0_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, open(Parity::Odd)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.open"), "{d}");
    assert_local_protocol_error(&s, "connection.open").await;
}

#[tokio::test]
async fn connection_root_close_connection_api_on_id_0_is_cannot_close_root() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let r = within("close", client.handle.close_connection(ConnectionId::ROOT, Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::CannotCloseRoot)), "{r:?}");
    let echoed: String =
        within("echo", client.root.caller.call(mid("echo"), &"still".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "still");
}

// ------------------------------------------------------------- connection.open

#[tokio::test]
async fn connection_open_wrong_parity_id_is_protocol_error() {
    // The raw initiator has session parity Odd; 2 is the runtime's parity.
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(2, open(Parity::Odd)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.open"), "{d}");
    assert_local_protocol_error(&s, "connection.open").await;
}

#[tokio::test]
async fn connection_open_id_in_use_is_protocol_error() {
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    raw.send(1, open(Parity::Odd)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.open"), "{d}");
    assert_local_protocol_error(&s, "connection.open").await;
}

#[tokio::test]
async fn connection_open_reusing_a_released_id_is_protocol_error() {
    let (s, mut raw) = raw_with_connection(server_builder(), 5, Parity::Odd).await;
    raw.send(5, close()).await;
    barrier(&mut raw, 1).await;
    raw.send(5, open(Parity::Odd)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.open"), "{d}");
    assert_local_protocol_error(&s, "connection.open").await;
}

#[tokio::test]
async fn connection_open_message_on_unknown_id_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(7, request(1, "echo", &"x".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("unknown connection 7"), "{d}");
    assert!(matches!(within("closed", s.handle.closed()).await, CloseReason::LocalProtocolError(_)));
}

#[tokio::test]
async fn connection_open_runtime_sends_nothing_on_a_pending_id_before_accept() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let h = client.handle.clone();
    let pending = tokio::spawn(async move { h.open_connection(ConnectionSettings::default(), Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    let id = m.connection_id;
    assert_eq!(id.parity(), client.negotiated.local_parity, "opener uses an id of its session parity");
    for n in 0..3 {
        let before = barrier(&mut raw, n).await;
        assert!(!before.iter().any(|m| m.connection_id == id), "sent on a pending id: {before:?}");
    }
    assert!(!pending.is_finished(), "open resolves only on accept or reject");
    raw.send(id.0, accept()).await;
    let conn = within("open", pending).await.unwrap().expect("accepted");
    let c = conn.caller.clone();
    let call = tokio::spawn(async move { c.call::<_, String>(mid("echo"), &"v".to_string(), vec![]).await });
    let m = raw.recv_until(|m| m.connection_id == id).await;
    let Payload::Request { id: rid, .. } = m.payload else { panic!("first message after accept: {m:?}") };
    raw.send(id.0, ok_response(rid, &"v".to_string())).await;
    assert_eq!(within("call", call).await.unwrap(), Ok("v".to_string()));
}

#[tokio::test]
async fn connection_open_abandoned_open_is_closed_only_after_accept() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let h = client.handle.clone();
    let pending = tokio::spawn(async move { h.open_connection(ConnectionSettings::default(), Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    let id = m.connection_id;
    pending.abort();
    let _ = pending.await;
    let before = barrier(&mut raw, 1).await;
    assert!(!before.iter().any(|m| m.connection_id == id), "nothing on a pending id, not even a close: {before:?}");
    raw.send(id.0, accept()).await;
    // Nobody holds the connection: the liveness rule closes it.
    let m = raw.recv_until(|m| m.connection_id == id).await;
    assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
}

#[tokio::test]
async fn connection_open_peer_message_on_our_pending_id_is_protocol_error() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let h = client.handle.clone();
    let pending = tokio::spawn(async move { h.open_connection(ConnectionSettings::default(), Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    raw.send(m.connection_id.0, request(2, "echo", &"early".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("before AcceptConnection"), "{d}");
    let r = within("open", pending).await.unwrap();
    assert!(matches!(r, Err(SessionError::Closed(CloseReason::LocalProtocolError(_)))), "{r:?}");
}

// --------------------------------------------------- connection.open.rejection

#[tokio::test]
async fn connection_open_rejection_without_acceptor_is_rejected() {
    let (_server, client) = memory_sessions(SessionBuilder::new(), SessionBuilder::new()).await;
    let r = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    match r {
        Err(SessionError::Rejected { metadata }) => {
            assert_eq!(metadata.get_str("reason"), Some("no acceptor configured"))
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Never a crash: the session is still up.
    assert_eq!(client.handle.close_reason(), None);
    let r = within("open again", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::Rejected { .. })), "{r:?}");
}

#[tokio::test]
async fn connection_open_rejection_without_acceptor_answers_reject_on_the_wire() {
    let (s, mut raw) = raw_initiator(SessionBuilder::new(), Parity::Odd).await;
    raw.send(1, open(Parity::Odd)).await;
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    match m.payload {
        Payload::RejectConnection { metadata } => assert!(metadata.get_str("reason").is_some(), "{metadata:?}"),
        other => panic!("expected RejectConnection, got {other:?}"),
    }
    barrier(&mut raw, 1).await;
    assert_eq!(s.handle.close_reason(), None);
}

#[tokio::test]
async fn connection_open_rejection_when_the_peer_limit_is_reached() {
    let (_server, client) = memory_sessions(server_builder().max_connections(2), SessionBuilder::new()).await;
    let a =
        within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await.unwrap();
    let _b =
        within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await.unwrap();
    let r = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    match r {
        Err(SessionError::Rejected { metadata }) => {
            assert_eq!(metadata.get_str("reason"), Some("too many connections"))
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Room again once one is closed.
    within("close", client.handle.close_connection(a.id, Metadata::new())).await.unwrap();
    let c = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    assert!(c.is_ok(), "{c:?}");
}

#[tokio::test]
async fn connection_open_rejection_when_the_local_limit_is_reached() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new().max_connections(1)).await;
    let _a =
        within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await.unwrap();
    let r = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::TooManyConnections { limit: 1 })), "{r:?}");
}

// ----------------------------------------------------------- connection.parity

#[tokio::test]
async fn connection_parity_opener_picks_the_connection_parity() {
    // Session parity Odd, but the connection's request ids are Even.
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Even).await;
    raw.send(1, request(2, "echo", &"even".to_string())).await;
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert_eq!(m.payload, ok_response(RequestId(2), &"even".to_string()));
    // An odd request id is now the acceptor's parity on this connection.
    raw.send(1, request(3, "echo", &"odd".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.request.id"), "{d}");
    assert_local_protocol_error(&s, "rpc.request.id").await;
}

#[tokio::test]
async fn connection_parity_runtime_opener_announces_and_uses_its_parity() {
    let (client, mut raw) =
        raw_acceptor(SessionBuilder::new().parity(Parity::Even), ConnectionSettings::default()).await;
    let h = client.handle.clone();
    let pending = tokio::spawn(async move { h.open_connection(ConnectionSettings::default(), Metadata::new()).await });
    let m = raw.recv_until(|m| matches!(m.payload, Payload::OpenConnection { .. })).await;
    let Payload::OpenConnection { parity, .. } = m.payload else { unreachable!() };
    assert_eq!(parity, Parity::Even);
    raw.send(m.connection_id.0, accept()).await;
    let conn = within("open", pending).await.unwrap().unwrap();
    let c = conn.caller.clone();
    let _call = tokio::spawn(async move { c.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    let r = raw.recv_until(|r| r.connection_id == conn.id).await;
    let Payload::Request { id, .. } = r.payload else { panic!("{r:?}") };
    assert_eq!(id.parity(), parity, "request id {id} follows the connection parity");
}

// ------------------------------------------------------------ connection.close

#[tokio::test]
async fn connection_close_received_fails_pending_calls_and_ends_channels() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let conn = runtime_opens(&client, &mut raw).await;
    let id = conn.id;
    let c = conn.caller.clone();
    let echo = tokio::spawn(async move { c.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    let (tx, mut rx) = channel::<i32>();
    let c = conn.caller.clone();
    let generate =
        tokio::spawn(async move { c.call::<_, ()>(mid("generate"), &3u32, vec![tx.into_arg().unwrap()]).await });
    let mut requests = 0;
    while requests < 2 {
        if matches!(raw.recv_until(|m| m.connection_id == id).await.payload, Payload::Request { .. }) {
            requests += 1;
        }
    }
    raw.send(id.0, close()).await;
    assert_eq!(within("echo", echo).await.unwrap(), Err(CallError::ConnectionClosed));
    assert_eq!(within("generate", generate).await.unwrap(), Err(CallError::ConnectionClosed));
    let r = within("channel", rx.recv()).await;
    assert!(matches!(r, Err(ChannelError::ConnectionClosed | ChannelError::Reset)), "{r:?}");
    // The runtime released it: a close now finds nothing.
    let r = within("close", client.handle.close_connection(id, Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::UnknownConnection(_))), "{r:?}");
    assert_eq!(client.handle.close_reason(), None, "only the connection ended");
}

#[tokio::test]
async fn connection_close_later_message_on_that_id_is_protocol_error() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let conn = runtime_opens(&client, &mut raw).await;
    raw.send(conn.id.0, close()).await;
    barrier(&mut raw, 1).await;
    raw.send(conn.id.0, request(2, "echo", &"late".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.close"), "{d}");
    assert_local_protocol_error(&client, "connection.close").await;
}

#[tokio::test]
async fn connection_close_received_stops_inflight_handlers() {
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    struct Guard(tokio::sync::mpsc::UnboundedSender<&'static str>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send("stopped");
        }
    }
    let handler = move |call: Call| {
        let events = events_tx.clone();
        async move {
            let _guard = Guard(events.clone());
            let _ = events.send("started");
            std::future::pending::<()>().await;
            drop(call);
        }
    };
    let server = SessionBuilder::new().acceptor(move |_: &ConnectionRequest| AcceptDecision::Accept {
        settings: ConnectionSettings::default(),
        metadata: Metadata::new(),
        handler: Some(Arc::new(handler.clone())),
    });
    let (s, mut raw) = raw_with_connection(server, 1, Parity::Odd).await;
    raw.send(1, request(1, "anything", &())).await;
    assert_eq!(within("start", events.recv()).await, Some("started"));
    raw.send(1, close()).await;
    assert_eq!(within("stop", events.recv()).await, Some("stopped"), "handler must be cancelled");
    let before = barrier(&mut raw, 1).await;
    assert!(!before.iter().any(|m| is_on(m, 1)), "nothing more on a connection the peer closed: {before:?}");
    assert_eq!(s.handle.close_reason(), None);
}

#[tokio::test]
async fn connection_close_local_sends_close_then_nothing_more_on_that_id() {
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    raw.send(1, request(1, "wait_forever", &())).await;
    raw.send(1, request(3, "echo", &"quick".to_string())).await;
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert_eq!(m.payload, ok_response(RequestId(3), &"quick".to_string()));
    within("close", s.handle.close_connection(ConnectionId(1), Metadata::new())).await.unwrap();
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
    for n in 0..3 {
        let before = barrier(&mut raw, n).await;
        assert!(!before.iter().any(|m| is_on(m, 1)), "sent after its own CloseConnection: {before:?}");
    }
}

// --------------------------------------------------- connection.close.crossing

#[tokio::test]
async fn connection_close_crossing_messages_after_our_close_are_discarded() {
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    within("close", s.handle.close_connection(ConnectionId(1), Metadata::new())).await.unwrap();
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
    // The raw peer "had not seen the close yet".
    raw.send(1, request(1, "echo", &"crossing".to_string())).await;
    raw.send(1, Payload::CancelRequest { id: RequestId(1) }).await;
    let before = barrier(&mut raw, 1).await;
    assert!(before.is_empty(), "crossing messages are discarded silently: {before:?}");
    assert_eq!(s.handle.close_reason(), None);
}

#[tokio::test]
async fn connection_close_crossing_both_sides_close_at_once() {
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    within("close", s.handle.close_connection(ConnectionId(1), Metadata::new())).await.unwrap();
    raw.send(1, close()).await;
    let m = raw.recv_until(|m| is_on(m, 1)).await;
    assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
    let before = barrier(&mut raw, 1).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(s.handle.close_reason(), None);
    // And between two runtimes, whichever way the race goes.
    let (server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let conn =
        within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await.unwrap();
    let (a, b) = within("closes", async {
        tokio::join!(
            client.handle.close_connection(conn.id, Metadata::new()),
            server.handle.close_connection(conn.id, Metadata::new())
        )
    })
    .await;
    for r in [a, b] {
        assert!(matches!(r, Ok(()) | Err(SessionError::UnknownConnection(_))), "{r:?}");
    }
    let echoed: String = within("echo", client.root.caller.call(mid("echo"), &"up".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "up");
    assert_eq!(server.handle.close_reason(), None);
}

#[tokio::test]
async fn connection_close_crossing_message_after_the_peers_close_is_protocol_error() {
    let (s, mut raw) = raw_with_connection(server_builder(), 1, Parity::Odd).await;
    within("close", s.handle.close_connection(ConnectionId(1), Metadata::new())).await.unwrap();
    raw.send(1, close()).await; // crossing: fine
    barrier(&mut raw, 1).await;
    // The runtime has now received the peer's CloseConnection: anything
    // more from the peer on id 1 violates connection.close.
    raw.send(1, request(1, "echo", &"after my own close".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.close"), "{d}");
}

#[tokio::test]
async fn connection_close_crossing_late_message_for_an_old_id_is_tolerated_with_bounded_state() {
    // More closed connections than any bounded tombstone window keeps.
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    for i in 0..1500u64 {
        let id = 2 * i + 1;
        raw.send(id, open(Parity::Odd)).await;
        let m = raw.recv_until(|m| is_on(m, id)).await;
        assert!(matches!(m.payload, Payload::AcceptConnection { .. }), "{m:?}");
        within("close", s.handle.close_connection(ConnectionId(id), Metadata::new())).await.unwrap();
        let m = raw.recv_until(|m| is_on(m, id)).await;
        assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
    }
    // A late message for the first id is recognised as late (ids only increase).
    raw.send(1, request(1, "echo", &"very late".to_string())).await;
    let before = barrier(&mut raw, 1).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(s.handle.close_reason(), None);
    // An id above every id seen is unknown: a violation.
    raw.send(5001, request(1, "echo", &"unknown".to_string())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("unknown connection"), "{d}");
}

// --------------------------------------------------------- rpc.caller.liveness

#[tokio::test]
async fn rpc_caller_liveness_dropping_last_virtual_caller_sends_close_connection() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let conn = runtime_opens(&client, &mut raw).await;
    let id = conn.id;
    let clone = conn.caller.clone();
    drop(conn);
    let before = barrier(&mut raw, 1).await;
    assert!(!before.iter().any(|m| m.connection_id == id), "a caller is still alive: {before:?}");
    drop(clone);
    let m = raw.recv_until(|m| m.connection_id == id).await;
    assert!(matches!(m.payload, Payload::CloseConnection { .. }), "{m:?}");
    let r = within("close", client.handle.close_connection(id, Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::UnknownConnection(_))), "{r:?}");
    assert_eq!(client.handle.close_reason(), None);
}

#[tokio::test]
async fn rpc_caller_liveness_dropping_root_caller_without_virtual_connections_ends_session() {
    let (server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let Session { handle, root, .. } = client;
    let second = root.caller.clone();
    drop(root);
    let echoed: String = within("echo", second.call(mid("echo"), &"alive".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "alive");
    assert_eq!(handle.close_reason(), None);
    drop(second);
    assert_eq!(within("closed", handle.closed()).await, CloseReason::RootReleased);
    assert_eq!(within("server closed", server.handle.closed()).await, CloseReason::PeerClosed);
}

#[tokio::test]
async fn rpc_caller_liveness_root_released_session_lives_until_last_virtual_connection() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let Session { handle, root, .. } = client;
    let conn = within("open", handle.open_connection(ConnectionSettings::default(), Metadata::new())).await.unwrap();
    drop(root);
    let echoed: String = within("echo", conn.caller.call(mid("echo"), &"virtual".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "virtual");
    assert_eq!(handle.close_reason(), None);
    drop(conn);
    assert_eq!(within("closed", handle.closed()).await, CloseReason::RootReleased);
}

#[tokio::test]
async fn rpc_caller_liveness_root_release_sends_no_close_connection_for_root() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let Session { handle, root, .. } = client;
    drop(root);
    while let Some(m) = raw.recv().await {
        assert!(
            !(m.connection_id.is_root() && matches!(m.payload, Payload::CloseConnection { .. })),
            "CloseConnection for id 0 is a protocol error"
        );
    }
    assert_eq!(within("closed", handle.closed()).await, CloseReason::RootReleased);
}

// ----------------------------------------------------------------- shutdown

#[tokio::test]
async fn session_shutdown_from_sync_context_ends_session_with_shutdown() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let echo = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await });
    raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let h = client.handle.clone();
    // A plain thread: no runtime, no await.
    std::thread::spawn(move || h.shutdown()).join().expect("thread").expect("first shutdown");
    assert_eq!(within("closed", client.handle.closed()).await, CloseReason::Shutdown);
    assert_eq!(within("echo", echo).await.unwrap(), Err(CallError::SessionShutdown));
    let again = client.handle.shutdown();
    assert!(matches!(again, Err(SessionError::Closed(CloseReason::Shutdown))), "{again:?}");
    while raw.recv().await.is_some() {}
    let r = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
    assert!(matches!(r, Err(SessionError::Closed(CloseReason::Shutdown))), "{r:?}");
}

// ------------------------------------------ rpc.caller.liveness: graceful end

/// A runtime initiator facing a raw acceptor over a link that holds ONE
/// message, with an outbound queue of ONE place: while the raw peer does not
/// read, a few messages fill every buffer and the runtime's writer is stuck,
/// so whatever becomes due next has to wait for room.
async fn raw_acceptor_tight() -> (Session, RawPeer) {
    let (mut a, b) = vox_core::link::memory_pair(vox_core::link::LinkConfig { send_queue: 1, ..Default::default() });
    let raw = async move {
        vox_core::transport::accept(&mut a, vox_core::transport::AcceptModes::default()).await.expect("prologue");
        let (tx, mut rx) = vox_core::conduit::bare(a);
        let negotiated = vox_core::test_util::handshake::accept(&tx, &mut rx, ConnectionSettings::default())
            .await
            .expect("handshake");
        RawPeer { tx, rx, negotiated }
    };
    let mut builder = SessionBuilder::new();
    builder.config_mut().outbound_capacity = 1;
    let (c, r) = tokio::join!(builder.establish_initiator(b), raw);
    (c.expect("session"), r)
}

/// Reads everything until the link ends.
async fn read_to_end(raw: &mut RawPeer) -> Vec<Message> {
    let mut all = Vec::new();
    while let Some(m) = raw.recv().await {
        all.push(m);
    }
    all
}

#[tokio::test]
async fn rpc_caller_liveness_root_release_still_sends_channel_close_queued_before_it() {
    let (client, mut raw) = raw_acceptor_tight().await;
    let Session { handle, root, .. } = client;
    let (mut tx, rx) = channel::<i32>();
    let caller = root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let req = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let Payload::Request { id, channels, .. } = req.payload else { unreachable!() };
    let ch = channels[0].id;
    raw.send(0, ok_response(id, &0i64)).await;
    assert_eq!(within("sum", call).await.unwrap().unwrap(), 0);
    // The raw peer stops reading: item 1 fills the link, the writer holds
    // item 2, item 3 fills the outbound queue (its place was only free once
    // the writer took item 2).
    for i in 0..3 {
        within("send", tx.send(&i)).await.unwrap();
    }
    within("close", tx.close()).await.unwrap();
    // Releasing the root ends the session while the close is still owed.
    drop(root);
    let all = read_to_end(&mut raw).await;
    let closes: Vec<_> =
        all.iter().filter(|m| matches!(m.payload, Payload::CloseChannel { id, .. } if id == ch)).collect();
    assert_eq!(closes.len(), 1, "the accepted close was lost at root release: {all:?}");
    let last_item = all.iter().rposition(|m| matches!(m.payload, Payload::ChannelItem { .. })).unwrap();
    let close_at = all.iter().position(|m| matches!(m.payload, Payload::CloseChannel { .. })).unwrap();
    assert!(close_at > last_item, "close before an item: {all:?}");
    assert_eq!(within("closed", handle.closed()).await, CloseReason::RootReleased);
}

#[tokio::test]
async fn rpc_cancel_request_of_dropped_call_survives_root_release() {
    let (client, mut raw) = raw_acceptor_tight().await;
    let Session { handle, root, .. } = client;
    let (mut tx, rx) = channel::<i32>();
    let caller = root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let req = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    let Payload::Request { id, .. } = req.payload else { unreachable!() };
    // Fill link, writer and outbound queue as above, so the cancel must wait.
    for i in 0..3 {
        within("send", tx.send(&i)).await.unwrap();
    }
    call.abort();
    assert!(within("abort", call).await.unwrap_err().is_cancelled());
    drop(tx);
    drop(root);
    let all = read_to_end(&mut raw).await;
    assert!(
        all.iter().any(|m| matches!(m.payload, Payload::CancelRequest { id: c } if c == id)),
        "the cancel of the dropped call was lost at root release: {all:?}"
    );
    assert_eq!(within("closed", handle.closed()).await, CloseReason::RootReleased);
}

#[tokio::test]
async fn rpc_cancel_request_precedes_requests_made_after_the_drop() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (a, b) = ("first".to_string(), "second".to_string());
    let mut first = Box::pin(caller.call::<_, String>(mid("echo"), &a, vec![]));
    let req = tokio::select! {
        biased;
        r = &mut first => panic!("call answered without a response: {r:?}"),
        m = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })) => m,
    };
    let Payload::Request { id: first_id, .. } = req.payload else { unreachable!() };
    drop(first);
    // The next call is made right after the drop, on this task, before the
    // connection's flush task had a chance to run.
    let mut second = Box::pin(caller.call::<_, String>(mid("echo"), &b, vec![]));
    let next = tokio::select! {
        biased;
        r = &mut second => panic!("call answered without a response: {r:?}"),
        m = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. } | Payload::CancelRequest { .. })) => m,
    };
    assert!(
        matches!(next.payload, Payload::CancelRequest { id } if id == first_id),
        "a request made after the drop overtook its cancel: {next:?}"
    );
}
