//! Sessions over a stable conduit survive link breaks (rules
//! `session.resume`, `conduit.stable`), and clients can wait for a server
//! that is not up yet (rule `session.initial-connect-waiting`).

mod common {
    pub mod testbed;
}
use common::testbed::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::{CallError, channel};
use vox_core::link::{self, Backoff, ConnectError, FaultHandle, Link, LinkConfig, LinkError, LinkSource};
use vox_core::session::{Accepted, CloseReason, Session, SessionBuilder};
use vox_core::wire::ConduitMode;

/// Hands out fault-injecting links; the server end of each is accepted by
/// a clone of one server builder, so resumed links find their session.
struct Net {
    cuts: Mutex<VecDeque<Option<u64>>>,
    server: Mutex<SessionBuilder>,
    faults: Mutex<Vec<FaultHandle>>,
    sessions: tokio::sync::mpsc::Sender<Session>,
}

impl Net {
    async fn dial(net: Arc<Net>) -> Result<Link, LinkError> {
        let cut = net.cuts.lock().unwrap().pop_front().flatten();
        let (client, server, fault) = link::faulty_pair(LinkConfig::default(), cut);
        net.faults.lock().unwrap().push(fault);
        let builder = net.server.lock().unwrap().clone();
        let sessions = net.sessions.clone();
        tokio::spawn(async move {
            if let Ok(Accepted::New(s)) = builder.establish_acceptor_any(server).await {
                let _ = sessions.send(s).await;
            }
        });
        Ok(client)
    }
}

fn stable_client() -> SessionBuilder {
    let mut b = SessionBuilder::new();
    let c = b.config_mut();
    c.conduit = ConduitMode::Stable;
    c.stable.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(10), factor: 2 };
    c.stable.replay_limit = 8 * 1024;
    b
}

async fn stable_sessions(cuts: Vec<Option<u64>>) -> (Session, Session, Arc<Net>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let net = Arc::new(Net {
        cuts: Mutex::new(cuts.into()),
        server: Mutex::new(server_builder()),
        faults: Mutex::new(Vec::new()),
        sessions: tx,
    });
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = stable_client().establish_stable(source, None).await.expect("client session");
    let server = rx.recv().await.expect("server session");
    (server, client, net)
}

async fn calls_and_streams(client: &Session, rounds: u32, items: u32) {
    let caller = &client.root.caller;
    for r in 0..rounds {
        let s = format!("round {r}");
        let echoed: String = caller.call(mid("echo"), &s, vec![]).await.expect("echo across breaks");
        assert_eq!(echoed, s);
        let (tx, mut rx) = channel::<i32>();
        let call = caller.call::<_, ()>(mid("generate"), &items, vec![tx.into_arg().unwrap()]);
        let drain = async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await.expect("stream across breaks") {
                got.push(v);
            }
            got
        };
        let (res, got) = tokio::join!(call, drain);
        res.expect("generate across breaks");
        assert_eq!(got, (0..items as i32).collect::<Vec<_>>(), "items lost, repeated or reordered");
    }
}

// rule: session.resume, stable.replay-buffer — links are cut again and
// again mid-call and mid-stream; the session never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_stable_conduit_survives_repeated_link_cuts() {
    let cuts = vec![Some(40), Some(25), Some(60), Some(10), Some(200), None];
    let (_server, client, net) = stable_sessions(cuts).await;
    calls_and_streams(&client, 6, 300).await;
    let faults = net.faults.lock().unwrap();
    assert!(faults.len() >= 4, "expected the planned cuts to force redials, saw {} links", faults.len());
    assert!(client.handle.close_reason().is_none(), "session must survive the cuts");
}

// rule: session.resume — a silent partition (held link) followed by a
// cut: the call made during the partition completes on the new link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_after_partition_then_cut() {
    let (_server, client, net) = stable_sessions(vec![None, None]).await;
    calls_and_streams(&client, 1, 50).await;
    // Hold the first link (a silent partition): neither end sees it die.
    net.faults.lock().unwrap()[0].hold();
    let caller = client.root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"held".to_string(), vec![]).await });
    // Then cut it: only the client learns, and redials.
    net.faults.lock().unwrap()[0].cut();
    assert_eq!(call.await.unwrap().expect("call completes on the new link"), "held");
    calls_and_streams(&client, 1, 50).await;
}

// rule: stable.resume-key — the server forgot the session (restart): the
// client reports session loss instead of treating a new session as resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_after_server_restart_reports_loss() {
    let (_server, client, net) = stable_sessions(vec![None, None]).await;
    calls_and_streams(&client, 1, 10).await;
    // A new server builder has a new (empty) stable registry.
    *net.server.lock().unwrap() = server_builder();
    let caller = client.root.caller.clone();
    net.faults.lock().unwrap()[0].hold();
    let call = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"lost".to_string(), vec![]).await });
    net.faults.lock().unwrap()[0].cut();
    let err = call.await.unwrap().expect_err("the call cannot complete on a lost session");
    assert!(!matches!(err, CallError::User(_)), "{err:?}");
    let reason = client.handle.closed().await;
    assert!(
        matches!(&reason, CloseReason::LinkError(e) if e.contains("session is lost")),
        "unexpected close reason {reason:?}"
    );
}

// rule: stable.replay-buffer.bounded — a link held for a long time: the
// sender waits (backpressure), nothing grows without bound, and every item
// still arrives once the link comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_held_link_backpressures_then_recovers() {
    let (_server, client, net) = stable_sessions(vec![None, None]).await;
    calls_and_streams(&client, 1, 10).await;
    net.faults.lock().unwrap()[0].hold();
    let (mut tx, rx) = channel::<i32>();
    let caller = client.root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    // With the link held, sends stop being accepted after the credit and
    // the bounded queues are used up.
    let mut sent = 0i32;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(200), tx.send(&sent)).await {
        r.expect("send");
        sent += 1;
        assert!(sent < 100_000, "sender never saw backpressure");
    }
    net.faults.lock().unwrap()[0].cut();
    for i in sent..sent + 100 {
        tx.send(&i).await.expect("send after recovery");
    }
    tx.close().await.unwrap();
    let total = call.await.unwrap().expect("sum after recovery");
    assert_eq!(total, (0..(sent + 100) as i64).sum::<i64>());
}

// rule: session.keepalive — a link held longer than the keepalive timeout
// ends the session even though the stable conduit is still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_keepalive_timeout_while_held() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let net = Arc::new(Net {
        cuts: Mutex::new(VecDeque::new()),
        server: Mutex::new(server_builder()),
        faults: Mutex::new(Vec::new()),
        sessions: tx,
    });
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = stable_client()
        .keepalive(Duration::from_millis(50), Duration::from_millis(200))
        .establish_stable(source, None)
        .await
        .expect("client");
    let _server = rx.recv().await.expect("server");
    net.faults.lock().unwrap()[0].hold();
    let reason = tokio::time::timeout(Duration::from_secs(30), client.handle.closed()).await.expect("keepalive fired");
    assert!(format!("{reason:?}").to_lowercase().contains("keepalive"), "unexpected reason {reason:?}");
}

// rule: session.initial-connect-waiting — transient failures are retried
// with backoff until the server answers.
#[tokio::test]
async fn session_initial_connect_waiting_retries_transient_errors() {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let source = move || {
        let n = a.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 3 {
                Err(LinkError::Io {
                    context: "connecting",
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                })
            } else {
                Ok(link::memory_pair(LinkConfig::default()).0)
            }
        }
    };
    let backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(4), factor: 2 };
    link::connect_waiting(&source, &backoff, Duration::from_secs(30)).await.expect("connects on the 4th attempt");
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
}

// rule: session.initial-connect-waiting — permanent failures are not retried.
#[tokio::test]
async fn session_initial_connect_waiting_permanent_error_not_retried() {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let source = move || {
        a.fetch_add(1, Ordering::SeqCst);
        async { Err::<Link, _>(LinkError::TooLarge { size: 2, max: 1 }) }
    };
    let result = link::connect_waiting(&source, &Backoff::default(), Duration::from_secs(30)).await;
    assert!(matches!(result, Err(ConnectError::Permanent(_))), "expected a permanent error");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

// rule: session.initial-connect-waiting — on timeout the last transient
// error is reported (here: nothing listens on the port).
#[tokio::test]
async fn session_initial_connect_waiting_reports_last_error_on_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut b = SessionBuilder::new();
    b.config_mut().stable.backoff =
        Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20), factor: 2 };
    let err = b.connect_waiting(format!("127.0.0.1:{port}"), Duration::from_millis(300)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("gave up after") && text.contains("last error"), "{text}");
}

// rule: session.initial-connect-waiting — the client waits for a server
// that starts later, over TCP, with a stable conduit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_initial_connect_waiting_stable_over_tcp() {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    drop(std_listener);
    let mut client_builder = stable_client();
    client_builder.config_mut().stable.backoff =
        Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(50), factor: 2 };
    let client = tokio::spawn(client_builder.connect_waiting(addr, Duration::from_secs(30)));
    let listener = server_builder().listen(addr).await.expect("listen");
    let _server = listener.accept().await.expect("server session");
    let client = client.await.unwrap().expect("client waited for the server");
    calls_and_streams(&client, 1, 20).await;
}
