//! Conduits: (de)serialize [`ConduitMsg`] values over a link.
//!
//! Only the bare conduit exists so far (rule `conduit.bare`): one message per
//! link message, no reconnect.

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
}

/// Sending half of a bare conduit.
pub struct ConduitTx {
    link: LinkTx,
}

/// Receiving half of a bare conduit.
pub struct ConduitRx {
    link: LinkRx,
}

/// Wraps a link (after the prologue) in a bare conduit.
pub fn bare(link: Link) -> (ConduitTx, ConduitRx) {
    let (tx, rx) = link.split();
    (ConduitTx { link: tx }, ConduitRx { link: rx })
}

impl ConduitTx {
    /// Encodes and sends one message. Cancel-safe: the link publishes whole
    /// messages or nothing.
    pub async fn send(&self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        let bytes = wire::encode("ConduitMsg", msg)?;
        self.link.send(Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Sends pre-encoded bytes (the session writer encodes outside the link).
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), ConduitError> {
        self.link.send(bytes).await?;
        Ok(())
    }

    /// Flushes and closes the underlying link.
    pub async fn close(self) -> Result<(), ConduitError> {
        self.link.close().await?;
        Ok(())
    }
}

impl ConduitRx {
    /// The next message, or `None` at end of stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ConduitMsg>, ConduitError> {
        match self.link.recv().await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(wire::decode::<ConduitMsg>("ConduitMsg", &bytes)?)),
        }
    }
}
