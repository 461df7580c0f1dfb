//! Transport prologue and session handshake rules (PROTOCOL.md sections 3
//! and 5): `transport.prologue*`, `session.handshake`, `session.parity`.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use vox_core::conduit;
use vox_core::link::{self, Link, LinkConfig};
use vox_core::session::{Session, SessionBuilder, SessionError};
use vox_core::transport::{self, PrologueError};
use vox_core::wire::{
    self, ConduitMode, ConduitMsg, ConnectionSettings, HandshakeMsg, Hello, HelloYourself, Metadata, PROTOCOL_VERSION,
    Parity, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

/// The runtime's setup futures are not `Send` (see the report on
/// `transport::send`), so tasks that run them are spawned locally.
async fn local<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Hang detector around anything that waits on the runtime under test.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("hang: {what}"))
}

fn encode_transport(msg: &TransportMsg) -> bytes::Bytes {
    bytes::Bytes::from(wire::encode("TransportMsg", msg).unwrap())
}

/// Reads raw link messages until end of stream or an error; returns what came.
async fn drain_link(link: &mut Link) -> Vec<bytes::Bytes> {
    let mut got = Vec::new();
    loop {
        match within("link end", link.rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) | Err(_) => return got,
        }
    }
}

/// A deterministic "random" byte string (xorshift), prefixed with a byte
/// that no prologue message starts with.
fn garbage(len: usize, seed: u64) -> bytes::Bytes {
    let mut x = seed;
    let mut out = vec![0xFFu8];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    bytes::Bytes::from(out)
}

fn unique_socket_path() -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!(
        "vox-handshake-{}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    ))
}

/// Both sides agree: the initiator keeps the parity it chose, the acceptor
/// takes the other one, and virtual connection ids follow each side's parity.
async fn assert_parities(server: &Session, client: &Session, chosen: Parity) {
    assert_eq!(client.negotiated.local_parity, chosen, "initiator keeps its parity");
    assert_eq!(server.negotiated.local_parity, chosen.opposite(), "acceptor takes the opposite parity");
    assert_ne!(server.negotiated.local_parity, client.negotiated.local_parity);
    assert_eq!(client.negotiated.protocol_version, PROTOCOL_VERSION);
    assert_eq!(server.negotiated.protocol_version, PROTOCOL_VERSION);
    // rule: session.parity — connection ids are allocated by session parity.
    let conn = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new()))
        .await
        .expect("open from the initiator");
    assert_eq!(conn.id.parity(), chosen, "initiator's connection id {} has its parity", conn.id);
    let echoed: String = within("echo", conn.caller.call(mid("echo"), &"ok".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "ok");
    let echoed: String =
        within("echo", client.root.caller.call(mid("echo"), &"root".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "root");
}

// ------------------------------------------------------------------ parity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_handshake_acceptor_takes_opposite_parity_tcp() {
    for chosen in [Parity::Odd, Parity::Even] {
        let (server, client) =
            within("tcp handshake", tcp_sessions(server_builder(), SessionBuilder::new().parity(chosen))).await;
        assert_parities(&server, &client, chosen).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_handshake_acceptor_takes_opposite_parity_unix() {
    for chosen in [Parity::Odd, Parity::Even] {
        let path = unique_socket_path();
        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix socket");
        let accept = async {
            let (stream, _) = listener.accept().await.expect("accept");
            server_builder().establish_acceptor(link::unix(stream, LinkConfig::default())).await
        };
        let connect = async {
            let link = link::connect_unix(&path, LinkConfig::default()).await.expect("connect");
            SessionBuilder::new().parity(chosen).establish_initiator(link).await
        };
        let (server, client) = within("unix handshake", async { tokio::join!(accept, connect) }).await;
        let _ = std::fs::remove_file(&path);
        assert_parities(&server.expect("server"), &client.expect("client"), chosen).await;
    }
}

#[tokio::test]
async fn session_handshake_root_settings_are_exchanged() {
    let server_settings = ConnectionSettings { max_concurrent_requests: 7, max_initial_credit: 33 };
    let client_settings = ConnectionSettings { max_concurrent_requests: 5, max_initial_credit: 11 };
    let (server, client) = within(
        "handshake",
        memory_sessions(
            server_builder().root_settings(server_settings.clone()),
            SessionBuilder::new().root_settings(client_settings.clone()),
        ),
    )
    .await;
    assert_eq!(client.negotiated.peer_root, server_settings);
    assert_eq!(client.negotiated.local_root, client_settings);
    assert_eq!(server.negotiated.peer_root, client_settings);
    assert_eq!(server.negotiated.local_root, server_settings);
}

// ----------------------------------------------------------------- version

#[tokio::test]
async fn session_handshake_version_mismatch_gets_sorry_with_reason() {
    let (a, b) = link::memory_pair(LinkConfig::default());
    let mut client = SessionBuilder::new();
    client.config_mut().protocol_version = 99;
    let (s, c) = within("handshake", async {
        tokio::join!(server_builder().establish_acceptor(a), client.establish_initiator(b))
    })
    .await;
    let server_err = s.expect_err("acceptor must refuse version 99").to_string();
    let client_err = c.expect_err("initiator must learn it was refused").to_string();
    for (side, e) in [("acceptor", &server_err), ("initiator", &client_err)] {
        assert!(e.contains("version 99"), "{side} error names the peer's version: {e}");
        assert!(e.contains(&format!("version {PROTOCOL_VERSION}")), "{side} error names our version: {e}");
    }
    assert!(client_err.contains("refused"), "{client_err}");
}

#[tokio::test]
async fn session_handshake_sorry_closes_the_link() {
    local(async move {
        // A raw initiator announces version 99; the acceptor answers Sorry and
        // closes the link: no session exists.
        let (a, mut b) = link::memory_pair(LinkConfig::default());
        let server = tokio::spawn(server_builder().establish_acceptor(a));
        within("prologue", transport::initiate(&mut b, ConduitMode::Bare)).await.expect("prologue");
        let (tx, mut rx) = conduit::bare(b);
        let hello = Hello {
            resume_key: None,
            protocol_version: 99,
            parity: Parity::Odd,
            root_settings: ConnectionSettings::default(),
            features: Vec::new(),
        };
        tx.send(&ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await.unwrap();
        match within("sorry", rx.recv()).await {
            Ok(Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { reason }))) => {
                assert!(reason.contains("99"), "{reason}")
            }
            other => panic!("expected Sorry, got {other:?}"),
        }
        assert!(matches!(within("close", rx.recv()).await, Ok(None) | Err(_)), "link must close after Sorry");
        let err = within("server", server).await.unwrap().expect_err("no session after Sorry");
        // The handshake's own error, not flattened into text.
        assert!(
            matches!(&err, SessionError::Handshake(h) if matches!(**h, vox_core::session::HandshakeError::RefusedPeer { .. })),
            "{err:?}"
        );
        assert_eq!(err.fault(), vox_core::driver::Fault::Peer, "the peer sent a version we refuse");
    })
    .await;
}

#[tokio::test]
async fn session_handshake_initiator_refuses_acceptor_of_other_version() {
    local(async move {
        // A raw acceptor answers HelloYourself with version 7: the initiator
        // says Sorry, fails with a readable error and closes the link.
        let (mut a, b) = link::memory_pair(LinkConfig::default());
        let client = tokio::spawn(SessionBuilder::new().establish_initiator(b));
        within("prologue", transport::accept(&mut a, transport::AcceptModes::default())).await.expect("prologue");
        let (tx, mut rx) = conduit::bare(a);
        assert!(matches!(within("hello", rx.recv()).await, Ok(Some(ConduitMsg::Handshake(HandshakeMsg::Hello(_))))));
        let answer = HelloYourself {
            protocol_version: 7,
            root_settings: ConnectionSettings::default(),
            features: Vec::new(),
            resume_key: None,
        };
        tx.send(&ConduitMsg::Handshake(HandshakeMsg::HelloYourself(answer))).await.unwrap();
        match within("sorry", rx.recv()).await {
            Ok(Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { reason }))) => {
                assert!(reason.contains("7"), "{reason}")
            }
            other => panic!("expected Sorry, got {other:?}"),
        }
        assert!(matches!(within("close", rx.recv()).await, Ok(None) | Err(_)), "link must close after Sorry");
        let err = within("client", client).await.unwrap().expect_err("no session after Sorry").to_string();
        assert!(err.contains("version 7"), "{err}");
    })
    .await;
}

// ---------------------------------------------------------------- prologue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_prologue_no_fallback_stable_mode_is_rejected_and_link_closed() {
    local(async move {
        let mut builder = server_builder();
        builder.config_mut().accept_stable = false;
        let listener = builder.listen("127.0.0.1:0").await.expect("listen");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { listener.accept_attempt().await });
        let mut link = link::connect_tcp(addr, LinkConfig::default()).await.expect("connect");
        let err =
            within("prologue", transport::initiate(&mut link, ConduitMode::Stable)).await.expect_err("stable rejected");
        match &err {
            PrologueError::Rejected { reason } => {
                assert!(reason.contains("stable"), "{reason}");
                assert!(reason.contains("not supported"), "{reason}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        // rule: transport.prologue.reject-close
        assert!(drain_link(&mut link).await.is_empty(), "nothing may follow the reject");
        let server_err = within("server", server).await.unwrap().expect_err("no session").to_string();
        assert!(server_err.contains("stable") && server_err.contains("not supported"), "{server_err}");
    })
    .await;
}

#[tokio::test]
async fn transport_prologue_unknown_version_is_rejected_then_closed() {
    local(async move {
        let (a, mut b) = link::memory_pair(LinkConfig::default());
        let server = tokio::spawn(server_builder().establish_acceptor(a));
        let hello = TransportMsg::Hello(TransportHello { magic: TRANSPORT_MAGIC, version: 9, mode: ConduitMode::Bare });
        b.tx.send(encode_transport(&hello)).await.unwrap();
        let got = drain_link(&mut b).await;
        assert_eq!(got.len(), 1, "exactly one answer, then close");
        match wire::decode::<TransportMsg>("TransportMsg", &got[0]).unwrap() {
            TransportMsg::Reject { reason } => {
                assert!(reason.contains("version 9"), "{reason}");
                assert!(reason.contains(&TRANSPORT_VERSION.to_string()), "{reason}");
            }
            other => panic!("expected Reject, got {other:?}"),
        }
        let err = within("server", server).await.unwrap().expect_err("no session").to_string();
        assert!(err.contains("version 9"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn transport_prologue_wrong_magic_closes_without_answer() {
    local(async move {
        let (a, mut b) = link::memory_pair(LinkConfig::default());
        let server = tokio::spawn(server_builder().establish_acceptor(a));
        let hello = TransportMsg::Hello(TransportHello {
            magic: *b"NOPE",
            version: TRANSPORT_VERSION,
            mode: ConduitMode::Bare,
        });
        b.tx.send(encode_transport(&hello)).await.unwrap();
        assert!(drain_link(&mut b).await.is_empty(), "a wrong magic gets no answer, only a close");
        let err = within("server", server).await.unwrap().expect_err("no session").to_string();
        assert!(err.contains("magic") && err.contains("not a vox peer"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn transport_prologue_garbage_to_acceptor_is_a_clear_error_on_both_sides() {
    local(async move {
        for (i, junk) in
            [garbage(64, 0x9E37_79B9_7F4A_7C15), garbage(3, 42), bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")]
                .into_iter()
                .enumerate()
        {
            let (a, mut b) = link::memory_pair(LinkConfig::default());
            let server = tokio::spawn(server_builder().establish_acceptor(a));
            b.tx.send(junk).await.unwrap();
            // The sending side sees the link end, not silence.
            assert!(drain_link(&mut b).await.is_empty(), "sample {i}: no answer to garbage");
            let err = within("server", server).await.unwrap().expect_err("no session").to_string();
            assert!(err.contains("not a vox transport prologue"), "sample {i}: {err}");
        }
    })
    .await;
}

#[tokio::test]
async fn transport_prologue_garbage_from_acceptor_is_a_clear_error_on_both_sides() {
    local(async move {
        let (mut a, b) = link::memory_pair(LinkConfig::default());
        let client = tokio::spawn(SessionBuilder::new().establish_initiator(b));
        let first = within("hello", a.rx.recv()).await.unwrap().expect("TransportHello");
        assert!(matches!(wire::decode::<TransportMsg>("TransportMsg", &first), Ok(TransportMsg::Hello(_))));
        a.tx.send(garbage(40, 7)).await.unwrap();
        let err = within("client", client).await.unwrap().expect_err("no session").to_string();
        assert!(err.contains("not a vox transport prologue"), "{err}");
        // The initiator dropped the link: the garbage sender sees it end.
        assert!(drain_link(&mut a).await.is_empty(), "initiator must close, not answer");
    })
    .await;
}

#[tokio::test]
async fn session_handshake_garbage_instead_of_hello_is_a_clear_error_on_both_sides() {
    local(async move {
        let (a, mut b) = link::memory_pair(LinkConfig::default());
        let server = tokio::spawn(server_builder().establish_acceptor(a));
        within("prologue", transport::initiate(&mut b, ConduitMode::Bare)).await.expect("prologue");
        b.tx.send(garbage(32, 99)).await.unwrap();
        let got = drain_link(&mut b).await;
        assert!(got.len() <= 1, "at most a Sorry before the close: {got:?}");
        let err = within("server", server).await.unwrap().expect_err("no session").to_string();
        assert!(err.contains("session handshake") && err.contains("undecodable"), "{err}");
    })
    .await;
}

// ----------------------------------------------------------------- timeout

#[tokio::test(start_paused = true)]
async fn session_handshake_timeout_drops_silent_initiator() {
    local(async move {
        let (a, _silent) = link::memory_pair(LinkConfig::default());
        let start = tokio::time::Instant::now();
        let server = tokio::spawn(server_builder().handshake_timeout(Duration::from_secs(2)).establish_acceptor(a));
        // The task ends by itself: a silent peer never holds it forever.
        let r = within("acceptor task", server).await.expect("task");
        match r {
            Err(SessionError::HandshakeTimeout(d)) => assert_eq!(d, Duration::from_secs(2)),
            other => panic!("expected HandshakeTimeout, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3), "{waited:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn session_handshake_timeout_drops_silent_acceptor() {
    local(async move {
        let (mut silent, b) = link::memory_pair(LinkConfig::default());
        let start = tokio::time::Instant::now();
        let client =
            tokio::spawn(SessionBuilder::new().handshake_timeout(Duration::from_secs(2)).establish_initiator(b));
        let r = within("initiator task", client).await.expect("task");
        assert!(matches!(r, Err(SessionError::HandshakeTimeout(d)) if d == Duration::from_secs(2)), "{r:?}");
        assert!(start.elapsed() >= Duration::from_secs(2));
        // It sent its prologue, then gave up and closed the link.
        let got = drain_link(&mut silent).await;
        assert_eq!(got.len(), 1, "only the TransportHello: {got:?}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn session_handshake_timeout_drops_peer_silent_after_prologue() {
    local(async move {
        // The peer completes the prologue, then says nothing: the timeout
        // covers the handshake too.
        let (a, mut b) = link::memory_pair(LinkConfig::default());
        let server = tokio::spawn(server_builder().handshake_timeout(Duration::from_secs(2)).establish_acceptor(a));
        transport::initiate(&mut b, ConduitMode::Bare).await.expect("prologue");
        let r = within("acceptor task", server).await.expect("task");
        assert!(matches!(r, Err(SessionError::HandshakeTimeout(_))), "{r:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_handshake_timeout_drops_silent_tcp_peer() {
    // Real TCP: the peer connects and says nothing. A short timeout keeps
    // the test quick; the hang detector is far longer.
    let listener = server_builder().handshake_timeout(Duration::from_millis(200)).listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let r = within("listener accept", listener.accept_attempt()).await;
    assert!(matches!(r, Err(SessionError::HandshakeTimeout(d)) if d == Duration::from_millis(200)), "{r:?}");
}
