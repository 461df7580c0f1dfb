//! Accepting sessions on a TCP listener (or a QUIC endpoint): binding, the
//! accept loop that runs every link's setup in its own task, and the
//! [`Listener`] that hands out the outcomes. TLS and WebSocket listeners
//! differ only in how an accepted TCP connection becomes a link
//! ([`Upgrade`]); a QUIC listener accepts QUIC connections instead
//! ([`Inbound`]).

use super::pending::PendingSetups;
use super::{Accepted, Session, SessionBuilder};
use crate::link::{self, Link, LinkConfig};
use crate::session::SessionError;
#[cfg(doc)]
use crate::session::handshake::SetupLimits;
use std::sync::Arc;
use std::time::Duration;

impl SessionBuilder {
    /// Binds a TCP listener that accepts sessions with these settings, with
    /// a listen backlog of [`SetupLimits::listen_backlog`] (1024 by default)
    /// and `SO_REUSEADDR` as tokio's own `TcpListener::bind` sets it.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing.
    ///
    /// # Errors
    /// [`SessionError::Bind`] if `addr` does not resolve or no
    /// resolved address can be bound (in use, no permission).
    pub async fn listen(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Listener, SessionError> {
        let upgrade: Upgrade = Arc::new(|stream, config| Box::pin(std::future::ready(Ok(link::tcp(stream, config)))));
        self.listen_with(addr, upgrade).await
    }

    /// Like [`listen`](Self::listen), over TLS (rule `transport.tls`): the
    /// TLS handshake is part of each link's setup, held to the prologue
    /// deadline and the setup bounds of [`SetupLimits`]. With a
    /// client-certificate verifier in `tls` (mutual TLS), a client without
    /// an acceptable certificate never becomes a session; the verified
    /// certificate is the link's [`peer_identity`](crate::link::LinkRx::peer_identity)
    /// and reaches handlers in `CallContext::peer_identity`.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing.
    ///
    /// # Errors
    /// As [`listen`](Self::listen): [`SessionError::Bind`] if the address
    /// cannot be bound. TLS failures come later, per link.
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

    /// Like [`listen`](Self::listen), for WebSocket clients (rule
    /// `transport.websocket`): each TCP connection is upgraded (any
    /// request path), the upgrade being part of the link's setup and held
    /// to its deadlines.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing.
    ///
    /// # Errors
    /// As [`listen`](Self::listen): [`SessionError::Bind`] if the address
    /// cannot be bound. Upgrade failures come later, per link.
    #[cfg(feature = "websocket")]
    pub async fn listen_ws(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Listener, SessionError> {
        let upgrade: Upgrade = Arc::new(|stream, config| {
            // As for TCP and TLS links: the link's writer batches already.
            let _ = stream.set_nodelay(true);
            Box::pin(async move { Ok(link::ws::accept_ws(stream, config).await?) })
        });
        self.listen_with(addr, upgrade).await
    }

    /// Like [`listen_ws`](Self::listen_ws), over TLS (`wss://`; features
    /// `tls` and `websocket`): each TCP connection runs the TLS handshake
    /// (verifying the client's certificate when `tls` has a
    /// client-certificate verifier, as [`listen_tls`](Self::listen_tls)),
    /// then the WebSocket upgrade, both inside the link's setup and held to
    /// its deadlines. The verified certificate is the link's
    /// [`peer_identity`](crate::link::LinkRx::peer_identity).
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing.
    ///
    /// # Errors
    /// As [`listen`](Self::listen): [`SessionError::Bind`] if the address
    /// cannot be bound. TLS and upgrade failures come later, per link.
    #[cfg(all(feature = "tls", feature = "websocket"))]
    pub async fn listen_wss(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Listener, SessionError> {
        let upgrade: Upgrade = Arc::new(move |stream, config| {
            let tls = tls.clone();
            Box::pin(async move { Ok(link::ws::accept_wss(stream, tls, config).await?) })
        });
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
            .map_err(|e| SessionError::Bind(std::sync::Arc::new(e)))?;
        let local_addr = tcp.local_addr().map_err(|e| SessionError::Bind(std::sync::Arc::new(e)))?;
        Ok(self.listener_on(local_addr, TcpInbound { tcp, upgrade }))
    }

    /// Like [`listen`](Self::listen), over QUIC (feature `quic`, ADR 0006):
    /// binds a UDP socket, and each QUIC connection's handshake (verifying
    /// the client's certificate when `tls` has a client-certificate
    /// verifier, as [`listen_tls`](Self::listen_tls)) and its one
    /// bidirectional stream become a link inside the setup, held to its
    /// deadlines. The verified certificate is the link's
    /// [`peer_identity`](crate::link::LinkRx::peer_identity). `tls` is a
    /// rustls config such as `link::tls::server_config` makes; vox's ALPN
    /// protocol is set on a copy (see `link::quic::server_config`).
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing.
    ///
    /// # Errors
    /// [`SessionError::Setup`] (`bind: ...`) if `addr` does not resolve, no
    /// resolved address can be bound, or `tls` cannot run QUIC (no TLS 1.3
    /// AES-128-GCM suite). Handshake failures come later, per link.
    #[cfg(feature = "quic")]
    pub async fn listen_quic(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Listener, SessionError> {
        let bind = |e: &dyn std::fmt::Display| SessionError::Setup(format!("bind: {e}"));
        let config = link::quic::server_config(&tls).map_err(|e| bind(&e))?;
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await.map_err(|e| bind(&e))? {
            match link::quic::quinn::Endpoint::server(config.clone(), addr) {
                Ok(endpoint) => {
                    let local_addr = endpoint.local_addr().map_err(|e| bind(&e))?;
                    return Ok(self.listener_on(local_addr, QuicInbound { endpoint }));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(bind(&last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "could not resolve to any address")
        })))
    }

    /// The listener whose accept loop takes links from `inbound`.
    fn listener_on(self, local_addr: std::net::SocketAddr, inbound: impl Inbound) -> Listener {
        let (tx, rx) = tokio::sync::mpsc::channel(LISTENER_BACKLOG);
        let dropped_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pending = Arc::new(PendingSetups::new());
        let task = tokio::spawn(accept_loop(inbound, self.clone(), tx, dropped_failures.clone(), pending.clone()));
        Listener { local_addr, builder: self, outcomes: tokio::sync::Mutex::new(rx), dropped_failures, pending, task }
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

/// Accepts sessions on a TCP listener (or a QUIC endpoint).
///
/// A background task accepts TCP (QUIC) connections as fast as they come and runs
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

/// A link still to be made (TLS, WebSocket or QUIC handshake, upgrade)
/// inside its setup.
type LinkFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Link, SessionError>> + Send>>;

/// What [`Inbound::next`] returns: the next inbound connection's link and
/// peer address, `None` once no more can come.
type NextInbound<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(LinkFuture, std::net::SocketAddr)>> + Send + 'a>>;

/// Where a listener's inbound links come from: each is the work that makes
/// the link (run inside its setup, under its deadlines) and the peer's
/// address.
trait Inbound: Send + 'static {
    /// The next inbound connection; `None` once no more can come.
    fn next(&mut self, config: LinkConfig) -> NextInbound<'_>;
}

/// TCP connections, each made a link by `upgrade`.
struct TcpInbound {
    tcp: tokio::net::TcpListener,
    upgrade: Upgrade,
}

impl Inbound for TcpInbound {
    fn next(&mut self, config: LinkConfig) -> NextInbound<'_> {
        Box::pin(async move {
            loop {
                match self.tcp.accept().await {
                    Ok((stream, peer)) => {
                        let link = (self.upgrade)(stream, config);
                        let link: LinkFuture = Box::pin(async move {
                            let mut link = link.await?;
                            link.rx.set_peer_addr(peer);
                            Ok(link)
                        });
                        return Some((link, peer));
                    }
                    Err(e) => {
                        // Per-connection accept errors (the peer reset before we
                        // took it, descriptor limits) do not end the listener.
                        tracing::warn!(error = %e, "TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    }
}

/// QUIC connections on an endpoint, each one link on its client's stream.
#[cfg(feature = "quic")]
struct QuicInbound {
    endpoint: link::quic::quinn::Endpoint,
}

#[cfg(feature = "quic")]
impl Inbound for QuicInbound {
    fn next(&mut self, config: LinkConfig) -> NextInbound<'_> {
        Box::pin(async move {
            // Taken at once, like a TCP connection: until `accept_quic`
            // runs inside the setup it is only a first packet, and the
            // setups are bounded (`SetupLimits::max_pending_setups`).
            let incoming = self.endpoint.accept().await?;
            let peer = incoming.remote_address();
            let link: LinkFuture = Box::pin(async move { Ok(link::quic::accept_quic(incoming, config).await?) });
            Some((link, peer))
        })
    }
}

#[cfg(feature = "quic")]
impl Drop for QuicInbound {
    fn drop(&mut self) {
        // New connections are refused from now on; established ones carry on.
        self.endpoint.set_server_config(None);
    }
}

async fn accept_loop(
    mut inbound: impl Inbound,
    builder: SessionBuilder,
    outcomes: tokio::sync::mpsc::Sender<Result<Session, SessionError>>,
    dropped_failures: Arc<std::sync::atomic::AtomicU64>,
    pending: Arc<PendingSetups>,
) {
    // rule: session.setup.limits — accept first, always: room for the
    // new setup is made by closing the oldest one, never by waiting.
    while let Some((link, peer)) = inbound.next(builder.config.link.clone()).await {
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
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a session is taken
    /// only when the future completes, and setups go on in the background
    /// either way.
    ///
    /// # Errors
    /// [`SessionError::Closed`] only if the listener's accept loop stopped,
    /// which it does not while the `Listener` lives unless its task panicked.
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
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`accept`](Self::accept): an outcome is taken only when
    /// the future completes.
    ///
    /// # Errors
    /// A link's failure: [`SessionError::HandshakeTimeout`], or
    /// [`SessionError::Setup`] with the cause (prologue, TLS, QUIC or
    /// WebSocket handshake or upgrade, handshake, or closed to make room for
    /// newer links).
    /// [`SessionError::Closed`] if the accept loop stopped.
    pub async fn accept_attempt(&self) -> Result<Session, SessionError> {
        match self.outcomes.lock().await.recv().await {
            Some(outcome) => outcome,
            None => Err(SessionError::Closed(crate::session::CloseReason::LinkError("the listener stopped".into()))),
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
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches the count, so it may be used in
    /// `tokio::select!`.
    ///
    /// # Errors
    /// Never fails: the count is kept as long as the listener lives.
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
