//! Conduits: (de)serialize [`ConduitMsg`] values over a link.
//!
//! Two kinds: the bare conduit (rule `conduit.bare`: one message per link
//! message, no reconnect) and the [`stable`] conduit (numbered frames, acks,
//! replay across link breaks). [`ConduitTx`] and [`ConduitRx`] hide which
//! one a session runs on.

pub mod stable;

use crate::link::{Link, LinkError, LinkRx, LinkTx};
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
