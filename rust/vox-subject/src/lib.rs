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
//! | `SUBJECT_KEEPALIVE` | every mode: `<interval_ms>/<timeout_ms>` sets `SessionConfig::keepalive` (rule `session.keepalive`), `off` turns it off; unset keeps vox-core's default (on). |
//! | `SPEC_TRANSPORT` | every mode: the transport of every link (see [`Transport`]). `tcp` (default, also when unset or empty): plain TCP. `tls` (rule `transport.tls`): TLS over TCP with the pair `SPEC_TLS_CERT`/`SPEC_TLS_KEY`; the dialing modes (`server`, `client`) trust `SPEC_TLS_CERT` as their only root and verify the name `localhost`, `listen` presents the pair. `ws` (rule `transport.websocket`): WebSocket; the dialing modes connect to `ws://PEER_ADDR/`, `listen` accepts an upgrade on any path. Redials (stable conduit, session resume) use the same transport. |
//! | `SPEC_TLS_CERT` | with `SPEC_TRANSPORT=tls`: path of a PEM certificate (the first one in the file is used). |
//! | `SPEC_TLS_KEY` | with `SPEC_TRANSPORT=tls`: path of its PEM private key (mode `listen`). |
//! | `SPEC_TLS_CLIENT_AUTH` | with `SPEC_TRANSPORT=tls`, mode `listen`: `1` requires mutual TLS, a client certificate verified against `SPEC_TLS_CERT` as the only root (its identity reaches handlers: Testbed `peer_names`); unset or `0`: no client certificate asked for. |
//!
//! The subject accepts at most [`MAX_CONNECTIONS`] virtual connections at
//! once; further `OpenConnection`s are rejected. An `OpenConnection` whose
//! metadata names a service (`vox-service`) other than [`SERVICE_NAME`] is
//! rejected too, with a reason under `vox-reject-reason`.

pub mod scenarios;
pub mod schema_scenarios;
pub mod testbed;

use std::sync::Arc;
use std::time::Duration;
use vox_core::link::tls::rustls::RootCertStore;
use vox_core::link::tls::rustls::pki_types::pem::PemObject;
use vox_core::link::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use vox_core::service::{REJECT_REASON_KEY, SERVICE_KEY};
use vox_core::session::{AcceptDecision, ConnectionRequest, KeepaliveConfig, Listener, Session, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata};

/// The most virtual connections the subject holds at once.
pub const MAX_CONNECTIONS: usize = 8;

/// The one service the subject serves on virtual connections; an open
/// naming another one (`vox-service`) is rejected.
pub const SERVICE_NAME: &str = "Testbed";

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
/// connections (those that name no service, or [`SERVICE_NAME`]).
pub fn server_builder() -> SessionBuilder {
    let handler = testbed::testbed();
    let for_virtual = handler.clone();
    SessionBuilder::new().handler(handler).max_connections(MAX_CONNECTIONS).acceptor(move |r: &ConnectionRequest| {
        match r.metadata.get_str(SERVICE_KEY) {
            Some(name) if name != SERVICE_NAME => AcceptDecision::Reject(Metadata::new().with_str(
                REJECT_REASON_KEY,
                format!("unknown service {name:?}"),
                0,
            )),
            _ => AcceptDecision::Accept {
                settings: ConnectionSettings::default(),
                metadata: Metadata::new(),
                handler: Some(Arc::new(for_virtual.clone())),
            },
        }
    })
}

/// Applies `SUBJECT_KEEPALIVE` (see the crate docs) to `builder`. The
/// abuse budgets keep vox-core's default bursts, with a sustained rate of
/// 10 per second: a flood then exceeds them however slowly this machine
/// lets the harness send (on a loaded machine the default 100 opens per
/// second refilled as fast as the harness got answers). The time a
/// violation's teardown gives the `ProtocolError` to leave is 2 s instead of
/// 500 ms: the harness reads everything, but on a loaded 2-core machine it
/// was once starved for longer than 500 ms behind a flood's answers, and the
/// error was dropped (the harness still requires the end of the link within
/// its 3 s).
pub fn configure_from_env(mut builder: SessionBuilder) -> Result<SessionBuilder, SubjectError> {
    let mut budgets = vox_core::session::AbuseBudgets::default();
    for b in
        [&mut budgets.cancelled_requests, &mut budgets.late_messages, &mut budgets.pings, &mut budgets.rejected_opens]
    {
        b.per_second = 10;
    }
    builder.config_mut().budgets = budgets;
    builder.config_mut().protocol_error_deadline = std::time::Duration::from_secs(2);
    if let Ok(v) = std::env::var("SUBJECT_KEEPALIVE") {
        builder.config_mut().keepalive = parse_keepalive(&v)?;
    }
    Ok(builder)
}

/// `off`, or `<interval_ms>/<timeout_ms>`.
pub fn parse_keepalive(v: &str) -> Result<Option<KeepaliveConfig>, SubjectError> {
    if v.trim() == "off" {
        return Ok(None);
    }
    let bad = || SubjectError::Config(format!("SUBJECT_KEEPALIVE={v:?} (off, or <interval_ms>/<timeout_ms>)"));
    let (i, t) = v.split_once('/').ok_or_else(bad)?;
    let ms = |x: &str| x.trim().parse::<u64>().map(Duration::from_millis).map_err(|_| bad());
    Ok(Some(KeepaliveConfig { interval: ms(i)?, timeout: ms(t)? }))
}

/// The TLS server name the dialing modes verify.
pub const TLS_SERVER_NAME: &str = "localhost";

/// The transport of every link the subject makes (`SPEC_TRANSPORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP with the PEM certificate and key at these paths.
    Tls {
        /// `SPEC_TLS_CERT`.
        cert: String,
        /// `SPEC_TLS_KEY` (only the listening mode needs it).
        key: Option<String>,
        /// `SPEC_TLS_CLIENT_AUTH=1`: the listening mode requires a client
        /// certificate verified against `cert`.
        client_auth: bool,
    },
    /// WebSocket.
    Ws,
}

impl Transport {
    /// Reads `SPEC_TRANSPORT`, `SPEC_TLS_CERT` and `SPEC_TLS_KEY`.
    pub fn from_env() -> Result<Transport, SubjectError> {
        let kind = std::env::var("SPEC_TRANSPORT").unwrap_or_default();
        match kind.trim() {
            "" | "tcp" => Ok(Transport::Tcp),
            "ws" => Ok(Transport::Ws),
            "tls" => Ok(Transport::Tls {
                cert: std::env::var("SPEC_TLS_CERT")
                    .map_err(|_| SubjectError::Config("SPEC_TRANSPORT=tls needs SPEC_TLS_CERT".into()))?,
                key: std::env::var("SPEC_TLS_KEY").ok(),
                client_auth: match std::env::var("SPEC_TLS_CLIENT_AUTH").as_deref() {
                    Err(_) | Ok("0") => false,
                    Ok("1") => true,
                    Ok(other) => return Err(SubjectError::Config(format!("SPEC_TLS_CLIENT_AUTH={other:?} (0 or 1)"))),
                },
            }),
            other => Err(SubjectError::Config(format!("SPEC_TRANSPORT={other:?} (tcp, tls or ws)"))),
        }
    }

    /// Connects `builder` to the harness at `addr` (`host:port`).
    pub async fn connect(&self, builder: SessionBuilder, addr: &str) -> Result<Session, SubjectError> {
        Ok(match self {
            Transport::Tcp => builder.connect(addr).await?,
            Transport::Tls { cert, .. } => {
                let mut roots = RootCertStore::empty();
                roots.add(read_cert(cert)?).map_err(|e| SubjectError::Config(format!("SPEC_TLS_CERT={cert}: {e}")))?;
                let tls = vox_core::link::tls::client_config(roots, None)
                    .map_err(|e| SubjectError::Config(format!("TLS client config: {e}")))?;
                builder.connect_tls(addr, TLS_SERVER_NAME, tls).await?
            }
            Transport::Ws => builder.connect_ws(&format!("ws://{addr}/")).await?,
        })
    }

    /// Binds `builder`'s listener on `addr`.
    pub async fn listen(&self, builder: SessionBuilder, addr: &str) -> Result<Listener, SubjectError> {
        Ok(match self {
            Transport::Tcp => builder.listen(addr).await?,
            Transport::Tls { cert, key, client_auth } => {
                let verifier = if *client_auth {
                    let mut roots = RootCertStore::empty();
                    roots
                        .add(read_cert(cert)?)
                        .map_err(|e| SubjectError::Config(format!("SPEC_TLS_CERT={cert}: {e}")))?;
                    Some(
                        vox_core::link::tls::client_verifier(roots)
                            .map_err(|e| SubjectError::Config(format!("TLS client verifier: {e}")))?,
                    )
                } else {
                    None
                };
                let key = key
                    .as_deref()
                    .ok_or_else(|| SubjectError::Config("SPEC_TRANSPORT=tls needs SPEC_TLS_KEY to listen".into()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| SubjectError::Config(format!("SPEC_TLS_KEY={key}: {e}")))?;
                let tls = vox_core::link::tls::server_config(vec![read_cert(cert)?], key, verifier)
                    .map_err(|e| SubjectError::Config(format!("TLS server config: {e}")))?;
                builder.listen_tls(addr, tls).await?
            }
            Transport::Ws => builder.listen_ws(addr).await?,
        })
    }
}

/// The first certificate of a PEM file.
fn read_cert(path: &str) -> Result<CertificateDer<'static>, SubjectError> {
    CertificateDer::from_pem_file(path).map_err(|e| SubjectError::Config(format!("SPEC_TLS_CERT={path}: {e}")))
}
