//! The peer's protocol violations as the core reports them. The session
//! owns what happens next (a `ProtocolError` and teardown); the core only
//! names the rule broken, so every detector builds the error the same way.

use super::ConnectionCore;
use crate::driver::channel::Violation as ChannelViolation;
use crate::wire::{ConnectionId, RequestId};

/// A protocol violation by the peer on one connection. The session turns
/// it into a `ProtocolError` and tears down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A channel rule was broken.
    #[error("connection {conn}: {source}")]
    Channel {
        /// The connection.
        conn: ConnectionId,
        /// The channel violation.
        source: ChannelViolation,
    },
    /// A request or response rule was broken.
    #[error("connection {conn}: request {id}: {what} (rule {rule})")]
    Request {
        /// The connection.
        conn: ConnectionId,
        /// The request id.
        id: RequestId,
        /// What happened.
        what: String,
        /// The rule id in PROTOCOL.md.
        rule: &'static str,
    },
}

impl ConnectionCore {
    pub(super) fn violation(&self, id: RequestId, what: impl Into<String>, rule: &'static str) -> Violation {
        crate::driver::metrics::violation(Violation::Request { conn: self.id, id, what: what.into(), rule })
    }

    pub(super) fn channel_violation(&self, source: ChannelViolation) -> Violation {
        crate::driver::metrics::violation(Violation::Channel { conn: self.id, source })
    }
}
