//! The vox-core peer: a typed `#[vox_core::service]` with the natural
//! signatures (`Vec<u8>` echo, `Tx<u64>` / `Rx<u64>` streams), sessions over
//! TCP (vox's stream link, NODELAY) or `link::memory_pair` (default
//! `LinkConfig`), default session settings on both ends.

use crate::common::{Client, Peer, Result, Transport};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use vox_core::driver::{Rx, Tx, channel};
use vox_core::link::{self, LinkConfig};
use vox_core::session::{Session, SessionBuilder};

/// The bench service.
#[vox_core::service]
pub trait Bench {
    /// Answers with its argument.
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    /// Streams `0..n` to the caller.
    async fn generate(&self, n: u64, items: Tx<u64>);
    /// Counts what the caller streams.
    async fn sum(&self, items: Rx<u64>) -> u64;
}

struct Svc;

impl Bench for Svc {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn generate(&self, n: u64, mut items: Tx<u64>) {
        for i in 0..n {
            if items.send(&i).await.is_err() {
                return;
            }
        }
        let _ = items.close().await;
    }

    async fn sum(&self, mut items: Rx<u64>) -> u64 {
        let mut n = 0;
        while let Ok(Some(_)) = items.recv().await {
            n += 1;
        }
        n
    }
}

/// Default settings; for diagnosis only, `PEER_BENCH_VOX_NO_OPS=1` turns
/// the server's operation table off (`SessionConfig::operations = None`), so
/// that the generated client's operation ids are served as plain calls.
fn server() -> SessionBuilder {
    let mut b = SessionBuilder::new().handler(BenchDispatcher::new(Svc));
    if std::env::var_os("PEER_BENCH_VOX_NO_OPS").is_some_and(|v| v == "1") {
        b.config_mut().operations = None;
    }
    b
}

/// The vox server.
pub struct Vox {
    addr: Option<SocketAddr>,
    /// Server sessions of memory pairs, kept open.
    sessions: Mutex<Vec<Session>>,
}

/// A vox client on the root connection of its own session.
#[derive(Clone)]
pub struct VoxClient {
    client: BenchClient,
    _session: Option<Arc<Session>>,
}

impl Client for VoxClient {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        Ok(self.client.echo(data).await?)
    }

    async fn stream_down(&self, n: u64) -> Result<u64> {
        let (tx, mut rx) = channel::<u64>();
        let collect = async move {
            let mut expected = 0u64;
            while let Some(i) = rx.recv().await? {
                if i != expected {
                    return Err::<u64, crate::common::Error>("vox stream: wrong item".into());
                }
                expected += 1;
            }
            Ok(expected)
        };
        let (done, got) = tokio::join!(self.client.generate(n, tx), collect);
        done?;
        got
    }

    async fn stream_up(&self, n: u64) -> Result<u64> {
        let (mut tx, rx) = channel::<u64>();
        let feed = async move {
            for i in 0..n {
                tx.send(&i).await?;
            }
            tx.close().await?;
            Ok::<_, crate::common::Error>(())
        };
        let (count, fed) = tokio::join!(self.client.sum(rx), feed);
        fed?;
        Ok(count?)
    }
}

impl Peer for Vox {
    type Client = VoxClient;
    const STREAMS: bool = true;

    async fn start(transport: Transport) -> Result<Self> {
        match transport {
            Transport::Memory => Ok(Vox { addr: None, sessions: Mutex::default() }),
            Transport::Tcp => {
                let listener = server().listen("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                tokio::spawn(async move {
                    let mut open = Vec::new();
                    while let Ok(s) = listener.accept().await {
                        open.push(s);
                    }
                });
                Ok(Vox { addr: Some(addr), sessions: Mutex::default() })
            }
        }
    }

    async fn connect(&self) -> Result<VoxClient> {
        match self.addr {
            Some(addr) => Ok(VoxClient { client: BenchClient::connect(addr).await?, _session: None }),
            None => {
                let (a, b) = link::memory_pair(LinkConfig::default());
                let (s, c) = tokio::join!(server().establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
                self.sessions.lock().unwrap_or_else(|e| e.into_inner()).push(s?);
                let c = c?;
                Ok(VoxClient { client: BenchClient::new(c.root.caller.clone()), _session: Some(Arc::new(c)) })
            }
        }
    }
}
