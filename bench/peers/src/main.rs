//! The peer benchmark (issue 20): raw tokio framing, tarpc, tonic and
//! vox-core on the same workloads, side by side in one run.
//!
//! `cargo run --release -- [--quick] [--json FILE] [--runs N]
//! [--peers raw,tarpc,tonic,vox] [--workloads a,b] [--transports tcp,memory]`
//!
//! Every cell (peer × transport × workload) runs in a fresh child process
//! (this binary re-executed with `--child PEER TRANSPORT WORKLOAD`), `--runs`
//! times (default 3), the runs of all cells interleaved round by round; a
//! cell's figure is the median of its runs. The table gives each figure
//! with its ratio to raw and to the best peer of its row, then the issue's
//! targets for vox-core as PASS/MISS.

mod common;
mod raw;
mod tarpc_peer;
mod tonic_peer;
mod vox_peer;
mod workloads;

use common::{Peer, Result, Transport};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use workloads::{Metrics, Scale};

/// The peers, in table order.
const PEERS: &[&str] = &["raw", "tarpc", "tonic", "vox"];

/// Workloads that also run over the memory links.
const MEMORY_WORKLOADS: &[&str] = &["sequential", "pipelined", "big", "stream_down", "stream_up"];

/// The rows: metric key, label, unit, whether higher is better.
const ROWS: &[(&str, &str, &str, bool)] = &[
    ("sequential_median_us", "sequential echo, median", "µs", false),
    ("pipelined_calls_per_s", "pipelined, 64 in flight", "calls/s", true),
    ("clients32_calls_per_s", "32 clients, each sequential", "calls/s", true),
    ("big_mib_per_s", "1 MiB echo (`Vec<u8>`)", "MiB/s", true),
    ("stream_down_items_per_s", "stream server→client, `u64`", "items/s", true),
    ("stream_up_items_per_s", "stream client→server, `u64`", "items/s", true),
    ("open_loop_p99_us", "open loop at 20k calls/s, p99", "µs", false),
    ("open_loop_p999_us", "open loop at 20k calls/s, p999", "µs", false),
    ("pipelined_peak_rss_mib", "peak RSS under the pipelined load", "MiB", false),
];

fn streams(peer: &str) -> bool {
    match peer {
        "raw" => raw::Raw::STREAMS,
        "tarpc" => tarpc_peer::Tarpc::STREAMS,
        "tonic" => tonic_peer::Tonic::STREAMS,
        _ => vox_peer::Vox::STREAMS,
    }
}

fn child(args: &[String]) -> Result<()> {
    let [peer, transport, workload, rest @ ..] = args else {
        return Err("usage: --child PEER TRANSPORT WORKLOAD [--quick]".into());
    };
    let transport = Transport::parse(transport).ok_or("unknown transport")?;
    let quick = rest.iter().any(|a| a == "--quick");
    let mut scale = if quick { Scale::QUICK } else { Scale::FULL };
    // For profilers: `PEER_BENCH_SCALE=4` does 4 times the work.
    if let Some(f) = std::env::var("PEER_BENCH_SCALE").ok().and_then(|f| f.parse::<f64>().ok()) {
        scale = scale.times(f);
    }
    // A hung cell must not hang the run.
    let limit = Duration::from_secs(if quick { 60 } else { 300 });
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("child timed out after {limit:?}");
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (peer, workload) = (peer.clone(), workload.clone());
    // The workload runs as a task on the workers (not on the block_on
    // thread, whose every hand-over to a worker would be a thread wake-up).
    let metrics: Metrics = rt.block_on(async move {
        tokio::spawn(async move {
            match peer.as_str() {
                "raw" => workloads::run::<raw::Raw>(&workload, transport, scale).await,
                "tarpc" => workloads::run::<tarpc_peer::Tarpc>(&workload, transport, scale).await,
                "tonic" => workloads::run::<tonic_peer::Tonic>(&workload, transport, scale).await,
                "vox" => workloads::run::<vox_peer::Vox>(&workload, transport, scale).await,
                other => Err(format!("unknown peer {other}").into()),
            }
        })
        .await?
    })?;
    for (k, v) in metrics {
        println!("METRIC {k} {v}");
    }
    // Do not wait for the servers' tasks to wind down.
    std::process::exit(0);
}

struct Options {
    quick: bool,
    json: Option<String>,
    runs: usize,
    peers: Vec<String>,
    workloads: Vec<String>,
    transports: Vec<Transport>,
}

fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default()
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        quick: false,
        json: None,
        runs: 3,
        peers: PEERS.iter().map(|s| s.to_string()).collect(),
        workloads: workloads::WORKLOADS.iter().map(|s| s.to_string()).collect(),
        transports: vec![Transport::Tcp, Transport::Memory],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = Some(it.next().ok_or("--json FILE")?.clone()),
            "--runs" => o.runs = it.next().ok_or("--runs N")?.parse()?,
            "--peers" => o.peers = list(it.next()),
            "--workloads" => o.workloads = list(it.next()),
            "--transports" => {
                o.transports = list(it.next())
                    .iter()
                    .map(|t| Transport::parse(t).ok_or("unknown transport"))
                    .collect::<std::result::Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

/// One cell's runs: metric → values.
type Cell = BTreeMap<String, Vec<f64>>;

fn run_child(exe: &std::path::Path, peer: &str, t: Transport, w: &str, quick: bool) -> Result<Vec<(String, f64)>> {
    let mut cmd = Command::new(exe);
    cmd.args(["--child", peer, t.name(), w]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{peer}/{}/{w} failed ({}): {}",
            t.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("METRIC ") {
            let mut parts = rest.split_whitespace();
            if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                m.push((k.to_string(), v.parse()?));
            }
        }
    }
    Ok(m)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt(v: f64, unit: &str) -> String {
    if v.is_nan() {
        return "–".into();
    }
    match unit {
        "calls/s" | "items/s" if v >= 1e6 => format!("{:.2}M", v / 1e6),
        "calls/s" | "items/s" => format!("{:.1}k", v / 1e3),
        "MiB/s" => format!("{v:.0}"),
        "MiB" => format!("{v:.2}"),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

/// Medians by (transport, metric, peer).
type Table = BTreeMap<(String, String, String), f64>;

fn get(t: &Table, transport: &str, metric: &str, peer: &str) -> f64 {
    t.get(&(transport.to_string(), metric.to_string(), peer.to_string())).copied().unwrap_or(f64::NAN)
}

fn targets(t: &Table) -> Vec<(String, String, bool)> {
    let g = |m: &str, p: &str| get(t, "tcp", m, p);
    let mut out = Vec::new();
    let mut check = |name: &str, parts: Vec<(String, bool)>| {
        if parts.iter().any(|(d, _)| d.contains("NaN")) {
            return;
        }
        let detail = parts.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join("; ");
        out.push((name.to_string(), detail, parts.iter().all(|(_, ok)| *ok)));
    };
    let ratio = |m: &str, a: &str, b: &str| g(m, a) / g(m, b);
    let (pv_t, pv_r) = (ratio("pipelined_calls_per_s", "vox", "tarpc"), ratio("pipelined_calls_per_s", "vox", "raw"));
    check(
        "pipelined: ≥ 1.5x tarpc and ≥ 0.6x raw",
        vec![(format!("{pv_t:.2}x tarpc"), pv_t >= 1.5), (format!("{pv_r:.2}x raw"), pv_r >= 0.6)],
    );
    let (cv_t, cv_r) = (ratio("clients32_calls_per_s", "vox", "tarpc"), ratio("clients32_calls_per_s", "vox", "raw"));
    check(
        "32 clients: ≥ 1.2x tarpc and ≥ 0.8x raw",
        vec![(format!("{cv_t:.2}x tarpc"), cv_t >= 1.2), (format!("{cv_r:.2}x raw"), cv_r >= 0.8)],
    );
    let s = ratio("sequential_median_us", "vox", "raw");
    check("sequential echo: ≤ 1.3x raw", vec![(format!("{s:.2}x raw"), s <= 1.3)]);
    let (o99, o999) = (ratio("open_loop_p99_us", "vox", "raw"), ratio("open_loop_p999_us", "vox", "raw"));
    check(
        "open loop: p99 and p999 ≤ raw's",
        vec![(format!("p99 {o99:.2}x raw"), o99 <= 1.0), (format!("p999 {o999:.2}x raw"), o999 <= 1.0)],
    );
    let (d, u) = (ratio("stream_down_items_per_s", "vox", "tonic"), ratio("stream_up_items_per_s", "vox", "tonic"));
    check(
        "streams: ≥ 1.0x tonic both ways",
        vec![(format!("down {d:.2}x tonic"), d >= 1.0), (format!("up {u:.2}x tonic"), u >= 1.0)],
    );
    let (br, bt) = (ratio("big_mib_per_s", "vox", "raw"), ratio("big_mib_per_s", "vox", "tonic"));
    check(
        "1 MiB echo: ≥ 0.8x raw and ≥ 1.2x tonic",
        vec![(format!("{br:.2}x raw"), br >= 0.8), (format!("{bt:.2}x tonic"), bt >= 1.2)],
    );
    let r = ratio("pipelined_peak_rss_mib", "vox", "tarpc");
    check("peak RSS (pipelined): ≤ tarpc's", vec![(format!("{r:.2}x tarpc"), r <= 1.0)]);
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn parent(o: Options) -> Result<()> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut cells: Vec<(String, Transport, String)> = Vec::new();
    for &t in &o.transports {
        for w in &o.workloads {
            if t == Transport::Memory && !MEMORY_WORKLOADS.contains(&w.as_str()) {
                continue;
            }
            for p in &o.peers {
                if w.starts_with("stream") && !streams(p) {
                    continue;
                }
                cells.push((p.clone(), t, w.clone()));
            }
        }
    }
    let mut results: BTreeMap<usize, Cell> = BTreeMap::new();
    for round in 0..o.runs {
        for (i, (p, t, w)) in cells.iter().enumerate() {
            match run_child(&exe, p, *t, w, o.quick) {
                Ok(metrics) => {
                    for (k, v) in metrics {
                        results.entry(i).or_default().entry(k).or_default().push(v);
                    }
                }
                Err(e) => eprintln!("round {round}: {e}"),
            }
        }
        eprintln!("round {} of {} done ({:.0} s)", round + 1, o.runs, started.elapsed().as_secs_f64());
    }
    let mut table = Table::new();
    let mut runs: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut json_cells = Vec::new();
    for (i, cell) in &results {
        let (p, t, w) = &cells[*i];
        for (k, vs) in cell {
            let m = median(vs);
            table.insert((t.name().to_string(), k.clone(), p.clone()), m);
            runs.insert((t.name().to_string(), k.clone(), p.clone()), vs.len());
            let vals = vs.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
            json_cells.push(format!(
                "{{\"peer\":\"{p}\",\"transport\":\"{}\",\"workload\":\"{w}\",\"metric\":\"{k}\",\"runs\":[{vals}],\"median\":{m}}}",
                t.name()
            ));
        }
    }
    let mut md = String::new();
    md.push_str("| workload | transport | unit |");
    for p in &o.peers {
        md.push_str(&format!(" {p} |"));
    }
    md.push('\n');
    md.push_str("|---|---|---|");
    for _ in &o.peers {
        md.push_str("---:|");
    }
    md.push('\n');
    for &t in &o.transports {
        for &(key, label, unit, higher) in ROWS {
            let vals: Vec<f64> = o.peers.iter().map(|p| get(&table, t.name(), key, p)).collect();
            if vals.iter().all(|v| v.is_nan()) {
                continue;
            }
            let raw = get(&table, t.name(), key, "raw");
            let best = vals
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f64::NAN, |b, v| if b.is_nan() || (higher && v > b) || (!higher && v < b) { v } else { b });
            md.push_str(&format!("| {label} | {} | {unit} |", t.name()));
            for (p, v) in o.peers.iter().zip(vals) {
                // A cell with fewer runs than asked (some failed) is marked.
                let n = runs.get(&(t.name().to_string(), key.to_string(), p.clone())).copied().unwrap_or(0);
                let mark = if n < o.runs { format!(" [{n} of {}]", o.runs) } else { String::new() };
                if v.is_nan() {
                    md.push_str(" – |");
                } else if raw.is_nan() {
                    md.push_str(&format!(" {}{mark} ({:.2}x best) |", fmt(v, unit), v / best));
                } else {
                    md.push_str(&format!(" {}{mark} ({:.2}x raw, {:.2}x best) |", fmt(v, unit), v / raw, v / best));
                }
            }
            md.push('\n');
        }
    }
    let tg = targets(&table);
    md.push_str("\n| target (vox-core, TCP) | measured | result |\n|---|---|---|\n");
    for (name, detail, ok) in &tg {
        md.push_str(&format!("| {name} | {detail} | {} |\n", if *ok { "PASS" } else { "MISS" }));
    }
    let secs = started.elapsed().as_secs_f64();
    md.push_str(&format!(
        "\nmode: {}; {} runs per cell, each a fresh process; run took {secs:.0} s\n",
        if o.quick { "--quick" } else { "full" },
        o.runs
    ));
    print!("{md}");
    if let Some(path) = o.json {
        let tj = tg
            .iter()
            .map(|(n, d, ok)| format!("{{\"target\":\"{}\",\"measured\":\"{}\",\"pass\":{ok}}}", esc(n), esc(d)))
            .collect::<Vec<_>>()
            .join(",");
        let json = format!(
            "{{\"quick\":{},\"runs\":{},\"seconds\":{secs},\"cells\":[{}],\"targets\":[{tj}]}}\n",
            o.quick,
            o.runs,
            json_cells.join(",")
        );
        std::fs::write(&path, json)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    parent(options(&args)?)
}
