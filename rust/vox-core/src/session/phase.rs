//! Explicit state enums for the session phase and each connection, with
//! guarded transitions: an illegal one is a [`PhaseError`] value.

use crate::plumbing::loss::{Fault, LossCause};

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// `shutdown()` was called on this side.
    Shutdown,
    /// The peer closed the link.
    PeerClosed,
    /// The link failed.
    LinkError(String),
    /// The peer violated the protocol; we sent `ProtocolError`.
    LocalProtocolError(String),
    /// The peer sent `ProtocolError` with this description.
    PeerProtocolError(String),
    /// No pong arrived within the keepalive timeout.
    KeepaliveTimeout,
    /// The root's last caller was dropped and no virtual connection was left.
    RootReleased,
    /// The conduit was lost and no replacement was bound to the session in
    /// time, or the peer no longer knows the session (rule `session.resume`).
    ResumeFailed(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Shutdown => write!(f, "shut down locally"),
            CloseReason::PeerClosed => write!(f, "the peer closed the link"),
            CloseReason::LinkError(e) => write!(f, "link failed: {e}"),
            CloseReason::LocalProtocolError(d) => write!(f, "peer violated the protocol: {d}"),
            CloseReason::PeerProtocolError(d) => write!(f, "peer reported a protocol error: {d}"),
            CloseReason::KeepaliveTimeout => write!(f, "keepalive timeout: no pong in time"),
            CloseReason::RootReleased => write!(f, "root connection released and no virtual connection left"),
            CloseReason::ResumeFailed(e) => write!(f, "session could not be resumed on a new conduit: {e}"),
        }
    }
}

impl CloseReason {
    /// What pending calls and channel handles observe.
    pub fn loss_cause(&self) -> LossCause {
        match self {
            CloseReason::Shutdown | CloseReason::RootReleased => LossCause::SessionShutdown,
            // We caught the peer: its fault. The peer caught us: ours.
            CloseReason::LocalProtocolError(d) => {
                LossCause::ProtocolError { fault: Fault::Peer, description: d.clone() }
            }
            CloseReason::PeerProtocolError(d) => {
                LossCause::ProtocolError { fault: Fault::Local, description: d.clone() }
            }
            CloseReason::PeerClosed
            | CloseReason::LinkError(_)
            | CloseReason::KeepaliveTimeout
            | CloseReason::ResumeFailed(_) => LossCause::ConnectionClosed,
        }
    }
}

/// An illegal transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event} in phase {from}")]
pub struct PhaseError {
    /// The phase it was in.
    pub from: &'static str,
    /// What was attempted.
    pub event: &'static str,
}

/// The session phase. Every attachment (a conduit bound to the session by
/// a handshake) has a generation number, starting at 1; anything tied to an
/// attachment lives in objects of that attachment only (its outbound path,
/// writer, connection cores), so an event of an older generation has nothing
/// of a newer one to act on (ADR 0003).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPhase {
    /// Messages flow on attachment `generation`.
    Established {
        /// The current attachment.
        generation: u64,
    },
    /// Attachment `lost` ended; waiting for a replacement conduit (rule
    /// `session.resume`). Session-scoped state is kept.
    Resuming {
        /// The attachment that ended.
        lost: u64,
        /// When the wait gives up (`SessionResumeConfig::recovery_timeout`
        /// after the loss); the redial gives up at the same moment.
        deadline: tokio::time::Instant,
    },
    /// Tearing down.
    Closing(CloseReason),
    /// Ended.
    Closed(CloseReason),
}

impl SessionPhase {
    fn name(&self) -> &'static str {
        match self {
            SessionPhase::Established { .. } => "Established",
            SessionPhase::Resuming { .. } => "Resuming",
            SessionPhase::Closing(_) => "Closing",
            SessionPhase::Closed(_) => "Closed",
        }
    }

    /// A new session's phase. A session exists only once its prologue and
    /// handshake completed (before that there is only a setup task), so it
    /// starts established, on attachment 1.
    pub fn established() -> SessionPhase {
        SessionPhase::Established { generation: 1 }
    }

    /// The current attachment ended without ending the session; the wait
    /// for a replacement ends at `deadline`.
    pub fn on_attachment_lost(&mut self, deadline: tokio::time::Instant) -> Result<u64, PhaseError> {
        match *self {
            SessionPhase::Established { generation } => {
                *self = SessionPhase::Resuming { lost: generation, deadline };
                Ok(generation)
            }
            _ => Err(PhaseError { from: self.name(), event: "attachment lost" }),
        }
    }

    /// A replacement conduit was bound: the next generation.
    pub fn on_reattached(&mut self) -> Result<u64, PhaseError> {
        match *self {
            SessionPhase::Resuming { lost, .. } => {
                let generation = lost + 1;
                *self = SessionPhase::Established { generation };
                Ok(generation)
            }
            _ => Err(PhaseError { from: self.name(), event: "reattached" }),
        }
    }

    /// Teardown begins. Only the first reason counts.
    pub fn on_closing(&mut self, reason: CloseReason) -> Result<(), PhaseError> {
        match self {
            SessionPhase::Established { .. } | SessionPhase::Resuming { .. } => {
                *self = SessionPhase::Closing(reason);
                Ok(())
            }
            _ => Err(PhaseError { from: self.name(), event: "closing" }),
        }
    }

    /// Teardown finished.
    pub fn on_closed(&mut self) -> Result<CloseReason, PhaseError> {
        match self {
            SessionPhase::Closing(r) => {
                let r = r.clone();
                *self = SessionPhase::Closed(r.clone());
                Ok(r)
            }
            _ => Err(PhaseError { from: self.name(), event: "closed" }),
        }
    }

    /// Whether messages may flow.
    pub fn is_established(&self) -> bool {
        matches!(self, SessionPhase::Established { .. })
    }

    /// While resuming, when the wait for a replacement conduit gives up.
    pub fn resuming_deadline(&self) -> Option<tokio::time::Instant> {
        match self {
            SessionPhase::Resuming { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
}

/// The state of one connection in the session's table.
///
/// An inbound open is decided (accepted or rejected) before the run loop
/// reads anything else, and our own close is queued as it is decided, so
/// neither has a state of its own: a connection is only ever stored in one
/// of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// We sent `OpenConnection`; waiting for accept or reject.
    PendingOutbound,
    /// Messages flow.
    Open,
    /// We closed it: the peer's messages may still cross our close and are
    /// discarded (rule `connection.close.crossing`).
    ClosedByUs,
    /// The peer closed it, one side rejected it, or the peer's close crossed
    /// ours: anything more from the peer on it is a violation.
    ClosedByPeer,
}

impl ConnState {
    /// The state after `event` for a connection in state `from` (`None`: the
    /// table holds nothing for the id yet), or the typed error. The table
    /// applies every change through this, so the rules live in one match.
    pub fn next(from: Option<ConnState>, event: ConnEvent) -> Result<ConnState, PhaseError> {
        use ConnEvent::*;
        use ConnState::*;
        match (from, event) {
            (None, LocalOpen) => Ok(PendingOutbound),
            (None, WeAccepted) => Ok(Open),
            (None, WeRejected) => Ok(ClosedByPeer),
            (Some(PendingOutbound), PeerAccepted) => Ok(Open),
            (Some(PendingOutbound), PeerRejected) => Ok(ClosedByPeer),
            (Some(Open), LocalClose) => Ok(ClosedByUs),
            (Some(Open), PeerClosed) => Ok(ClosedByPeer),
            // rule: connection.close.crossing — both sides closed at once.
            (Some(ClosedByUs), PeerClosed) => Ok(ClosedByPeer),
            (from, e) => Err(PhaseError { from: ConnState::name(from), event: e.name() }),
        }
    }

    /// Whether a connection in this state is live: it counts against the
    /// connection limit and a teardown must end it.
    pub(crate) fn is_live(self) -> bool {
        matches!(self, ConnState::PendingOutbound | ConnState::Open)
    }

    pub(crate) fn name(state: Option<ConnState>) -> &'static str {
        match state {
            None => "Unknown",
            Some(ConnState::PendingOutbound) => "PendingOutbound",
            Some(ConnState::Open) => "Open",
            Some(ConnState::ClosedByUs) => "ClosedByUs",
            Some(ConnState::ClosedByPeer) => "ClosedByPeer",
        }
    }
}

/// Events of the connection state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// We sent `OpenConnection`.
    LocalOpen,
    /// `AcceptConnection` received.
    PeerAccepted,
    /// `RejectConnection` received.
    PeerRejected,
    /// Our acceptor accepted the peer's `OpenConnection`.
    WeAccepted,
    /// Our acceptor rejected it (or no acceptor, or over the limit).
    WeRejected,
    /// We closed it; our `CloseConnection` is queued at once.
    LocalClose,
    /// `CloseConnection` received.
    PeerClosed,
}

impl ConnEvent {
    fn name(self) -> &'static str {
        match self {
            ConnEvent::LocalOpen => "LocalOpen",
            ConnEvent::PeerAccepted => "PeerAccepted",
            ConnEvent::PeerRejected => "PeerRejected",
            ConnEvent::WeAccepted => "WeAccepted",
            ConnEvent::WeRejected => "WeRejected",
            ConnEvent::LocalClose => "LocalClose",
            ConnEvent::PeerClosed => "PeerClosed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_phase_transitions_are_guarded() {
        let mut p = SessionPhase::established();
        assert!(p.on_reattached().is_err(), "no reattach while established");
        assert_eq!(p.resuming_deadline(), None, "no deadline while established");
        let deadline = tokio::time::Instant::now();
        assert_eq!(p.on_attachment_lost(deadline), Ok(1));
        assert_eq!(p.resuming_deadline(), Some(deadline), "resuming waits until the deadline");
        assert!(p.on_attachment_lost(tokio::time::Instant::now()).is_err(), "lost only once per attachment");
        assert_eq!(p.on_reattached(), Ok(2));
        assert_eq!(p, SessionPhase::Established { generation: 2 });
        p.on_closing(CloseReason::Shutdown).unwrap();
        assert!(p.on_attachment_lost(tokio::time::Instant::now()).is_err());
        assert!(p.on_reattached().is_err());
        assert!(p.on_closing(CloseReason::PeerClosed).is_err(), "first reason wins");
        assert_eq!(p.on_closed().unwrap(), CloseReason::Shutdown);
        assert!(p.on_closed().is_err());
    }

    #[test]
    fn connection_state_rejects_illegal_events() {
        use ConnState::*;
        assert_eq!(ConnState::next(Some(PendingOutbound), ConnEvent::PeerAccepted), Ok(Open));
        assert!(ConnState::next(Some(Open), ConnEvent::PeerAccepted).is_err());
        assert!(ConnState::next(Some(ClosedByPeer), ConnEvent::PeerClosed).is_err());
        assert!(ConnState::next(None, ConnEvent::PeerClosed).is_err());
    }
}
