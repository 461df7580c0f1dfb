//! Building sessions over any link: initiator and acceptor sides, and TCP
//! conveniences.

use super::SessionError;
use super::control::mailbox;
use super::handle::{Caller, ConnectionHandle, LiveToken, SessionHandle};
use super::handshake::{self, Negotiated};
use super::outbound::spawn_writer;
use super::phase::SessionPhase;
use super::run::RunLoop;
use super::table::ConnTable;
use crate::conduit::stable::{self, StableAccepted, StableConfig, StableRegistry};
use crate::conduit::{self, ConduitRx, ConduitTx};
use crate::driver::{ConnectionCore, Handler};
use crate::link::{self, Link, LinkConfig, LinkSource, TcpSource};
use crate::transport::{self, AcceptModes};
use crate::wire::{ConduitMode, ConnectionId, ConnectionSettings, Metadata, PROTOCOL_VERSION, Parity};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Periodic ping settings (rule `session.keepalive`).
#[derive(Clone, Debug)]
pub struct KeepaliveConfig {
    /// How often to ping.
    pub interval: Duration,
    /// How long a pong may take before the session is torn down.
    pub timeout: Duration,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The initiator's session parity (the acceptor takes the other).
    pub parity: Parity,
    /// Our settings for the root connection.
    pub root_settings: ConnectionSettings,
    /// The most virtual connections at once (either side's); above it,
    /// inbound opens are rejected and local opens fail.
    pub max_connections: usize,
    /// Optional periodic ping.
    pub keepalive: Option<KeepaliveConfig>,
    /// The longest the prologue plus handshake may take.
    pub handshake_timeout: Duration,
    /// Capacity of the control mailbox's bounded queue.
    pub mailbox_capacity: usize,
    /// Capacity of the outbound queue, in messages.
    pub outbound_capacity: usize,
    /// The most channels alive at once on one connection.
    pub max_channels_per_connection: usize,
    /// How long a graceful end may spend writing the last messages.
    pub linger: Duration,
    /// Link settings for the TCP conveniences.
    pub link: LinkConfig,
    /// The protocol version to announce (tests use other values).
    pub protocol_version: u32,
    /// Which conduit the initiator asks for: `Bare` (default) or `Stable`
    /// (survives link breaks; needs a way to redial, see
    /// [`SessionBuilder::connect`]).
    pub conduit: ConduitMode,
    /// Whether an acceptor agrees to `Stable` conduits (default: yes).
    pub accept_stable: bool,
    /// Stable-conduit settings (replay limit, recovery timeout, backoff).
    pub stable: StableConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            parity: Parity::Odd,
            root_settings: ConnectionSettings::default(),
            max_connections: 1024,
            keepalive: None,
            handshake_timeout: Duration::from_secs(10),
            mailbox_capacity: 32,
            outbound_capacity: 256,
            max_channels_per_connection: 4096,
            linger: Duration::from_secs(5),
            link: LinkConfig::default(),
            protocol_version: PROTOCOL_VERSION,
            conduit: ConduitMode::Bare,
            accept_stable: true,
            stable: StableConfig::default(),
        }
    }
}

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

pub(crate) struct Shared {
    pub(crate) acceptor: Option<Arc<dyn Acceptor>>,
}

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
}

/// What an inbound link turned out to be.
#[derive(Debug)]
pub enum Accepted {
    /// A new session.
    New(Session),
    /// A new link for the stable conduit of an existing session; that
    /// session carries on by itself (rule `session.resume`).
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

    /// Runs the initiator side over `link` with a bare conduit (a link
    /// alone cannot be redialed; for a stable conduit use
    /// [`establish_stable`](Self::establish_stable) or [`connect`](Self::connect)).
    pub async fn establish_initiator(self, link: Link) -> Result<Session, SessionError> {
        let timeout = self.config.handshake_timeout;
        let setup = async {
            let mut link = link;
            if let Err(e) = transport::initiate(&mut link, ConduitMode::Bare).await {
                let _ = link.tx.close().await;
                return Err(e.into());
            }
            let (tx, rx) = conduit::bare(link);
            self.initiator_handshake(tx, rx).await
        };
        let (tx, rx, negotiated) =
            tokio::time::timeout(timeout, setup).await.map_err(|_| SessionError::HandshakeTimeout(timeout))??;
        Ok(self.start(tx, rx, negotiated))
    }

    /// Runs the initiator side over a stable conduit (rule `conduit.stable`):
    /// `source` gives the first link and every replacement after a break.
    /// `first`, if given, is an already dialed first link.
    pub async fn establish_stable(
        self,
        source: Arc<dyn LinkSource>,
        first: Option<Link>,
    ) -> Result<Session, SessionError> {
        let timeout = self.config.handshake_timeout;
        let setup = async {
            let first = match first {
                Some(l) => l,
                None => source.dial().await.map_err(|e| SessionError::Setup(e.to_string()))?,
            };
            let (tx, rx) = stable::connect_over(first, source, self.config.stable.clone())
                .await
                .map_err(|e| SessionError::Setup(e.to_string()))?;
            let (tx, rx) = conduit::from_stable(tx, rx);
            self.initiator_handshake(tx, rx).await
        };
        let (tx, rx, negotiated) =
            tokio::time::timeout(timeout, setup).await.map_err(|_| SessionError::HandshakeTimeout(timeout))??;
        Ok(self.start(tx, rx, negotiated))
    }

    async fn initiator_handshake(
        &self,
        tx: ConduitTx,
        mut rx: ConduitRx,
    ) -> Result<(ConduitTx, ConduitRx, Negotiated), SessionError> {
        let c = &self.config;
        match handshake::initiate(&tx, &mut rx, c.parity, c.root_settings.clone(), c.protocol_version).await {
            Ok(n) => Ok((tx, rx, n)),
            Err(e) => {
                // rule: session.handshake — after Sorry the link is closed;
                // closing (not dropping) makes sure the Sorry leaves first.
                let _ = tx.close().await;
                Err(e.into())
            }
        }
    }

    /// Runs the acceptor side over `link`. A link that resumes an existing
    /// stable conduit is not a new session: use
    /// [`establish_acceptor_any`](Self::establish_acceptor_any) (or
    /// [`Listener::accept`], which handles it) to tell the two apart.
    pub async fn establish_acceptor(self, link: Link) -> Result<Session, SessionError> {
        match self.establish_acceptor_any(link).await? {
            Accepted::New(s) => Ok(s),
            Accepted::Resumed => {
                Err(SessionError::Setup("the link resumed an existing session's stable conduit".into()))
            }
        }
    }

    /// Runs the acceptor side over `link`: a new session, or a new link for
    /// an existing session's stable conduit.
    pub async fn establish_acceptor_any(self, link: Link) -> Result<Accepted, SessionError> {
        let timeout = self.config.handshake_timeout;
        let modes = AcceptModes { bare: true, stable: self.config.accept_stable };
        let setup = async {
            let mut link = link;
            let mode = match transport::accept(&mut link, modes).await {
                Ok(m) => m,
                Err(e) => {
                    // rule: transport.prologue.reject-close — close (not
                    // drop) so the reject reaches the peer before the end.
                    let _ = link.tx.close().await;
                    return Err(e.into());
                }
            };
            let (tx, mut rx) = match mode {
                ConduitMode::Bare => conduit::bare(link),
                ConduitMode::Stable => match self.stable_registry.accept(link, self.config.stable.clone()).await {
                    Ok(StableAccepted::New(tx, rx)) => conduit::from_stable(tx, rx),
                    Ok(StableAccepted::Resumed) => return Ok(None),
                    Err(e) => return Err(SessionError::Setup(e.to_string())),
                },
            };
            match handshake::accept(&tx, &mut rx, self.config.root_settings.clone()).await {
                Ok(n) => Ok(Some((tx, rx, n))),
                Err(e) => {
                    let _ = tx.close().await;
                    Err(e.into())
                }
            }
        };
        let out = tokio::time::timeout(timeout, setup).await.map_err(|_| SessionError::HandshakeTimeout(timeout))??;
        Ok(match out {
            Some((tx, rx, negotiated)) => Accepted::New(self.start(tx, rx, negotiated)),
            None => Accepted::Resumed,
        })
    }

    /// Connects over TCP and runs the initiator side, with the conduit of
    /// [`SessionConfig::conduit`]; a stable conduit redials `addr` after a
    /// break.
    pub async fn connect(self, addr: impl ToString) -> Result<Session, SessionError> {
        let source = TcpSource { addr: addr.to_string(), config: self.config.link.clone() };
        match self.config.conduit {
            ConduitMode::Bare => {
                let link = source.dial().await?;
                self.establish_initiator(link).await
            }
            ConduitMode::Stable => self.establish_stable(Arc::new(source), None).await,
        }
    }

    /// Like [`connect`](Self::connect), but waits for a server that is not
    /// up yet (rule `session.initial-connect-waiting`): transient failures
    /// to connect (refused, reset, timed out) are retried with the stable
    /// config's backoff until `timeout`; then the last one is reported. A
    /// permanent failure (the peer rejects us, the handshake fails) is
    /// reported at once.
    pub async fn connect_waiting(self, addr: impl ToString, timeout: Duration) -> Result<Session, SessionError> {
        let source = TcpSource { addr: addr.to_string(), config: self.config.link.clone() };
        let first = link::connect_waiting(&source, &self.config.stable.backoff, timeout)
            .await
            .map_err(|e| SessionError::Setup(e.to_string()))?;
        match self.config.conduit {
            ConduitMode::Bare => self.establish_initiator(first).await,
            ConduitMode::Stable => self.establish_stable(Arc::new(source), Some(first)).await,
        }
    }

    /// Binds a TCP listener that accepts sessions with these settings.
    pub async fn listen(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Listener, SessionError> {
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| SessionError::Setup(format!("bind: {e}")))?;
        let local_addr = tcp.local_addr().map_err(|e| SessionError::Setup(format!("bind: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(LISTENER_BACKLOG);
        let dropped_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(tcp, self.clone(), tx, dropped_failures.clone()));
        Ok(Listener { local_addr, builder: self, outcomes: tokio::sync::Mutex::new(rx), dropped_failures, task })
    }

    fn start(self, tx: ConduitTx, rx: ConduitRx, negotiated: Negotiated) -> Session {
        let config = Arc::new(self.config);
        let (finish_tx, finish_rx) = oneshot::channel();
        let (outbound, writer) = spawn_writer(tx, config.outbound_capacity, finish_rx);
        let (mailbox_tx, mailbox_rx) = mailbox(config.mailbox_capacity);
        let (closed_tx, closed_rx) = watch::channel(None);
        let root_core = ConnectionCore::new(
            ConnectionId::ROOT,
            negotiated.local_parity,
            negotiated.local_root.clone(),
            negotiated.peer_root.clone(),
            outbound.clone(),
            self.root_handler,
            config.max_channels_per_connection,
        );
        tokio::spawn(root_core.clone().run_flush());
        let mut phase = SessionPhase::Handshaking;
        if let Err(e) = phase.on_established() {
            tracing::error!(error = %e, "fresh session not in Handshaking");
        }
        let run = RunLoop {
            phase,
            table: ConnTable::new(negotiated.local_parity, 1024),
            root: root_core.clone(),
            root_released: false,
            mailbox: mailbox_rx,
            mailbox_tx: mailbox_tx.clone(),
            outbound,
            owed: VecDeque::new(),
            conduit: rx,
            config,
            shared: Arc::new(Shared { acceptor: self.acceptor }),
            closed_tx,
            finish: Some(finish_tx),
            writer,
            ping_nonce: 0,
            ping_outstanding: None,
        };
        tokio::spawn(run.run());
        let caller = Caller { core: root_core, _live: LiveToken::new(mailbox_tx.clone(), ConnectionId::ROOT) };
        Session {
            handle: SessionHandle { mailbox: mailbox_tx, closed: closed_rx },
            root: ConnectionHandle { id: ConnectionId::ROOT, caller },
            negotiated,
        }
    }
}

/// Outcomes (new sessions, per-link failures) a [`Listener`] holds until
/// they are taken. New sessions wait for room (backpressure on setup);
/// failures beyond it are dropped after being logged.
const LISTENER_BACKLOG: usize = 16;

/// Links whose prologue and handshake run at once; further TCP connections
/// wait in the kernel's backlog.
const MAX_CONCURRENT_SETUPS: usize = 64;

/// Accepts sessions on a TCP listener.
///
/// A background task accepts TCP connections and runs each one's prologue
/// and handshake in its own task, so a slow or silent peer holds up nobody,
/// and links that resume an existing session's stable conduit are attached
/// whether or not anyone is calling [`accept`](Self::accept) (rule
/// `session.resume`). Dropping the listener stops accepting; sessions
/// already established carry on.
pub struct Listener {
    local_addr: std::net::SocketAddr,
    builder: SessionBuilder,
    outcomes: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Result<Session, SessionError>>>,
    dropped_failures: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    tcp: tokio::net::TcpListener,
    builder: SessionBuilder,
    outcomes: tokio::sync::mpsc::Sender<Result<Session, SessionError>>,
    dropped_failures: Arc<std::sync::atomic::AtomicU64>,
) {
    let setups = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SETUPS));
    loop {
        let Ok(permit) = setups.clone().acquire_owned().await else { return };
        let (stream, peer) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Per-connection accept errors (the peer reset before we
                // took it, descriptor limits) do not end the listener.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let link = link::tcp(stream, builder.config.link.clone());
        let builder = builder.clone();
        let outcomes = outcomes.clone();
        let dropped_failures = dropped_failures.clone();
        tokio::spawn(async move {
            let outcome = builder.establish_acceptor_any(link).await;
            drop(permit);
            match outcome {
                Ok(Accepted::New(session)) => {
                    let _ = outcomes.send(Ok(session)).await;
                }
                Ok(Accepted::Resumed) => tracing::debug!(%peer, "link resumed a stable conduit"),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "inbound link did not become a session");
                    // Failures never wait for room: a full backlog must not
                    // hold a setup slot. One that does not fit is counted
                    // (`Listener::dropped_failures`) after being logged above.
                    if outcomes.try_send(Err(e)).is_err() {
                        dropped_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local_addr)
    }

    /// The next new session. Links that fail their setup are logged and
    /// skipped, so `while let Ok(s) = listener.accept().await` keeps
    /// serving after a bad client; an error means the listener stopped.
    pub async fn accept(&self) -> Result<Session, SessionError> {
        loop {
            match self.accept_attempt().await {
                Ok(s) => return Ok(s),
                Err(SessionError::Closed(reason)) => return Err(SessionError::Closed(reason)),
                Err(_) => continue,
            }
        }
    }

    /// The next outcome of an inbound link: a new session, or why a link did
    /// not become one (for tests and diagnostics). At most
    /// `LISTENER_BACKLOG` (16) failures are held; older ones are dropped.
    pub async fn accept_attempt(&self) -> Result<Session, SessionError> {
        match self.outcomes.lock().await.recv().await {
            Some(outcome) => outcome,
            None => Err(SessionError::Closed(super::CloseReason::LinkError("the listener stopped".into()))),
        }
    }

    /// Per-link failures that were logged but not kept for
    /// [`accept_attempt`](Self::accept_attempt) because its backlog was full.
    pub fn dropped_failures(&self) -> u64 {
        self.dropped_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The builder used for accepted sessions.
    pub fn builder(&self) -> &SessionBuilder {
        &self.builder
    }
}
