//! Errors a caller observes (PROTOCOL.md section 7).

use crate::plumbing::loss::{Fault, LossCause};
use crate::wire::Blob;

/// Why a call did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler returned its own error (serialized; typed clients decode it).
    #[error("the handler returned an application error ({} bytes)", .0.len())]
    User(Blob),
    /// The peer has no method with this id on the connection.
    #[error("unknown method {method}: the peer has no method with this id on this connection")]
    UnknownMethod {
        /// The method called: `Service.method` from a generated client,
        /// the method id from a raw call.
        method: String,
    },
    /// The peer could not decode the arguments.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The call was cancelled.
    #[error("call cancelled")]
    Cancelled,
    /// The call may or may not have taken effect.
    #[error("call outcome is indeterminate")]
    Indeterminate,
    /// The handler failed without replying (panic, dropped reply sink).
    #[error("handler failed: {0}")]
    HandlerFailed(String),
    /// The peer's operation table refused the attempt (operation id conflict,
    /// expired id, table full); nothing ran.
    #[error("operation rejected by the peer: {0}")]
    Rejected(String),
    /// The call's deadline passed (rule `rpc.deadline`): the caller stopped
    /// waiting and cancelled it, and the handler side stops the handler. Not
    /// retryable: the time is gone.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The connection carrying the call ended.
    #[error("connection closed")]
    ConnectionClosed,
    /// The session was shut down locally (`shutdown`, or its root released).
    #[error("session shut down")]
    SessionShutdown,
    /// The request could not be built or sent for a local reason: its
    /// arguments did not encode, a channel could not be created, or the
    /// connection's request ids ran out. API misuse; not retryable.
    #[error("request could not be sent: {0}")]
    SendFailed(String),
    /// A protocol violation ended the session.
    #[error("protocol error ({}): {description}", crate::plumbing::loss::blame(*fault))]
    ProtocolError {
        /// Who broke the rule (see [`LossCause::ProtocolError`]).
        fault: Fault,
        /// The violation.
        description: String,
    },
    /// The local side could not decode the response.
    #[error("cannot decode the response: {0}")]
    InvalidResponse(String),
    /// The two sides' schemas of the method differ in a way that cannot be
    /// translated, or a value cannot cross (rule `schema.incompatible`):
    /// only this call failed; the connection stays up.
    #[error("incompatible schema in {method} at {path}, field `{field}`: {reason}")]
    IncompatibleSchema {
        /// `Service.method`.
        method: String,
        /// The access path to the value holding the field, and its type
        /// (`args.order.lines[]: Line`).
        path: String,
        /// The field or variant.
        field: String,
        /// What differs.
        reason: String,
    },
}

impl CallError {
    /// Who caused the error: the peer (it refused, failed or broke the
    /// protocol), this program (misuse, its own cancel, deadline or
    /// shutdown), or the environment (the connection was lost).
    pub fn fault(&self) -> Fault {
        match self {
            CallError::User(_)
            | CallError::UnknownMethod { .. }
            | CallError::InvalidPayload(_)
            | CallError::HandlerFailed(_)
            | CallError::Rejected(_)
            | CallError::InvalidResponse(_) => Fault::Peer,
            CallError::ProtocolError { fault, .. } => *fault,
            CallError::Cancelled
            | CallError::DeadlineExceeded
            | CallError::SessionShutdown
            | CallError::SendFailed(_) => Fault::Local,
            // Two deployments disagree; neither broke the protocol.
            CallError::ConnectionClosed | CallError::Indeterminate | CallError::IncompatibleSchema { .. } => {
                Fault::Environment
            }
        }
    }

    /// Whether the same call may be attempted again. Only a loss in the
    /// environment that says the request never took effect qualifies: a
    /// closed connection. `Indeterminate` is the environment's too, but the
    /// call may have run, so only an operation id makes a retry safe (the
    /// generated clients do that).
    pub fn is_retryable(&self) -> bool {
        let retryable = matches!(self, CallError::ConnectionClosed);
        debug_assert!(!retryable || self.fault() == Fault::Environment);
        retryable
    }
}

impl From<LossCause> for CallError {
    fn from(c: LossCause) -> Self {
        match c {
            LossCause::ConnectionClosed => CallError::ConnectionClosed,
            LossCause::SessionShutdown => CallError::SessionShutdown,
            LossCause::ProtocolError { fault, description } => CallError::ProtocolError { fault, description },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_level_errors_are_retryable() {
        assert!(CallError::ConnectionClosed.is_retryable());
        for e in [
            CallError::SessionShutdown,
            CallError::SendFailed("x".into()),
            CallError::User(Blob::default()),
            CallError::UnknownMethod { method: String::new() },
            CallError::InvalidPayload(String::new()),
            CallError::Cancelled,
            CallError::Indeterminate,
            CallError::Rejected(String::new()),
            CallError::DeadlineExceeded,
            CallError::IncompatibleSchema {
                method: String::new(),
                path: String::new(),
                field: String::new(),
                reason: String::new(),
            },
            CallError::ProtocolError { fault: Fault::Peer, description: String::new() },
        ] {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }
}
