//! Links over byte streams: each message is framed by a 32-bit little-endian
//! length prefix followed by its bytes.
//!
//! rule: transport.stream

use super::{Link, LinkConfig, LinkError, LinkRx, LinkTx, RxSource};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Size of the length prefix in front of every frame.
const PREFIX_LEN: usize = 4;

/// The largest length a prefix can announce.
const MAX_FRAME_LEN: usize = u32::MAX as usize;

/// Most bytes the reader asks for in one read while its buffer is smaller
/// than this; beyond, a read may ask for as much as is already buffered.
/// Bounds how far the receive buffer grows ahead of the bytes that arrived.
const READ_CHUNK: usize = 64 * 1024;

/// Fewest bytes the reader asks for in one read, so that many small frames
/// arrive in a single system call.
const MIN_READ: usize = 8 * 1024;

/// Bytes the writer gathers from the queue before it flushes, so a busy
/// sender cannot postpone the flush forever.
const BATCH_BYTES: usize = 256 * 1024;

/// Creates a link over any byte stream, split into its reading and writing
/// sides.
///
/// Spawns one writer task, so it must be called inside a tokio runtime. The
/// task drains the send queue, writes what is queued as one buffered batch
/// and flushes it; when the [`LinkTx`] is closed or dropped it writes what is
/// left, flushes and shuts the writer down, which the peer sees as
/// end-of-stream.
///
/// `config.max_message_size` is capped at `u32::MAX`, the largest length the
/// prefix can carry.
// rule: transport.stream
pub fn stream<R, W>(reader: R, writer: W, config: LinkConfig) -> Link
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let max = config.max_message_size.min(MAX_FRAME_LEN);
    // rule: link.tx.backpressure — bounded; once full, `send` waits for the
    // writer, which itself waits for the transport.
    let (queue, pending) = mpsc::channel(config.queue_capacity());
    let writer = tokio::spawn(write_frames(pending, writer));
    Link {
        tx: LinkTx::new(queue, Some(writer), max),
        rx: LinkRx::new(RxSource::Stream(FrameReader::new(Box::new(reader))), max),
    }
}

/// Creates a link over a connected TCP stream, with Nagle's algorithm off
/// because the writer already batches and RPC traffic is latency-bound.
///
/// Must be called inside a tokio runtime (see [`stream`]).
pub fn tcp(stream: tokio::net::TcpStream, config: LinkConfig) -> Link {
    if let Err(error) = stream.set_nodelay(true) {
        // Only a latency cost; the link works without it.
        tracing::warn!(%error, "cannot disable Nagle's algorithm on a TCP link");
    }
    let (reader, writer) = stream.into_split();
    self::stream(reader, writer, config)
}

/// Connects to `addr` over TCP and creates a link on the connection.
pub async fn connect_tcp(addr: impl tokio::net::ToSocketAddrs, config: LinkConfig) -> Result<Link, LinkError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| LinkError::Io { context: "connecting a TCP link", source })?;
    Ok(tcp(stream, config))
}

/// Creates a link over a connected Unix domain socket.
///
/// Must be called inside a tokio runtime (see [`stream`]).
#[cfg(unix)]
pub fn unix(stream: tokio::net::UnixStream, config: LinkConfig) -> Link {
    let (reader, writer) = stream.into_split();
    self::stream(reader, writer, config)
}

/// Connects to the Unix domain socket at `path` and creates a link on it.
#[cfg(unix)]
pub async fn connect_unix(path: impl AsRef<std::path::Path>, config: LinkConfig) -> Result<Link, LinkError> {
    let path = path.as_ref();
    let stream = tokio::net::UnixStream::connect(path).await.map_err(|error| LinkError::Io {
        context: "connecting a Unix socket link",
        // Keep the path: "no such file" alone does not say which file.
        source: io::Error::new(error.kind(), format!("{}: {error}", path.display())),
    })?;
    Ok(unix(stream, config))
}

/// The writer task: takes messages off the queue and writes them as frames
/// until every sender is gone, then flushes and shuts the stream down.
///
/// Batching: after the first message it drains everything already queued
/// (up to `BATCH_BYTES`); if that found more than one frame it yields once so
/// that senders runnable right now can queue more, drains again, and only
/// then writes. Small frames are copied
/// into one contiguous buffer (prefix and body), large ones are written from
/// their own `Bytes` without a copy, all with vectored writes, so a batch
/// costs about one system call however many frames it holds. The queue
/// stays bounded: at most one batch is taken off it at a time.
async fn write_frames<W: AsyncWrite + Unpin>(mut queue: mpsc::Receiver<Bytes>, mut writer: W) -> io::Result<()> {
    let mut batch = Batch::default();
    let result = async {
        while let Some(msg) = queue.recv().await {
            batch.push(msg)?;
            drain(&mut queue, &mut batch)?;
            // Several senders are active: let the ones that are runnable
            // right now add to this batch before paying for a write, as long
            // as each yield brings more. A lone message (request/response
            // traffic) is written at once.
            let mut yields = 0;
            while batch.frames > 1 && batch.bytes < BATCH_BYTES && yields < MAX_YIELDS {
                let before = batch.frames;
                tokio::task::yield_now().await;
                drain(&mut queue, &mut batch)?;
                yields += 1;
                if batch.frames == before {
                    break;
                }
            }
            batch.write_to(&mut writer).await?;
        }
        writer.flush().await?;
        // rule: link.rx.eof — the shutdown is what lets the peer see the end.
        writer.shutdown().await
    }
    .await;
    if let Err(error) = &result {
        // Dropping the queue on return makes later sends fail with `Closed`;
        // `close` reports this error, and this log covers a dropped `LinkTx`.
        tracing::debug!(%error, "stream link writer stopped");
    }
    result
}

/// Moves what is already queued into `batch`, up to `BATCH_BYTES`.
fn drain(queue: &mut mpsc::Receiver<Bytes>, batch: &mut Batch) -> io::Result<()> {
    while batch.bytes < BATCH_BYTES {
        let Ok(msg) = queue.try_recv() else { break };
        batch.push(msg)?;
    }
    Ok(())
}

/// Most times the writer yields to let a batch grow before writing it.
const MAX_YIELDS: usize = 4;

/// Frames smaller than this are copied into the batch's contiguous buffer;
/// larger ones are written from their own storage.
const COPY_LIMIT: usize = 4 * 1024;

/// The most slices handed to one vectored write (Linux accepts 1024).
const MAX_IOVECS: usize = 64;

/// One batch of frames on its way to the stream: a sequence of pieces, each
/// either a run of small frames copied together or one large message body.
#[derive(Default)]
struct Batch {
    /// Prefixes and small frames, copied.
    small: BytesMut,
    /// The pieces in order: completed runs of `small` and large bodies.
    pieces: Vec<Bytes>,
    /// Bytes in the batch, prefixes included.
    bytes: usize,
    /// Frames in the batch.
    frames: usize,
}

impl Batch {
    fn push(&mut self, msg: Bytes) -> io::Result<()> {
        // `LinkTx::send` already refused anything longer than `MAX_FRAME_LEN`.
        let len = u32::try_from(msg.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("message of {} bytes does not fit a frame", msg.len()))
        })?;
        self.bytes += PREFIX_LEN + msg.len();
        self.frames += 1;
        // rule: transport.stream — 32-bit little-endian length, then the bytes.
        self.small.extend_from_slice(&len.to_le_bytes());
        if msg.len() < COPY_LIMIT {
            self.small.extend_from_slice(&msg);
        } else {
            self.pieces.push(self.small.split().freeze());
            self.pieces.push(msg);
        }
        Ok(())
    }

    /// Writes the whole batch and flushes; leaves the batch empty.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> io::Result<()> {
        if !self.small.is_empty() {
            self.pieces.push(self.small.split().freeze());
        }
        let mut first = 0;
        while first < self.pieces.len() {
            let n = {
                let end = self.pieces.len().min(first + MAX_IOVECS);
                let slices: Vec<io::IoSlice<'_>> = self.pieces[first..end]
                    .iter()
                    .filter(|piece| !piece.is_empty())
                    .map(|piece| io::IoSlice::new(piece))
                    .collect();
                if slices.is_empty() {
                    first = end;
                    continue;
                }
                writer.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Drop what was written; keep the rest of a partly written piece.
            let mut left = n;
            while left > 0 {
                let Some(piece) = self.pieces.get_mut(first) else { break };
                if piece.len() <= left {
                    left -= piece.len();
                    first += 1;
                } else {
                    piece.advance(left);
                    left = 0;
                }
            }
        }
        self.pieces.clear();
        self.bytes = 0;
        self.frames = 0;
        writer.flush().await
    }
}

/// The receiving side of a stream link: reassembles frames from whatever
/// chunks the stream delivers.
pub(super) struct FrameReader {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Bytes read but not yet returned. Living here rather than in the
    /// `read_frame` future is what makes receiving cancel-safe.
    buf: BytesMut,
}

impl FrameReader {
    fn new(reader: Box<dyn AsyncRead + Send + Unpin>) -> Self {
        Self { reader, buf: BytesMut::new() }
    }

    /// Reads the next frame. `Ok(None)` means the stream ended cleanly
    /// between frames. Cancel-safe: the only await is a read that either
    /// completes into `buf` or reads nothing.
    pub(super) async fn read_frame(&mut self, max: usize) -> Result<Option<Bytes>, LinkError> {
        loop {
            let missing = match self.announced_len() {
                Some(len) => {
                    // rule: link.tx.max-size — refuse before reading or
                    // allocating anything for the body.
                    if len > max {
                        return Err(LinkError::TooLarge { size: len, max });
                    }
                    let frame_len = PREFIX_LEN + len;
                    if self.buf.len() >= frame_len {
                        self.buf.advance(PREFIX_LEN);
                        return Ok(Some(self.buf.split_to(len).freeze()));
                    }
                    frame_len - self.buf.len()
                }
                None => PREFIX_LEN - self.buf.len(),
            };
            // Each read asks for at most what is missing and at most
            // `max(READ_CHUNK, bytes already buffered)`: a large frame is
            // received through geometrically growing reads (a handful of
            // reallocations for 1 MiB instead of one per 64 KiB), while the
            // buffer still never grows beyond about twice the bytes that
            // actually arrived, whatever length the peer announced.
            self.buf.reserve(missing.min(READ_CHUNK.max(self.buf.len())).max(MIN_READ));
            let read = self
                .reader
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| LinkError::Io { context: "reading from a stream link", source })?;
            if read == 0 {
                return self.end_of_stream();
            }
        }
    }

    /// The length in the prefix at the front of `buf`, once all of it arrived.
    fn announced_len(&self) -> Option<usize> {
        match self.buf.get(..PREFIX_LEN)? {
            &[a, b, c, d] => Some(usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX)),
            _ => None,
        }
    }

    fn end_of_stream(&self) -> Result<Option<Bytes>, LinkError> {
        if self.buf.is_empty() {
            // rule: link.rx.eof
            return Ok(None);
        }
        let expected = self.announced_len().map_or(PREFIX_LEN, |len| PREFIX_LEN + len);
        // rule: link.rx.error
        Err(LinkError::Truncated { expected, got: self.buf.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `step` bytes per call, vectored or not,
    /// so every piece boundary gets split somewhere.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            for buf in bufs {
                let n = buf.len().min(left);
                self.out.extend_from_slice(&buf[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Bytes> {
        vec![
            Bytes::new(),
            Bytes::from_static(b"small"),
            Bytes::from(vec![7u8; COPY_LIMIT + 3]),
            Bytes::from(vec![9u8; COPY_LIMIT * 2]),
            Bytes::from_static(b"tail"),
        ]
    }

    fn expected() -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames() {
            out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    #[tokio::test]
    async fn a_batch_survives_partial_vectored_writes() {
        for step in [1, 3, 4, 5, 4096, 1 << 20] {
            let mut writer = Trickle { out: Vec::new(), step };
            let mut batch = Batch::default();
            for frame in frames() {
                batch.push(frame).expect("fits a frame");
            }
            batch.write_to(&mut writer).await.expect("write");
            assert_eq!(writer.out, expected(), "step {step}");
            // The batch is reusable and empty afterwards.
            assert_eq!((batch.bytes, batch.frames, batch.pieces.len(), batch.small.len()), (0, 0, 0, 0));
            batch.push(Bytes::from_static(b"again")).expect("fits a frame");
            batch.write_to(&mut writer).await.expect("write");
            assert!(writer.out.ends_with(b"\x05\x00\x00\x00again"), "step {step}");
        }
    }

    #[tokio::test]
    async fn queued_frames_arrive_in_order_through_the_writer_task() {
        let (near, far) = tokio::io::duplex(1024);
        let (far_read, _far_write) = tokio::io::split(far);
        let (_near_read, near_write) = tokio::io::split(near);
        let (queue, pending) = mpsc::channel(4);
        let writer = tokio::spawn(write_frames(pending, near_write));
        let mut reader = FrameReader::new(Box::new(far_read));
        let sent: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; usize::from(i) * 300])).collect();
        let sender = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for msg in sent {
                    queue.send(msg).await.expect("writer alive");
                }
            })
        };
        for msg in &sent {
            let got = reader.read_frame(usize::MAX).await.expect("read").expect("a frame");
            assert_eq!(&got, msg);
        }
        sender.await.expect("sender");
        writer.await.expect("join").expect("writer ends cleanly");
        assert!(reader.read_frame(usize::MAX).await.expect("eof").is_none());
    }
}
