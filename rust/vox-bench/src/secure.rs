//! What TLS, WebSocket and QUIC links cost relative to plain TCP (issue 19):
//! the same vox session workloads (sequential and pipelined 64 B echo) over
//! each transport, in rounds that alternate with a vox session over TCP
//! loopback. The "baseline" of these rows is vox over TCP, so the ratio is
//! the transport's cost.
//!
//! TLS and QUIC use a certificate for localhost signed at start (rcgen);
//! TLS 1.3 with rustls' *ring* provider, as vox-core's `tls` feature.

use crate::stats::{median, secs};
use crate::vox::{self, Held};
use crate::{BenchError, IN_FLIGHT, Row, SMALL, Scale};
use std::sync::{Arc, Mutex};
use vox_core::link::tls::{self, rustls, rustls::pki_types::PrivatePkcs8KeyDer};

/// A transport measured against TCP.
#[derive(Clone, Copy, Debug)]
enum Secure {
    Tls,
    Ws,
    Quic,
}

impl Secure {
    fn name(self) -> &'static str {
        match self {
            Secure::Tls => "tls",
            Secure::Ws => "ws",
            Secure::Quic => "quic",
        }
    }
}

/// A certificate for localhost: the server's rustls config and a client
/// config that trusts exactly it.
fn configs() -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), BenchError> {
    let fail = |e: &dyn std::fmt::Display| BenchError::Usage(format!("making the bench certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| fail(&e))?;
    let server =
        tls::server_config(vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into(), None)
            .map_err(|e| fail(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).map_err(|e| fail(&e))?;
    Ok((server, tls::client_config(roots, None).map_err(|e| fail(&e))?))
}

/// A session pair over `kind`.
async fn pair(kind: Secure) -> Result<vox::Pair, BenchError> {
    let (server_tls, client_tls) = configs()?;
    let held: Held = Arc::new(Mutex::new(Vec::new()));
    let (server, client) = (vox::server_builder(held, 4096), vox::client_builder(4096));
    let listener = match kind {
        Secure::Tls => server.listen_tls("127.0.0.1:0", server_tls).await?,
        Secure::Ws => server.listen_ws("127.0.0.1:0").await?,
        Secure::Quic => server.listen_quic("127.0.0.1:0", server_tls).await?,
    };
    let addr = listener.local_addr()?;
    let connect = async {
        match kind {
            Secure::Tls => client.connect_tls(addr, "localhost", client_tls).await,
            Secure::Ws => client.connect_ws(&format!("ws://{addr}/")).await,
            Secure::Quic => client.connect_quic(addr, "localhost", client_tls).await,
        }
    };
    let (s, c) = tokio::join!(listener.accept(), connect);
    Ok(vox::Pair { server: s?, client: c? })
}

/// Sequential median latency (µs) and pipelined rate (calls/s) of TCP
/// (index 0) and `kind` (index 1), one figure per round.
#[derive(Default)]
struct Figures {
    seq: [Vec<f64>; 2],
    pipelined: [Vec<f64>; 2],
}

async fn measure(scale: &Scale, kind: Secure) -> Result<Vec<Row>, BenchError> {
    let tcp = vox::pair(
        vox::Transport::Tcp,
        vox::server_builder(Arc::new(Mutex::new(Vec::new())), 4096),
        vox::client_builder(4096),
    )
    .await?;
    let other = pair(kind).await?;
    let callers = [&tcp.client.root.caller, &other.client.root.caller];
    let small = vec![0x5au8; SMALL];
    for caller in callers {
        vox::sequential(caller, &small, 200).await?;
        vox::pipelined(caller, &small, 2_000, IN_FLIGHT).await?;
    }
    let mut f = Figures::default();
    for round in 0..scale.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let mut lat = vox::sequential(callers[side], &small, scale.sequential).await?;
            f.seq[side].push(median(&mut lat));
        }
        for side in order {
            let d = vox::pipelined(callers[side], &small, scale.pipelined, IN_FLIGHT).await?;
            f.pipelined[side].push(scale.pipelined as f64 / secs(d));
        }
    }
    let _ = tcp.client.handle.shutdown();
    let _ = other.client.handle.shutdown();
    let row = |workload, unit, figures: &mut [Vec<f64>; 2]| Row {
        workload,
        transport: kind.name(),
        unit,
        vox: median(&mut figures[1]),
        baseline: Some(median(&mut figures[0])),
        target: None,
    };
    Ok(vec![
        row("sequential echo 64 B, median latency (baseline: vox over tcp)", "µs", &mut f.seq),
        row("pipelined echo 64 B, 64 in flight (baseline: vox over tcp)", "calls/s", &mut f.pipelined),
    ])
}

/// The rows of every transport, each against TCP in its own rounds.
pub async fn rows(scale: &Scale) -> Result<Vec<Row>, BenchError> {
    let mut rows = Vec::new();
    for kind in [Secure::Tls, Secure::Ws, Secure::Quic] {
        rows.extend(measure(scale, kind).await?);
    }
    Ok(rows)
}
