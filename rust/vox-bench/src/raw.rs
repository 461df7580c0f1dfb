//! The raw baseline: 4-byte little-endian length-prefixed frames over a byte
//! stream and an echo server, with no RPC layer. Both ends buffer their
//! writes and flush only when they have nothing more to read, which is the
//! practical limit a framed protocol on tokio can reach.

use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

const BUFFER: usize = 64 * 1024;

/// What a baseline server connection does; sent as the first frame.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Answers every frame with the same frame.
    Echo = 0,
    /// On a frame holding `n` (u64), writes `n` frames of one u64 each.
    Produce = 1,
    /// On a frame holding `n` (u64), reads `n` u64 frames, then answers
    /// with one frame holding their count.
    Sink = 2,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(payload).await
}

fn u64_of(buf: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = buf.try_into().map_err(|_| io::Error::other("expected an 8-byte frame"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Serves one baseline connection until the peer closes it.
pub async fn serve<R, W>(reader: R, writer: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = BufReader::with_capacity(BUFFER, reader);
    let mut w = BufWriter::with_capacity(BUFFER, writer);
    let mut buf = Vec::new();
    if !read_frame(&mut r, &mut buf).await? {
        return Ok(());
    }
    let mode = buf.first().copied().unwrap_or(0);
    while read_frame(&mut r, &mut buf).await? {
        match mode {
            0 => {
                write_frame(&mut w, &buf).await?;
                if r.buffer().is_empty() {
                    w.flush().await?;
                }
            }
            1 => {
                for i in 0..u64_of(&buf)? {
                    write_frame(&mut w, &i.to_le_bytes()).await?;
                }
                w.flush().await?;
            }
            _ => {
                let n = u64_of(&buf)?;
                for _ in 0..n {
                    if !read_frame(&mut r, &mut buf).await? {
                        return Err(io::Error::other("sink: stream ended early"));
                    }
                }
                write_frame(&mut w, &n.to_le_bytes()).await?;
                w.flush().await?;
            }
        }
    }
    w.shutdown().await
}

/// The client end of one baseline connection.
pub struct RawClient<R, W> {
    r: BufReader<R>,
    w: BufWriter<W>,
    buf: Vec<u8>,
}

/// A baseline client over TCP loopback.
pub type TcpClient = RawClient<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf>;
/// A baseline client over an in-memory pipe.
pub type PipeClient =
    RawClient<tokio::io::ReadHalf<tokio::io::DuplexStream>, tokio::io::WriteHalf<tokio::io::DuplexStream>>;

/// A baseline echo server on TCP loopback; returns its address.
pub async fn tcp_server() -> io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            tokio::spawn(serve(r, w));
        }
    });
    Ok(addr)
}

/// Connects a TCP baseline client in `mode`.
pub async fn tcp_client(addr: std::net::SocketAddr, mode: Mode) -> io::Result<TcpClient> {
    let stream = TcpStream::connect(addr).await?;
    // The same setting as vox-core's TCP links.
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    RawClient::start(r, w, mode).await
}

/// An in-memory pipe with a baseline server on the other end.
pub async fn pipe_client(mode: Mode) -> io::Result<PipeClient> {
    let (a, b) = tokio::io::duplex(BUFFER);
    let (sr, sw) = tokio::io::split(a);
    tokio::spawn(serve(sr, sw));
    let (r, w) = tokio::io::split(b);
    RawClient::start(r, w, mode).await
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> RawClient<R, W> {
    async fn start(r: R, w: W, mode: Mode) -> io::Result<Self> {
        let mut c = RawClient {
            r: BufReader::with_capacity(BUFFER, r),
            w: BufWriter::with_capacity(BUFFER, w),
            buf: Vec::new(),
        };
        write_frame(&mut c.w, &[mode as u8]).await?;
        c.w.flush().await?;
        Ok(c)
    }

    async fn expect_echo(&mut self, len: usize) -> io::Result<()> {
        if !read_frame(&mut self.r, &mut self.buf).await? {
            return Err(io::Error::other("baseline server closed"));
        }
        if self.buf.len() != len {
            return Err(io::Error::other("baseline echo has the wrong length"));
        }
        Ok(())
    }

    /// Sends `payload` `n` times, one at a time; returns each round-trip time in µs.
    pub async fn sequential(&mut self, payload: &[u8], n: usize) -> io::Result<Vec<f64>> {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            write_frame(&mut self.w, payload).await?;
            self.w.flush().await?;
            self.expect_echo(payload.len()).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(lat)
    }

    /// Echoes `payload` `total` times with `window` frames in flight.
    pub async fn pipelined(&mut self, payload: &[u8], total: usize, window: usize) -> io::Result<Duration> {
        let t = Instant::now();
        let mut sent = 0;
        while sent < total.min(window) {
            write_frame(&mut self.w, payload).await?;
            sent += 1;
        }
        self.w.flush().await?;
        for _ in 0..total {
            self.expect_echo(payload.len()).await?;
            if sent < total {
                write_frame(&mut self.w, payload).await?;
                sent += 1;
            }
            // Flush before any read that may wait: the server only answers
            // what it has received.
            if self.r.buffer().is_empty() {
                self.w.flush().await?;
            }
        }
        Ok(t.elapsed())
    }

    /// Asks the server for `n` u64 frames and reads them.
    pub async fn produce(&mut self, n: u64) -> io::Result<Duration> {
        let t = Instant::now();
        write_frame(&mut self.w, &n.to_le_bytes()).await?;
        self.w.flush().await?;
        for i in 0..n {
            if !read_frame(&mut self.r, &mut self.buf).await? || u64_of(&self.buf)? != i {
                return Err(io::Error::other("baseline stream: wrong item"));
            }
        }
        Ok(t.elapsed())
    }

    /// Writes `n` u64 frames to the server and waits for its count.
    pub async fn sink(&mut self, n: u64) -> io::Result<Duration> {
        let t = Instant::now();
        write_frame(&mut self.w, &n.to_le_bytes()).await?;
        for i in 0..n {
            write_frame(&mut self.w, &i.to_le_bytes()).await?;
        }
        self.w.flush().await?;
        if !read_frame(&mut self.r, &mut self.buf).await? || u64_of(&self.buf)? != n {
            return Err(io::Error::other("baseline sink: wrong count"));
        }
        Ok(t.elapsed())
    }
}
