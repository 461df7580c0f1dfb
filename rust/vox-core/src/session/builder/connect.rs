//! The initiator side: dialing (TCP, TLS, WebSocket, QUIC, any
//! [`LinkSource`]), the prologue, the conduit and the initiator handshake,
//! and for resumable sessions the redial attempt that repeats all of it
//! with the session's resume key.

use super::{Session, SessionBuilder, SessionConfig, prepare_conduit};
use crate::conduit::stable;
use crate::conduit::{self, ConduitRx, ConduitTx};
use crate::link::{self, Link, LinkSource, TcpSource};
use crate::session::SessionError;
use crate::session::handshake::{self, HandshakeError, ResumeRequest};
#[cfg(doc)]
use crate::session::resume::SessionResumeConfig;
use crate::session::resume::{self, NewConduit, RedialError, Redialer};
use crate::session::run::{Resume, ResumeSide};
use crate::transport;
use crate::wire::ConduitMode;
use std::sync::Arc;
use std::time::Duration;

impl SessionBuilder {
    /// Runs the initiator side over `link` with a bare conduit (a link
    /// alone cannot be redialed, so the session ends with it; for a stable
    /// conduit or session resume use [`establish_resumable`](Self::establish_resumable)
    /// or [`connect`](Self::connect)).
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::HandshakeTimeout`] if the setup takes longer than
    /// [`SessionConfig::handshake_timeout`]; [`SessionError::Setup`] with the
    /// cause when the prologue or the handshake fails (the acceptor refused, or
    /// broke the protocol) or the link fails.
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
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// As [`establish_resumable`](Self::establish_resumable).
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
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::HandshakeTimeout`] if the setup takes longer than
    /// [`SessionConfig::handshake_timeout`]; [`SessionError::Setup`] with the
    /// cause when dialing, the prologue, the stable conduit's hello or the
    /// handshake fails.
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
            let attempt: resume::RedialAttempt = Arc::new(move || {
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
            Resume { key, side: ResumeSide::Initiator { redialer } }
        });
        Ok(self.start(conduit, resume))
    }

    /// Connects over TCP and runs the initiator side, with the conduit of
    /// [`SessionConfig::conduit`]; a stable conduit redials `addr` after a
    /// break, and so does a session with [`SessionResumeConfig::request`].
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::Setup`] with the cause if the TCP connection cannot be
    /// made; otherwise as [`establish_initiator`](Self::establish_initiator) or
    /// [`establish_resumable`](Self::establish_resumable).
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
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started. While waiting for the server, the attempt in
    /// progress is dropped too.
    ///
    /// # Errors
    /// [`SessionError::Connect`] with the last connect error once `timeout` has
    /// passed, or at once for a permanent one; then as
    /// [`connect`](Self::connect).
    pub async fn connect_waiting(self, addr: impl ToString, timeout: Duration) -> Result<Session, SessionError> {
        let source = TcpSource { addr: addr.to_string(), config: self.config.link.clone() };
        let first = link::connect_waiting(&source, &self.config.stable.backoff, timeout)
            .await
            .map_err(|e| SessionError::Connect(std::sync::Arc::new(e)))?;
        if self.config.conduit == ConduitMode::Bare && !self.config.session_resume.request {
            return self.establish_initiator(first).await;
        }
        self.establish_resumable(Arc::new(source), Some(first)).await
    }

    /// Like [`connect`](Self::connect), over links from any `source` (TLS,
    /// WebSocket, or one of the caller's own): a bare conduit uses one
    /// link, dialed within [`SessionConfig::handshake_timeout`]; a stable
    /// conduit or a resumable session redials `source` after a break.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// Bare conduit: [`SessionError::HandshakeTimeout`] if dialing takes longer
    /// than [`SessionConfig::handshake_timeout`], [`SessionError::Setup`] if it
    /// fails, then as [`establish_initiator`](Self::establish_initiator).
    /// Otherwise as [`establish_resumable`](Self::establish_resumable).
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
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if `server_name` is not a valid DNS name or IP
    /// address, or the TLS handshake fails (the certificate does not verify);
    /// otherwise as [`connect_with`](Self::connect_with).
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

    /// Connects over QUIC (feature `quic`, ADR 0006): one bidirectional
    /// QUIC stream carries the session. The server's certificate must be
    /// valid for `server_name` under `tls`'s roots, or the setup fails with
    /// the cause; `tls` (a rustls config such as `link::tls::client_config`
    /// makes) presents a client certificate if it has one. Every redial
    /// (stable conduit, session resume) is a new QUIC connection verified
    /// the same way (`link::quic::QuicSource`).
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if `tls` cannot run QUIC (no TLS 1.3
    /// AES-128-GCM suite), or dialing or the QUIC handshake fails (the
    /// certificate does not verify); otherwise as
    /// [`connect_with`](Self::connect_with).
    #[cfg(feature = "quic")]
    pub async fn connect_quic(
        self,
        addr: impl ToString,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Session, SessionError> {
        let source = link::quic::QuicSource::new(addr.to_string(), server_name, &tls, self.config.link.clone())?;
        self.connect_with(source).await
    }

    /// Connects over WebSocket (rule `transport.websocket`) to a `ws://`
    /// URL; see [`link::ws`].
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if `url` is not a `ws://` URL with a host, or
    /// the connection or the upgrade fails; otherwise as
    /// [`connect_with`](Self::connect_with).
    #[cfg(feature = "websocket")]
    pub async fn connect_ws(self, url: &str) -> Result<Session, SessionError> {
        let source = link::ws::WsSource::new(url, self.config.link.clone())?;
        self.connect_with(source).await
    }

    /// Connects over WebSocket over TLS (`wss://`; features `tls` and
    /// `websocket`): the server's certificate must be valid for the URL's
    /// host under `tls`'s roots, or the setup fails with the cause; `tls`
    /// presents a client certificate if it has one. Redials go the same
    /// way, verified again.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// [`SessionError::Setup`] if `url` is not a WebSocket URL with a host,
    /// or the connection, the TLS handshake or the upgrade fails; otherwise
    /// as [`connect_with`](Self::connect_with).
    #[cfg(all(feature = "tls", feature = "websocket"))]
    pub async fn connect_wss(self, url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Session, SessionError> {
        let mut source = link::ws::WsSource::new(url, self.config.link.clone())?;
        source.tls = Some(tls);
        self.connect_with(source).await
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

async fn initiator_handshake(
    c: &SessionConfig,
    tx: ConduitTx,
    mut rx: ConduitRx,
    request: ResumeRequest,
) -> Result<NewConduit, HandshakeError> {
    prepare_conduit(c, &mut rx);
    let batches = c.channel_item_batches;
    match handshake::initiate(&tx, &mut rx, c.parity, c.root_settings.clone(), c.protocol_version, request, batches)
        .await
    {
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
