//! Conduits: (de)serialize [`ConduitMsg`] values over a link.
//!
//! Two kinds: the bare conduit (rule `conduit.bare`: one message per link
//! message, no reconnect) and the [`stable`] conduit (numbered frames, acks,
//! replay across link breaks). [`ConduitTx`] and [`ConduitRx`] hide which
//! one a session runs on.

pub mod stable;

use crate::link::{FrameWriter, Link, LinkError, LinkRx, LinkSink, LinkTx};
use crate::wire::{self, ConduitMsg, DecodeError, DecodeLimits, EncodeError};
use bytes::{Bytes, BytesMut};

/// Why a conduit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConduitError {
    /// The link failed.
    #[error("conduit: link error: {0}")]
    Link(#[from] LinkError),
    /// The peer sent bytes that are not a conduit message.
    #[error("conduit: undecodable message from peer: {0}")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded.
    #[error("conduit: {0}")]
    Encode(#[from] EncodeError),
    /// The stable conduit ended (see the reason).
    #[error("stable conduit: {0}")]
    Stable(stable::StableEnd),
}

/// Sending half of a conduit.
pub struct ConduitTx {
    kind: TxKind,
}

enum TxKind {
    Bare(LinkTx),
    Stable(stable::StableTx),
}

/// Receiving half of a conduit.
pub struct ConduitRx {
    kind: RxKind,
    /// Bounds on the sequences of every decoded message (rule
    /// `session.decode.bounded`).
    limits: DecodeLimits,
}

enum RxKind {
    Bare(LinkRx),
    Stable(stable::StableRx),
}

/// Wraps a link (after the prologue) in a bare conduit.
pub fn bare(link: Link) -> (ConduitTx, ConduitRx) {
    let (tx, rx) = link.split();
    (ConduitTx { kind: TxKind::Bare(tx) }, ConduitRx { kind: RxKind::Bare(rx), limits: DecodeLimits::default() })
}

/// Wraps the halves of a stable conduit.
pub fn from_stable(tx: stable::StableTx, rx: stable::StableRx) -> (ConduitTx, ConduitRx) {
    (ConduitTx { kind: TxKind::Stable(tx) }, ConduitRx { kind: RxKind::Stable(rx), limits: DecodeLimits::default() })
}

impl ConduitTx {
    /// Encodes and sends one message.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a dropped future
    /// queued nothing.
    ///
    /// # Errors
    /// [`ConduitError::Encode`] if `msg` cannot be encoded (a local bug);
    /// otherwise as [`send_encoded`](Self::send_encoded).
    pub async fn send(&self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        self.send_encoded(wire::encode_conduit(msg)?).await
    }

    /// Sends pre-encoded bytes (the session writer encodes outside the link).
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: the link and the
    /// stable conduit queue whole messages or nothing ([`LinkTx::send`],
    /// [`stable::StableTx::send_encoded`]).
    ///
    /// # Errors
    /// Bare: [`ConduitError::Link`] with [`LinkError::TooLarge`] (the caller's
    /// fault) or [`LinkError::Closed`]. Stable: [`ConduitError::Stable`] with
    /// why the conduit ended, once it has.
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), ConduitError> {
        match &self.kind {
            TxKind::Bare(link) => Ok(link.send(bytes).await?),
            TxKind::Stable(s) => s.send_encoded(bytes).await,
        }
    }

    /// Flushes and closes the underlying link.
    ///
    /// # Cancel safety
    /// As [`LinkTx::close`] (bare: the close goes on without the future) and
    /// [`stable::StableTx::close`] (stable: dropping the future ends the
    /// conduit at once, unacknowledged messages lost).
    ///
    /// # Errors
    /// Bare: [`ConduitError::Link`] if the link failed writing what was queued.
    /// Stable: [`ConduitError::Stable`] if the conduit ended otherwise than by
    /// this close or the peer's `Bye`.
    pub async fn close(self) -> Result<(), ConduitError> {
        match self.kind {
            TxKind::Bare(link) => Ok(link.close().await?),
            TxKind::Stable(s) => s.close().await,
        }
    }

    /// Turns this half into a [`ConduitWriter`] for a writer that owns it.
    ///
    /// On a bare stream link the writer takes the byte stream over and
    /// encodes messages straight into its batch; otherwise messages go
    /// through [`send_encoded`](ConduitTx::send_encoded) as before.
    ///
    /// # Cancel safety
    /// Not cancel-safe on a bare stream link: the writer task still writes what
    /// was queued, but the stream it hands back is dropped with the future, so
    /// the conduit can send nothing more. Otherwise it does not wait.
    ///
    /// # Errors
    /// Bare stream link only: [`ConduitError::Link`] with [`LinkError::Io`] if
    /// the writer task failed writing what was queued, or did not run to its
    /// end. Never fails otherwise.
    pub async fn into_writer(self) -> Result<ConduitWriter, ConduitError> {
        let kind = match self.kind {
            TxKind::Bare(link) => match link.into_sink().await? {
                LinkSink::Frames(frames) => WriterKind::Frames(frames),
                LinkSink::Queue(link) => WriterKind::each(ConduitTx { kind: TxKind::Bare(link) }),
            },
            kind @ TxKind::Stable(_) => WriterKind::each(ConduitTx { kind }),
        };
        Ok(ConduitWriter { kind })
    }
}

/// The sending half of a conduit, owned by one writer that batches.
///
/// [`push`](ConduitWriter::push) adds messages and [`flush`](ConduitWriter::flush)
/// sends what was added. Where the conduit has a byte stream of its own
/// (a bare stream link), pushed messages wait in memory until the flush and
/// then go out in one vectored write; otherwise each one is handed to the
/// link or stable conduit as it is pushed and the flush does nothing.
pub struct ConduitWriter {
    kind: WriterKind,
}

enum WriterKind {
    Frames(FrameWriter),
    /// `buf` is the encode buffer, reused from message to message: each
    /// frame is split off it and shares its allocation, which is reclaimed
    /// in place once the frames cut from it are dropped. Encoding each
    /// message into a fresh vector instead costs an allocation per message,
    /// and for large ones fresh pages to fault in each time (1 MiB echo over
    /// the memory link, docs/perf.md session 5).
    Each {
        tx: ConduitTx,
        buf: BytesMut,
    },
}

/// Least spare room the encode buffer of [`WriterKind::Each`] keeps; below
/// it, the buffer is grown (or reclaimed) by [`ENCODE_CHUNK`] before a
/// message is encoded, so that many small messages share one allocation.
const ENCODE_MIN_SPARE: usize = 256;
const ENCODE_CHUNK: usize = 8 * 1024;

impl WriterKind {
    fn each(tx: ConduitTx) -> WriterKind {
        WriterKind::Each { tx, buf: BytesMut::new() }
    }
}

impl ConduitWriter {
    /// Adds one message. Fails if it cannot be encoded or is larger than the
    /// link allows (then nothing was added), or if the conduit failed.
    ///
    /// # Cancel safety
    /// Cancel-safe: on a bare stream link it does not wait; otherwise it waits
    /// only in [`ConduitTx::send_encoded`], which is cancel-safe (a dropped
    /// future added nothing).
    ///
    /// # Errors
    /// [`ConduitError::Encode`] if `msg` cannot be encoded,
    /// [`ConduitError::Link`] with [`LinkError::TooLarge`] if it is larger than
    /// the link allows; otherwise as [`ConduitTx::send_encoded`] (the conduit
    /// failed).
    pub async fn push(&mut self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        match &mut self.kind {
            WriterKind::Frames(frames) => {
                frames.push_with(|buf| wire::encode_conduit_into(msg, buf).map_err(ConduitError::from))
            }
            WriterKind::Each { tx, buf } => {
                if buf.capacity() - buf.len() < ENCODE_MIN_SPARE {
                    buf.reserve(ENCODE_CHUNK);
                }
                if let Err(e) = wire::encode_conduit_into(msg, buf) {
                    buf.clear();
                    return Err(e.into());
                }
                tx.send_encoded(buf.split().freeze()).await
            }
        }
    }

    /// Whether it is worth gathering more messages before a flush: bytes are
    /// buffered, and fewer than [`BATCH_BYTES`](crate::link::BATCH_BYTES).
    pub fn wants_more(&self) -> bool {
        match &self.kind {
            WriterKind::Frames(frames) => {
                frames.pending_frames() > 0 && frames.pending_bytes() < crate::link::BATCH_BYTES
            }
            WriterKind::Each { .. } => false,
        }
    }

    /// Messages added since the last flush and not yet sent.
    pub fn pending(&self) -> usize {
        match &self.kind {
            WriterKind::Frames(frames) => frames.pending_frames(),
            WriterKind::Each { .. } => 0,
        }
    }

    /// Sends everything added so far.
    ///
    /// # Cancel safety
    /// Not cancel-safe on a bare stream link: a dropped flush may have written
    /// part of the batch and a later one would write some of it again, so
    /// after a dropped flush the writer must not be used again. Elsewhere it
    /// does nothing.
    ///
    /// # Errors
    /// [`ConduitError::Link`] with [`LinkError::Io`] when writing the batch to
    /// the stream fails. Never fails when messages are sent as pushed.
    pub async fn flush(&mut self) -> Result<(), ConduitError> {
        match &mut self.kind {
            WriterKind::Frames(frames) => Ok(frames.flush().await?),
            WriterKind::Each { .. } => Ok(()),
        }
    }

    /// Sends what is left and closes the conduit (see [`ConduitTx::close`]).
    ///
    /// # Cancel safety
    /// Dropping the future drops the sending side: on a bare stream link what
    /// was not written yet is lost; otherwise as [`ConduitTx::close`].
    ///
    /// # Errors
    /// [`ConduitError::Link`] when writing or shutting the stream down fails;
    /// otherwise as [`ConduitTx::close`].
    pub async fn close(self) -> Result<(), ConduitError> {
        match self.kind {
            WriterKind::Frames(frames) => Ok(frames.shutdown().await?),
            WriterKind::Each { tx, .. } => tx.close().await,
        }
    }

    /// Sends what was added and closes the conduit without waiting for the
    /// peer: the teardown after a violation (rule `session.protocol-error`).
    /// A stable conduit does not wait for acknowledgements
    /// ([`stable::StableTx::abort`]).
    ///
    /// # Cancel safety
    /// Dropping the future drops the conduit's sending side at once; callers
    /// bound it with a deadline.
    ///
    /// # Errors
    /// The link failed while writing.
    pub async fn abort(self) -> Result<(), ConduitError> {
        match self.kind {
            WriterKind::Frames(frames) => Ok(frames.shutdown().await?),
            WriterKind::Each { tx: ConduitTx { kind: TxKind::Stable(s) }, .. } => s.abort().await,
            WriterKind::Each { tx, .. } => tx.close().await,
        }
    }
}

impl ConduitRx {
    /// The next message, or `None` at end of stream.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a dropped future
    /// loses no message (see [`LinkRx::recv`] and [`stable::StableRx::recv`]).
    ///
    /// # Errors
    /// [`ConduitError::Decode`] for bytes that are not a message within the
    /// decode limits (a violation by the peer), [`ConduitError::Stable`]
    /// when a stable conduit ended or its peer broke the stable-conduit
    /// rules, [`ConduitError::Link`] when a bare link failed.
    pub async fn recv(&mut self) -> Result<Option<ConduitMsg>, ConduitError> {
        let item = match &mut self.kind {
            RxKind::Bare(link) => link.recv().await?,
            RxKind::Stable(s) => s.recv_item().await?,
        };
        let Some(bytes) = item else { return Ok(None) };
        match wire::decode_with::<ConduitMsg>("ConduitMsg", &bytes, &self.limits) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                if let RxKind::Stable(s) = &self.kind {
                    // rule: session.protocol-error — the conduit ends
                    // shortly even if the session never closes it.
                    s.violated(stable::StableEnd::Undecodable(e.to_string()));
                }
                Err(e.into())
            }
        }
    }

    /// The peer's network address, if its (first) link recorded one.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.kind {
            RxKind::Bare(link) => link.peer_addr(),
            RxKind::Stable(s) => s.peer_addr(),
        }
    }

    /// The peer's verified identity, if its (first) link recorded one (TLS).
    pub fn peer_identity(&self) -> Option<crate::link::PeerIdentity> {
        match &self.kind {
            RxKind::Bare(link) => link.peer_identity().cloned(),
            RxKind::Stable(s) => s.peer_identity(),
        }
    }

    /// Sets the bounds on decoded sequences (rule `session.decode.bounded`).
    pub fn set_decode_limits(&mut self, limits: DecodeLimits) {
        self.limits = limits;
    }

    /// Lowers the largest message accepted to `max` bytes until
    /// [`unrestrict`](Self::unrestrict): used while the peer is
    /// unauthenticated (rule `session.setup.limits`).
    pub fn restrict(&mut self, max: usize) {
        match &mut self.kind {
            RxKind::Bare(link) => link.restrict(max),
            RxKind::Stable(s) => s.restrict(Some(max)),
        }
    }

    /// Accepts messages up to the link's configured maximum again, once the
    /// handshake is done. A stable conduit applies it to every later link
    /// too.
    pub fn unrestrict(&mut self) {
        match &mut self.kind {
            RxKind::Bare(link) => link.unrestrict(),
            RxKind::Stable(s) => s.restrict(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{LinkConfig, memory_pair};
    use crate::wire::{Blob, ChannelId, ConnectionId, Message, Payload};

    fn item(n: u8, len: usize) -> ConduitMsg {
        ConduitMsg::Message(Message {
            connection_id: ConnectionId::ROOT,
            payload: Payload::ChannelItem { id: ChannelId(1), item: Blob::from(vec![n; len]) },
        })
    }

    /// The per-message writer reuses one encode buffer: frames cut from it
    /// that the receiver still holds must keep their bytes while later
    /// messages (small ones sharing the allocation, and one larger than a
    /// whole chunk) are encoded after them.
    #[tokio::test]
    async fn conduit_writer_reused_encode_buffer_never_changes_a_frame_already_sent() {
        let (a, b) = memory_pair(LinkConfig::default());
        let (tx, _) = bare(a);
        let (_, mut rx) = bare(b);
        let mut writer = tx.into_writer().await.expect("writer");
        let sizes = [10, 3_000, 20, ENCODE_CHUNK * 3, 5, 7_000];
        for (n, len) in sizes.iter().enumerate() {
            writer.push(&item(n as u8, *len)).await.expect("push");
        }
        let mut held = Vec::new();
        for _ in sizes {
            held.push(rx.recv().await.expect("recv").expect("a message"));
        }
        for (n, (got, len)) in held.iter().zip(sizes).enumerate() {
            assert_eq!(got, &item(n as u8, len), "message {n}");
        }
    }
}
