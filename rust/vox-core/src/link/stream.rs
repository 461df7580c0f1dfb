//! Links over byte streams: each message is framed by a 32-bit little-endian
//! length prefix followed by its bytes.
//!
//! rule: transport.stream

use super::frames::{BATCH_BYTES, FrameWriter, MAX_FRAME_LEN, PREFIX_LEN};
use super::{Link, LinkConfig, LinkError, LinkRx, LinkTx, RxSource};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Most bytes the reader asks for in one read while its buffer is smaller
/// than this; beyond, a read may ask for as much as is already buffered.
/// Bounds how far the receive buffer grows ahead of the bytes that arrived.
const READ_CHUNK: usize = 64 * 1024;

/// Fewest bytes the reader asks for in one read, so that many small frames
/// arrive in a single system call.
const MIN_READ: usize = 8 * 1024;

/// Least spare room the reader reads into; below it, the buffer is grown
/// (or reclaimed, when no frame handed out still shares it).
const MIN_SPARE: usize = 1024;

/// Most times a writer yields to let a batch grow before writing it.
const MAX_YIELDS: usize = 4;

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
    let handoff = Arc::new(AtomicBool::new(false));
    let frames = FrameWriter::new(Box::new(writer), max);
    let writer = tokio::spawn(write_frames(pending, frames, handoff.clone()));
    Link {
        tx: LinkTx::new(queue, Some(super::StreamWriter { task: writer, handoff }), max),
        rx: LinkRx::new(RxSource::Stream(FrameReader::new(Box::new(reader), config.frame_timeout)), max),
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
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt; nothing is left behind.
///
/// # Errors
/// [`LinkError::Io`] if the address cannot be resolved or the TCP connection
/// cannot be made.
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
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt; nothing is left behind.
///
/// # Errors
/// [`LinkError::Io`] (naming the path) if the socket cannot be connected to.
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
/// until every sender is gone, then flushes and shuts the stream down, or,
/// if `handoff` was set before the senders went, returns the stream instead
/// (see [`LinkTx::into_sink`]).
///
/// Batching: after the first message it drains everything already queued
/// (up to `BATCH_BYTES`); if that found more than one frame it yields once so
/// that senders runnable right now can queue more, drains again, and only
/// then writes (see [`FrameWriter`]). The queue stays bounded: at most one
/// batch is taken off it at a time.
pub(super) async fn write_frames(
    mut queue: mpsc::Receiver<Bytes>,
    mut frames: FrameWriter,
    handoff: Arc<AtomicBool>,
) -> Result<Option<FrameWriter>, LinkError> {
    let result = async {
        while let Some(msg) = queue.recv().await {
            frames.push(msg)?;
            drain(&mut queue, &mut frames)?;
            // Several senders are active: let the ones that are runnable
            // right now add to this batch before paying for a write, as long
            // as each yield brings more. A lone message (request/response
            // traffic) is written at once.
            let mut yields = 0;
            while frames.pending_frames() > 1 && frames.pending_bytes() < BATCH_BYTES && yields < MAX_YIELDS {
                let before = frames.pending_frames();
                tokio::task::yield_now().await;
                drain(&mut queue, &mut frames)?;
                yields += 1;
                if frames.pending_frames() == before {
                    break;
                }
            }
            frames.flush().await?;
        }
        // Every sender is gone. `into_sink` sets the flag before dropping its
        // sender, and the channel's close is what ended the loop, so the
        // flag is visible here.
        if handoff.load(Ordering::SeqCst) {
            return Ok(Some(frames));
        }
        frames.shutdown().await.map(|()| None)
    }
    .await;
    if let Err(error) = &result {
        // Dropping the queue on return makes later sends fail with `Closed`;
        // `close` reports this error, and this log covers a dropped `LinkTx`.
        tracing::debug!(%error, "stream link writer stopped");
    }
    result
}

/// Moves what is already queued into `frames`, up to `BATCH_BYTES`.
fn drain(queue: &mut mpsc::Receiver<Bytes>, frames: &mut FrameWriter) -> Result<(), LinkError> {
    while frames.pending_bytes() < BATCH_BYTES {
        let Ok(msg) = queue.try_recv() else { break };
        frames.push(msg)?;
    }
    Ok(())
}

/// The receiving side of a stream link: reassembles frames from whatever
/// chunks the stream delivers.
pub(super) struct FrameReader {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Bytes read but not yet returned. Living here rather than in the
    /// `read_frame` future is what makes receiving cancel-safe.
    buf: BytesMut,
    /// How long a frame may take to arrive once its first byte is here
    /// ([`LinkConfig::frame_timeout`]).
    frame_timeout: Option<Duration>,
    /// When this reader first waited for the rest of the frame now partly
    /// in `buf` (its bytes arrived with the read just before); `None` until
    /// then. Kept here, not in the `read_frame` future, so that a cancelled
    /// receive (a `select!` that took another branch) does not restart the
    /// frame's deadline.
    started: Option<Instant>,
    /// The frame deadline's timer, created with the first partly received
    /// frame and kept: armed for the current frame's deadline or an earlier
    /// one, so that frames do not each register a timer.
    stall: Option<Pin<Box<Sleep>>>,
}

impl FrameReader {
    fn new(reader: Box<dyn AsyncRead + Send + Unpin>, frame_timeout: Option<Duration>) -> Self {
        Self { reader, buf: BytesMut::new(), frame_timeout, started: None, stall: None }
    }

    /// Reads the next frame. `Ok(None)` means the stream ended cleanly
    /// between frames. Cancel-safe: the only await is a read that either
    /// completes into `buf` or reads nothing, and the frame's deadline lives
    /// in `self`.
    ///
    /// rule: session.keepalive — once a frame has started arriving, it must
    /// finish within `frame_timeout`, or this fails with
    /// [`LinkError::Stalled`]. Between frames (nothing buffered) it waits
    /// without a timer.
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
                        // The next frame's deadline starts when it is waited for.
                        self.started = None;
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
            //
            // The buffer is only grown once its spare room is below
            // `MIN_SPARE`: frames handed out still share its allocation,
            // so growing it whenever the spare room is under `MIN_READ`
            // (as it always is after a frame) would allocate and free a
            // buffer per read of small frames.
            if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                self.buf.reserve(missing.min(READ_CHUNK.max(self.buf.len())).max(MIN_READ));
            }
            let read = match self.deadline() {
                None => self.reader.read_buf(&mut self.buf).await,
                // A frame is partly here: the rest must come by its deadline.
                // The read is polled first, so bytes that are already
                // waiting are taken even after the deadline.
                Some(deadline) => {
                    // One timer per link, armed at most once per deadline
                    // period rather than per frame: it may still be armed
                    // for an earlier frame's deadline (never a later one);
                    // then it is moved on when it fires.
                    let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    let read = tokio::select! {
                        biased;
                        read = self.reader.read_buf(&mut self.buf) => Some(read),
                        () = stall.as_mut() => None,
                    };
                    match read {
                        Some(read) => read,
                        None if Instant::now() >= deadline => return Err(self.stalled()),
                        None => {
                            stall.as_mut().reset(deadline);
                            continue;
                        }
                    }
                }
            }
            .map_err(|source| LinkError::Io { context: "reading from a stream link", source })?;
            if read == 0 {
                return self.end_of_stream();
            }
        }
    }

    /// The instant by which the frame partly in `buf` must be complete, if
    /// one is partly here and frames have a deadline; starts the frame's
    /// clock on the first call for it. Nothing buffered: no clock, no timer.
    fn deadline(&mut self) -> Option<Instant> {
        let limit = self.frame_timeout.filter(|_| !self.buf.is_empty())?;
        self.started.get_or_insert_with(Instant::now).checked_add(limit)
    }

    /// Bytes the frame at the front of `buf` needs in all (only the prefix,
    /// while that is incomplete).
    fn expected_len(&self) -> usize {
        self.announced_len().map_or(PREFIX_LEN, |len| PREFIX_LEN.saturating_add(len))
    }

    fn stalled(&self) -> LinkError {
        let timeout = self.frame_timeout.unwrap_or_default();
        LinkError::Stalled { expected: self.expected_len(), got: self.buf.len(), timeout }
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
        // rule: link.rx.error
        Err(LinkError::Truncated { expected: self.expected_len(), got: self.buf.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_frames_arrive_in_order_through_the_writer_task() {
        let (near, far) = tokio::io::duplex(1024);
        let (far_read, _far_write) = tokio::io::split(far);
        let (_near_read, near_write) = tokio::io::split(near);
        let (queue, pending) = mpsc::channel(4);
        let handoff = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_frames(pending, FrameWriter::new(Box::new(near_write), usize::MAX), handoff));
        let mut reader = FrameReader::new(Box::new(far_read), None);
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
        assert!(writer.await.expect("join").expect("writer ends cleanly").is_none(), "no handoff was asked");
        assert!(reader.read_frame(usize::MAX).await.expect("eof").is_none());
    }
}
