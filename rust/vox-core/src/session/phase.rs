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
///
/// The phase owns what only exists in it: `A`, the attachment (the run
/// loop's writer, outbound path and conduit), lives inside `Established`,
/// and `R`, the wait for a replacement (the redial in flight), inside
/// `Resuming`. So "is the session attached?" has one answer, and nothing
/// of a lost attachment can be reached while resuming. The models drive it
/// with `()` for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPhase<A = (), R = ()> {
    /// Messages flow on attachment `generation`.
    Established {
        /// The current attachment.
        generation: u64,
        /// What the session owns of it.
        attachment: A,
    },
    /// Attachment `lost` ended; waiting for a replacement conduit (rule
    /// `session.resume`). Session-scoped state is kept.
    Resuming {
        /// The attachment that ended.
        lost: u64,
        /// When the wait gives up (`SessionResumeConfig::recovery_timeout`
        /// after the loss); the redial gives up at the same moment.
        deadline: tokio::time::Instant,
        /// What the wait is made of.
        redial: R,
    },
    /// Tearing down.
    Closing(CloseReason),
    /// Ended.
    Closed(CloseReason),
}

impl<A, R> SessionPhase<A, R> {
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
    pub fn established(attachment: A) -> Self {
        SessionPhase::Established { generation: 1, attachment }
    }

    /// Takes the phase out for a transition, leaving a placeholder that
    /// the transition replaces (or restores) before it returns.
    fn take(&mut self) -> Self {
        std::mem::replace(self, SessionPhase::Closed(CloseReason::Shutdown))
    }

    /// The current attachment ended without ending the session; the wait
    /// for a replacement (`redial`) ends at `deadline`. Returns the lost
    /// generation and its attachment, for the caller to dispose of.
    pub fn on_attachment_lost(&mut self, deadline: tokio::time::Instant, redial: R) -> Result<(u64, A), PhaseError> {
        match self.take() {
            SessionPhase::Established { generation, attachment } => {
                *self = SessionPhase::Resuming { lost: generation, deadline, redial };
                Ok((generation, attachment))
            }
            other => Err(self.restore(other, "attachment lost")),
        }
    }

    /// A replacement conduit was bound as `attachment`: the next
    /// generation, and the finished wait.
    pub fn on_reattached(&mut self, attachment: A) -> Result<(u64, R), PhaseError> {
        match self.take() {
            SessionPhase::Resuming { lost, redial, .. } => {
                let generation = lost + 1;
                *self = SessionPhase::Established { generation, attachment };
                Ok((generation, redial))
            }
            other => Err(self.restore(other, "reattached")),
        }
    }

    /// Teardown begins. Only the first reason counts. Returns the
    /// attachment, if the session had one, for the last writes.
    pub fn on_closing(&mut self, reason: CloseReason) -> Result<Option<A>, PhaseError> {
        match self.take() {
            SessionPhase::Established { attachment, .. } => {
                *self = SessionPhase::Closing(reason);
                Ok(Some(attachment))
            }
            SessionPhase::Resuming { .. } => {
                *self = SessionPhase::Closing(reason);
                Ok(None)
            }
            other => Err(self.restore(other, "closing")),
        }
    }

    /// Teardown finished.
    pub fn on_closed(&mut self) -> Result<CloseReason, PhaseError> {
        match self.take() {
            SessionPhase::Closing(r) => {
                *self = SessionPhase::Closed(r.clone());
                Ok(r)
            }
            other => Err(self.restore(other, "closed")),
        }
    }

    /// An illegal event: the phase is put back as it was.
    fn restore(&mut self, phase: Self, event: &'static str) -> PhaseError {
        *self = phase;
        PhaseError { from: self.name(), event }
    }

    /// The generation of the current attachment (while resuming: of the
    /// lost one; `None` once tearing down).
    pub fn generation(&self) -> Option<u64> {
        match self {
            SessionPhase::Established { generation, .. } => Some(*generation),
            SessionPhase::Resuming { lost, .. } => Some(*lost),
            SessionPhase::Closing(_) | SessionPhase::Closed(_) => None,
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

    /// The current attachment, while established.
    pub fn attachment_mut(&mut self) -> Option<&mut A> {
        match self {
            SessionPhase::Established { attachment, .. } => Some(attachment),
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
        let mut p: SessionPhase<&str, u8> = SessionPhase::established("first");
        assert!(p.on_reattached("early").is_err(), "no reattach while established");
        assert_eq!(p.resuming_deadline(), None, "no deadline while established");
        assert_eq!(p.attachment_mut(), Some(&mut "first"));
        let deadline = tokio::time::Instant::now();
        assert_eq!(p.on_attachment_lost(deadline, 7), Ok((1, "first")), "the lost attachment comes back");
        assert_eq!(p.resuming_deadline(), Some(deadline), "resuming waits until the deadline");
        assert_eq!(p.attachment_mut(), None, "nothing of the lost attachment is reachable");
        assert!(p.on_attachment_lost(deadline, 8).is_err(), "lost only once per attachment");
        assert_eq!(p.generation(), Some(1), "resuming: the lost generation");
        assert_eq!(p.on_reattached("second"), Ok((2, 7)), "the finished wait comes back");
        assert_eq!(p.generation(), Some(2));
        assert_eq!(p, SessionPhase::Established { generation: 2, attachment: "second" });
        assert_eq!(p.on_closing(CloseReason::Shutdown), Ok(Some("second")));
        assert_eq!(p.generation(), None, "no attachment while tearing down");
        assert!(p.on_attachment_lost(deadline, 9).is_err());
        assert!(p.on_reattached("third").is_err());
        assert!(p.on_closing(CloseReason::PeerClosed).is_err(), "first reason wins");
        assert_eq!(p.on_closed().unwrap(), CloseReason::Shutdown);
        assert!(p.on_closed().is_err());
    }

    #[test]
    fn session_phase_closing_while_resuming_has_no_attachment() {
        let mut p: SessionPhase<&str, u8> = SessionPhase::established("first");
        p.on_attachment_lost(tokio::time::Instant::now(), 1).unwrap();
        assert_eq!(p.on_closing(CloseReason::ResumeFailed("gone".into())), Ok(None));
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
