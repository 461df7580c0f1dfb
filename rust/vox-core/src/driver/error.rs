//! Errors a caller observes (PROTOCOL.md section 7).

use super::channel::LossCause;
use crate::wire::Blob;

/// Why a call did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The handler returned its own error (serialized; typed clients decode it).
    #[error("the handler returned an application error ({} bytes)", .0.len())]
    User(Blob),
    /// The peer has no method with this id on the connection.
    #[error("unknown method")]
    UnknownMethod,
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
    /// The session was shut down.
    #[error("session shut down")]
    SessionShutdown,
    /// The request could not be sent.
    #[error("request could not be sent: {0}")]
    SendFailed(String),
    /// A protocol violation ended the session.
    #[error("protocol error: {0}")]
    ProtocolError(String),
    /// The local side could not decode the response.
    #[error("cannot decode the response: {0}")]
    InvalidResponse(String),
}

impl CallError {
    /// Whether the same call may be attempted again: only errors that say the
    /// request never took effect on a live path are retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::ConnectionClosed | CallError::SessionShutdown | CallError::SendFailed(_))
    }
}

impl From<LossCause> for CallError {
    fn from(c: LossCause) -> Self {
        match c {
            LossCause::ConnectionClosed => CallError::ConnectionClosed,
            LossCause::SessionShutdown => CallError::SessionShutdown,
            LossCause::ProtocolError(d) => CallError::ProtocolError(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_level_errors_are_retryable() {
        assert!(CallError::ConnectionClosed.is_retryable());
        assert!(CallError::SessionShutdown.is_retryable());
        assert!(CallError::SendFailed("x".into()).is_retryable());
        for e in [
            CallError::User(Blob::default()),
            CallError::UnknownMethod,
            CallError::InvalidPayload(String::new()),
            CallError::Cancelled,
            CallError::Indeterminate,
            CallError::Rejected(String::new()),
            CallError::DeadlineExceeded,
            CallError::ProtocolError(String::new()),
        ] {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }
}
