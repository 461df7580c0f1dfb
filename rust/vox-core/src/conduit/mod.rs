//! Conduits: (de)serialize [`ConduitMsg`] values over a link.
//!
//! Two kinds: the bare conduit (rule `conduit.bare`: one message per link
//! message, no reconnect) and the [`stable`] conduit (numbered frames, acks,
//! replay across link breaks). [`ConduitTx`] and [`ConduitRx`] hide which
//! one a session runs on.

pub mod stable;

use crate::link::{FrameWriter, Link, LinkError, LinkRx, LinkSink, LinkTx};
use crate::wire::{self, ConduitMsg, DecodeError, EncodeError};
use bytes::Bytes;

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
}

enum RxKind {
    Bare(LinkRx),
    Stable(stable::StableRx),
}

/// Wraps a link (after the prologue) in a bare conduit.
pub fn bare(link: Link) -> (ConduitTx, ConduitRx) {
    let (tx, rx) = link.split();
    (ConduitTx { kind: TxKind::Bare(tx) }, ConduitRx { kind: RxKind::Bare(rx) })
}

/// Wraps the halves of a stable conduit.
pub fn from_stable(tx: stable::StableTx, rx: stable::StableRx) -> (ConduitTx, ConduitRx) {
    (ConduitTx { kind: TxKind::Stable(tx) }, ConduitRx { kind: RxKind::Stable(rx) })
}

impl ConduitTx {
    /// Encodes and sends one message. Cancel-safe: the link publishes whole
    /// messages or nothing.
    pub async fn send(&self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        let bytes = wire::encode("ConduitMsg", msg)?;
        self.send_encoded(Bytes::from(bytes)).await
    }

    /// Sends pre-encoded bytes (the session writer encodes outside the link).
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), ConduitError> {
        match &self.kind {
            TxKind::Bare(link) => Ok(link.send(bytes).await?),
            TxKind::Stable(s) => s.send_encoded(bytes).await,
        }
    }

    /// Flushes and closes the underlying link.
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
    pub async fn into_writer(self) -> Result<ConduitWriter, ConduitError> {
        let kind = match self.kind {
            TxKind::Bare(link) => match link.into_sink().await? {
                LinkSink::Frames(frames) => WriterKind::Frames(frames),
                LinkSink::Queue(link) => WriterKind::Each(ConduitTx { kind: TxKind::Bare(link) }),
            },
            kind @ TxKind::Stable(_) => WriterKind::Each(ConduitTx { kind }),
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
    Each(ConduitTx),
}

impl ConduitWriter {
    /// Adds one message. Fails if it cannot be encoded or is larger than the
    /// link allows (then nothing was added), or if the conduit failed.
    pub async fn push(&mut self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        match &mut self.kind {
            WriterKind::Frames(frames) => {
                frames.push_with(|buf| wire::encode_into("ConduitMsg", msg, buf).map_err(ConduitError::from))
            }
            WriterKind::Each(tx) => tx.send(msg).await,
        }
    }

    /// Whether it is worth gathering more messages before a flush: bytes are
    /// buffered, and fewer than [`BATCH_BYTES`](crate::link::BATCH_BYTES).
    pub fn wants_more(&self) -> bool {
        match &self.kind {
            WriterKind::Frames(frames) => {
                frames.pending_frames() > 0 && frames.pending_bytes() < crate::link::BATCH_BYTES
            }
            WriterKind::Each(_) => false,
        }
    }

    /// Messages added since the last flush and not yet sent.
    pub fn pending(&self) -> usize {
        match &self.kind {
            WriterKind::Frames(frames) => frames.pending_frames(),
            WriterKind::Each(_) => 0,
        }
    }

    /// Sends everything added so far.
    pub async fn flush(&mut self) -> Result<(), ConduitError> {
        match &mut self.kind {
            WriterKind::Frames(frames) => Ok(frames.flush().await?),
            WriterKind::Each(_) => Ok(()),
        }
    }

    /// Sends what is left and closes the conduit (see [`ConduitTx::close`]).
    pub async fn close(self) -> Result<(), ConduitError> {
        match self.kind {
            WriterKind::Frames(frames) => Ok(frames.shutdown().await?),
            WriterKind::Each(tx) => tx.close().await,
        }
    }
}

impl ConduitRx {
    /// The next message, or `None` at end of stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ConduitMsg>, ConduitError> {
        match &mut self.kind {
            RxKind::Bare(link) => match link.recv().await? {
                None => Ok(None),
                Some(bytes) => Ok(Some(wire::decode::<ConduitMsg>("ConduitMsg", &bytes)?)),
            },
            RxKind::Stable(s) => s.recv().await,
        }
    }
}
