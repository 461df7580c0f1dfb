//! Links: reliable, ordered transports of whole messages (`PROTOCOL.md` §2).
//!
//! A [`Link`] is a pair of halves, [`LinkTx`] and [`LinkRx`], that can be
//! moved to different tasks. Two kinds exist: an in-process pair
//! ([`memory_pair`]) and stream links over any tokio `AsyncRead` +
//! `AsyncWrite` ([`stream`], [`tcp`], [`unix`]). Both kinds behave the same
//! way towards their users; only the stream kind can see hostile input,
//! because the peer chooses the length prefixes. TLS (`tls`), WebSocket
//! (`ws`) and QUIC (`quic`) links, each behind its cargo feature, are
//! stream links over those transports.

// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod fault;
mod frames;
mod identity;
mod memory;
#[cfg(feature = "quic")]
pub mod quic;
pub mod source;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "websocket")]
pub mod ws;

#[cfg(feature = "test-util")]
pub use fault::{FaultHandle, faulty_pair};
pub use frames::BATCH_BYTES;
pub(crate) use frames::FrameWriter;
pub use identity::PeerIdentity;
pub use memory::memory_pair;
pub use source::{Backoff, ConnectError, LinkSource, TcpSource, connect_waiting};
pub use stream::{connect_tcp, stream, tcp};
#[cfg(unix)]
pub use stream::{connect_unix, unix};

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Default largest message a link carries: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Default number of messages a [`LinkTx`] queues before `send` waits.
const DEFAULT_SEND_QUEUE: usize = 32;

/// Settings shared by both halves of a link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Largest message, in bytes, that may be sent or received. Stream links
    /// cap it at `u32::MAX` because that is the largest length their prefix
    /// can announce.
    pub max_message_size: usize,
    /// How many messages may wait to be transmitted before `send` waits.
    /// Zero is treated as one, since a queue needs room for at least one.
    pub send_queue: usize,
    /// Stream links: once a frame has started arriving (any byte of its
    /// length prefix or body is buffered), the rest of it must arrive within
    /// this time, or receiving fails with [`LinkError::Stalled`] and the link
    /// is dead (rule `session.keepalive`: a half-sent frame never holds a
    /// session). WebSocket links apply it to each WebSocket message, from
    /// the first byte of its first frame to the end of its last (failing
    /// with [`LinkError::Io`], `TimedOut`). The time between frames is not limited. Default: 20 s,
    /// the default keepalive timeout. `None` waits forever.
    pub frame_timeout: Option<std::time::Duration>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            send_queue: DEFAULT_SEND_QUEUE,
            // The default keepalive timeout (`SessionConfig::keepalive`).
            frame_timeout: Some(std::time::Duration::from_secs(20)),
        }
    }
}

impl LinkConfig {
    /// Queue capacity that tokio accepts (it panics on zero).
    fn queue_capacity(&self) -> usize {
        self.send_queue.max(1)
    }
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A message is larger than the link allows: refused at send, or
    /// announced by the peer on receive (the link is then dead).
    #[error("message of {size} bytes exceeds the link maximum of {max} bytes")]
    TooLarge {
        /// Size of the message, as given or as announced by the peer.
        size: usize,
        /// The link's maximum.
        max: usize,
    },
    /// The underlying transport failed.
    #[error("link i/o failed while {context}: {source}")]
    Io {
        /// What the link was doing.
        context: &'static str,
        /// What the operating system or the transport reported.
        source: std::io::Error,
    },
    /// The link no longer accepts messages: the receiving side is gone or
    /// the transport failed while writing.
    #[error("cannot send: the link is closed")]
    Closed,
    /// An earlier receive failed, so the message stream is no longer
    /// trustworthy and nothing more is read.
    #[error("cannot receive: the link is dead after an earlier receive error")]
    Dead,
    /// A frame started arriving and did not finish within
    /// [`LinkConfig::frame_timeout`] of its first byte: the peer sent part
    /// of it and stopped. The link is then dead.
    #[error(
        "frame stalled: got {got} of {expected} bytes (counting the 4-byte length prefix) and the rest did not arrive within {timeout:?} of the first (LinkConfig::frame_timeout)"
    )]
    Stalled {
        /// Bytes the frame needs, prefix included (only the prefix, if it
        /// was incomplete).
        expected: usize,
        /// Bytes of the frame that arrived.
        got: usize,
        /// The deadline that passed.
        timeout: std::time::Duration,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended in the middle of a frame: got {got} of {expected} bytes (counting the 4-byte length prefix)")]
    Truncated {
        /// Bytes the frame needed (only the prefix, if it was incomplete).
        expected: usize,
        /// Bytes that arrived before the end of the stream.
        got: usize,
    },
}

/// A bidirectional message link.
///
/// rule: link.split — the halves are independent and may be used from
/// different tasks.
pub struct Link {
    /// The sending half.
    pub tx: LinkTx,
    /// The receiving half.
    pub rx: LinkRx,
}

impl Link {
    /// Separates the link into its sending and receiving halves.
    // rule: link.split
    pub fn split(self) -> (LinkTx, LinkRx) {
        (self.tx, self.rx)
    }
}

/// The sending half of a link.
///
/// Not `Clone`: a single owner keeps message order obvious and lets
/// [`close`](LinkTx::close) know that nobody else will send.
pub struct LinkTx {
    queue: mpsc::Sender<Bytes>,
    /// Stream links only: the task that writes frames.
    writer: Option<StreamWriter>,
    max_message_size: usize,
}

/// A stream link's writer task, and the flag that asks it to hand the
/// stream back instead of shutting it down when its queue closes.
struct StreamWriter {
    task: JoinHandle<Result<Option<FrameWriter>, LinkError>>,
    handoff: Arc<AtomicBool>,
}

/// What [`LinkTx::into_sink`] gives a writer that will own the link.
pub(crate) enum LinkSink {
    /// A stream link's byte stream, with everything sent so far written.
    Frames(FrameWriter),
    /// An in-process link: messages are handed over whole, as by
    /// [`LinkTx::send`].
    Queue(LinkTx),
}

impl LinkTx {
    fn new(queue: mpsc::Sender<Bytes>, writer: Option<StreamWriter>, max_message_size: usize) -> Self {
        Self { queue, writer, max_message_size }
    }

    /// Gives the caller the link's sending side to drive itself.
    ///
    /// A stream link's writer task writes what was already queued, then
    /// hands its stream over as a [`FrameWriter`] and ends, so that a
    /// single writer (the session's) can batch and write frames itself
    /// instead of passing every message through a second task. An
    /// in-process link comes back unchanged.
    ///
    /// Fails if the stream failed while writing what was queued.
    pub(crate) async fn into_sink(self) -> Result<LinkSink, LinkError> {
        let Self { queue, writer, max_message_size } = self;
        let Some(StreamWriter { task, handoff }) = writer else {
            return Ok(LinkSink::Queue(LinkTx { queue, writer: None, max_message_size }));
        };
        // Set before the queue closes: the task reads it once it sees the close.
        handoff.store(true, Ordering::SeqCst);
        drop(queue);
        match task.await {
            Ok(Ok(Some(frames))) => Ok(LinkSink::Frames(frames)),
            Ok(Ok(None)) => Err(LinkError::Closed),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(LinkError::Io {
                context: "running the stream link writer task",
                source: std::io::Error::other(join),
            }),
        }
    }

    /// Queues one whole message for transmission. Waits while the queue is
    /// full.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a slot is reserved
    /// first and the message is handed over in one step only once the slot is
    /// ours, so a dropped future publishes nothing and gives its reservation
    /// back.
    ///
    /// # Errors
    /// [`LinkError::TooLarge`] (checked before anything else) if `msg` is
    /// longer than [`max_message_size`](Self::max_message_size), the caller's
    /// fault; [`LinkError::Closed`] if the link can no longer carry messages
    /// (the writer task ended or failed). Nothing is queued either way.
    pub async fn send(&self, msg: Bytes) -> Result<(), LinkError> {
        // rule: link.tx.max-size
        if msg.len() > self.max_message_size {
            return Err(LinkError::TooLarge { size: msg.len(), max: self.max_message_size });
        }
        // rule: link.tx.backpressure — the queue is bounded, so this waits
        // instead of buffering without limit.
        // rule: link.tx.cancel-safe — `reserve` is the only await point;
        // `Permit::send` cannot fail or wait.
        let permit = self.queue.reserve().await.map_err(|_| LinkError::Closed)?;
        permit.send(msg);
        Ok(())
    }

    /// Largest message this half accepts.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Drops the sending half at once: what is queued and not yet written
    /// is discarded and the writer task (stream links) is stopped, so the
    /// stream's write half is released even if the peer stopped reading.
    /// Teardown after a violation uses this; a graceful end uses
    /// [`close`](Self::close).
    pub fn abort(self) {
        if let Some(writer) = &self.writer {
            writer.task.abort();
        }
    }

    /// A handle that stops this half's writer task (see [`abort`](Self::abort))
    /// even after the half was moved into a [`close`](Self::close) that may
    /// never finish.
    pub fn abort_handle(&self) -> LinkAbortHandle {
        LinkAbortHandle(self.writer.as_ref().map(|w| w.task.abort_handle()))
    }

    /// Closes the sending direction gracefully.
    ///
    /// Stops accepting messages, waits until everything queued has been
    /// written and flushed and the write side shut down (stream links), then
    /// returns. The peer then sees end-of-stream after the last message.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the close: the queue is closed either
    /// way, and a stream link's writer task still writes what is queued and
    /// shuts the stream down; only its result is lost.
    ///
    /// # Errors
    /// [`LinkError::Io`] when the writer task failed to write, flush or shut
    /// the stream down, or did not run to its end (it panicked or was stopped
    /// through [`abort_handle`](Self::abort_handle)). Never fails for an
    /// in-process link.
    pub async fn close(self) -> Result<(), LinkError> {
        let Self { queue, writer, .. } = self;
        // The writer task ends once the queue is drained and every sender is gone.
        drop(queue);
        let Some(writer) = writer else { return Ok(()) };
        match writer.task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(LinkError::Io {
                context: "running the stream link writer task",
                source: std::io::Error::other(join),
            }),
        }
    }
}

/// Stops a link's writer task; see [`LinkTx::abort_handle`].
#[derive(Debug)]
pub struct LinkAbortHandle(Option<tokio::task::AbortHandle>);

impl LinkAbortHandle {
    /// Stops the writer task; what it had not written is discarded.
    pub fn abort(&self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Where the received messages come from.
enum RxSource {
    Memory(mpsc::Receiver<Bytes>),
    Stream(stream::FrameReader),
}

/// What `recv` has learned so far.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RxState {
    Open,
    Eof,
    Dead,
}

/// The receiving half of a link.
pub struct LinkRx {
    source: RxSource,
    state: RxState,
    /// The configured maximum.
    max_message_size: usize,
    /// The maximum in force now: lower than the configured one while the
    /// peer is unauthenticated (rule `session.setup.limits`).
    limit: usize,
    /// The peer's network address, where the link has one.
    peer_addr: Option<std::net::SocketAddr>,
    /// The peer's verified identity, where the link authenticated it (TLS).
    peer_identity: Option<PeerIdentity>,
    /// WebSocket links: `limit`, shared with the scanner under the
    /// WebSocket so that it refuses an oversized message from its frame
    /// header (see `ws`).
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    shared_limit: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl LinkRx {
    fn new(source: RxSource, max_message_size: usize) -> Self {
        Self {
            source,
            state: RxState::Open,
            max_message_size,
            limit: max_message_size,
            peer_addr: None,
            peer_identity: None,
            shared_limit: None,
        }
    }

    /// Keeps `shared` equal to the limit in force from now on.
    #[cfg(feature = "websocket")]
    fn share_limit(&mut self, shared: Arc<std::sync::atomic::AtomicUsize>) {
        shared.store(self.limit, Ordering::Relaxed);
        self.shared_limit = Some(shared);
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        if let Some(shared) = &self.shared_limit {
            shared.store(limit, Ordering::Relaxed);
        }
    }

    /// The peer's network address, if the link's creator recorded one (TCP
    /// links made by the listener and by `TcpSource` do).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr
    }

    /// Records the peer's network address (handlers see it in their
    /// `CallContext`).
    pub fn set_peer_addr(&mut self, addr: std::net::SocketAddr) {
        self.peer_addr = Some(addr);
    }

    /// The peer's verified identity, if the link's creator recorded one
    /// (TLS links do: the certificate the peer presented and the TLS layer
    /// verified).
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer_identity.as_ref()
    }

    /// Records the peer's verified identity (handlers see it in their
    /// `CallContext`).
    pub fn set_peer_identity(&mut self, identity: PeerIdentity) {
        self.peer_identity = Some(identity);
    }

    /// Lowers the largest message accepted from now on to `max` (never above
    /// the configured maximum), until [`unrestrict`](Self::unrestrict).
    ///
    /// Setup code calls this before the transport prologue: until the
    /// handshake completes the peer is unauthenticated, and a message above
    /// `max` is a link error detected from its length prefix, before
    /// anything is allocated for it (rule `session.setup.limits`).
    pub fn restrict(&mut self, max: usize) {
        self.set_limit(max.min(self.max_message_size));
    }

    /// Accepts messages up to the configured maximum again (after the
    /// handshake).
    pub fn unrestrict(&mut self) {
        self.set_limit(self.max_message_size);
    }

    /// The largest message accepted right now.
    pub fn current_limit(&self) -> usize {
        self.limit
    }

    /// Receives the next whole message.
    ///
    /// Returns `Ok(Some(msg))` for a message and `Ok(None)` at end of stream,
    /// and keeps returning `Ok(None)` after that. After an error, every later
    /// call returns [`LinkError::Dead`].
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used inside `tokio::select!`: bytes of a
    /// partly received frame stay in an internal buffer.
    ///
    /// # Errors
    /// The peer's faults: [`LinkError::TooLarge`] for a frame announced above
    /// [`current_limit`](Self::current_limit), [`LinkError::Stalled`] for a
    /// frame that stopped half-way for longer than the frame timeout,
    /// [`LinkError::Truncated`] for a stream that ended mid-frame;
    /// [`LinkError::Io`] when reading fails; [`LinkError::Dead`] on every call
    /// after one of these.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        match self.state {
            // rule: link.rx.eof
            RxState::Eof => return Ok(None),
            // rule: link.rx.error
            RxState::Dead => return Err(LinkError::Dead),
            RxState::Open => {}
        }
        let max = self.limit;
        let result = match &mut self.source {
            RxSource::Memory(queue) => match queue.recv().await {
                // rule: link.tx.max-size — the sender already checked, but
                // the two halves may have been configured differently.
                Some(msg) if msg.len() > max => Err(LinkError::TooLarge { size: msg.len(), max }),
                other => Ok(other),
            },
            RxSource::Stream(reader) => reader.read_frame(max).await,
        };
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.state = RxState::Eof,
            Err(_) => self.state = RxState::Dead,
        }
        result
    }

    /// Largest message this half accepts.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }
}
