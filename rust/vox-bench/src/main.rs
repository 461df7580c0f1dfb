//! `vox-bench`: vox-core against raw length-prefixed framing, in the same
//! run (issue 9).
//!
//! Every throughput or latency figure is measured in rounds that alternate
//! the baseline and vox-core (which one goes first alternates too), and the
//! table shows medians over the rounds and their ratio. Memory figures come
//! from child processes of this binary (`--child <name>`), each measuring
//! one thing with the counting allocator and `/proc/self/status`.
//!
//! ```text
//! cargo run -p vox-bench --release -- [--quick] [--rounds N] [--credit N] [--json PATH]
//! ```
//!
//! With the cargo feature `transports`, the run also has TLS, WebSocket and
//! QUIC rows, each against vox over TCP (`secure.rs`).
//!
//! `--credit N` gives the stream channels an initial credit of `N` instead of
//! vox-core's default (16), to show how much the credit window limits streaming.
//!
//! ```text
//! ```

mod alloc;
mod hostile;
mod memory;
mod raw;
#[cfg(feature = "transports")]
mod secure;
mod stats;
mod vox;

use stats::{median, quantile, secs};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use vox::Transport;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Socket or file i/o.
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// A vox session failed.
    #[error("session failed: {0}")]
    Session(#[from] vox_core::session::SessionError),
    /// A vox call failed.
    #[error("call failed: {0}")]
    Call(#[from] vox_core::driver::CallError),
    /// A vox channel failed.
    #[error("channel failed: {0}")]
    Channel(#[from] vox_core::driver::ChannelError),
    /// A workload returned something other than what it was sent.
    #[error("check failed: {0}")]
    Check(&'static str),
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// A child measurement process failed.
    #[error("child measurement {name} failed: {detail}")]
    Child {
        /// Which measurement.
        name: String,
        /// What went wrong.
        detail: String,
    },
}

/// How much work each measurement does.
#[derive(Clone, Debug)]
pub struct Scale {
    quick: bool,
    rounds: usize,
    sequential: usize,
    /// Total calls of the pipelined echo (64 in flight).
    pub pipelined: usize,
    big: usize,
    stream: u64,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale { quick, rounds: 5, sequential: 2_000, pipelined: 20_000, big: 16, stream: 200_000 }
        } else {
            Scale { quick, rounds: 7, sequential: 10_000, pipelined: 100_000, big: 64, stream: 1_000_000 }
        }
    }
}

const IN_FLIGHT: usize = 64;
const SMALL: usize = 64;
const BIG: usize = 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

/// A performance target and whether the figure meets it.
#[derive(Clone, Debug)]
struct Target {
    text: &'static str,
    pass: bool,
}

/// One line of the table.
#[derive(Clone, Debug)]
struct Row {
    workload: &'static str,
    transport: &'static str,
    unit: &'static str,
    vox: f64,
    baseline: Option<f64>,
    target: Option<Target>,
}

impl Row {
    /// vox / baseline, for every row (for latency and memory, lower is better).
    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.vox / b)
    }
}

struct Args {
    scale: Scale,
    json: Option<String>,
    child: Option<String>,
}

fn parse_args() -> Result<Args, BenchError> {
    let mut quick = false;
    let mut rounds = None;
    let mut json = None;
    let mut child = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = Some(it.next().ok_or_else(|| BenchError::Usage("--json needs a path".into()))?),
            "--child" => child = Some(it.next().ok_or_else(|| BenchError::Usage("--child needs a name".into()))?),
            "--credit" => {
                let n = it.next().and_then(|s| s.parse().ok());
                vox::set_credit(n.ok_or_else(|| BenchError::Usage("--credit needs a number".into()))?);
            }
            "--rounds" => {
                let n = it.next().and_then(|s| s.parse().ok()).filter(|n: &usize| *n > 0);
                rounds = Some(n.ok_or_else(|| BenchError::Usage("--rounds needs a positive number".into()))?);
            }
            "-h" | "--help" => {
                return Err(BenchError::Usage("vox-bench [--quick] [--rounds N] [--credit N] [--json PATH]".into()));
            }
            other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let mut scale = Scale::new(quick);
    if let Some(r) = rounds {
        scale.rounds = r;
    }
    Ok(Args { scale, json, child })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vox-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Runs a measurement as a task on a fresh runtime's workers, as servers
/// and clients run in practice, rather than on the thread that waits for
/// it, where every hand-over to a worker would cost a thread wake-up (for
/// the baseline and for vox alike).
fn in_task<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, BenchError>> + Send + 'static,
) -> Result<T, BenchError> {
    runtime()?.block_on(async { tokio::spawn(work).await.map_err(|e| BenchError::Io(std::io::Error::other(e)))? })
}

fn run() -> Result<(), BenchError> {
    let args = parse_args()?;
    let scale = args.scale;
    if let Some(name) = args.child {
        let pairs = in_task({
            let scale = scale.clone();
            async move { memory::child(&name, &scale).await }
        })?;
        let mut line = String::from("RESULT");
        for (k, v) in pairs {
            let _ = write!(line, " {k}={v}");
        }
        println!("{line}");
        return Ok(());
    }
    let started = std::time::Instant::now();
    eprintln!(
        "vox-bench: {} rounds; sequential {} calls, pipelined {} calls ({} in flight), {} x 1 MiB, streams of {} items",
        scale.rounds, scale.sequential, scale.pipelined, IN_FLIGHT, scale.big, scale.stream
    );
    let mut rows = Vec::new();
    for transport in [Transport::Memory, Transport::Tcp] {
        eprintln!("vox-bench: {} ...", transport.name());
        let scale = scale.clone();
        rows.extend(in_task(async move { throughput(&scale, transport).await })?);
    }
    #[cfg(feature = "transports")]
    {
        eprintln!("vox-bench: tls, ws, quic against tcp ...");
        rows.extend(in_task({
            let scale = scale.clone();
            async move { secure::rows(&scale).await }
        })?);
    }
    eprintln!("vox-bench: memory ...");
    rows.extend(memory_rows(&scale)?);
    eprintln!("vox-bench: hostile peers ...");
    rows.extend(hostile_rows(&scale)?);
    let table = render(&rows);
    println!("{table}");
    let misses = rows.iter().filter(|r| r.target.as_ref().is_some_and(|t| !t.pass)).count();
    let targets = rows.iter().filter(|r| r.target.is_some()).count();
    println!("targets met: {} of {targets}; run took {:.1} s", targets - misses, started.elapsed().as_secs_f64());
    if let Some(path) = args.json {
        std::fs::write(&path, json(&rows, &scale))?;
        eprintln!("vox-bench: wrote {path}");
    }
    Ok(())
}

/// Per-round figures of one transport.
#[derive(Default)]
struct Rounds {
    seq_med: [Vec<f64>; 2],
    seq_p99: [Vec<f64>; 2],
    pipelined: [Vec<f64>; 2],
    big: [Vec<f64>; 2],
    big_typed: [Vec<f64>; 2],
    down: [Vec<f64>; 2],
    up: [Vec<f64>; 2],
}

/// A target's text and its test on (vox, baseline).
type TargetCheck = (&'static str, fn(f64, f64) -> bool);

const BASE: usize = 0;
const VOX: usize = 1;

async fn throughput(scale: &Scale, transport: Transport) -> Result<Vec<Row>, BenchError> {
    let held: vox::Held = Arc::new(Mutex::new(Vec::new()));
    let pair = vox::pair(transport, vox::server_builder(held, 4096), vox::client_builder(4096)).await?;
    let caller = &pair.client.root.caller;
    let small = vec![0x5au8; SMALL];
    let big = vec![0xa5u8; BIG];

    // Raw baseline connections, one per server mode.
    macro_rules! raw_clients {
        ($connect:expr) => {{
            let echo = $connect(raw::Mode::Echo).await?;
            let produce = $connect(raw::Mode::Produce).await?;
            let sink = $connect(raw::Mode::Sink).await?;
            (echo, produce, sink)
        }};
    }
    let mut r = Rounds::default();
    match transport {
        Transport::Tcp => {
            let addr = raw::tcp_server().await?;
            let (mut echo, mut produce, mut sink) = raw_clients!(|m| raw::tcp_client(addr, m));
            rounds(scale, caller, &small, &big, &mut r, &mut echo, &mut produce, &mut sink).await?;
        }
        Transport::Memory => {
            let (mut echo, mut produce, mut sink) = raw_clients!(raw::pipe_client);
            rounds(scale, caller, &small, &big, &mut r, &mut echo, &mut produce, &mut sink).await?;
        }
    }
    let _ = pair.client.handle.shutdown();
    let tcp = transport == Transport::Tcp;
    let t = transport.name();
    let row = |workload, unit, figures: &mut [Vec<f64>; 2], target: Option<TargetCheck>| {
        let (base, vox) = (median(&mut figures[BASE]), median(&mut figures[VOX]));
        Row {
            workload,
            transport: t,
            unit,
            vox,
            baseline: Some(base),
            target: target.map(|(text, pass)| Target { text, pass: pass(vox, base) }),
        }
    };
    Ok(vec![
        row(
            "sequential echo 64 B, median latency",
            "µs",
            &mut r.seq_med,
            Some(("≤ 1.5x baseline", |v, b| v <= 1.5 * b)),
        ),
        row("sequential echo 64 B, p99 latency", "µs", &mut r.seq_p99, None),
        row(
            "pipelined echo 64 B, 64 in flight",
            "calls/s",
            &mut r.pipelined,
            tcp.then_some(("≥ 0.5x baseline", |v, b| v >= 0.5 * b)),
        ),
        row("echo 1 MiB", "MiB/s", &mut r.big_typed, Some(("≥ 0.6x baseline", |v, b| v >= 0.6 * b))),
        row("echo 1 MiB, call_raw with shared Bytes", "MiB/s", &mut r.big, None),
        row(
            "stream u64 server→client",
            "items/s",
            &mut r.down,
            tcp.then_some(("≥ 1,000,000 items/s", |v, _| v >= 1e6)),
        ),
        row("stream u64 client→server", "items/s", &mut r.up, tcp.then_some(("≥ 1,000,000 items/s", |v, _| v >= 1e6))),
    ])
}

#[allow(clippy::too_many_arguments)]
async fn rounds<R, W>(
    scale: &Scale,
    caller: &vox_core::session::Caller,
    small: &[u8],
    big: &[u8],
    r: &mut Rounds,
    echo: &mut raw::RawClient<R, W>,
    produce: &mut raw::RawClient<R, W>,
    sink: &mut raw::RawClient<R, W>,
) -> Result<(), BenchError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Warm-up (not recorded).
    echo.sequential(small, 200).await?;
    vox::sequential(caller, small, 200).await?;
    echo.pipelined(small, 2_000, IN_FLIGHT).await?;
    vox::pipelined(caller, small, 2_000, IN_FLIGHT).await?;
    produce.produce(10_000).await?;
    vox::stream_down(caller, 10_000).await?;
    let n_stream = scale.stream as f64;
    let big_bytes = bytes::Bytes::copy_from_slice(big);
    let mib = (scale.big * big.len()) as f64 / MIB;
    for round in 0..scale.rounds {
        // Alternate which side goes first, so drift in the machine's load
        // does not always favour the same side.
        let order = if round % 2 == 0 { [BASE, VOX] } else { [VOX, BASE] };
        for side in order {
            let mut lat = if side == BASE {
                echo.sequential(small, scale.sequential).await?
            } else {
                vox::sequential(caller, small, scale.sequential).await?
            };
            r.seq_p99[side].push(quantile(&mut lat, 0.99));
            r.seq_med[side].push(median(&mut lat));
        }
        for side in order {
            let d = if side == BASE {
                echo.pipelined(small, scale.pipelined, IN_FLIGHT).await?
            } else {
                vox::pipelined(caller, small, scale.pipelined, IN_FLIGHT).await?
            };
            r.pipelined[side].push(scale.pipelined as f64 / secs(d));
        }
        for side in order {
            let t = std::time::Instant::now();
            if side == BASE {
                for _ in 0..scale.big {
                    echo.sequential(big, 1).await?;
                }
                let rate = mib / secs(t.elapsed());
                r.big[side].push(rate);
                r.big_typed[side].push(rate);
            } else {
                vox::sequential_bytes(caller, &big_bytes, scale.big).await?;
                r.big[side].push(mib / secs(t.elapsed()));
                let t = std::time::Instant::now();
                vox::sequential(caller, big, scale.big).await?;
                r.big_typed[side].push(mib / secs(t.elapsed()));
            }
        }
        for side in order {
            let d = if side == BASE {
                produce.produce(scale.stream).await?
            } else {
                vox::stream_down(caller, scale.stream).await?
            };
            r.down[side].push(n_stream / secs(d));
        }
        for side in order {
            let d = if side == BASE {
                sink.sink(scale.stream).await?
            } else {
                vox::stream_up(caller, scale.stream).await?
            };
            r.up[side].push(n_stream / secs(d));
        }
    }
    Ok(())
}

/// Runs `--child name` in a fresh process and parses its `RESULT` line.
fn child(name: &str, scale: &Scale) -> Result<Vec<(String, f64)>, BenchError> {
    let fail = |detail: String| BenchError::Child { name: name.to_string(), detail };
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--child", name]);
    if scale.quick {
        cmd.arg("--quick");
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let line = stdout.lines().find(|l| l.starts_with("RESULT")).ok_or_else(|| fail("no RESULT line".into()))?;
    line.split_whitespace()
        .skip(1)
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| fail(format!("bad pair {kv:?}")))?;
            Ok((k.to_string(), v.parse::<f64>().map_err(|e| fail(format!("{kv:?}: {e}")))?))
        })
        .collect()
}

fn get(pairs: &[(String, f64)], key: &str) -> f64 {
    pairs.iter().find(|(k, _)| k == key).map_or(f64::NAN, |(_, v)| *v)
}

fn memory_rows(scale: &Scale) -> Result<Vec<Row>, BenchError> {
    let conn = child("idle-connection", scale)?;
    let chan = child("idle-channel", scale)?;
    let vox_rss = child("rss-vox-pipelined", scale)?;
    let raw_rss = child("rss-raw-pipelined", scale)?;
    let per_conn = get(&conn, "bytes_per_connection");
    let per_chan = get(&chan, "bytes_per_channel");
    let rss = get(&vox_rss, "peak_rss") / MIB;
    Ok(vec![
        Row {
            workload: "idle virtual connection, heap (both ends)",
            transport: "memory",
            unit: "bytes",
            vox: per_conn,
            baseline: None,
            target: Some(Target { text: "≤ 4096 B", pass: per_conn <= 4096.0 }),
        },
        Row {
            workload: "idle open channel, heap (both ends)",
            transport: "memory",
            unit: "bytes",
            vox: per_chan,
            baseline: None,
            target: Some(Target { text: "≤ 256 B", pass: per_chan <= 256.0 }),
        },
        Row {
            workload: "peak RSS, 10,000 channels open on one connection",
            transport: "memory",
            unit: "MiB",
            vox: get(&chan, "peak_rss") / MIB,
            baseline: None,
            target: None,
        },
        Row {
            workload: "peak RSS, pipelined echo load (whole process)",
            transport: "tcp",
            unit: "MiB",
            vox: rss,
            baseline: Some(get(&raw_rss, "peak_rss") / MIB),
            target: Some(Target { text: "≤ 5 MiB", pass: rss <= 5.0 }),
        },
    ])
}

/// The `hostile-peer` child: a well-behaved session's latency while raw
/// peers flood the listener (baseline: the same session without the flood),
/// and the process's peak RSS meanwhile.
fn hostile_rows(scale: &Scale) -> Result<Vec<Row>, BenchError> {
    let h = child("hostile-peer", scale)?;
    let p99 = get(&h, "p99_flood_us");
    let row = |workload, unit, vox, baseline, target| Row { workload, transport: "tcp", unit, vox, baseline, target };
    Ok(vec![
        row(
            "sequential echo 64 B during a hostile flood, median latency",
            "µs",
            get(&h, "median_flood_us"),
            Some(get(&h, "median_quiet_us")),
            None,
        ),
        row(
            "sequential echo 64 B during a hostile flood, p99 latency",
            "µs",
            p99,
            Some(get(&h, "p99_quiet_us")),
            Some(Target { text: "≤ 250 ms", pass: p99 <= 250_000.0 }),
        ),
        row("new session's handshake during a hostile flood", "ms", get(&h, "handshake_flood_ms"), None, None),
        row(
            "peak RSS during a hostile flood (whole process)",
            "MiB",
            get(&h, "peak_rss") / MIB,
            Some(get(&h, "peak_rss_quiet") / MIB),
            None,
        ),
    ])
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn render(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | transport | unit | vox | baseline | vox/baseline | target | result |\n|---|---|---|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.transport,
            r.unit,
            num(r.vox),
            r.baseline.map_or("—".into(), num),
            r.ratio().map_or("—".into(), |x| format!("{x:.2}x")),
            r.target.as_ref().map_or("—", |t| t.text),
            r.target.as_ref().map_or("", |t| if t.pass { "PASS" } else { "MISS" }),
        );
    }
    s.push_str("\nvox/baseline is vox divided by the baseline in every row: higher is better for rates, lower for latency and memory.\n");
    s
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

fn json(rows: &[Row], scale: &Scale) -> String {
    let mut s = format!(
        "{{\n  \"quick\": {},\n  \"rounds\": {},\n  \"ratio\": \"vox / baseline\",\n  \"rows\": [\n",
        scale.quick, scale.rounds
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {{\"workload\": {}, \"transport\": {}, \"unit\": {}, \"vox\": {}, \"baseline\": {}, \"ratio\": {}, \"target\": {}, \"pass\": {}}}{}",
            json_str(r.workload),
            json_str(r.transport),
            json_str(r.unit),
            json_num(Some(r.vox)),
            json_num(r.baseline),
            json_num(r.ratio()),
            r.target.as_ref().map_or("null".into(), |t| json_str(t.text)),
            r.target.as_ref().map_or("null".into(), |t| t.pass.to_string()),
            if i + 1 < rows.len() { "," } else { "" },
        );
    }
    s.push_str("  ]\n}\n");
    s
}
