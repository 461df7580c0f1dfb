//! The hostile-peer child (issue 16): a vox-core listener serving the bench
//! service while raw peers flood it, and the latency of a well-behaved
//! session's sequential calls meanwhile, against the same calls without the
//! flood.
//!
//! The flood runs on a runtime of its own (two worker threads), as a remote
//! attacker would, though it competes for the same CPUs. It keeps
//! up, until the measurement ends:
//! - [`IDLE`] TCP connections that never send a byte; each one that the
//!   server closes (to make room for newer setups, or at the prologue
//!   deadline) is opened again at once;
//! - [`MAX_SETUP`] connections that send the largest setup messages the
//!   server accepts: the prologue, a `Hello` of 64 KiB, then 64 KiB of a
//!   frame that never ends; again when closed;
//! - [`PINGERS`] sessions that send pings as fast as the default ping
//!   budget allows (a burst of 900, then 90 per second), and read the pongs.
//!
//! Figures: the median and p99 of the well-behaved session's calls with and
//! without the flood, the handshake time of a new session during the flood,
//! and the process's peak RSS (`VmHWM`: server, flood and client together).

use crate::memory::proc_status_bytes;
use crate::stats::{median, quantile};
use crate::{BenchError, Scale, vox};
use bytes::Bytes;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vox_core::wire::{
    self, ConduitMode, ConduitMsg, ConnectionId, ConnectionSettings, HandshakeMsg, Hello, Message, PROTOCOL_VERSION,
    Parity, Payload, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

/// Connections that never send a byte.
const IDLE: usize = 1_000;
/// Connections that send maximal setup messages.
const MAX_SETUP: usize = 50;
/// Sessions that flood pings within the budget.
const PINGERS: usize = 20;
/// The setup-phase message maximum (`SetupLimits::max_message_size`).
const SETUP_MAX: usize = 64 * 1024;
/// Pings each pinger sends at once, then per second (the default budget
/// is a burst of 1,000 and 100 per second).
const PING_BURST: u64 = 900;
const PINGS_PER_SECOND: u64 = 90;

/// What the flood did.
#[derive(Default)]
struct FloodStats {
    /// TCP connections opened.
    connections: AtomicU64,
    /// Connections the server closed.
    closed_by_server: AtomicU64,
    /// Connects that failed (for example, no ephemeral port left).
    connect_errors: AtomicU64,
    /// Pings sent and pongs received.
    pings: AtomicU64,
    pongs: AtomicU64,
    /// Flood slots that made their first attack.
    ready: AtomicUsize,
}

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain protocol values always encode; an empty frame would only make
    // that flooder's attack fail.
    wire::encode("hostile peer message", value).unwrap_or_default()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn hello(features: Vec<String>) -> Vec<u8> {
    enc(&ConduitMsg::Handshake(HandshakeMsg::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        parity: Parity::Odd,
        root_settings: ConnectionSettings::default(),
        features,
        resume_key: None,
    })))
}

/// The largest `Hello` the setup maximum allows (one long feature name).
fn max_hello() -> Vec<u8> {
    let mut name = SETUP_MAX - hello(vec![String::new()]).len() - 2;
    while hello(vec!["f".repeat(name + 1)]).len() <= SETUP_MAX {
        name += 1;
    }
    hello(vec!["f".repeat(name)])
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await.ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
    r.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// Reads until the server closes the connection (or `stop` is set).
async fn until_closed(s: &mut TcpStream, stats: &FloodStats, stop: &AtomicBool) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Ok(_)) => {}
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(_) => {}
        }
    }
}

async fn connect(addr: SocketAddr, stats: &FloodStats) -> Option<TcpStream> {
    match TcpStream::connect(addr).await {
        Ok(s) => {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(_) => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// One idle slot: a connection that never speaks, reopened whenever closed.
async fn idle_slot(addr: SocketAddr, stats: Arc<FloodStats>, stop: Arc<AtomicBool>) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(addr, &stats).await else { continue };
        if std::mem::take(&mut first) {
            stats.ready.fetch_add(1, Ordering::Relaxed);
        }
        until_closed(&mut s, &stats, &stop).await;
    }
}

/// One maximal-setup slot: prologue, a 64 KiB `Hello`, then 64 KiB of a
/// frame that never ends; again whenever closed.
async fn max_setup_slot(addr: SocketAddr, stats: Arc<FloodStats>, stop: Arc<AtomicBool>, hello: Arc<Vec<u8>>) {
    let prologue = framed(&enc(&TransportMsg::Hello(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Bare,
    })));
    let mut partial = u32::try_from(SETUP_MAX).unwrap_or(u32::MAX).to_le_bytes().to_vec();
    partial.resize(4 + SETUP_MAX - 1, 0x5a);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = connect(addr, &stats).await else { continue };
        let attack = async {
            s.write_all(&prologue).await.ok()?;
            read_frame(&mut s).await?;
            s.write_all(&framed(&hello)).await.ok()?;
            read_frame(&mut s).await?;
            s.write_all(&partial).await.ok()
        };
        // Ready after the first attempt, whether it got as far as the
        // partial frame or was closed earlier to make room for newer links.
        let _ = attack.await;
        if std::mem::take(&mut first) {
            stats.ready.fetch_add(1, Ordering::Relaxed);
        }
        until_closed(&mut s, &stats, &stop).await;
    }
}

/// A raw session for a pinger: prologue and handshake.
async fn raw_session(addr: SocketAddr, stats: &FloodStats) -> Option<TcpStream> {
    let mut s = connect(addr, stats).await?;
    let prologue = framed(&enc(&TransportMsg::Hello(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Bare,
    })));
    s.write_all(&prologue).await.ok()?;
    read_frame(&mut s).await?;
    s.write_all(&framed(&hello(vec![]))).await.ok()?;
    read_frame(&mut s).await?;
    s.write_all(&framed(&enc(&ConduitMsg::Handshake(HandshakeMsg::LetsGo)))).await.ok()?;
    stats.ready.fetch_add(1, Ordering::Relaxed);
    Some(s)
}

/// One pinging session: pings at the budget's rate, reading the pongs.
async fn pinger(s: TcpStream, stats: Arc<FloodStats>, stop: Arc<AtomicBool>) {
    let (mut r, mut w) = s.into_split();
    let reader = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(frame) = read_frame(&mut r).await {
                let msg = wire::decode::<ConduitMsg>("ConduitMsg", &Bytes::from(frame));
                if matches!(msg, Ok(ConduitMsg::Message(Message { payload: Payload::Pong { .. }, .. }))) {
                    stats.pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let ping = |nonce: u64| {
        framed(&enc(&ConduitMsg::Message(Message {
            connection_id: ConnectionId::ROOT,
            payload: Payload::Ping { nonce },
        })))
    };
    let burst: Vec<u8> = (0..PING_BURST).flat_map(ping).collect();
    if w.write_all(&burst).await.is_ok() {
        stats.pings.fetch_add(PING_BURST, Ordering::Relaxed);
        let mut nonce = PING_BURST;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PINGS_PER_SECOND));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if w.write_all(&ping(nonce)).await.is_err() {
                break;
            }
            nonce += 1;
            stats.pings.fetch_add(1, Ordering::Relaxed);
        }
    }
    reader.abort();
}

/// Starts every flood slot: the pinging sessions first (their handshakes
/// would otherwise compete with the flood they are part of), then the rest.
async fn flood(addr: SocketAddr, stats: Arc<FloodStats>, stop: Arc<AtomicBool>) {
    let hello = Arc::new(max_hello());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..PINGERS {
        if let Some(s) = raw_session(addr, &stats).await {
            tasks.spawn(pinger(s, stats.clone(), stop.clone()));
        }
    }
    for _ in 0..MAX_SETUP {
        tasks.spawn(max_setup_slot(addr, stats.clone(), stop.clone(), hello.clone()));
    }
    for _ in 0..IDLE {
        tasks.spawn(idle_slot(addr, stats.clone(), stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

fn peak_rss() -> f64 {
    proc_status_bytes("VmHWM:").unwrap_or(0) as f64
}

/// The `hostile-peer` child's measurement.
pub async fn hostile_peer(scale: &Scale) -> Result<Vec<(String, f64)>, BenchError> {
    let held: vox::Held = Arc::new(Mutex::new(Vec::new()));
    let listener = Arc::new(vox::server_builder(held, 4096).listen("127.0.0.1:0").await?);
    let addr = listener.local_addr()?;
    let accepting = {
        let listener = listener.clone();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(s) = listener.accept().await {
                kept.push(s);
            }
        })
    };
    let client = vox::client_builder(4096).connect(addr).await?;
    let caller = &client.root.caller;
    let payload = [7u8; 64];
    // Each phase calls for this long, so the flood churns throughout.
    let phase = if scale.quick { Duration::from_secs(2) } else { Duration::from_secs(5) };
    vox::sequential(caller, &payload, 500).await?;
    let mut quiet = calls_for(caller, &payload, phase).await?;
    let (quiet_handshakes, quiet_attempts) = handshakes(addr, 20).await;
    let rss_quiet = peak_rss();

    let stats = Arc::new(FloodStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood_thread = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                rt.block_on(flood(addr, stats, stop));
            }
        })
    };
    // Wait until every slot has made its first attack (or 10 s).
    let started = Instant::now();
    let slots = IDLE + MAX_SETUP + PINGERS;
    while stats.ready.load(Ordering::Relaxed) < slots && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_after = started.elapsed();
    let ready = stats.ready.load(Ordering::Relaxed);
    let before = Counts::of(&stats, &listener);
    let t = Instant::now();
    let mut loud = calls_for(caller, &payload, phase).await?;
    // New sessions during the flood: handshake times, and the attempts they
    // took (a setup closed to make room for newer links fails its attempt).
    let (flood_handshakes, flood_attempts) = handshakes(addr, 20).await;
    let flood_secs = t.elapsed().as_secs_f64();
    let rss_flood = peak_rss();
    let during = Counts::of(&stats, &listener).minus(&before);
    stop.store(true, Ordering::Relaxed);
    let _ = flood_thread.join();
    accepting.abort();

    let per_second = |n: f64| n / flood_secs;
    let mut quiet_hs = quiet_handshakes;
    let mut flood_hs = flood_handshakes;
    let (quiet_med, quiet_p99) = (median(&mut quiet), quantile(&mut quiet, 0.99));
    let (loud_med, loud_p99) = (median(&mut loud), quantile(&mut loud, 0.99));
    Ok(vec![
        ("calls_quiet".into(), quiet.len() as f64),
        ("median_quiet_us".into(), quiet_med),
        ("p99_quiet_us".into(), quiet_p99),
        ("calls_flood".into(), loud.len() as f64),
        ("median_flood_us".into(), loud_med),
        ("p99_flood_us".into(), loud_p99),
        ("max_flood_us".into(), quantile(&mut loud, 1.0)),
        ("ratio_median".into(), loud_med / quiet_med),
        ("ratio_p99".into(), loud_p99 / quiet_p99),
        ("handshake_quiet_ms".into(), median(&mut quiet_hs)),
        ("handshake_attempts_quiet".into(), f64::from(quiet_attempts)),
        ("handshake_flood_ms".into(), median(&mut flood_hs)),
        ("handshake_flood_p99_ms".into(), quantile(&mut flood_hs, 0.99)),
        ("handshakes_flood".into(), flood_hs.len() as f64),
        ("handshake_attempts_flood".into(), f64::from(flood_attempts)),
        ("peak_rss_quiet".into(), rss_quiet),
        ("peak_rss".into(), rss_flood),
        ("peak_heap".into(), crate::alloc::peak_live_bytes() as f64),
        ("flood_ready_slots".into(), ready as f64),
        ("flood_ready_s".into(), ready_after.as_secs_f64()),
        ("flood_s".into(), flood_secs),
        ("flood_connections_per_s".into(), per_second(during.connections)),
        ("closed_by_server_per_s".into(), per_second(during.closed)),
        ("evicted_setups_per_s".into(), per_second(during.evicted)),
        ("connect_errors".into(), during.connect_errors),
        ("pings_per_s".into(), per_second(during.pings)),
        ("pongs_per_s".into(), per_second(during.pongs)),
    ])
}

/// Sequential echoes of `payload` for `phase`; each round-trip time in µs.
async fn calls_for(
    caller: &vox_core::session::Caller,
    payload: &[u8],
    phase: Duration,
) -> Result<Vec<f64>, BenchError> {
    let t = Instant::now();
    let mut lat = Vec::new();
    while t.elapsed() < phase {
        lat.extend(vox::sequential(caller, payload, 1_000).await?);
    }
    Ok(lat)
}

/// `n` new sessions one after the other: each one's time from the first
/// connect to an established session, in ms (over as many attempts as it
/// took, at most 10 each), and the attempts made in all.
async fn handshakes(addr: SocketAddr, n: usize) -> (Vec<f64>, u32) {
    let mut times = Vec::with_capacity(n);
    let mut attempts = 0u32;
    for _ in 0..n {
        let t = Instant::now();
        for _ in 0..10 {
            attempts += 1;
            if let Ok(session) = vox::client_builder(4096).connect(addr).await {
                times.push(t.elapsed().as_secs_f64() * 1e3);
                let _ = session.handle.shutdown();
                break;
            }
        }
    }
    (times, attempts)
}

/// The flood's counters at one moment.
struct Counts {
    connections: f64,
    closed: f64,
    evicted: f64,
    connect_errors: f64,
    pings: f64,
    pongs: f64,
}

impl Counts {
    fn of(stats: &FloodStats, listener: &vox_core::session::Listener) -> Counts {
        let c = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        Counts {
            connections: c(&stats.connections),
            closed: c(&stats.closed_by_server),
            evicted: listener.evicted_setups() as f64,
            connect_errors: c(&stats.connect_errors),
            pings: c(&stats.pings),
            pongs: c(&stats.pongs),
        }
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            connections: self.connections - earlier.connections,
            closed: self.closed - earlier.closed,
            evicted: self.evicted - earlier.evicted,
            connect_errors: self.connect_errors - earlier.connect_errors,
            pings: self.pings - earlier.pings,
            pongs: self.pongs - earlier.pongs,
        }
    }
}
