//! Sessions: a set of connections over one conduit.
//!
//! The run loop (`run`) owns the conduit's receive half; the writer task
//! (`plumbing::outbound`) owns its send half; every request from a handle goes
//! through the one control mailbox (`control`). See ADR 0002.

mod budget;
// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod control;
// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod handshake;

mod builder;
mod handle;
mod machine;
// Without test-util, the events only tests/session_phase.rs drives are unused.
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
mod phase;
mod resume;
mod run;
mod snapshot;
mod table;

pub use crate::plumbing::operations::{OP_ID_KEY, OpId, OpIdError, OperationConfig, read_op_id, write_op_id};
pub use budget::{AbuseBudgets, BudgetConfig, BudgetExceeded, BudgetKind};
pub use builder::{
    AcceptDecision, Accepted, Acceptor, ConnectionRequest, KeepaliveConfig, Listener, Session, SessionBuilder,
    SessionConfig,
};
pub use handle::{Caller, ConnectionHandle, RawResponse, RetryPolicy, SessionHandle};
pub use handshake::{HandshakeError, Negotiated, SetupLimits};
pub use phase::CloseReason;
#[cfg(feature = "test-util")]
pub use phase::{ConnState, PhaseError, SessionPhase};
pub use resume::SessionResumeConfig;
pub use snapshot::{ConnectionSnapshot, SessionSnapshot};

use crate::link::LinkError;
use crate::transport::PrologueError;
use crate::wire::{ConnectionId, Metadata};
use std::sync::Arc;

/// What a session operation reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The session has ended.
    #[error("session is closed: {0}")]
    Closed(CloseReason),
    /// The peer rejected the connection.
    #[error("connection rejected by the peer{}", rejection_reason(metadata))]
    Rejected {
        /// The peer's metadata.
        metadata: Metadata,
    },
    /// The local connection limit was reached.
    #[error("too many connections (limit {limit})")]
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// No connection with this id.
    #[error("no open connection {0}")]
    UnknownConnection(ConnectionId),
    /// The root connection cannot be closed with `CloseConnection`.
    #[error("the root connection cannot be closed (rule connection.root); drop its callers or shut down")]
    CannotCloseRoot,
    /// Connection ids of our parity are exhausted.
    #[error("connection id space exhausted")]
    IdSpaceExhausted,
    /// The session handshake failed (refused, out of sequence, the link
    /// ended); the source says which, and whose doing it was.
    #[error("session setup failed: {0}")]
    Handshake(#[source] Arc<HandshakeError>),
    /// The transport prologue failed (conduit mode negotiation).
    #[error("session setup failed: {0}")]
    Prologue(#[source] Arc<PrologueError>),
    /// The link could not be made or failed during setup (connect, TLS,
    /// WebSocket upgrade).
    #[error("session setup failed: {0}")]
    Link(#[source] Arc<LinkError>),
    /// [`SessionBuilder::connect_waiting`] gave up: a permanent failure, or
    /// the last transient one once the timeout passed.
    #[error("session setup failed: {0}")]
    Connect(#[source] Arc<crate::link::ConnectError>),
    /// Listening failed: the address could not be bound or read back (the
    /// environment's doing).
    #[error("session setup failed: bind: {0}")]
    Bind(#[source] Arc<std::io::Error>),
    /// Establishing the session failed for another reason, given here.
    #[error("session setup failed: {0}")]
    Setup(String),
    /// The session's conduit was lost and a replacement is not bound yet
    /// (rule `session.resume`); try again once it is
    /// ([`SessionHandle::attached_after`]).
    #[error("the session is resuming on a new conduit; retry once it is attached")]
    Resuming,
    /// The peer did not complete the prologue and handshake in time.
    #[error("session setup timed out after {0:?}")]
    HandshakeTimeout(std::time::Duration),
}

impl SessionError {
    /// Who caused it: the peer (it refused, or broke the setup protocol),
    /// this program (misuse, its own limits or shutdown), or the
    /// environment (the network, the machine, a lost conduit). Only an
    /// environment error can go away by trying again.
    pub fn fault(&self) -> crate::driver::Fault {
        use crate::driver::Fault;
        match self {
            SessionError::Closed(reason) => reason.loss_cause().fault(),
            SessionError::Rejected { .. } => Fault::Peer,
            SessionError::TooManyConnections { .. }
            | SessionError::UnknownConnection(_)
            | SessionError::CannotCloseRoot
            | SessionError::IdSpaceExhausted => Fault::Local,
            SessionError::Handshake(e) => match **e {
                HandshakeError::Conduit(_) | HandshakeError::PeerClosed => Fault::Environment,
                HandshakeError::Refused { .. }
                | HandshakeError::RefusedPeer { .. }
                | HandshakeError::NotResumed
                | HandshakeError::Unexpected { .. } => Fault::Peer,
            },
            SessionError::Prologue(e) => match **e {
                PrologueError::Link(_) | PrologueError::PeerClosed | PrologueError::Timeout(_) => Fault::Environment,
                PrologueError::Garbage(_)
                | PrologueError::BadMagic { .. }
                | PrologueError::Rejected { .. }
                | PrologueError::Refused { .. }
                | PrologueError::ModeMismatch { .. } => Fault::Peer,
            },
            SessionError::Link(_)
            | SessionError::Connect(_)
            | SessionError::Bind(_)
            | SessionError::Setup(_)
            | SessionError::Resuming
            | SessionError::HandshakeTimeout(_) => Fault::Environment,
        }
    }
}

/// ": <reason>" from a rejection's metadata (the service router's
/// `vox-reject-reason`, or the session's own `reason`), or nothing.
fn rejection_reason(metadata: &Metadata) -> String {
    match metadata.get_str(crate::wire::REJECT_REASON_KEY).or_else(|| metadata.get_str("reason")) {
        Some(reason) => format!(": {reason}"),
        None => String::new(),
    }
}

impl From<HandshakeError> for SessionError {
    fn from(e: HandshakeError) -> Self {
        SessionError::Handshake(Arc::new(e))
    }
}

impl From<PrologueError> for SessionError {
    fn from(e: PrologueError) -> Self {
        SessionError::Prologue(Arc::new(e))
    }
}

impl From<LinkError> for SessionError {
    fn from(e: LinkError) -> Self {
        SessionError::Link(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Fault;

    #[test]
    fn session_error_fault_names_who_caused_the_setup_failure() {
        let refused = SessionError::from(HandshakeError::Refused { reason: "version".into() });
        assert_eq!(refused.fault(), Fault::Peer);
        assert!(matches!(&refused, SessionError::Handshake(h) if matches!(**h, HandshakeError::Refused { .. })));
        assert_eq!(SessionError::from(HandshakeError::PeerClosed).fault(), Fault::Environment);
        assert_eq!(SessionError::from(PrologueError::BadMagic { found: [0; 4] }).fault(), Fault::Peer);
        assert_eq!(SessionError::from(PrologueError::PeerClosed).fault(), Fault::Environment);
        assert_eq!(SessionError::TooManyConnections { limit: 1 }.fault(), Fault::Local);
        assert_eq!(SessionError::Closed(CloseReason::Shutdown).fault(), Fault::Local);
        assert_eq!(SessionError::Closed(CloseReason::KeepaliveTimeout).fault(), Fault::Environment);
        assert_eq!(SessionError::Rejected { metadata: Metadata::new() }.fault(), Fault::Peer);
        let bind = SessionError::Bind(Arc::new(std::io::Error::from(std::io::ErrorKind::AddrInUse)));
        assert_eq!(bind.fault(), Fault::Environment);
        assert!(bind.to_string().starts_with("session setup failed: bind: "), "{bind}");
    }
}
