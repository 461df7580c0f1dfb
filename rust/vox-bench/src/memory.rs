//! Memory measurements, each run in a child process of its own so that its
//! peak RSS (`VmHWM`) and live-byte counts are not disturbed by the other
//! workloads.

use crate::alloc::{live_bytes, peak_live_bytes};
use crate::raw;
use crate::vox::{self, Transport};
use crate::{BenchError, Scale};
use std::sync::{Arc, Mutex};
use vox_core::wire::{ConnectionSettings, Metadata};

/// A `VmHWM`/`VmRSS`-style line of `/proc/self/status`, in bytes.
pub fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn peak_rss() -> f64 {
    proc_status_bytes("VmHWM:").unwrap_or(0) as f64
}

/// Runs the child measurement `name`; returns `key=value` pairs to print.
pub async fn child(name: &str, scale: &Scale) -> Result<Vec<(String, f64)>, BenchError> {
    match name {
        "idle-connection" => idle_connections(1_000).await,
        "idle-channel" => idle_channels(10_000).await,
        // Issue 16: a listener under a flood of hostile raw peers.
        "hostile-peer" => crate::hostile::hostile_peer(scale).await,
        "rss-vox-pipelined" => {
            let held: vox::Held = Arc::new(Mutex::new(Vec::new()));
            let p = vox::pair(Transport::Tcp, vox::server_builder(held, 4096), vox::client_builder(4096)).await?;
            vox::pipelined(&p.client.root.caller, &[7u8; 64], scale.pipelined, 64).await?;
            Ok(vec![("peak_rss".into(), peak_rss()), ("peak_heap".into(), peak_live_bytes() as f64)])
        }
        "rss-raw-pipelined" => {
            let addr = raw::tcp_server().await?;
            let mut c = raw::tcp_client(addr, raw::Mode::Echo).await?;
            c.pipelined(&[7u8; 64], scale.pipelined, 64).await?;
            Ok(vec![("peak_rss".into(), peak_rss()), ("peak_heap".into(), peak_live_bytes() as f64)])
        }
        // The raw baseline's sequential echo alone, to compare with `profile-sequential`.
        "profile-raw-sequential" => {
            let addr = raw::tcp_server().await?;
            let mut c = raw::tcp_client(addr, raw::Mode::Echo).await?;
            let t = std::time::Instant::now();
            let n = c.sequential(&[7u8; 64], scale.sequential * 10).await?.len() as f64;
            Ok(vec![("per_second".into(), n / t.elapsed().as_secs_f64())])
        }
        // For profilers (`perf record -- vox-bench --child profile-stream-down`):
        // one vox workload over TCP (or the memory link, with `-memory`), nothing else.
        profile if profile.starts_with("profile-") => {
            let (name, transport) = match profile.strip_suffix("-memory") {
                Some(name) => (name, Transport::Memory),
                None => (profile, Transport::Tcp),
            };
            if !matches!(
                name,
                "profile-sequential"
                    | "profile-pipelined"
                    | "profile-big"
                    | "profile-stream-down"
                    | "profile-stream-up"
            ) {
                return Err(BenchError::Usage(format!("unknown child measurement {profile:?}")));
            }
            let held: vox::Held = Arc::new(Mutex::new(Vec::new()));
            let p = vox::pair(transport, vox::server_builder(held, 4096), vox::client_builder(4096)).await?;
            let caller = &p.client.root.caller;
            let t = std::time::Instant::now();
            let n = match name {
                "profile-sequential" => vox::sequential(caller, &[7u8; 64], scale.sequential * 10).await?.len() as f64,
                "profile-pipelined" => {
                    vox::pipelined(caller, &[7u8; 64], scale.pipelined, 64).await?;
                    scale.pipelined as f64
                }
                // MiB/s of 1 MiB echoes.
                "profile-big" => {
                    let n = scale.big * 4;
                    vox::sequential_bytes(caller, &bytes::Bytes::from(vec![0xa5u8; 1 << 20]), n).await?;
                    n as f64
                }
                "profile-stream-down" => {
                    vox::stream_down(caller, scale.stream).await?;
                    scale.stream as f64
                }
                _ => {
                    vox::stream_up(caller, scale.stream).await?;
                    scale.stream as f64
                }
            };
            Ok(vec![("per_second".into(), n / t.elapsed().as_secs_f64())])
        }
        other => Err(BenchError::Usage(format!("unknown child measurement {other:?}"))),
    }
}

/// Live bytes per idle virtual connection, both ends (client and server
/// sessions live in this process), over the memory link.
async fn idle_connections(n: usize) -> Result<Vec<(String, f64)>, BenchError> {
    let held: vox::Held = Arc::new(Mutex::new(Vec::new()));
    let p = vox::pair(Transport::Memory, vox::server_builder(held, 4096), vox::client_builder(4096)).await?;
    let h = &p.client.handle;
    // Warm-up: lazily grown tables and queues reach their working size.
    for _ in 0..16 {
        let c = h.open_connection(ConnectionSettings::default(), Metadata::new()).await?;
        vox::settle(&c.caller).await?;
        h.close_connection(c.id, Metadata::new()).await?;
    }
    vox::settle(&p.client.root.caller).await?;
    let mut conns = Vec::with_capacity(n);
    let before = live_bytes();
    for _ in 0..n {
        conns.push(h.open_connection(ConnectionSettings::default(), Metadata::new()).await?);
    }
    vox::settle(&p.client.root.caller).await?;
    let after = live_bytes();
    let per = (after - before) as f64 / n as f64;
    Ok(vec![("bytes_per_connection".into(), per), ("connections".into(), n as f64)])
}

/// Live bytes per idle open channel (both ends), and peak RSS with `n` open
/// on one connection, over the memory link.
async fn idle_channels(n: usize) -> Result<Vec<(String, f64)>, BenchError> {
    let held: vox::Held = Arc::new(Mutex::new(Vec::with_capacity(n + 16)));
    let p =
        vox::pair(Transport::Memory, vox::server_builder(held.clone(), n + 64), vox::client_builder(n + 64)).await?;
    let caller = &p.client.root.caller;
    let mut kept = Vec::with_capacity(n + 16);
    // Warm-up, as above.
    for _ in 0..16 {
        kept.push(vox::hold_channel(caller).await?);
    }
    vox::settle(caller).await?;
    let before = live_bytes();
    for _ in 0..n {
        kept.push(vox::hold_channel(caller).await?);
    }
    vox::settle(caller).await?;
    let after = live_bytes();
    let open = held.lock().unwrap_or_else(|e| e.into_inner()).len();
    if open != n + 16 {
        return Err(BenchError::Check("the server does not hold every channel"));
    }
    let stats = caller.channel_stats();
    let per = (after - before) as f64 / n as f64;
    Ok(vec![
        ("bytes_per_channel".into(), per),
        ("channels".into(), n as f64),
        ("peak_rss".into(), peak_rss()),
        ("open_channels_client".into(), stats.open as f64),
    ])
}
