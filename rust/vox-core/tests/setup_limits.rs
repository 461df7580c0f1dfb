// The workspace denies unsafe code. This test needs one exception: a
// counting `#[global_allocator]`, an `unsafe impl GlobalAlloc` that only
// forwards to `std::alloc::System` and counts live and peak bytes, so that
// the memory an unauthenticated peer makes the server hold (and whether the
// server frees it) can be measured.
#![allow(unsafe_code)]

//! Rule `session.setup.limits` (and, for a half-sent frame after the
//! handshake, rule `session.keepalive`; for handshake features, rule
//! `session.decode.bounded`), each attack reproduced by a raw peer speaking
//! bytes on a TCP socket, an in-memory duplex stream or a raw link. Each test
//! checks the outcome and that the server let go of what it held: the raw
//! peer reads end-of-stream (or a reset) from the server, the setup task
//! ended (`Listener::pending_setups`), the bytes were freed.
//!
//! The tests of this file run one at a time (`SERIAL`): the byte counter is
//! process-wide, and the 1,000-connection test must not be timed while
//! another test loads the machine.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use bytes::Bytes;
use common::testbed::{mid, server_builder};
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use vox_core::conduit;
use vox_core::link::{self, Link, LinkConfig, LinkError};
use vox_core::session::{CloseReason, Listener, SessionBuilder, SessionError};
use vox_core::transport;
use vox_core::wire::{
    self, Blob, ClientHello, ConduitMode, ConduitMsg, ConnectionSettings, HandshakeMsg, Hello, HelloYourself,
    PROTOCOL_VERSION, Parity, ResumeKey, ServerHello, StableFrame, StableHelloReply, StableMsg, TRANSPORT_MAGIC,
    TRANSPORT_VERSION, TransportHello, TransportMsg,
};

// ------------------------------------------------------- counting allocator

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE_BYTES.fetch_add(by, Ordering::Relaxed) + by;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY (whole impl): every method forwards to `System` with the caller's
// arguments unchanged; the only addition is an atomic counter update.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from what is live now.
fn reset_peak() -> isize {
    let now = live_bytes();
    PEAK_BYTES.store(now, Ordering::Relaxed);
    now
}

fn peak_bytes() -> isize {
    PEAK_BYTES.load(Ordering::Relaxed)
}

/// One test at a time (see the module comment), each on a runtime of its
/// own that is gone (tasks, buffers) before the next test starts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The runtime a test runs on.
enum Rt {
    /// Two worker threads: the server and the raw peers run at once.
    Threads,
    /// One thread, tokio's clock paused (it jumps to the next timer when idle).
    Paused,
    /// One thread.
    Current,
}

fn serial(rt: Rt, test: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = match rt {
        Rt::Threads => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
        Rt::Paused => tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build(),
        Rt::Current => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    runtime.expect("runtime").block_on(test);
}

/// Bound for waiting on the server: generous, only there so that a broken
/// server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The default setup-phase maximum (`SetupLimits::max_message_size`).
const SETUP_MAX: usize = 64 * KIB;

// --------------------------------------------------------------- raw bytes

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    wire::encode("test message", value).expect("encode")
}

fn transport_hello(mode: ConduitMode) -> Vec<u8> {
    enc(&TransportMsg::Hello(TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode }))
}

fn hello_msg(features: Vec<String>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        parity: Parity::Odd,
        root_settings: ConnectionSettings::default(),
        features,
        resume_key: None,
    }
}

fn hello(features: Vec<String>) -> Vec<u8> {
    enc(&ConduitMsg::Handshake(HandshakeMsg::Hello(hello_msg(features))))
}

/// A `Hello` whose encoding is `size` bytes long (one long feature name).
fn hello_of_size(size: usize) -> Vec<u8> {
    let empty = hello(vec![String::new()]).len();
    // The feature's length prefix grows by a byte or two with the name.
    let mut name = size - empty;
    loop {
        let bytes = hello(vec!["f".repeat(name)]);
        match bytes.len().cmp(&size) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Greater => name -= 1,
            std::cmp::Ordering::Less => name += 1,
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("frame length");
    w.write_all(&len.to_le_bytes()).await.expect("write prefix");
    w.write_all(body).await.expect("write body");
}

/// The next whole frame, or `None` at end of stream or on a reset.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await.ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
    r.read_exact(&mut body).await.ok()?;
    Some(body)
}

async fn expect_frame<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Vec<u8> {
    timeout(PATIENCE, read_frame(r))
        .await
        .unwrap_or_else(|_| panic!("no {what} from the server"))
        .unwrap_or_else(|| panic!("the server closed the link instead of sending {what}"))
}

/// Reads until the server ends the stream (end-of-stream or a reset) and
/// returns what it sent before; fails the test if it never does.
async fn closed_by_server<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(PATIENCE, read).await.unwrap_or_else(|_| panic!("{what}: the server kept the connection open"));
    got
}

/// The frames in `bytes` (a stream's contents).
fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(body) = bytes.get(4..4 + len) else { break };
        out.push(body.to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

/// Asserts that the server sent nothing but, at most, a `Sorry` on a bare
/// conduit: in particular no `HelloYourself`.
fn assert_refused(sent: &[u8], what: &str) {
    for frame in frames(sent) {
        let msg = wire::decode::<ConduitMsg>("ConduitMsg", &Bytes::from(frame));
        assert!(
            matches!(msg, Ok(ConduitMsg::Handshake(HandshakeMsg::Sorry { .. }))),
            "{what}: the server answered {msg:?} instead of refusing"
        );
    }
}

/// Connects and runs the prologue for `mode`; returns the socket.
async fn prologue(addr: std::net::SocketAddr, mode: ConduitMode) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    write_frame(&mut s, &transport_hello(mode)).await;
    let answer = expect_frame(&mut s, "the prologue answer").await;
    let answer = wire::decode::<TransportMsg>("TransportMsg", &Bytes::from(answer)).expect("prologue answer");
    assert!(matches!(answer, TransportMsg::Accept { mode: m } if m == mode), "{answer:?}");
    s
}

/// The listener's next failed setup.
async fn next_failure(listener: &Listener) -> String {
    match timeout(PATIENCE, listener.accept_attempt()).await.expect("the listener reported nothing") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a session was established"),
    }
}

async fn echo(session: &vox_core::session::Session, text: &str) {
    let back: String = session.root.caller.call(mid("echo"), &text.to_string(), vec![]).await.expect("echo");
    assert_eq!(back, text);
}

// ------------------------------------------------------ starvation, backlog

/// rule: session.setup.limits — links that never speak do not delay a new
/// session: the listener accepts every link at once and bounds the
/// unfinished setups by closing the oldest.
#[test]
fn session_setup_limits_new_session_completes_past_1000_idle_connections() {
    serial(Rt::Threads, async {
        const IDLE: usize = 1_000;
        let listener = Arc::new(server_builder().listen("127.0.0.1:0").await.expect("listen"));
        let addr = listener.local_addr().expect("addr");
        let sessions = {
            let listener = listener.clone();
            tokio::spawn(async move {
                let mut kept = Vec::new();
                while let Ok(s) = listener.accept().await {
                    kept.push(s);
                }
            })
        };
        let t = std::time::Instant::now();
        let first = timeout(PATIENCE, SessionBuilder::new().connect(addr)).await.expect("baseline").expect("session");
        let baseline = t.elapsed();
        echo(&first, "before").await;

        // 1,000 TCP connections that never send a byte.
        let connected = async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..IDLE {
                set.spawn(TcpStream::connect(addr));
            }
            let mut idle = Vec::with_capacity(IDLE);
            while let Some(c) = set.join_next().await {
                idle.push(c.expect("task").expect("an idle connection was refused"));
            }
            idle
        };
        let idle = timeout(PATIENCE, connected).await.expect("the listener did not take 1,000 connections");

        // A well-behaved session, at once: its handshake is not queued behind them.
        let t = std::time::Instant::now();
        let client = timeout(PATIENCE, SessionBuilder::new().connect(addr)).await.expect("handshake").expect("session");
        let took = t.elapsed();
        eprintln!(
            "session_setup_limits: handshake with {IDLE} idle connections open: {:.2} ms (without them: {:.2} ms)",
            took.as_secs_f64() * 1e3,
            baseline.as_secs_f64() * 1e3
        );
        echo(&client, "after").await;
        assert!(took < Duration::from_secs(2), "a new session waited {took:?} behind {IDLE} idle connections");

        // The server let go of every idle connection: beyond the bound at once,
        // the rest at the prologue deadline. Each one reads the server's close.
        let mut closes = tokio::task::JoinSet::new();
        for mut c in idle {
            closes.spawn(async move { closed_by_server(&mut c, "an idle connection").await.len() });
        }
        while let Some(sent) = closes.join_next().await {
            assert_eq!(sent.expect("task"), 0, "the server sent bytes to a peer that said nothing");
        }
        timeout(PATIENCE, listener.pending_setups_at_most(0)).await.expect("setup tasks still running");
        let evicted = listener.evicted_setups();
        assert!(evicted >= (IDLE - 256) as u64, "only {evicted} setups were closed to make room");
        echo(&first, "still fine").await;
        sessions.abort();
    });
}

/// rule: session.setup.limits — when `max_pending_setups` setups are
/// unfinished, a new link is accepted and served at once, and the oldest
/// unfinished setup is the one closed.
#[test]
fn session_setup_limits_oldest_unfinished_setup_is_closed_first() {
    serial(Rt::Threads, async {
        const MAX: usize = 4;
        let mut server = server_builder().handshake_timeout(Duration::from_secs(120));
        server.config_mut().setup.max_pending_setups = MAX;
        server.config_mut().setup.prologue_timeout = Duration::from_secs(120);
        let listener = server.listen("127.0.0.1:0").await.expect("listen");
        let addr = listener.local_addr().expect("addr");
        // Each one is answered, so its setup is running; oldest first.
        let mut peers = Vec::new();
        for _ in 0..MAX {
            peers.push(prologue(addr, ConduitMode::Bare).await);
        }
        assert_eq!(listener.pending_setups(), MAX);
        for round in 0..3 {
            // One more: answered at once, and the oldest is closed for it.
            peers.push(prologue(addr, ConduitMode::Bare).await);
            let mut oldest = peers.remove(0);
            let sent = closed_by_server(&mut oldest, "the oldest unfinished setup").await;
            assert!(sent.is_empty(), "round {round}: {sent:?}");
            assert_eq!(listener.evicted_setups(), round + 1);
            assert_eq!(listener.pending_setups(), MAX);
        }
        // The others are still served: each one's Hello is answered.
        for p in &mut peers {
            write_frame(p, &hello(vec![])).await;
            let answer = expect_frame(p, "HelloYourself").await;
            let answer = wire::decode::<ConduitMsg>("ConduitMsg", &Bytes::from(answer)).expect("answer");
            assert!(matches!(answer, ConduitMsg::Handshake(HandshakeMsg::HelloYourself(_))), "{answer:?}");
        }
        // A well-behaved session completes, closing the oldest for its setup.
        let (client, server) =
            tokio::join!(timeout(PATIENCE, SessionBuilder::new().connect(addr)), timeout(PATIENCE, listener.accept()));
        let (client, _server) = (client.expect("client").expect("session"), server.expect("server").expect("session"));
        echo(&client, "served").await;
        let mut oldest = peers.remove(0);
        closed_by_server(&mut oldest, "the oldest unfinished setup").await;
        assert_eq!(listener.evicted_setups(), 4);
        // Peers that leave end their setups.
        drop(peers);
        timeout(PATIENCE, listener.pending_setups_at_most(0)).await.expect("setup tasks still running");
    });
}

/// rule: session.setup.limits — the first message has a deadline of its
/// own, far shorter than the whole setup's.
#[test]
fn session_setup_limits_prologue_deadline_closes_a_silent_link() {
    serial(Rt::Paused, async {
        let (a, mut silent) = link::memory_pair(LinkConfig::default());
        let start = Instant::now();
        let server = tokio::spawn(server_builder().handshake_timeout(Duration::from_secs(60)).establish_acceptor(a));
        let r = timeout(PATIENCE, server).await.expect("the setup never ended").expect("task");
        assert!(matches!(r, Err(SessionError::HandshakeTimeout(d)) if d == Duration::from_secs(2)), "{r:?}");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3), "{waited:?}");
        // The link was let go: the peer sees the end.
        assert!(matches!(silent.rx.recv().await, Ok(None) | Err(_)));
    });
}

// ------------------------------------------------------ setup message size

/// rule: session.setup.limits — a first message announced at 15 MiB before
/// any prologue kills the link from its length prefix: nothing close to its
/// size is allocated.
#[test]
fn session_setup_limits_oversized_first_message_is_refused_before_allocation() {
    serial(Rt::Threads, async {
        const SIZE: usize = 15 * MIB;
        // The whole setup may take a minute: only the size check can close it in time.
        let listener = server_builder().handshake_timeout(Duration::from_secs(60)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(vec![0x5au8; SIZE]);
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let before = reset_peak();
        let (mut r, mut w) = s.split();
        let write = async {
            // Fails once the server has closed; that is the point.
            let _ = w.write_all(&u32::try_from(SIZE).unwrap_or(u32::MAX).to_le_bytes()).await;
            let _ = w.write_all(&body).await;
        };
        let (_, sent) = tokio::join!(write, closed_by_server(&mut r, "a 15 MiB first message"));
        assert!(sent.is_empty(), "the server answered: {sent:?}");
        let failure = next_failure(&listener).await;
        let peak = peak_bytes() - before;
        eprintln!("session_setup_limits: peak heap growth for a 15 MiB first message: {peak} bytes");
        assert!(failure.contains(&format!("{SIZE} bytes exceeds the link maximum of {SETUP_MAX}")), "{failure}");
        assert!(peak < MIB as isize, "the server allocated {peak} bytes for a message it refuses");
    });
}

/// rule: session.setup.limits — a `Hello` over 64 KiB is refused and the
/// link closed.
#[test]
fn session_setup_limits_hello_over_64_kib_is_refused() {
    serial(Rt::Threads, async {
        let listener = server_builder().handshake_timeout(Duration::from_secs(60)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        let mut s = prologue(addr, ConduitMode::Bare).await;
        let big = hello_of_size(SETUP_MAX + 1);
        write_frame(&mut s, &big).await;
        let sent = closed_by_server(&mut s, "a Hello over 64 KiB").await;
        assert_refused(&sent, "a Hello over 64 KiB");
        let failure = next_failure(&listener).await;
        assert!(failure.contains(&format!("{} bytes exceeds the link maximum of {SETUP_MAX}", big.len())), "{failure}");
        // One at exactly the limit is a Hello like any other.
        let mut s = prologue(addr, ConduitMode::Bare).await;
        write_frame(&mut s, &hello_of_size(SETUP_MAX)).await;
        let answer = expect_frame(&mut s, "HelloYourself").await;
        let answer = wire::decode::<ConduitMsg>("ConduitMsg", &Bytes::from(answer)).expect("answer");
        assert!(matches!(answer, ConduitMsg::Handshake(HandshakeMsg::HelloYourself(_))), "{answer:?}");
    });
}

/// rule: session.decode.bounded — a `Hello` well within 64 KiB but listing
/// more features than `DecodeLimits::max_features` is refused and the link
/// closed (the attack used many empty feature names).
#[test]
fn session_decode_bounded_hello_with_too_many_features_is_refused() {
    serial(Rt::Threads, async {
        let listener = server_builder().handshake_timeout(Duration::from_secs(60)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        let mut s = prologue(addr, ConduitMode::Bare).await;
        let many = hello(vec![String::new(); 20_000]);
        assert!(many.len() < SETUP_MAX, "{} bytes", many.len());
        write_frame(&mut s, &many).await;
        let sent = closed_by_server(&mut s, "a Hello with 20,000 features").await;
        assert_refused(&sent, "a Hello with 20,000 features");
        let failure = next_failure(&listener).await;
        assert!(failure.contains("features"), "{failure}");
    });
}

/// rule: session.setup.limits — on a stable conduit the `ClientHello`, read
/// on the raw link, is held to the setup maximum too.
#[test]
fn session_setup_limits_stable_client_hello_over_64_kib_is_refused() {
    serial(Rt::Threads, async {
        let listener = server_builder().handshake_timeout(Duration::from_secs(60)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        let mut s = prologue(addr, ConduitMode::Stable).await;
        let key = ResumeKey(Blob::new(Bytes::from(vec![7u8; SETUP_MAX + 16])));
        let client_hello = enc(&ClientHello { resume_key: Some(key), last_received: None });
        write_frame(&mut s, &client_hello).await;
        let sent = closed_by_server(&mut s, "a ClientHello over 64 KiB").await;
        assert!(sent.is_empty(), "the server answered: {} bytes", sent.len());
        let failure = next_failure(&listener).await;
        assert!(failure.contains(&format!("exceeds the link maximum of {SETUP_MAX}")), "{failure}");
    });
}

/// rule: session.setup.limits — on a stable conduit the session `Hello`,
/// which arrives in a stable frame, is held to the setup maximum too: it is
/// never answered, and the link is closed.
///
/// The refusal breaks the stable conduit's link, which a stable conduit
/// treats as a break to recover from (its reader drops the link's receiving
/// half), so the socket is closed when the setup's deadline aborts the
/// conduit: 5 s here.
#[test]
fn session_setup_limits_stable_hello_over_64_kib_is_refused() {
    serial(Rt::Threads, async {
        let listener = server_builder().handshake_timeout(Duration::from_secs(5)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        let mut s = prologue(addr, ConduitMode::Stable).await;
        write_frame(&mut s, &enc(&ClientHello { resume_key: None, last_received: None })).await;
        let welcome = expect_frame(&mut s, "the stable hello reply").await;
        let welcome = wire::decode::<StableHelloReply>("StableHelloReply", &Bytes::from(welcome)).expect("reply");
        assert!(matches!(welcome, StableHelloReply::Welcome(_)), "{welcome:?}");
        let item = Blob::new(Bytes::from(hello_of_size(SETUP_MAX + 1)));
        write_frame(&mut s, &enc(&StableMsg::Frame(StableFrame { seq: 0, ack: None, item }))).await;
        let sent = closed_by_server(&mut s, "a stable Hello over 64 KiB").await;
        for frame in frames(&sent) {
            // At most an acknowledgement or a Bye: no HelloYourself.
            let msg = wire::decode::<StableMsg>("StableMsg", &Bytes::from(frame)).expect("stable message");
            assert!(!matches!(msg, StableMsg::Frame(_)), "the server answered the Hello: {msg:?}");
        }
        // The setup failed (at its deadline today; a conduit that reported the
        // refusal itself would fail it sooner, naming the size).
        let failure = next_failure(&listener).await;
        assert!(failure.contains("timed out") || failure.contains("exceeds the link maximum"), "{failure}");
        timeout(PATIENCE, listener.pending_setups_at_most(0)).await.expect("setup tasks still running");
    });
}

/// A raw acceptor on a memory link: answers the prologue for `mode`, then
/// hands the link over.
async fn raw_acceptor_prologue(link: &mut Link, mode: ConduitMode) {
    let modes = transport::AcceptModes { bare: true, stable: true };
    let got = transport::accept(link, modes).await.expect("prologue");
    assert_eq!(got, mode);
}

/// rule: session.setup.limits — the initiator holds the acceptor to the
/// setup maximum too: a `HelloYourself` over 64 KiB fails the handshake.
#[test]
fn session_setup_limits_initiator_refuses_hello_yourself_over_64_kib() {
    serial(Rt::Current, async {
        let (mut a, b) = link::memory_pair(LinkConfig::default());
        let client =
            tokio::spawn(SessionBuilder::new().handshake_timeout(Duration::from_secs(60)).establish_initiator(b));
        raw_acceptor_prologue(&mut a, ConduitMode::Bare).await;
        let (tx, mut rx) = conduit::bare(a);
        let got = timeout(PATIENCE, rx.recv()).await.expect("no Hello").expect("Hello");
        assert!(matches!(got, Some(ConduitMsg::Handshake(HandshakeMsg::Hello(_)))), "{got:?}");
        let answer = HelloYourself {
            protocol_version: PROTOCOL_VERSION,
            root_settings: ConnectionSettings::default(),
            features: vec!["f".repeat(SETUP_MAX + 1)],
            resume_key: None,
        };
        tx.send(&ConduitMsg::Handshake(HandshakeMsg::HelloYourself(answer))).await.expect("send");
        let r = timeout(PATIENCE, client).await.expect("the initiator never gave up").expect("task");
        let err = r.expect_err("a session on an oversized HelloYourself").to_string();
        assert!(err.contains(&format!("exceeds the link maximum of {SETUP_MAX}")), "{err}");
        // No LetsGo: the initiator closed the link.
        assert!(matches!(timeout(PATIENCE, rx.recv()).await.expect("the link stayed open"), Ok(None) | Err(_)));
    });
}

/// rule: session.setup.limits — a stable initiator holds the acceptor's
/// `ServerHello`, read on the raw link, to the setup maximum.
#[test]
fn session_setup_limits_stable_initiator_refuses_server_hello_over_64_kib() {
    serial(Rt::Current, async {
        let (mut a, b) = link::memory_pair(LinkConfig::default());
        // No second link: the setup fails on the first.
        let source = Arc::new(|| async { Err::<Link, _>(LinkError::Closed) });
        let client = tokio::spawn(
            SessionBuilder::new().handshake_timeout(Duration::from_secs(60)).establish_stable(source, Some(b)),
        );
        raw_acceptor_prologue(&mut a, ConduitMode::Stable).await;
        let hello = timeout(PATIENCE, a.rx.recv()).await.expect("no ClientHello").expect("link").expect("message");
        wire::decode::<ClientHello>("ClientHello", &hello).expect("ClientHello");
        let key = ResumeKey(Blob::new(Bytes::from(vec![7u8; SETUP_MAX + 16])));
        let reply = StableHelloReply::Welcome(ServerHello { resume_key: key, last_received: None });
        a.tx.send(Bytes::from(enc(&reply))).await.expect("send");
        let r = timeout(PATIENCE, client).await.expect("the initiator never gave up").expect("task");
        let err = r.expect_err("a session on an oversized ServerHello").to_string();
        assert!(err.contains(&format!("exceeds the link maximum of {SETUP_MAX}")), "{err}");
        assert!(matches!(timeout(PATIENCE, a.rx.recv()).await.expect("the link stayed open"), Ok(None) | Err(_)));
    });
}

/// rule: session.setup.limits — the limit is the setup's only: once the
/// handshake is done, messages up to the session maximum pass both ways, on
/// a bare and on a stable conduit.
#[test]
fn session_setup_limits_are_lifted_after_the_handshake() {
    serial(Rt::Threads, async {
        for mode in [ConduitMode::Bare, ConduitMode::Stable] {
            let listener = server_builder().listen("127.0.0.1:0").await.expect("listen");
            let addr = listener.local_addr().expect("addr");
            let mut client = common::testbed::server_builder();
            client.config_mut().conduit = mode;
            let (c, s) = tokio::join!(client.connect(addr), listener.accept());
            let (c, s) = (c.expect("client"), s.expect("server"));
            let big = "x".repeat(MIB);
            let back: String = c.root.caller.call(mid("echo"), &big, vec![]).await.expect("client to server");
            assert_eq!(back.len(), big.len(), "{mode:?}");
            let back: String = s.root.caller.call(mid("echo"), &big, vec![]).await.expect("server to client");
            assert_eq!(back.len(), big.len(), "{mode:?}");
        }
    });
}

// ------------------------------------------- memory per unauthenticated peer

/// One IPv4 TCP socket as `/proc/net/tcp` shows it.
#[derive(Clone, Copy, Debug)]
struct SocketState {
    state: u8,
    tx_queue: u64,
    rx_queue: u64,
}

const TCP_ESTABLISHED: u8 = 1;

/// The IPv4 TCP sockets by (local port, remote port).
fn tcp_sockets() -> std::collections::HashMap<(u16, u16), SocketState> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            let state = SocketState {
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            };
            Some(((port(f.get(1)?)?, port(f.get(2)?)?), state))
        })
        .collect()
}

/// Waits until the server has read everything the peers on `client_ports`
/// sent (their send queues are empty and the server sockets' receive
/// queues too), or has closed them: what the kernel shows, so the memory
/// measured next is what the server holds, not bytes still in flight.
async fn server_read_everything(server_port: u16, client_ports: &[u16]) {
    let settled = || {
        let sockets = tcp_sockets();
        client_ports.iter().all(|&c| {
            let server_side = sockets.get(&(server_port, c));
            let closed = server_side.is_none_or(|s| s.state != TCP_ESTABLISHED);
            let client_sent = sockets.get(&(c, server_port)).is_none_or(|s| s.tx_queue == 0);
            closed || (client_sent && server_side.is_some_and(|s| s.rx_queue == 0))
        })
    };
    let wait = async {
        while !settled() {
            tokio::task::yield_now().await;
        }
    };
    timeout(PATIENCE, wait).await.expect("the server never read what the peers sent");
}

/// What each connection of one attack sends before it stops.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Before any prologue, a frame announced at the setup maximum and sent
    /// but for its last byte.
    PartialFirstFrame,
    /// Before any prologue, a frame announced at 4 MiB and sent but for its
    /// last byte (above the setup maximum).
    PartialFirstFrame4MiB,
    /// Bare prologue, a `Hello` of the setup maximum (answered), then a
    /// frame of the setup maximum but for its last byte.
    BareHelloThenPartialFrame,
    /// Stable prologue and hello, a `Hello` as large as a stable frame of
    /// the setup maximum allows (answered), then a partial frame as above.
    StableHelloThenPartialFrame,
}

/// Runs one attack on a fresh connection; returns the socket, still open.
async fn attack(addr: std::net::SocketAddr, attack: Attack) -> TcpStream {
    let partial = |len: usize| {
        let mut bytes = u32::try_from(len).expect("length").to_le_bytes().to_vec();
        bytes.resize(4 + len - 1, 0x5a);
        bytes
    };
    let mut s = match attack {
        Attack::PartialFirstFrame | Attack::PartialFirstFrame4MiB => TcpStream::connect(addr).await.expect("connect"),
        Attack::BareHelloThenPartialFrame => {
            let mut s = prologue(addr, ConduitMode::Bare).await;
            write_frame(&mut s, &hello_of_size(SETUP_MAX)).await;
            expect_frame(&mut s, "HelloYourself").await;
            s
        }
        Attack::StableHelloThenPartialFrame => {
            let mut s = prologue(addr, ConduitMode::Stable).await;
            write_frame(&mut s, &enc(&ClientHello { resume_key: None, last_received: None })).await;
            expect_frame(&mut s, "the stable hello reply").await;
            let frame_of = |size: usize| {
                let item = Blob::new(Bytes::from(hello_of_size(size)));
                enc(&StableMsg::Frame(StableFrame { seq: 0, ack: None, item }))
            };
            // The largest Hello whose frame fits the setup maximum.
            let mut size = SETUP_MAX - (frame_of(1024).len() - 1024);
            while frame_of(size).len() > SETUP_MAX {
                size -= 1;
            }
            write_frame(&mut s, &frame_of(size)).await;
            // The HelloYourself, in a frame (perhaps after a bare ack).
            loop {
                let msg = expect_frame(&mut s, "HelloYourself").await;
                let msg = wire::decode::<StableMsg>("StableMsg", &Bytes::from(msg)).expect("stable message");
                if matches!(msg, StableMsg::Frame(_)) {
                    break;
                }
            }
            s
        }
    };
    let bytes = match attack {
        Attack::PartialFirstFrame4MiB => partial(4 * MIB),
        _ => partial(SETUP_MAX),
    };
    // Fails if the server closed first, which is fine.
    let _ = s.write_all(&bytes).await;
    s
}

/// rule: session.setup.limits — the most memory one unauthenticated
/// connection can make the server hold, measured: `N` connections each send
/// what is described in [`Attack`] and stop; the server's heap growth over
/// `N` stays at most 1 MiB, and it is freed when the setups end.
#[test]
fn session_setup_limits_memory_held_per_unauthenticated_connection() {
    serial(Rt::Threads, async {
        const N: usize = 20;
        // Short deadlines so the release is seen soon; they do not change what
        // is held before they pass.
        let listener = server_builder().handshake_timeout(Duration::from_secs(3)).listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().expect("addr");
        // Warm-up: the runtime's and the listener's lazily grown state.
        for kind in [Attack::BareHelloThenPartialFrame, Attack::StableHelloThenPartialFrame] {
            // Leaving ends the setup at once.
            drop(attack(addr, kind).await);
        }
        timeout(PATIENCE, listener.pending_setups_at_most(0)).await.expect("setup tasks still running");
        let mut worst = 0isize;
        for kind in [
            Attack::PartialFirstFrame,
            Attack::PartialFirstFrame4MiB,
            Attack::BareHelloThenPartialFrame,
            Attack::StableHelloThenPartialFrame,
        ] {
            let before = live_bytes();
            let mut peers = Vec::with_capacity(N);
            for _ in 0..N {
                peers.push(attack(addr, kind).await);
            }
            let ports: Vec<u16> = peers.iter().map(|p| p.local_addr().expect("port").port()).collect();
            server_read_everything(addr.port(), &ports).await;
            let held = live_bytes() - before;
            let per = held / N as isize;
            worst = worst.max(per);
            // The server lets go of them all at its deadlines.
            for p in &mut peers {
                closed_by_server(p, "an unauthenticated connection").await;
            }
            drop(peers);
            timeout(PATIENCE, listener.pending_setups_at_most(0)).await.expect("setup tasks still running");
            let left = live_bytes() - before;
            eprintln!(
                "session_setup_limits: {kind:?}: {per} bytes held per unauthenticated connection ({N} connections, {held} bytes), {left} bytes left after they were closed"
            );
            assert!(per <= MIB as isize, "{kind:?}: {per} bytes held per unauthenticated connection");
            assert!(left <= (held / 10).max(64 * KIB as isize), "{kind:?}: {left} of {held} bytes not freed");
        }
        eprintln!("session_setup_limits: most held per unauthenticated connection: {worst} bytes");
    });
}

// ------------------------------------------------------- half-sent frames

/// rule: session.keepalive — a half-sent frame after the handshake never
/// holds a session: the link fails after `LinkConfig::frame_timeout`
/// (20 s by default) and the session ends and lets the link go. Keepalive
/// is off here, so that only the frame deadline can end it.
#[test]
fn session_keepalive_half_sent_frame_ends_the_session() {
    serial(Rt::Paused, async {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (near_read, near_write) = tokio::io::split(near);
        let link = link::stream(near_read, near_write, LinkConfig::default());
        let mut server = server_builder();
        server.config_mut().keepalive = None;
        let server = tokio::spawn(server.establish_acceptor(link));
        write_frame(&mut far, &transport_hello(ConduitMode::Bare)).await;
        expect_frame(&mut far, "the prologue answer").await;
        write_frame(&mut far, &hello(vec![])).await;
        expect_frame(&mut far, "HelloYourself").await;
        write_frame(&mut far, &enc(&ConduitMsg::Handshake(HandshakeMsg::LetsGo))).await;
        let session = server.await.expect("task").expect("session");
        // Half a frame: the length of a 100-byte message and 10 of its bytes.
        far.write_all(&100u32.to_le_bytes()).await.expect("write");
        far.write_all(&[0; 10]).await.expect("write");
        let start = Instant::now();
        let reason = timeout(Duration::from_secs(3600), session.handle.closed())
            .await
            .expect("a half-sent frame held the session for an hour");
        let waited = start.elapsed();
        match &reason {
            CloseReason::LinkError(e) => assert!(e.contains("stalled") && e.contains("got 14 of 104"), "{e}"),
            other => panic!("expected a link error, got {other:?}"),
        }
        assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(22), "{waited:?}");
        // The session let the link go: the raw end reads the end of the stream.
        closed_by_server(&mut far, "the stalled session").await;
    });
}

/// rule: session.keepalive — the frame deadline counts from the frame's
/// first byte and survives cancelled receives (a `select!` that took
/// another branch); a link idle between frames never stalls.
#[test]
fn session_keepalive_half_sent_frame_deadline_survives_cancelled_receives() {
    serial(Rt::Paused, async {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let (near_read, near_write) = tokio::io::split(near);
        let config = LinkConfig { frame_timeout: Some(Duration::from_secs(20)), ..LinkConfig::default() };
        let mut link = link::stream(near_read, near_write, config);
        // Idle for an hour between frames: no error.
        assert!(timeout(Duration::from_secs(3600), link.rx.recv()).await.is_err(), "an idle link failed");
        // A whole frame arrives in two parts, with a cancelled receive between.
        far.write_all(&[3, 0, 0, 0, b'o']).await.expect("write");
        assert!(timeout(Duration::from_secs(5), link.rx.recv()).await.is_err(), "half a frame was returned");
        far.write_all(b"k!").await.expect("write");
        assert_eq!(link.rx.recv().await.expect("recv").as_deref(), Some(&b"ok!"[..]));
        // Two bytes of a prefix, then nothing: receives cancelled every 5 s do
        // not restart the deadline.
        far.write_all(&[9, 0]).await.expect("write");
        let start = Instant::now();
        let result = loop {
            match timeout(Duration::from_secs(5), link.rx.recv()).await {
                Ok(result) => break result,
                Err(_) => assert!(start.elapsed() < Duration::from_secs(60), "never stalled"),
            }
        };
        let waited = start.elapsed();
        assert!(
            matches!(result, Err(LinkError::Stalled { expected: 4, got: 2, timeout }) if timeout == Duration::from_secs(20)),
            "{result:?}"
        );
        assert!(waited >= Duration::from_secs(20) && waited < Duration::from_secs(21), "{waited:?}");
        // The link is dead after that.
        assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
    });
}
