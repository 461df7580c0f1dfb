//! Explicit state enums for the session phase and each connection, with
//! guarded transitions: an illegal one is a [`PhaseError`] value.

use crate::plumbing::loss::LossCause;

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
            CloseReason::LocalProtocolError(d) | CloseReason::PeerProtocolError(d) => {
                LossCause::ProtocolError(d.clone())
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
    /// Prologue and handshake running.
    Handshaking,
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
    },
    /// Tearing down.
    Closing(CloseReason),
    /// Ended.
    Closed(CloseReason),
}

impl SessionPhase {
    fn name(&self) -> &'static str {
        match self {
            SessionPhase::Handshaking => "Handshaking",
            SessionPhase::Established { .. } => "Established",
            SessionPhase::Resuming { .. } => "Resuming",
            SessionPhase::Closing(_) => "Closing",
            SessionPhase::Closed(_) => "Closed",
        }
    }

    /// Handshake completed: attachment 1.
    pub fn on_established(&mut self) -> Result<(), PhaseError> {
        match self {
            SessionPhase::Handshaking => {
                *self = SessionPhase::Established { generation: 1 };
                Ok(())
            }
            _ => Err(PhaseError { from: self.name(), event: "established" }),
        }
    }

    /// The current attachment ended without ending the session.
    pub fn on_attachment_lost(&mut self) -> Result<u64, PhaseError> {
        match *self {
            SessionPhase::Established { generation } => {
                *self = SessionPhase::Resuming { lost: generation };
                Ok(generation)
            }
            _ => Err(PhaseError { from: self.name(), event: "attachment lost" }),
        }
    }

    /// A replacement conduit was bound: the next generation.
    pub fn on_reattached(&mut self) -> Result<u64, PhaseError> {
        match *self {
            SessionPhase::Resuming { lost } => {
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
            SessionPhase::Handshaking | SessionPhase::Established { .. } | SessionPhase::Resuming { .. } => {
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
}

/// The state of one connection in the session's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// We sent `OpenConnection`; waiting for accept or reject.
    PendingOutbound,
    /// The peer sent `OpenConnection`; our acceptor is deciding.
    PendingInbound,
    /// Messages flow.
    Open,
    /// We decided to close; `CloseConnection` is queued.
    Closing,
    /// Released (kept only as a bounded tombstone).
    Closed,
}

impl ConnState {
    /// The state after `event`, or the typed error.
    pub fn next(self, event: ConnEvent) -> Result<ConnState, PhaseError> {
        use ConnEvent::*;
        use ConnState::*;
        let from = match self {
            PendingOutbound => "PendingOutbound",
            PendingInbound => "PendingInbound",
            Open => "Open",
            Closing => "Closing",
            Closed => "Closed",
        };
        match (self, event) {
            (PendingOutbound, PeerAccepted) => Ok(Open),
            (PendingOutbound, PeerRejected) => Ok(Closed),
            (PendingInbound, WeAccepted) => Ok(Open),
            (PendingInbound, WeRejected) => Ok(Closed),
            (Open, LocalClose) => Ok(Closing),
            (Closing, CloseQueued) => Ok(Closed),
            (Open, PeerClosed) => Ok(Closed),
            (PendingOutbound | PendingInbound | Open | Closing, SessionEnded) => Ok(Closed),
            (_, e) => Err(PhaseError { from, event: e.name() }),
        }
    }
}

/// Events of the connection state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// `AcceptConnection` received.
    PeerAccepted,
    /// `RejectConnection` received.
    PeerRejected,
    /// Our acceptor accepted.
    WeAccepted,
    /// Our acceptor rejected (or no acceptor, or over the limit).
    WeRejected,
    /// Local close requested.
    LocalClose,
    /// Our `CloseConnection` is queued.
    CloseQueued,
    /// `CloseConnection` received.
    PeerClosed,
    /// The session ended.
    SessionEnded,
}

impl ConnEvent {
    fn name(self) -> &'static str {
        match self {
            ConnEvent::PeerAccepted => "PeerAccepted",
            ConnEvent::PeerRejected => "PeerRejected",
            ConnEvent::WeAccepted => "WeAccepted",
            ConnEvent::WeRejected => "WeRejected",
            ConnEvent::LocalClose => "LocalClose",
            ConnEvent::CloseQueued => "CloseQueued",
            ConnEvent::PeerClosed => "PeerClosed",
            ConnEvent::SessionEnded => "SessionEnded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_phase_transitions_are_guarded() {
        let mut p = SessionPhase::Handshaking;
        p.on_established().unwrap();
        assert!(p.on_established().is_err());
        assert!(p.on_reattached().is_err(), "no reattach while established");
        assert_eq!(p.on_attachment_lost(), Ok(1));
        assert!(p.on_attachment_lost().is_err(), "lost only once per attachment");
        assert_eq!(p.on_reattached(), Ok(2));
        assert_eq!(p, SessionPhase::Established { generation: 2 });
        p.on_closing(CloseReason::Shutdown).unwrap();
        assert!(p.on_attachment_lost().is_err());
        assert!(p.on_reattached().is_err());
        assert!(p.on_closing(CloseReason::PeerClosed).is_err(), "first reason wins");
        assert_eq!(p.on_closed().unwrap(), CloseReason::Shutdown);
        assert!(p.on_closed().is_err());
    }

    #[test]
    fn connection_state_rejects_illegal_events() {
        assert_eq!(ConnState::PendingOutbound.next(ConnEvent::PeerAccepted), Ok(ConnState::Open));
        assert!(ConnState::Open.next(ConnEvent::PeerAccepted).is_err());
        assert!(ConnState::Closed.next(ConnEvent::PeerClosed).is_err());
        assert!(ConnState::PendingInbound.next(ConnEvent::PeerClosed).is_err());
    }
}
