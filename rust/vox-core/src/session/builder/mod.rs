//! Building sessions over any link: the [`SessionBuilder`] and what it
//! produces. The builder is split by concern: its settings (`config`), the
//! application's connection acceptor (`acceptor`), the initiator side
//! (`connect`), the acceptor side of one link (`accept`), TCP listeners
//! (`listener`, bounded by `pending`), and starting an established session
//! (`start`). Every public name is re-exported here, so the rest of the
//! crate names them as it did before the split.

mod accept;
mod acceptor;
mod config;
mod connect;
mod listener;
mod pending;
mod start;

pub use acceptor::{AcceptDecision, Acceptor, ConnectionRequest};
pub use config::{KeepaliveConfig, SessionConfig};
pub use listener::Listener;

use crate::conduit::ConduitRx;
use crate::conduit::stable::StableRegistry;
use crate::driver::Handler;
use crate::session::handle::{ConnectionHandle, SessionHandle};
use crate::session::handshake::Negotiated;
use crate::session::resume::SessionRegistry;
use crate::wire::{ConnectionSettings, Parity};
use std::sync::Arc;
use std::time::Duration;

/// An established session.
pub struct Session {
    /// Controls the session.
    pub handle: SessionHandle,
    /// The root connection (id 0).
    pub root: ConnectionHandle,
    /// What the handshake agreed.
    pub negotiated: Negotiated,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("negotiated", &self.negotiated).finish()
    }
}

/// Builds sessions.
///
/// ```no_run
/// # async fn demo() -> Result<(), vox_core::session::SessionError> {
/// use vox_core::session::SessionBuilder;
/// let session = SessionBuilder::new().connect("127.0.0.1:7000").await?;
/// println!("agreed: {:?}", session.negotiated);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct SessionBuilder {
    config: SessionConfig,
    root_handler: Option<Arc<dyn Handler>>,
    acceptor: Option<Arc<dyn Acceptor>>,
    /// Live stable conduits of sessions accepted through this builder (and
    /// its clones), so a client coming back on a new link finds its own.
    stable_registry: StableRegistry,
    /// Live resumable sessions accepted through this builder (and its
    /// clones), so a resuming `Hello` finds its session.
    session_registry: SessionRegistry,
}

/// What an inbound link turned out to be.
#[derive(Debug)]
pub enum Accepted {
    /// A new session.
    New(Session),
    /// A new link for the stable conduit of an existing session, or a new
    /// conduit bound to an existing session by its resume key; that session
    /// carries on by itself (rule `session.resume`).
    Resumed,
}

impl SessionBuilder {
    /// Default settings, no handler, no acceptor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces all settings.
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// The settings.
    pub fn config_mut(&mut self) -> &mut SessionConfig {
        &mut self.config
    }

    /// The initiator's session parity.
    pub fn parity(mut self, parity: Parity) -> Self {
        self.config.parity = parity;
        self
    }

    /// Root connection settings.
    pub fn root_settings(mut self, settings: ConnectionSettings) -> Self {
        self.config.root_settings = settings;
        self
    }

    /// Virtual connection limit.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Periodic keepalive.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.keepalive = Some(KeepaliveConfig { interval, timeout });
        self
    }

    /// No periodic keepalive (it is on by default).
    pub fn no_keepalive(mut self) -> Self {
        self.config.keepalive = None;
        self
    }

    /// Prologue + handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.config.handshake_timeout = d;
        self
    }

    /// Serves calls on the root connection.
    pub fn handler(mut self, h: impl Handler) -> Self {
        self.root_handler = Some(Arc::new(h));
        self
    }

    /// Decides on inbound virtual connections.
    pub fn acceptor(mut self, a: impl Acceptor) -> Self {
        self.acceptor = Some(Arc::new(a));
        self
    }
}

/// Settings every fresh conduit gets before its handshake: the setup-phase
/// message maximum (rule `session.setup.limits`; for a stable conduit, on
/// every link it attaches until [`ConduitRx::unrestrict`]) and the bounds
/// on decoded sequences (rule `session.decode.bounded`). Here, not in
/// `connect` or `accept`, because both sides must apply the same limits.
fn prepare_conduit(config: &SessionConfig, rx: &mut ConduitRx) {
    rx.restrict(config.setup.max_message_size);
    rx.set_decode_limits(config.decode_limits);
}
