//! The session handshake (rule `session.handshake`): `Hello`,
//! `HelloYourself` or `Sorry`, then `LetsGo` or `Sorry`.

use crate::conduit::{ConduitError, ConduitRx, ConduitTx};
use crate::wire::{
    CHANNEL_ITEMS_FEATURE, ConduitMsg, ConnectionSettings, HandshakeMsg, Hello, HelloYourself, PROTOCOL_VERSION,
    Parity, ResumeKey, SESSION_RESUME_FEATURE,
};

/// Limits on a peer that has not completed the handshake yet, which is an
/// unauthenticated peer (rule `session.setup.limits`). Part of
/// [`SessionConfig`](crate::session::SessionConfig) as its `setup` field;
/// the whole setup (prologue and handshake) is also bounded by
/// `SessionConfig::handshake_timeout`.
///
/// ```
/// use std::time::Duration;
/// use vox_core::session::SessionBuilder;
/// let mut server = SessionBuilder::new();
/// server.config_mut().setup.max_pending_setups = 1024;
/// server.config_mut().setup.prologue_timeout = Duration::from_secs(1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupLimits {
    /// The largest message, in bytes, accepted from the peer until the
    /// handshake completes: the transport prologue, a stable conduit's
    /// `ClientHello`/`ServerHello`, `Hello`, `HelloYourself`, `LetsGo`.
    /// Applies on both sides (acceptor and initiator). A larger length
    /// prefix kills the link before anything is allocated for the body.
    /// Default 64 KiB, far below the session's message maximum
    /// (`LinkConfig::max_message_size`, 16 MiB), which applies once the
    /// handshake is done.
    pub max_message_size: usize,
    /// Listeners: the most inbound links whose setup is in progress at
    /// once. A new link is always accepted at once; when this many setups
    /// are unfinished, the oldest one is closed to make room, so links that
    /// never speak cannot delay a well-behaved new session. Default 256.
    pub max_pending_setups: usize,
    /// Acceptors: the initiator's first message (its `TransportHello`) must
    /// arrive within this time of the link being accepted. Default 2 s.
    pub prologue_timeout: std::time::Duration,
    /// Listeners: the TCP listen backlog, i.e. connections the kernel holds
    /// until they are accepted. Default 1024.
    pub listen_backlog: u32,
}

impl Default for SetupLimits {
    fn default() -> Self {
        SetupLimits {
            max_message_size: 64 * 1024,
            max_pending_setups: 256,
            prologue_timeout: std::time::Duration::from_secs(2),
            listen_backlog: 1024,
        }
    }
}

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
    /// The session's resume key, if the session is resumable (rule
    /// `session.resume`).
    pub resume_key: Option<ResumeKey>,
    /// Both sides listed [`CHANNEL_ITEMS_FEATURE`]: on this conduit either
    /// may send `ChannelItems`.
    pub channel_items: bool,
}

/// What the initiator asks for about resuming (rule `session.resume`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResumeRequest {
    /// A new session that ends with its conduit.
    #[default]
    No,
    /// A new session with a resume key.
    New,
    /// Bind this conduit to the session with this key.
    Resume(ResumeKey),
}

/// The acceptor's decision on a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloDecision {
    /// A new session, with this resume key (or none).
    New(Option<ResumeKey>),
    /// The `Hello` resumes the live session with this key.
    Resume(ResumeKey),
    /// `Sorry` with this reason.
    Refuse(String),
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
    /// The acceptor answered a resuming `Hello` without the session's key:
    /// it does not hold the session, which must not be taken as resumed.
    #[error("session handshake: the peer did not resume the session (it answered as a new session)")]
    NotResumed,
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
///
/// # Cancel safety
/// Not cancel-safe: a dropped future leaves the handshake half-done; the
/// conduit must be closed.
///
/// # Errors
/// The peer's answers: [`HandshakeError::Refused`] for its `Sorry`,
/// [`HandshakeError::Unexpected`] for a message out of sequence,
/// [`HandshakeError::NotResumed`] when a resume was answered as a new session;
/// [`HandshakeError::RefusedPeer`] when we refused its protocol version;
/// [`HandshakeError::PeerClosed`]; [`HandshakeError::Conduit`] when the conduit
/// fails.
///
/// `channel_items` offers [`CHANNEL_ITEMS_FEATURE`]; it is in use when the
/// acceptor lists it too ([`Negotiated::channel_items`]).
pub async fn initiate(
    tx: &ConduitTx,
    rx: &mut ConduitRx,
    parity: Parity,
    root_settings: ConnectionSettings,
    protocol_version: u32,
    resume: ResumeRequest,
    channel_items: bool,
) -> Result<Negotiated, HandshakeError> {
    let (mut features, presented) = match resume {
        ResumeRequest::No => (Vec::new(), None),
        ResumeRequest::New => (vec![SESSION_RESUME_FEATURE.to_owned()], None),
        ResumeRequest::Resume(k) => (vec![SESSION_RESUME_FEATURE.to_owned()], Some(k)),
    };
    if channel_items {
        features.push(CHANNEL_ITEMS_FEATURE.to_owned());
    }
    let hello = Hello {
        protocol_version,
        parity,
        root_settings: root_settings.clone(),
        features,
        resume_key: presented.clone(),
    };
    tx.send(&ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
    match next(rx, "HelloYourself or Sorry").await? {
        HandshakeMsg::HelloYourself(hy) => {
            if hy.protocol_version != protocol_version {
                return Err(sorry(tx, version_mismatch(hy.protocol_version)).await);
            }
            // rule: session.resume — only the same key means "resumed".
            if presented.is_some() && hy.resume_key != presented {
                let _ = sorry(tx, "expected the resumed session's key".into()).await;
                return Err(HandshakeError::NotResumed);
            }
            tx.send(&ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await?;
            Ok(Negotiated {
                local_parity: parity,
                local_root: root_settings,
                peer_root: hy.root_settings,
                protocol_version,
                resume_key: hy.resume_key,
                // Only what we offered counts as agreed.
                channel_items: channel_items && hy.features.iter().any(|f| f == CHANNEL_ITEMS_FEATURE),
            })
        }
        HandshakeMsg::Sorry { reason } => Err(HandshakeError::Refused { reason }),
        other => Err(HandshakeError::Unexpected { expected: "HelloYourself or Sorry", got: format!("{other:?}") }),
    }
}

/// Acceptor side of the handshake: takes the parity opposite to the
/// initiator's.
///
/// # Cancel safety
/// Not cancel-safe, as [`accept_deciding`]: the conduit must be closed after a
/// dropped future.
///
/// # Errors
/// As [`accept_deciding`]; a `Hello` that asks to resume is refused
/// ([`HandshakeError::RefusedPeer`]).
pub async fn accept(
    tx: &ConduitTx,
    rx: &mut ConduitRx,
    root_settings: ConnectionSettings,
) -> Result<Negotiated, HandshakeError> {
    let decide = |h: &Hello| match h.resume_key {
        // rule: session.resume — never answer a resume with a new session.
        Some(_) => {
            HelloDecision::Refuse("unknown session resume key (this acceptor keeps no resumable sessions)".into())
        }
        None => HelloDecision::New(None),
    };
    accept_deciding(tx, rx, root_settings, decide, false).await.map(|(n, _)| n)
}

/// Acceptor side, with `decide` choosing between a new session (with or
/// without a resume key), resuming a live one, and refusing. Returns the
/// outcome and whether it resumed a session.
///
/// # Cancel safety
/// Not cancel-safe: a dropped future leaves the handshake half-done (a `Hello`
/// may be consumed, `HelloYourself` sent); the conduit must be closed.
///
/// # Errors
/// [`HandshakeError::RefusedPeer`] (after sending `Sorry`) for a first message
/// that is not `Hello`, an unsupported protocol version, or a refusal by
/// `decide`; [`HandshakeError::Refused`] for the peer's `Sorry`,
/// [`HandshakeError::Unexpected`] for anything but `LetsGo` after our answer;
/// [`HandshakeError::PeerClosed`]; [`HandshakeError::Conduit`] when the conduit
/// fails.
///
/// `channel_items` accepts [`CHANNEL_ITEMS_FEATURE`] when the initiator
/// offers it.
pub async fn accept_deciding(
    tx: &ConduitTx,
    rx: &mut ConduitRx,
    root_settings: ConnectionSettings,
    decide: impl FnOnce(&Hello) -> HelloDecision,
    channel_items: bool,
) -> Result<(Negotiated, bool), HandshakeError> {
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
    let (resume_key, resumed) = match decide(&hello) {
        HelloDecision::New(key) => (key, false),
        HelloDecision::Resume(key) => (Some(key), true),
        // rule: session.resume — an unknown key never becomes a new session.
        HelloDecision::Refuse(reason) => return Err(sorry(tx, reason).await),
    };
    let mut features = if resume_key.is_some() { vec![SESSION_RESUME_FEATURE.to_owned()] } else { Vec::new() };
    let channel_items = channel_items && hello.features.iter().any(|f| f == CHANNEL_ITEMS_FEATURE);
    if channel_items {
        features.push(CHANNEL_ITEMS_FEATURE.to_owned());
    }
    let answer = HelloYourself {
        protocol_version: PROTOCOL_VERSION,
        root_settings: root_settings.clone(),
        features,
        resume_key: resume_key.clone(),
    };
    tx.send(&ConduitMsg::Handshake(HandshakeMsg::HelloYourself(answer))).await?;
    match next(rx, "LetsGo or Sorry").await? {
        HandshakeMsg::LetsGo => Ok((
            Negotiated {
                local_parity: hello.parity.opposite(),
                local_root: root_settings,
                peer_root: hello.root_settings,
                protocol_version: PROTOCOL_VERSION,
                resume_key,
                channel_items,
            },
            resumed,
        )),
        HandshakeMsg::Sorry { reason } => Err(HandshakeError::Refused { reason }),
        other => Err(HandshakeError::Unexpected { expected: "LetsGo or Sorry", got: format!("{other:?}") }),
    }
}
