//! The hello exchange's plumbing, used by both sides: why a setup failed
//! ([`StableSetupError`]) and the framing of the hello messages.

use super::ConduitError;
use crate::link::{Link, LinkError, LinkTx};
use crate::transport;
use crate::wire;
use bytes::Bytes;

/// Why opening or resuming a stable conduit failed.
#[derive(Debug, thiserror::Error)]
pub enum StableSetupError {
    /// Dialing or the link failed.
    #[error("stable conduit setup: link error: {0}")]
    Link(#[from] LinkError),
    /// The transport prologue failed.
    #[error("stable conduit setup: {0}")]
    Prologue(#[from] transport::PrologueError),
    /// The hello exchange failed.
    #[error("stable conduit setup: {0}")]
    Hello(String),
    /// The server does not know the key.
    #[error("stable conduit setup: resume refused: {0}")]
    UnknownKey(String),
    /// Encoding or decoding failed.
    #[error("stable conduit setup: {0}")]
    Conduit(#[from] ConduitError),
}

pub(super) async fn recv_decoded<T: serde::de::DeserializeOwned>(
    link: &mut Link,
    what: &'static str,
) -> Result<T, StableSetupError> {
    let bytes =
        link.rx.recv().await?.ok_or_else(|| StableSetupError::Hello(format!("peer closed before sending {what}")))?;
    wire::decode::<T>(what, &bytes).map_err(|e| StableSetupError::Hello(e.to_string()))
}

pub(super) async fn send_encoded<T: serde::Serialize>(
    tx: &LinkTx,
    what: &'static str,
    v: &T,
) -> Result<(), StableSetupError> {
    let bytes = wire::encode(what, v).map_err(ConduitError::from)?;
    tx.send(Bytes::from(bytes)).await?;
    Ok(())
}
