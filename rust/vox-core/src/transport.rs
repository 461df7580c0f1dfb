//! Transport prologue: the first message in each direction of a fresh link
//! chooses the conduit mode (rule `transport.prologue`).

use crate::link::{Link, LinkError, LinkTx};
use crate::wire::{self, ConduitMode, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg};
use bytes::Bytes;

/// Why the prologue failed.
#[derive(Debug, thiserror::Error)]
pub enum PrologueError {
    /// The link failed during the prologue.
    #[error("transport prologue: link error: {0}")]
    Link(#[from] LinkError),
    /// The peer closed the link before answering.
    #[error("transport prologue: peer closed the link before the prologue completed")]
    PeerClosed,
    /// The first message was not a valid prologue message.
    #[error("transport prologue: peer sent bytes that are not a vox transport prologue ({0})")]
    Garbage(String),
    /// The magic bytes were wrong: this is not a vox peer.
    #[error("transport prologue: bad magic {found:02x?} (expected {:02x?}); not a vox peer", TRANSPORT_MAGIC)]
    BadMagic {
        /// The magic the peer sent.
        found: [u8; 4],
    },
    /// The acceptor refused.
    #[error("transport prologue: rejected by the acceptor: {reason}")]
    Rejected {
        /// The acceptor's reason.
        reason: String,
    },
    /// We refused the initiator (the reason was sent to it).
    #[error("transport prologue: refused the initiator: {reason}")]
    Refused {
        /// The reason sent to the peer.
        reason: String,
    },
    /// The initiator's first message did not arrive within the prologue
    /// deadline (rule `session.setup.limits`).
    #[error("transport prologue: no TransportHello within {0:?} (SetupLimits::prologue_timeout)")]
    Timeout(std::time::Duration),
    /// The acceptor answered with a mode other than the requested one
    /// (rule `transport.prologue.no-fallback`).
    #[error("transport prologue: requested mode {requested:?} but the acceptor answered {answered:?}")]
    ModeMismatch {
        /// What we asked for.
        requested: ConduitMode,
        /// What came back.
        answered: ConduitMode,
    },
}

/// Which conduit modes an acceptor supports.
#[derive(Clone, Copy, Debug)]
pub struct AcceptModes {
    /// Accept `bare`.
    pub bare: bool,
    /// Accept `stable`.
    pub stable: bool,
}

impl Default for AcceptModes {
    fn default() -> Self {
        // Bare only: accepting `stable` also needs a registry of live stable
        // conduits, which session acceptors have (`SessionConfig::accept_stable`).
        AcceptModes { bare: true, stable: false }
    }
}

async fn send(tx: &LinkTx, msg: &TransportMsg) -> Result<(), PrologueError> {
    let bytes = wire::encode("TransportMsg", msg).map_err(|e| PrologueError::Garbage(e.to_string()))?;
    tx.send(Bytes::from(bytes)).await?;
    Ok(())
}

async fn recv(link: &mut Link) -> Result<TransportMsg, PrologueError> {
    let bytes = link.rx.recv().await?.ok_or(PrologueError::PeerClosed)?;
    wire::decode::<TransportMsg>("TransportMsg", &bytes).map_err(|e| PrologueError::Garbage(e.to_string()))
}

/// Initiator side: asks for `mode` and waits for the answer.
///
/// # Cancel safety
/// Not cancel-safe: a dropped future may leave the hello sent and the answer
/// unread; the link is then mid-prologue and must be dropped.
///
/// # Errors
/// [`PrologueError::Rejected`] or [`PrologueError::ModeMismatch`] when the
/// acceptor refuses or answers another mode, [`PrologueError::Garbage`] for an
/// answer that is not one (the peer's fault), [`PrologueError::PeerClosed`] if
/// the link ends first, [`PrologueError::Link`] when the link fails.
pub async fn initiate(link: &mut Link, mode: ConduitMode) -> Result<(), PrologueError> {
    send(&link.tx, &TransportMsg::Hello(TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode }))
        .await?;
    match recv(link).await? {
        TransportMsg::Accept { mode: answered } if answered == mode => Ok(()),
        TransportMsg::Accept { mode: answered } => Err(PrologueError::ModeMismatch { requested: mode, answered }),
        TransportMsg::Reject { reason } => Err(PrologueError::Rejected { reason }),
        TransportMsg::Hello(_) => Err(PrologueError::Garbage("acceptor sent a TransportHello".into())),
    }
}

/// Acceptor side: reads the initiator's hello and accepts or rejects it.
/// After a rejection the caller must close the link (rule
/// `transport.prologue.reject-close`); the error says why.
///
/// # Cancel safety
/// As [`accept_within`]: a dropped future leaves the link mid-prologue; drop
/// the link.
///
/// # Errors
/// As [`accept_within`], without [`PrologueError::Timeout`].
pub async fn accept(link: &mut Link, modes: AcceptModes) -> Result<ConduitMode, PrologueError> {
    accept_within(link, modes, None).await
}

/// [`accept`], with a deadline for the initiator's first message: if no
/// `TransportHello` has arrived `first_message` after the call, it fails
/// with [`PrologueError::Timeout`] (rule `session.setup.limits`: a link that
/// never speaks is dropped early, whatever the whole setup may take).
///
/// # Cancel safety
/// Not cancel-safe: a dropped future may have consumed the hello without
/// answering it; the link is then mid-prologue and must be dropped.
///
/// # Errors
/// The initiator's faults: [`PrologueError::Garbage`] for a first message that
/// is not a hello, [`PrologueError::BadMagic`] for a peer that is not vox,
/// [`PrologueError::Refused`] (after sending `Reject`) for a version or mode
/// this side does not take, [`PrologueError::Timeout`] if no message came in
/// time, [`PrologueError::PeerClosed`]; [`PrologueError::Link`] when the link
/// fails.
pub async fn accept_within(
    link: &mut Link,
    modes: AcceptModes,
    first_message: Option<std::time::Duration>,
) -> Result<ConduitMode, PrologueError> {
    let first = match first_message {
        Some(limit) => tokio::time::timeout(limit, recv(link)).await.map_err(|_| PrologueError::Timeout(limit))?,
        None => recv(link).await,
    };
    let hello = match first? {
        TransportMsg::Hello(h) => h,
        other => {
            return Err(PrologueError::Garbage(format!("expected TransportHello, got {other:?}")));
        }
    };
    // A wrong magic means this is not a vox peer at all: answering in our
    // format would be noise to it, so we only close.
    if hello.magic != TRANSPORT_MAGIC {
        return Err(PrologueError::BadMagic { found: hello.magic });
    }
    let refusal = if hello.version != TRANSPORT_VERSION {
        Some(format!("unsupported transport prologue version {} (this side speaks {TRANSPORT_VERSION})", hello.version))
    } else {
        match hello.mode {
            // rule: transport.prologue.no-fallback
            ConduitMode::Stable if !modes.stable => Some(
                "conduit mode `stable` is not supported by this acceptor (it is switched off); use `bare`".to_string(),
            ),
            ConduitMode::Bare if !modes.bare => {
                Some("conduit mode `bare` is not supported by this acceptor".to_string())
            }
            _ => None,
        }
    };
    if let Some(reason) = refusal {
        send(&link.tx, &TransportMsg::Reject { reason: reason.clone() }).await?;
        return Err(PrologueError::Refused { reason });
    }
    send(&link.tx, &TransportMsg::Accept { mode: hello.mode }).await?;
    Ok(hello.mode)
}
