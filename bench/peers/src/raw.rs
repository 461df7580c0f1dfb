//! The raw peer: tokio, frames of `u32` LE length + `u64` call id + payload,
//! over TCP or `tokio::io::duplex` (64 KiB). Each call is its own task that
//! hands `(payload, oneshot)` to the connection's writer task through an mpsc
//! queue; the reader task completes the oneshot by id. The server answers
//! every frame from its read loop and flushes when its read buffer is empty.
//! No streams.

use crate::common::{Client, Peer, Result, Transport, no_streams};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const BUF: usize = 64 << 10;

/// The raw server: a TCP address, or nothing for duplex pairs.
pub struct Raw {
    addr: Option<SocketAddr>,
}

/// A raw client.
#[derive(Clone)]
pub struct RawClient {
    tx: mpsc::Sender<(Vec<u8>, oneshot::Sender<Vec<u8>>)>,
}

async fn serve<R, W>(r: R, w: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(BUF, r);
    let mut w = BufWriter::with_capacity(BUF, w);
    loop {
        let len = match r.read_u32_le().await {
            Ok(len) => len,
            Err(_) => return Ok(()),
        };
        let id = r.read_u64_le().await?;
        let mut payload = vec![0; (len as usize).saturating_sub(8)];
        r.read_exact(&mut payload).await?;
        w.write_u32_le(len).await?;
        w.write_u64_le(id).await?;
        w.write_all(&payload).await?;
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

fn client<R, W>(r: R, w: W) -> RawClient
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<Vec<u8>>)>(1024);
    let pending: Pending = Arc::default();
    let writer_pending = pending.clone();
    tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(BUF, w);
        let mut id = 0u64;
        while let Some(mut next) = rx.recv().await {
            loop {
                id += 1;
                let (payload, done) = next;
                writer_pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, done);
                w.write_u32_le(8 + payload.len() as u32).await?;
                w.write_u64_le(id).await?;
                w.write_all(&payload).await?;
                match rx.try_recv() {
                    Ok(more) => next = more,
                    Err(_) => break,
                }
            }
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    tokio::spawn(async move {
        let mut r = BufReader::with_capacity(BUF, r);
        loop {
            let len = r.read_u32_le().await?;
            let id = r.read_u64_le().await?;
            let mut payload = vec![0; (len as usize).saturating_sub(8)];
            r.read_exact(&mut payload).await?;
            if let Some(done) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                let _ = done.send(payload);
            }
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    });
    RawClient { tx }
}

impl Client for RawClient {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        let (done, answer) = oneshot::channel();
        self.tx.send((data, done)).await.map_err(|_| "raw: connection closed")?;
        Ok(answer.await.map_err(|_| "raw: connection closed")?)
    }

    async fn stream_down(&self, _n: u64) -> Result<u64> {
        Err(no_streams())
    }

    async fn stream_up(&self, _n: u64) -> Result<u64> {
        Err(no_streams())
    }
}

impl Peer for Raw {
    type Client = RawClient;
    const STREAMS: bool = false;

    async fn start(transport: Transport) -> Result<Self> {
        match transport {
            Transport::Memory => Ok(Raw { addr: None }),
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                tokio::spawn(async move {
                    while let Ok((s, _)) = listener.accept().await {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        tokio::spawn(serve(r, w));
                    }
                });
                Ok(Raw { addr: Some(addr) })
            }
        }
    }

    async fn connect(&self) -> Result<RawClient> {
        match self.addr {
            None => {
                let (a, b) = tokio::io::duplex(BUF);
                let (sr, sw) = tokio::io::split(b);
                tokio::spawn(serve(sr, sw));
                let (cr, cw) = tokio::io::split(a);
                Ok(client(cr, cw))
            }
            Some(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok(client(r, w))
            }
        }
    }
}
