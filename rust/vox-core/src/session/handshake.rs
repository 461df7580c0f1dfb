//! The session handshake (rule `session.handshake`): `Hello`,
//! `HelloYourself` or `Sorry`, then `LetsGo` or `Sorry`.

use crate::conduit::{ConduitError, ConduitRx, ConduitTx};
use crate::wire::{ConduitMsg, ConnectionSettings, HandshakeMsg, Hello, HelloYourself, PROTOCOL_VERSION, Parity};

/// What both sides agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// This side's session parity (connection ids it allocates).
    pub local_parity: Parity,
    /// This side's root settings.
    pub local_root: ConnectionSettings,
    /// The peer's root settings.
    pub peer_root: ConnectionSettings,
    /// The protocol version in use.
    pub protocol_version: u32,
}

/// Why the handshake failed. After any of these, no session exists.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The conduit failed.
    #[error("session handshake: {0}")]
    Conduit(#[from] ConduitError),
    /// The peer closed the link during the handshake.
    #[error("session handshake: peer closed the link before the handshake completed")]
    PeerClosed,
    /// The peer said `Sorry`.
    #[error("session handshake: peer refused: {reason}")]
    Refused {
        /// The peer's reason.
        reason: String,
    },
    /// We said `Sorry` (the reason was sent to the peer).
    #[error("session handshake: refused the peer: {reason}")]
    RefusedPeer {
        /// The reason sent to the peer.
        reason: String,
    },
    /// The peer sent something out of sequence.
    #[error("session handshake: unexpected {got} (expected {expected})")]
    Unexpected {
        /// What we waited for.
        expected: &'static str,
        /// What came.
        got: String,
    },
}

async fn next(rx: &mut ConduitRx, expected: &'static str) -> Result<HandshakeMsg, HandshakeError> {
    match rx.recv().await? {
        None => Err(HandshakeError::PeerClosed),
        Some(ConduitMsg::Handshake(m)) => Ok(m),
        Some(ConduitMsg::Message(m)) => {
            Err(HandshakeError::Unexpected { expected, got: format!("session message {}", m.payload.kind()) })
        }
    }
}

async fn sorry(tx: &ConduitTx, reason: String) -> HandshakeError {
    // Best effort: the peer may already be gone, and the refusal is what we
    // report either way.
    if let Err(e) = tx.send(&ConduitMsg::Handshake(HandshakeMsg::Sorry { reason: reason.clone() })).await {
        tracing::debug!(error = %e, "could not send Sorry");
    }
    HandshakeError::RefusedPeer { reason }
}

fn version_mismatch(theirs: u32) -> String {
    format!("protocol version {theirs} is not supported; this side speaks version {PROTOCOL_VERSION}")
}

/// Initiator side of the handshake.
pub async fn initiate(
    tx: &ConduitTx,
    rx: &mut ConduitRx,
    parity: Parity,
    root_settings: ConnectionSettings,
    protocol_version: u32,
) -> Result<Negotiated, HandshakeError> {
    let hello = Hello { protocol_version, parity, root_settings: root_settings.clone(), features: Vec::new(), resume_key: None };
    tx.send(&ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
    match next(rx, "HelloYourself or Sorry").await? {
        HandshakeMsg::HelloYourself(hy) => {
            if hy.protocol_version != protocol_version {
                return Err(sorry(tx, version_mismatch(hy.protocol_version)).await);
            }
            tx.send(&ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await?;
            Ok(Negotiated {
                local_parity: parity,
                local_root: root_settings,
                peer_root: hy.root_settings,
                protocol_version,
            })
        }
        HandshakeMsg::Sorry { reason } => Err(HandshakeError::Refused { reason }),
        other => Err(HandshakeError::Unexpected { expected: "HelloYourself or Sorry", got: format!("{other:?}") }),
    }
}

/// Acceptor side of the handshake: takes the parity opposite to the
/// initiator's.
pub async fn accept(
    tx: &ConduitTx,
    rx: &mut ConduitRx,
    root_settings: ConnectionSettings,
) -> Result<Negotiated, HandshakeError> {
    let hello = match next(rx, "Hello").await? {
        HandshakeMsg::Hello(h) => h,
        HandshakeMsg::Sorry { reason } => return Err(HandshakeError::Refused { reason }),
        other => {
            let got = format!("{other:?}");
            return Err(sorry(tx, format!("expected Hello, got {got}")).await);
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(sorry(tx, version_mismatch(hello.protocol_version)).await);
    }
    let answer = HelloYourself {
        protocol_version: PROTOCOL_VERSION,
        root_settings: root_settings.clone(),
        features: Vec::new(),
        resume_key: None,
    };
    tx.send(&ConduitMsg::Handshake(HandshakeMsg::HelloYourself(answer))).await?;
    match next(rx, "LetsGo or Sorry").await? {
        HandshakeMsg::LetsGo => Ok(Negotiated {
            local_parity: hello.parity.opposite(),
            local_root: root_settings,
            peer_root: hello.root_settings,
            protocol_version: PROTOCOL_VERSION,
        }),
        HandshakeMsg::Sorry { reason } => Err(HandshakeError::Refused { reason }),
        other => Err(HandshakeError::Unexpected { expected: "LetsGo or Sorry", got: format!("{other:?}") }),
    }
}
