//! The workloads, the same for every peer. Each runs inside one child
//! process (`--child PEER TRANSPORT WORKLOAD`), server and client in that
//! process on one multi-threaded tokio runtime, and returns its metrics.

use crate::common::{Client, Peer, Result, Transport};
use std::time::{Duration, Instant};

/// 64 B payloads for the small-call workloads.
pub const SMALL: usize = 64;
/// The large echo's payload.
pub const BIG: usize = 1 << 20;

/// The workloads, by name on the command line.
pub const WORKLOADS: &[&str] =
    &["sequential", "pipelined", "clients32", "big", "stream_down", "stream_up", "open_loop"];

/// How much work each workload does.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Sequential echoes (latencies measured).
    pub sequential: usize,
    /// Pipelined echoes in all.
    pub pipelined: usize,
    /// Sequential echoes per client of the 32.
    pub per_client: usize,
    /// 1 MiB echoes.
    pub big: usize,
    /// Items per stream.
    pub stream: u64,
    /// Open-loop duration.
    pub open_loop: Duration,
}

impl Scale {
    /// The full run.
    pub const FULL: Scale = Scale {
        sequential: 20_000,
        pipelined: 200_000,
        per_client: 2_000,
        big: 128,
        stream: 2_000_000,
        open_loop: Duration::from_secs(3),
    };
    /// This scale with every count multiplied by `f`.
    pub fn times(self, f: f64) -> Scale {
        let n = |v: usize| ((v as f64 * f) as usize).max(1);
        Scale {
            sequential: n(self.sequential),
            pipelined: n(self.pipelined),
            per_client: n(self.per_client),
            big: n(self.big),
            stream: n(self.stream as usize) as u64,
            open_loop: self.open_loop.mul_f64(f),
        }
    }

    /// `--quick`.
    pub const QUICK: Scale = Scale {
        sequential: 3_000,
        pipelined: 30_000,
        per_client: 300,
        big: 24,
        stream: 300_000,
        open_loop: Duration::from_millis(500),
    };
}

/// Pipelined calls in flight.
pub const IN_FLIGHT: usize = 64;
/// Clients of the 32-client workload.
pub const CLIENTS: usize = 32;
/// The open loop's offered rate.
pub const OPEN_RATE: f64 = 20_000.0;

/// A metric: name and value.
pub type Metrics = Vec<(&'static str, f64)>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

async fn echo_checked<C: Client>(c: &C, payload: &[u8]) -> Result<()> {
    let back = c.echo(payload.to_vec()).await?;
    if back.len() != payload.len() {
        return Err("echo came back with the wrong length".into());
    }
    Ok(())
}

async fn warm<C: Client>(c: &C) -> Result<()> {
    let payload = vec![7u8; SMALL];
    for _ in 0..200 {
        echo_checked(c, &payload).await?;
    }
    Ok(())
}

/// Peak resident set of this process so far, MiB (`VmHWM`).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Runs `workload` against peer `P` over `transport`.
pub async fn run<P: Peer>(workload: &str, transport: Transport, scale: Scale) -> Result<Metrics> {
    let peer = P::start(transport).await?;
    let c = peer.connect().await?;
    warm(&c).await?;
    let small = vec![7u8; SMALL];
    match workload {
        "sequential" => {
            let mut lat = Vec::with_capacity(scale.sequential);
            for _ in 0..scale.sequential {
                let t = Instant::now();
                echo_checked(&c, &small).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(vec![("sequential_median_us", percentile(&sorted(lat), 0.5))])
        }
        "pipelined" => {
            let t = Instant::now();
            let mut tasks = Vec::with_capacity(IN_FLIGHT);
            for k in 0..IN_FLIGHT {
                let c = c.clone();
                let small = small.clone();
                let n = scale.pipelined / IN_FLIGHT + usize::from(k < scale.pipelined % IN_FLIGHT);
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n {
                        echo_checked(&c, &small).await?;
                    }
                    Ok::<_, crate::common::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let rate = scale.pipelined as f64 / t.elapsed().as_secs_f64();
            Ok(vec![("pipelined_calls_per_s", rate), ("pipelined_peak_rss_mib", peak_rss_mib())])
        }
        "clients32" => {
            let mut clients = vec![c];
            for _ in 1..CLIENTS {
                let c = peer.connect().await?;
                warm(&c).await?;
                clients.push(c);
            }
            let t = Instant::now();
            let mut tasks = Vec::with_capacity(CLIENTS);
            for c in clients {
                let small = small.clone();
                let n = scale.per_client;
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n {
                        echo_checked(&c, &small).await?;
                    }
                    Ok::<_, crate::common::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let rate = (CLIENTS * scale.per_client) as f64 / t.elapsed().as_secs_f64();
            Ok(vec![("clients32_calls_per_s", rate)])
        }
        "big" => {
            let big = vec![0x5au8; BIG];
            echo_checked(&c, &big).await?;
            let t = Instant::now();
            for _ in 0..scale.big {
                echo_checked(&c, &big).await?;
            }
            let mib = (scale.big * BIG) as f64 / (1 << 20) as f64;
            Ok(vec![("big_mib_per_s", mib / t.elapsed().as_secs_f64())])
        }
        "stream_down" | "stream_up" => {
            let down = workload == "stream_down";
            let run = |n| async move { if down { c.stream_down(n).await } else { c.stream_up(n).await } };
            let t = Instant::now();
            let got = run(scale.stream).await?;
            if got != scale.stream {
                return Err(format!("stream: {got} items of {}", scale.stream).into());
            }
            let rate = scale.stream as f64 / t.elapsed().as_secs_f64();
            Ok(vec![(if down { "stream_down_items_per_s" } else { "stream_up_items_per_s" }, rate)])
        }
        "open_loop" => {
            let (p99, p999) = open_loop(c, scale.open_loop).await?;
            Ok(vec![("open_loop_p99_us", p99), ("open_loop_p999_us", p999)])
        }
        other => Err(format!("unknown workload {other}").into()),
    }
}

/// Calls at `OPEN_RATE` for `duration`, each call its own task, started by a
/// generator thread on its schedule whatever the answers do; a call's latency
/// runs from its scheduled start (so a peer that falls behind is charged
/// for the wait). Returns p99 and p999 in µs.
async fn open_loop<C: Client>(c: C, duration: Duration) -> Result<(f64, f64)> {
    let n = (OPEN_RATE * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / OPEN_RATE);
    let handle = tokio::runtime::Handle::current();
    let generator = std::thread::spawn(move || {
        let start = Instant::now();
        let mut calls = Vec::with_capacity(n);
        for i in 0..n {
            let due = start + interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let c = c.clone();
            calls.push(handle.spawn(async move {
                echo_checked(&c, &[7u8; SMALL]).await?;
                Ok::<_, crate::common::Error>(due.elapsed().as_secs_f64() * 1e6)
            }));
        }
        calls
    });
    let calls = tokio::task::spawn_blocking(move || generator.join()).await?.map_err(|_| "generator panicked")?;
    let mut lat = Vec::with_capacity(n);
    for call in calls {
        lat.push(call.await??);
    }
    let lat = sorted(lat);
    Ok((percentile(&lat, 0.99), percentile(&lat, 0.999)))
}
