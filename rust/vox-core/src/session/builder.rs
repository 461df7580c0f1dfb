//! Building sessions over any link: initiator and acceptor sides, and TCP
//! conveniences.

use super::SessionError;
use super::control::mailbox;
use super::handle::{Caller, ConnectionHandle, LiveToken, SessionHandle};
use super::handle::{CoreRef, RootSlot};
use super::handshake::{self, Negotiated};
use super::handshake::{HandshakeError, HelloDecision, ResumeRequest, SetupLimits};
use super::phase::SessionPhase;
use super::resume::{self, NewConduit, RedialError, Redialer, SessionRegistry, SessionResumeConfig};
use super::run::{Attachment, Resume, ResumeSide, RunLoop};
use super::table::ConnTable;
use crate::conduit::stable::{self, StableAccepted, StableConfig, StableRegistry};
use crate::conduit::{self, ConduitRx, ConduitTx};
use crate::driver::{ConnectionCore, Handler};
use crate::link::{self, Link, LinkConfig, LinkSource, TcpSource};
use crate::plumbing::operations::OperationConfig;
use crate::plumbing::ops::SessionOps;
use crate::transport::{self, AcceptModes};
use crate::wire::{
    ConduitMode, ConnectionId, ConnectionSettings, Metadata, PROTOCOL_VERSION, Parity, SESSION_RESUME_FEATURE,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    /// Periodic ping (rule `session.keepalive`). On by default: every 10 s,
    /// and a pong must come within 20 s, so a peer that went silent (or
    /// stopped halfway through a frame, which holds back its pong) cannot
    /// hold a session. `None` turns it off.
    pub keepalive: Option<KeepaliveConfig>,
    /// The longest the prologue plus handshake may take.
    pub handshake_timeout: Duration,
    /// Limits on a peer that has not completed the handshake (rule
    /// `session.setup.limits`): the setup-phase message size (64 KiB), the
    /// prologue deadline (2 s), and for listeners the bound on unfinished
    /// setups (256, the oldest is closed beyond it) and the TCP backlog
    /// (1024). See [`SetupLimits`].
    pub setup: SetupLimits,
    /// Capacity of the control mailbox's bounded queue.
    pub mailbox_capacity: usize,
    /// Capacity of the outbound queue, in messages.
    pub outbound_capacity: usize,
    /// The most channels alive at once on one connection.
    pub max_channels_per_connection: usize,
    /// How far the window of a channel this side receives on may grow while
    /// its consumer keeps up, in items (default 1024). Receivers start at
    /// the channel's initial credit (16 unless chosen otherwise) and double
    /// the window whenever a grant falls due with nothing left queued, so a
    /// fast stream is not held to one grant round trip per 8 items; a slow
    /// consumer never grows it. Set it to 0 to keep every window at its
    /// initial credit, i.e. receive buffers of exactly that many items.
    pub max_receive_window: u32,
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
    /// Session resume on a replacement conduit (rule `session.resume`).
    pub session_resume: SessionResumeConfig,
    /// The session's operation table (PROTOCOL.md section 10); `None`
    /// serves requests with an operation id as plain calls.
    pub operations: Option<OperationConfig>,
    /// Bounds on the sequences in every decoded message: metadata entries,
    /// channel declarations, features (rule `session.decode.bounded`).
    pub decode_limits: crate::wire::DecodeLimits,
    /// Per-session budgets on legal but costly behaviour (rule
    /// `session.abuse-budget`).
    pub budgets: super::AbuseBudgets,
    /// After a violation, the longest the `ProtocolError` may take to be
    /// written before the link is closed regardless (rule
    /// `session.protocol-error`). Default 500 ms.
    pub protocol_error_deadline: Duration,
}

impl SessionConfig {
    pub(crate) fn channel_limits(&self) -> crate::driver::channel::ChannelLimits {
        crate::driver::channel::ChannelLimits {
            max_channels: self.max_channels_per_connection,
            max_receive_window: self.max_receive_window,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            parity: Parity::Odd,
            root_settings: ConnectionSettings::default(),
            max_connections: 1024,
            keepalive: Some(KeepaliveConfig { interval: Duration::from_secs(10), timeout: Duration::from_secs(20) }),
            handshake_timeout: Duration::from_secs(10),
            setup: SetupLimits::default(),
            mailbox_capacity: 32,
            outbound_capacity: 256,
            max_channels_per_connection: 4096,
            max_receive_window: crate::driver::channel::DEFAULT_MAX_RECEIVE_WINDOW,
            linger: Duration::from_secs(5),
            link: LinkConfig::default(),
            protocol_version: PROTOCOL_VERSION,
            conduit: ConduitMode::Bare,
            accept_stable: true,
            stable: StableConfig::default(),
            session_resume: SessionResumeConfig::default(),
            operations: Some(OperationConfig::default()),
            decode_limits: crate::wire::DecodeLimits::default(),
            budgets: super::AbuseBudgets::default(),
            protocol_error_deadline: Duration::from_millis(500),
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

    /// Runs the initiator side over `link` with a bare conduit (a link
    /// alone cannot be redialed, so the session ends with it; for a stable
    /// conduit or session resume use [`establish_resumable`](Self::establish_resumable)
    /// or [`connect`](Self::connect)).
    pub async fn establish_initiator(self, link: Link) -> Result<Session, SessionError> {
        let timeout = self.config.handshake_timeout;
        let setup = async {
            let mut link = link;
            // rule: session.setup.limits — the acceptor is unauthenticated
            // too, until the handshake completes.
            link.rx.restrict(self.config.setup.max_message_size);
            if let Err(e) = transport::initiate(&mut link, ConduitMode::Bare).await {
                let _ = link.tx.close().await;
                return Err(e.into());
            }
            let (tx, rx) = conduit::bare(link);
            initiator_handshake(&self.config, tx, rx, ResumeRequest::No).await.map_err(SessionError::from)
        };
        let conduit =
            tokio::time::timeout(timeout, setup).await.map_err(|_| SessionError::HandshakeTimeout(timeout))??;
        Ok(self.start(conduit, None))
    }

    /// Runs the initiator side over a stable conduit (rule `conduit.stable`):
    /// `source` gives the first link and every replacement after a break.
    /// `first`, if given, is an already dialed first link. (Same as
    /// [`establish_resumable`](Self::establish_resumable) with
    /// [`SessionConfig::conduit`] set to `Stable`.)
    pub async fn establish_stable(
        mut self,
        source: Arc<dyn LinkSource>,
        first: Option<Link>,
    ) -> Result<Session, SessionError> {
        self.config.conduit = ConduitMode::Stable;
        self.establish_resumable(source, first).await
    }

    /// Runs the initiator side with the conduit of [`SessionConfig::conduit`]
    /// over links from `source` (`first`, if given, is an already dialed
    /// first link). A stable conduit redials `source` after a link break;
    /// with [`SessionResumeConfig::request`], a lost conduit is replaced by a
    /// new one bound to the same session (rule `session.resume`).
    pub async fn establish_resumable(
        self,
        source: Arc<dyn LinkSource>,
        first: Option<Link>,
    ) -> Result<Session, SessionError> {
        let timeout = self.config.handshake_timeout;
        let request = if self.config.session_resume.request { ResumeRequest::New } else { ResumeRequest::No };
        let config = self.config.clone();
        let setup = open_initiator(&config, source.clone(), first, request);
        let conduit =
            tokio::time::timeout(timeout, setup).await.map_err(|_| SessionError::HandshakeTimeout(timeout))??;
        let resume = conduit.negotiated.resume_key.clone().map(|key| {
            let attempt_key = key.clone();
            let attempt: resume::Attempt = Arc::new(move || {
                let (config, source, key) = (config.clone(), source.clone(), attempt_key.clone());
                Box::pin(async move {
                    let timeout = config.handshake_timeout;
                    let setup = open_initiator_classified(&config, source, None, ResumeRequest::Resume(key));
                    match tokio::time::timeout(timeout, setup).await {
                        Ok(r) => r,
                        Err(_) => Err(RedialError::Transient(format!("setup timed out after {timeout:?}"))),
                    }
                })
            });
            let redialer = Redialer { attempt, backoff: self.config.session_resume.backoff.clone() };
            Resume { key, side: ResumeSide::Initiator { redialer, pending: None }, deadline: None }
        });
        Ok(self.start(conduit, resume))
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

    /// Runs the acceptor side over `link`: a new session, a new link for an
    /// existing session's stable conduit, or a new conduit that resumes an
    /// existing session by its key (rule `session.resume`). A key this
    /// builder's sessions do not hold is refused with `Sorry`.
    pub async fn establish_acceptor_any(self, link: Link) -> Result<Accepted, SessionError> {
        self.accept_setup(std::future::ready(Ok(link)), std::future::pending()).await
    }

    /// [`establish_acceptor_any`](Self::establish_acceptor_any), cut short
    /// when `cancel` completes (a listener making room for newer links).
    ///
    /// rule: session.setup.limits — every step has a deadline: the first
    /// message within [`SetupLimits::prologue_timeout`], the whole setup
    /// within [`SessionConfig::handshake_timeout`]. `link` may still have
    /// work to do (a TLS or WebSocket handshake): that counts as part of the
    /// setup, held to the prologue deadline. A setup that fails, times
    /// out or is cut short aborts its conduit at once: a stable conduit is
    /// not left to close gracefully, waiting for acknowledgements that an
    /// unauthenticated peer need never send.
    async fn accept_setup(
        self,
        link: impl std::future::Future<Output = Result<Link, SessionError>>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<Accepted, SessionError> {
        let timeout = self.config.handshake_timeout;
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(1 << 30));
        let timed_out = || SessionError::HandshakeTimeout(timeout);
        let cancelled = || {
            SessionError::Setup(
                "unfinished setup closed to make room for a newer link (SetupLimits::max_pending_setups)".into(),
            )
        };
        tokio::pin!(cancel);
        // The transport's own handshake (TLS, WebSocket upgrade), if any:
        // like the prologue, the peer's first bytes, so held to its deadline.
        let prologue_timeout = self.config.setup.prologue_timeout;
        let (first_deadline, first_timeout) = match now.checked_add(prologue_timeout) {
            Some(d) if d < deadline => (d, prologue_timeout),
            _ => (deadline, timeout),
        };
        let link = tokio::select! {
            r = tokio::time::timeout_at(first_deadline, link) => {
                r.map_err(|_| SessionError::HandshakeTimeout(first_timeout))??
            }
            () = &mut cancel => return Err(cancelled()),
        };
        // The prologue, and a stable conduit's hello, on the raw link:
        // cutting this short drops the link, which closes it at once.
        let conduit = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.accept_conduit(link)) => r.map_err(|_| timed_out())??,
            () = &mut cancel => return Err(cancelled()),
        };
        let Some((tx, mut rx)) = conduit else { return Ok(Accepted::Resumed) };
        prepare_conduit(&self.config, &mut rx);
        // The handshake, with the conduit kept out here so that it can be
        // aborted however this ends.
        let mut fresh = None;
        let outcome = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.accept_handshake(&tx, &mut rx, &mut fresh)) => {
                r.map_err(|_| timed_out()).and_then(|r| r.map_err(SessionError::from))
            }
            () = &mut cancel => Err(cancelled()),
        };
        let (negotiated, resumed) = match outcome {
            Ok(x) => x,
            Err(e) => {
                // What is queued (a Sorry) still goes out first.
                abandon(tx, self.config.protocol_error_deadline).await;
                return Err(e);
            }
        };
        // rule: session.setup.limits — the peer is a session peer now.
        rx.unrestrict();
        if !resumed {
            let resume = fresh.map(|key| Resume {
                key,
                side: ResumeSide::Acceptor { registry: self.session_registry.clone() },
                deadline: None,
            });
            return Ok(Accepted::New(self.start(NewConduit { tx, rx, negotiated }, resume)));
        }
        // The session may have ended since the lookup: then the link is
        // closed, and the client's next attempt is refused.
        let ended = || SessionError::Setup("the resumed session ended during the handshake".into());
        let key = negotiated.resume_key.clone();
        let mailbox =
            key.as_ref().and_then(|k| self.session_registry.lookup(k, negotiated.local_parity.opposite()).ok());
        let Some(mb) = mailbox else {
            abandon(tx, self.config.protocol_error_deadline).await;
            return Err(ended());
        };
        let reattach = mb.send(super::control::ControlMsg::Reattach(Box::new(NewConduit { tx, rx, negotiated })));
        match tokio::time::timeout_at(deadline, reattach).await {
            Ok(Ok(())) => Ok(Accepted::Resumed),
            Ok(Err(_)) => Err(ended()),
            Err(_) => Err(timed_out()),
        }
    }

    /// The acceptor's prologue and conduit setup: a bare conduit, a new
    /// stable conduit, or `None` for a link that joined an existing stable
    /// conduit.
    async fn accept_conduit(&self, mut link: Link) -> Result<Option<(ConduitTx, ConduitRx)>, SessionError> {
        let limits = &self.config.setup;
        let modes = AcceptModes { bare: true, stable: self.config.accept_stable };
        // rule: session.setup.limits — until the handshake completes the peer
        // is unauthenticated: every message it sends (prologue, a stable
        // ClientHello, which is read on this link, Hello, LetsGo) is refused
        // above the setup maximum from its length prefix, before anything is
        // allocated for it; and its first message must come soon.
        link.rx.restrict(limits.max_message_size);
        let mode = match transport::accept_within(&mut link, modes, Some(limits.prologue_timeout)).await {
            Ok(m) => m,
            Err(transport::PrologueError::Timeout(d)) => return Err(SessionError::HandshakeTimeout(d)),
            Err(e) => {
                // rule: transport.prologue.reject-close — close (not
                // drop) so the reject reaches the peer before the end.
                let _ = link.tx.close().await;
                return Err(e.into());
            }
        };
        Ok(Some(match mode {
            ConduitMode::Bare => conduit::bare(link),
            ConduitMode::Stable => match self.stable_registry.accept(link, self.config.stable.clone()).await {
                Ok(StableAccepted::New(tx, rx)) => conduit::from_stable(tx, rx),
                Ok(StableAccepted::Resumed) => return Ok(None),
                Err(e) => return Err(SessionError::Setup(e.to_string())),
            },
        }))
    }

    /// The acceptor's handshake; `fresh` receives the resume key issued to a
    /// new resumable session.
    async fn accept_handshake(
        &self,
        tx: &ConduitTx,
        rx: &mut ConduitRx,
        fresh: &mut Option<crate::wire::ResumeKey>,
    ) -> Result<(Negotiated, bool), HandshakeError> {
        let registry = &self.session_registry;
        let offer = self.config.session_resume.offer;
        let decide = |hello: &crate::wire::Hello| match &hello.resume_key {
            Some(key) => match registry.lookup(key, hello.parity) {
                Ok(_) => HelloDecision::Resume(key.clone()),
                Err(reason) => HelloDecision::Refuse(reason),
            },
            None if offer && hello.features.iter().any(|f| f == SESSION_RESUME_FEATURE) => match resume::fresh_key() {
                Ok(k) => {
                    *fresh = Some(k.clone());
                    HelloDecision::New(Some(k))
                }
                Err(e) => HelloDecision::Refuse(e.to_string()),
            },
            None => HelloDecision::New(None),
        };
        handshake::accept_deciding(tx, rx, self.config.root_settings.clone(), decide).await
    }

    /// Connects over TCP and runs the initiator side, with the conduit of
    /// [`SessionConfig::conduit`]; a stable conduit redials `addr` after a
    /// break, and so does a session with [`SessionResumeConfig::request`].
    pub async fn connect(self, addr: impl ToString) -> Result<Session, SessionError> {
        let source = TcpSource { addr: addr.to_string(), config: self.config.link.clone() };
        if self.config.conduit == ConduitMode::Bare && !self.config.session_resume.request {
            let link = source.dial().await?;
            return self.establish_initiator(link).await;
        }
        self.establish_resumable(Arc::new(source), None).await
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
        if self.config.conduit == ConduitMode::Bare && !self.config.session_resume.request {
            return self.establish_initiator(first).await;
        }
        self.establish_resumable(Arc::new(source), Some(first)).await
    }

    /// Binds a TCP listener that accepts sessions with these settings, with
    /// a listen backlog of [`SetupLimits::listen_backlog`] (1024 by default)
    /// and `SO_REUSEADDR` as tokio's own `TcpListener::bind` sets it.
    pub async fn listen(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Listener, SessionError> {
        let upgrade: Upgrade = Arc::new(|stream, config| Box::pin(std::future::ready(Ok(link::tcp(stream, config)))));
        self.listen_with(addr, upgrade).await
    }

    /// Like [`connect`](Self::connect), over links from any `source` (TLS,
    /// WebSocket, or one of the caller's own): a bare conduit uses one
    /// link, dialed within [`SessionConfig::handshake_timeout`]; a stable
    /// conduit or a resumable session redials `source` after a break.
    pub async fn connect_with(self, source: impl LinkSource) -> Result<Session, SessionError> {
        if self.config.conduit == ConduitMode::Bare && !self.config.session_resume.request {
            let timeout = self.config.handshake_timeout;
            let link = tokio::time::timeout(timeout, source.dial())
                .await
                .map_err(|_| SessionError::HandshakeTimeout(timeout))??;
            return self.establish_initiator(link).await;
        }
        self.establish_resumable(Arc::new(source), None).await
    }

    /// Connects over TLS (rule `transport.tls`): the server's certificate
    /// must be valid for `server_name` under `tls`'s roots, or the setup
    /// fails with the cause; `tls` presents a client certificate if it has
    /// one (mutual TLS). Redials (stable conduit, session resume) go over
    /// TLS with the same verification ([`link::tls::TlsSource`]).
    #[cfg(feature = "tls")]
    pub async fn connect_tls(
        self,
        addr: impl ToString,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Session, SessionError> {
        let source = link::tls::TlsSource::new(addr.to_string(), server_name, tls, self.config.link.clone())?;
        self.connect_with(source).await
    }

    /// Like [`listen`](Self::listen), over TLS (rule `transport.tls`): the
    /// TLS handshake is part of each link's setup, held to the prologue
    /// deadline and the setup bounds of [`SetupLimits`]. With a
    /// client-certificate verifier in `tls` (mutual TLS), a client without
    /// an acceptable certificate never becomes a session; the verified
    /// certificate is the link's [`peer_identity`](crate::link::LinkRx::peer_identity)
    /// and reaches handlers in `CallContext::peer_identity`.
    #[cfg(feature = "tls")]
    pub async fn listen_tls(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Listener, SessionError> {
        let upgrade: Upgrade = Arc::new(move |stream, config| {
            let tls = tls.clone();
            Box::pin(async move { Ok(link::tls::accept_tls(stream, tls, config).await?) })
        });
        self.listen_with(addr, upgrade).await
    }

    /// Connects over WebSocket (rule `transport.websocket`) to a `ws://`
    /// URL; see [`link::ws`].
    #[cfg(feature = "websocket")]
    pub async fn connect_ws(self, url: &str) -> Result<Session, SessionError> {
        let source = link::ws::WsSource::new(url, self.config.link.clone())?;
        self.connect_with(source).await
    }

    /// Like [`listen`](Self::listen), for WebSocket clients (rule
    /// `transport.websocket`): each TCP connection is upgraded (any
    /// request path), the upgrade being part of the link's setup and held
    /// to its deadlines.
    #[cfg(feature = "websocket")]
    pub async fn listen_ws(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Listener, SessionError> {
        let upgrade: Upgrade =
            Arc::new(|stream, config| Box::pin(async move { Ok(link::ws::accept_ws(stream, config).await?) }));
        self.listen_with(addr, upgrade).await
    }

    /// The listener of [`listen`](Self::listen), with `upgrade` turning
    /// each accepted TCP connection into a link inside its setup.
    async fn listen_with(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        upgrade: Upgrade,
    ) -> Result<Listener, SessionError> {
        let tcp = bind_tcp(addr, self.config.setup.listen_backlog)
            .await
            .map_err(|e| SessionError::Setup(format!("bind: {e}")))?;
        let local_addr = tcp.local_addr().map_err(|e| SessionError::Setup(format!("bind: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(LISTENER_BACKLOG);
        let dropped_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pending = Arc::new(PendingSetups::new());
        let task = tokio::spawn(accept_loop(tcp, self.clone(), upgrade, tx, dropped_failures.clone(), pending.clone()));
        Ok(Listener {
            local_addr,
            builder: self,
            outcomes: tokio::sync::Mutex::new(rx),
            dropped_failures,
            pending,
            task,
        })
    }

    fn start(self, conduit: NewConduit, resume: Option<Resume>) -> Session {
        let config = Arc::new(self.config);
        let negotiated = conduit.negotiated.clone();
        let peer_addr = conduit.rx.peer_addr();
        let peer_identity = conduit.rx.peer_identity();
        let link = Attachment::start(conduit, config.outbound_capacity);
        let (mailbox_tx, mailbox_rx) = mailbox(config.mailbox_capacity);
        let (closed_tx, closed_rx) = watch::channel(None);
        let (generation_tx, generation_rx) = watch::channel(1);
        let ops = config.operations.clone().map(|c| Arc::new(SessionOps::new(c)));
        let root_core = ConnectionCore::new(
            ConnectionId::ROOT,
            negotiated.local_parity,
            negotiated.local_root.clone(),
            negotiated.peer_root.clone(),
            link.outbound.clone(),
            self.root_handler,
            config.channel_limits(),
            ops.clone(),
        );
        root_core.set_peer_addr(peer_addr);
        root_core.set_peer_identity(peer_identity);
        tokio::spawn(root_core.clone().run_flush());
        let budgets = super::budget::Budgets::new(&config.budgets, tokio::time::Instant::now());
        let mut phase = SessionPhase::Handshaking;
        if let Err(e) = phase.on_established() {
            tracing::error!(error = %e, "fresh session not in Handshaking");
        }
        if let Some(Resume { key, side: ResumeSide::Acceptor { registry }, .. }) = &resume {
            registry.insert(key.clone(), mailbox_tx.clone(), negotiated.local_parity.opposite());
        }
        let root_slot = RootSlot::new(root_core.clone());
        let run = RunLoop {
            phase,
            table: ConnTable::new(negotiated.local_parity, 1024),
            root: root_core,
            root_slot: root_slot.clone(),
            root_released: false,
            mailbox: mailbox_rx,
            mailbox_tx: mailbox_tx.clone(),
            link,
            config,
            shared: Arc::new(Shared { acceptor: self.acceptor }),
            closed_tx,
            generation_tx,
            ops,
            resume,
            ping_nonce: 0,
            budgets,
            draining: None,
        };
        tokio::spawn(run.run());
        let handle = SessionHandle {
            mailbox: mailbox_tx.clone(),
            closed: closed_rx,
            generation: generation_rx,
            op_ids: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let caller = Caller::new(CoreRef::Root(root_slot), LiveToken::new(mailbox_tx, ConnectionId::ROOT))
            .in_session(handle.clone());
        Session { handle, root: ConnectionHandle { id: ConnectionId::ROOT, caller }, negotiated }
    }
}

/// Dials (or takes `first`), runs the prologue for `config.conduit`, sets
/// the conduit up and runs the initiator handshake.
async fn open_initiator(
    config: &SessionConfig,
    source: Arc<dyn LinkSource>,
    first: Option<Link>,
    request: ResumeRequest,
) -> Result<NewConduit, SessionError> {
    open_initiator_classified(config, source, first, request).await.map_err(|e| match e {
        RedialError::Transient(e) | RedialError::Permanent(e) => SessionError::Setup(e),
    })
}

/// [`open_initiator`], telling failures worth another attempt (the link
/// failed: dial, prologue, conduit, or the link closed during the
/// handshake) from final ones (the peer refused or answered out of line).
async fn open_initiator_classified(
    config: &SessionConfig,
    source: Arc<dyn LinkSource>,
    first: Option<Link>,
    request: ResumeRequest,
) -> Result<NewConduit, RedialError> {
    let transient = |e: String| RedialError::Transient(e);
    let mut first = match first {
        Some(l) => l,
        None => source.dial().await.map_err(|e| transient(e.to_string()))?,
    };
    // rule: session.setup.limits — the acceptor is unauthenticated until the
    // handshake completes: its prologue answer, its ServerHello (stable,
    // read on this link) and its HelloYourself are held to the setup
    // maximum. A stable conduit applies the same to links it redials while
    // restricted (see `prepare_conduit`).
    first.rx.restrict(config.setup.max_message_size);
    let (tx, rx) = match config.conduit {
        ConduitMode::Bare => {
            let mut link = first;
            if let Err(e) = transport::initiate(&mut link, ConduitMode::Bare).await {
                let _ = link.tx.close().await;
                return Err(transient(e.to_string()));
            }
            conduit::bare(link)
        }
        ConduitMode::Stable => {
            let (tx, rx) = stable::connect_over(first, source, config.stable.clone())
                .await
                .map_err(|e| transient(e.to_string()))?;
            conduit::from_stable(tx, rx)
        }
    };
    initiator_handshake(config, tx, rx, request).await.map_err(|e| match e {
        HandshakeError::Conduit(_) | HandshakeError::PeerClosed => RedialError::Transient(e.to_string()),
        HandshakeError::Refused { .. }
        | HandshakeError::RefusedPeer { .. }
        | HandshakeError::NotResumed
        | HandshakeError::Unexpected { .. } => RedialError::Permanent(e.to_string()),
    })
}

/// Ends a conduit whose setup failed or was cut short: what is queued (a
/// `Sorry`) is written, then the link is closed without waiting for the
/// peer, within `within` whatever the peer does.
async fn abandon(tx: ConduitTx, within: Duration) {
    let abort = async move {
        if let Ok(writer) = tx.into_writer().await {
            let _ = writer.abort().await;
        }
    };
    // Dropping what is left at the deadline ends the conduit at once.
    let _ = tokio::time::timeout(within, abort).await;
}

/// Settings every fresh conduit gets before its handshake: the setup-phase
/// message maximum (rule `session.setup.limits`; for a stable conduit, on
/// every link it attaches until [`ConduitRx::unrestrict`]) and the bounds
/// on decoded sequences (rule `session.decode.bounded`).
fn prepare_conduit(config: &SessionConfig, rx: &mut ConduitRx) {
    rx.restrict(config.setup.max_message_size);
    rx.set_decode_limits(config.decode_limits);
}

async fn initiator_handshake(
    c: &SessionConfig,
    tx: ConduitTx,
    mut rx: ConduitRx,
    request: ResumeRequest,
) -> Result<NewConduit, HandshakeError> {
    prepare_conduit(c, &mut rx);
    match handshake::initiate(&tx, &mut rx, c.parity, c.root_settings.clone(), c.protocol_version, request).await {
        Ok(negotiated) => {
            // rule: session.setup.limits — the handshake is done: the
            // session's own message maximum applies from here on.
            rx.unrestrict();
            Ok(NewConduit { tx, rx, negotiated })
        }
        Err(e) => {
            // rule: session.handshake — after Sorry the link is closed;
            // closing (not dropping) makes sure the Sorry leaves first.
            let _ = tx.close().await;
            Err(e)
        }
    }
}

/// Outcomes (new sessions, per-link failures) a [`Listener`] holds until
/// they are taken. New sessions wait for room (backpressure on setup);
/// failures beyond it are dropped after being logged.
const LISTENER_BACKLOG: usize = 16;

/// Binds like `tokio::net::TcpListener::bind` (every resolved address in
/// turn, the first that binds wins; `SO_REUSEADDR` off Windows), but with
/// the given listen backlog.
async fn bind_tcp(addr: impl tokio::net::ToSocketAddrs, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket =
                if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            #[cfg(not(windows))]
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(backlog)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "could not resolve to any address")))
}

/// The setups in progress on a listener, oldest first (rule
/// `session.setup.limits`).
struct PendingSetups {
    state: parking_lot::Mutex<PendingState>,
    /// How many are in progress (mirrors `state.tasks.len()`), for
    /// [`Listener::pending_setups`] and for waiting on it.
    count: watch::Sender<usize>,
    /// Unfinished setups closed to make room for newer ones.
    evicted: std::sync::atomic::AtomicU64,
}

struct PendingState {
    /// Ids grow with acceptance order, so the first entry is the oldest.
    next_id: u64,
    /// Each setup's cancel signal: dropping it cuts the setup short.
    tasks: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl PendingSetups {
    fn new() -> PendingSetups {
        PendingSetups {
            state: parking_lot::Mutex::new(PendingState { next_id: 0, tasks: Default::default() }),
            count: watch::channel(0).0,
            evicted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers a new setup. If `max` are already in progress, the oldest
    /// ones are closed first (cut short: a link still in its prologue is
    /// dropped at once, a conduit is aborted within the protocol-error
    /// deadline): a new link is never made to wait for room. The setup's
    /// task ends when the returned signal completes.
    fn admit(self: &Arc<Self>, max: usize) -> (SetupGuard, impl std::future::Future<Output = ()> + use<>) {
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        let (id, evicted) = {
            let mut state = self.state.lock();
            let mut evicted = Vec::new();
            while state.tasks.len() >= max.max(1) {
                match state.tasks.pop_first() {
                    Some((_, task)) => evicted.push(task),
                    None => break,
                }
            }
            let id = state.next_id;
            state.next_id += 1;
            state.tasks.insert(id, cancel_tx);
            self.count.send_replace(state.tasks.len());
            (id, evicted)
        };
        for cancel in evicted {
            self.evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(max, "closing the oldest unfinished setup to make room for a new link");
            drop(cancel);
        }
        let cancelled = async move {
            // Completes when the sender is dropped (evicted) or used.
            let _ = cancel_rx.await;
        };
        (SetupGuard { pending: self.clone(), id }, cancelled)
    }

    fn finished(&self, id: u64) {
        let mut state = self.state.lock();
        if state.tasks.remove(&id).is_some() {
            self.count.send_replace(state.tasks.len());
        }
    }
}

/// Held by a setup's task: dropping it (the setup finished, failed or was
/// aborted) removes the setup from [`PendingSetups`].
struct SetupGuard {
    pending: Arc<PendingSetups>,
    id: u64,
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        self.pending.finished(self.id);
    }
}

/// Accepts sessions on a TCP listener.
///
/// A background task accepts TCP connections as fast as they come and runs
/// each one's prologue and handshake in its own task, so a slow or silent
/// peer holds up nobody, and links that resume an existing session's stable
/// conduit are attached whether or not anyone is calling
/// [`accept`](Self::accept) (rule `session.resume`). Unfinished setups are
/// bounded by [`SetupLimits::max_pending_setups`] without delaying new
/// links: beyond it, the oldest unfinished setup is closed (rule
/// `session.setup.limits`). Dropping the listener stops accepting; sessions
/// already established carry on.
pub struct Listener {
    local_addr: std::net::SocketAddr,
    builder: SessionBuilder,
    outcomes: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Result<Session, SessionError>>>,
    dropped_failures: Arc<std::sync::atomic::AtomicU64>,
    pending: Arc<PendingSetups>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Turns an accepted TCP connection into a link (length-prefixed TCP, TLS,
/// WebSocket); run inside the link's setup, under its deadlines.
type Upgrade = Arc<
    dyn Fn(
            tokio::net::TcpStream,
            LinkConfig,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Link, SessionError>> + Send>>
        + Send
        + Sync,
>;

async fn accept_loop(
    tcp: tokio::net::TcpListener,
    builder: SessionBuilder,
    upgrade: Upgrade,
    outcomes: tokio::sync::mpsc::Sender<Result<Session, SessionError>>,
    dropped_failures: Arc<std::sync::atomic::AtomicU64>,
    pending: Arc<PendingSetups>,
) {
    loop {
        // rule: session.setup.limits — accept first, always: room for the
        // new setup is made by closing the oldest one, never by waiting.
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
        let link = upgrade(stream, builder.config.link.clone());
        let link = async move {
            let mut link = link.await?;
            link.rx.set_peer_addr(peer);
            Ok(link)
        };
        let (guard, cancelled) = pending.admit(builder.config.setup.max_pending_setups);
        let builder = builder.clone();
        let outcomes = outcomes.clone();
        let dropped_failures = dropped_failures.clone();
        tokio::spawn(async move {
            let outcome = builder.accept_setup(link, cancelled).await;
            drop(guard);
            match outcome {
                Ok(Accepted::New(session)) => {
                    let _ = outcomes.send(Ok(session)).await;
                }
                Ok(Accepted::Resumed) => tracing::debug!(%peer, "link resumed a stable conduit"),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "inbound link did not become a session");
                    // Failures never wait for room: a full backlog must not
                    // hold a setup task. One that does not fit is counted
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

    /// Inbound links whose prologue and handshake are still in progress
    /// (at most [`SetupLimits::max_pending_setups`]).
    pub fn pending_setups(&self) -> usize {
        *self.pending.count.borrow()
    }

    /// Waits until at most `n` setups are in progress: each one counts until
    /// its task is done with it (it became a session, failed, timed out, or
    /// was closed to make room).
    pub async fn pending_setups_at_most(&self, n: usize) {
        let mut count = self.pending.count.subscribe();
        // The sender lives as long as `self`.
        let _ = count.wait_for(|c| *c <= n).await;
    }

    /// Unfinished setups closed so far to make room for newer links, because
    /// [`SetupLimits::max_pending_setups`] were in progress (rule
    /// `session.setup.limits`).
    pub fn evicted_setups(&self) -> u64 {
        self.pending.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }
}
