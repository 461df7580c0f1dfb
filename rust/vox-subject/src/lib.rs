//! The vox conformance subject: the project's own implementation under test
//! by the `spec-tests` harness.
//!
//! The `vox-subject` binary is configured by environment variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `SUBJECT_MODE` | `server` (default): connect to `PEER_ADDR` as link and session initiator and serve Testbed on the root and on every accepted virtual connection until the session ends, then exit 0. `client`: connect to `PEER_ADDR` and run `CLIENT_SCENARIO` against the harness (which plays the Testbed server); exit 0 on success, 1 with a message on stderr otherwise. `listen`: listen on `127.0.0.1:0`, print `LISTENING <addr>` on stdout, accept one link as transport and session acceptor, serve Testbed until that session ends (or fails to establish), then exit 0. While that session lives, further links are accepted too: one that resumes its session (rule `session.resume`: the key of its stable conduit, or the session key a `Hello` listing `vox.session-resume` was issued) is attached to it, a second new session is refused. |
//! | `SUBJECT_ACCEPT_STABLE` | mode `listen`: `0` refuses stable conduits in the transport prologue (`SessionConfig::accept_stable = false`, for rule `transport.prologue.no-fallback`); `1` or unset accepts them (the default). |
//! | `PEER_ADDR` | `host:port` of the harness (modes `server` and `client`). |
//! | `CLIENT_SCENARIO` | the scenario name for mode `client` (see [`scenarios::SCENARIOS`]). |
//!
//! The subject accepts at most [`MAX_CONNECTIONS`] virtual connections at
//! once; further `OpenConnection`s are rejected.

pub mod scenarios;
pub mod testbed;

use std::sync::Arc;
use vox_core::session::{AcceptDecision, ConnectionRequest, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata};

/// The most virtual connections the subject holds at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Why the subject failed.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// A required environment variable is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The session could not be set up.
    #[error("session: {0}")]
    Session(#[from] vox_core::session::SessionError),
    /// An I/O error on stdout or the listener.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A client scenario did not see what it expected.
    #[error("scenario {scenario}: {what}")]
    Scenario {
        /// The scenario.
        scenario: String,
        /// What went wrong.
        what: String,
    },
}

/// A session builder serving Testbed on the root and on accepted virtual
/// connections.
pub fn server_builder() -> SessionBuilder {
    let handler = testbed::testbed();
    let for_virtual = handler.clone();
    SessionBuilder::new().handler(handler).max_connections(MAX_CONNECTIONS).acceptor(move |_r: &ConnectionRequest| {
        AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(Arc::new(for_virtual.clone())),
        }
    })
}
