//! Deciding on inbound virtual connections: the application's
//! [`Acceptor`] and what it sees and answers. The run loop consults it for
//! every `OpenConnection`; the builder only stores it.

use crate::driver::Handler;
use crate::wire::{ConnectionId, ConnectionSettings, Metadata};
use std::sync::Arc;

/// What an acceptor sees of an inbound `OpenConnection`.
#[derive(Debug, Clone)]
pub struct ConnectionRequest {
    /// The new connection's id.
    pub id: ConnectionId,
    /// The opener's metadata.
    pub metadata: Metadata,
    /// The opener's settings.
    pub peer_settings: ConnectionSettings,
}

/// An acceptor's answer.
pub enum AcceptDecision {
    /// Accept, serving the connection with `handler` (or no handler: every
    /// call gets `UnknownMethod`).
    Accept {
        /// Our settings for the connection.
        settings: ConnectionSettings,
        /// Metadata for the opener.
        metadata: Metadata,
        /// Serves its calls.
        handler: Option<Arc<dyn Handler>>,
    },
    /// Reject with metadata saying why.
    Reject(Metadata),
}

/// Decides on inbound virtual connections (rule `connection.open.rejection`).
/// Any `Fn(&ConnectionRequest) -> AcceptDecision` is an acceptor.
pub trait Acceptor: Send + Sync + 'static {
    /// Accept or reject.
    fn decide(&self, request: &ConnectionRequest) -> AcceptDecision;
}

impl<F> Acceptor for F
where
    F: Fn(&ConnectionRequest) -> AcceptDecision + Send + Sync + 'static,
{
    fn decide(&self, request: &ConnectionRequest) -> AcceptDecision {
        self(request)
    }
}
