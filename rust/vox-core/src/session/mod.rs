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

use crate::link::LinkError;
use crate::transport::PrologueError;
use crate::wire::{ConnectionId, Metadata};

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
    /// Establishing the session failed.
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
        SessionError::Setup(e.to_string())
    }
}

impl From<PrologueError> for SessionError {
    fn from(e: PrologueError) -> Self {
        SessionError::Setup(e.to_string())
    }
}

impl From<LinkError> for SessionError {
    fn from(e: LinkError) -> Self {
        SessionError::Setup(e.to_string())
    }
}
