//! A server entry point: accept sessions on a TCP address, keep each one
//! until its peer ends it, limit how many run at once, and shut down
//! gracefully.

use super::ServiceRouter;
use crate::session::{Listener, SessionBuilder, SessionError, SessionHandle};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listening socket failed (the environment: address in
    /// use, no permission).
    #[error("server: cannot listen: {0}")]
    Bind(#[source] SessionError),
}

/// Serves vox sessions on a TCP address.
///
/// Every accepted session is kept until its peer ends it (rule
/// `rpc.caller.liveness`); at most [`max_sessions`](Self::max_sessions) run
/// at once, and a session beyond that is ended right after its handshake.
/// [`Serving::shutdown`] stops accepting, lets the handlers in flight finish
/// within the [`grace_period`](Self::grace_period) (new calls are answered
/// `Rejected`: nothing ran, so a client may retry elsewhere), then closes
/// every session cleanly.
///
/// ```no_run
/// # async fn demo() -> Result<(), vox_core::service::ServeError> {
/// use vox_core::service::{Server, ServiceRouter};
/// # #[vox_core::service] trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
/// # #[derive(Clone)] struct C;
/// # impl Calc for C { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
/// let router = ServiceRouter::new().serve(CalcDispatcher::new(C));
/// // Any future can be the signal, e.g. `tokio::signal::ctrl_c()`.
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// Server::new(router).serve_with_shutdown("127.0.0.1:7000", async { let _ = stopped.await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    builder: SessionBuilder,
    max_sessions: usize,
    grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("max_sessions", &self.max_sessions).field("grace", &self.grace).finish()
    }
}

/// Default [`Server::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// Default [`Server::grace_period`].
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

impl Server {
    /// Serves `router`'s services on the root connection and on virtual
    /// connections opened by service name, with default session settings.
    pub fn new(router: ServiceRouter) -> Server {
        Server::with_builder(SessionBuilder::new().handler(router.clone()).acceptor(router))
    }

    /// Serves sessions as `builder` configures them (its handler, acceptor
    /// and settings).
    pub fn with_builder(builder: SessionBuilder) -> Server {
        Server { builder, max_sessions: DEFAULT_MAX_SESSIONS, grace: DEFAULT_GRACE_PERIOD }
    }

    /// The most sessions at once (default 10,000).
    pub fn max_sessions(mut self, n: usize) -> Server {
        self.max_sessions = n;
        self
    }

    /// How long handlers in flight get to finish on shutdown (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Server {
        self.grace = grace;
        self
    }

    /// Starts serving on `addr` and returns at once.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes binds nothing; once bound it
    /// returns at once.
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the address cannot be bound.
    pub async fn bind(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Serving, ServeError> {
        let listener = self.builder.clone().listen(addr).await.map_err(ServeError::Bind)?;
        self.serve_listener(listener)
    }

    /// Like [`bind`](Self::bind), over TLS (rule `transport.tls`; see
    /// [`SessionBuilder::listen_tls`]).
    ///
    /// # Cancel safety
    /// As [`bind`](Self::bind).
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the address cannot be bound.
    #[cfg(feature = "tls")]
    pub async fn bind_tls(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Serving, ServeError> {
        let listener = self.builder.clone().listen_tls(addr, tls).await.map_err(ServeError::Bind)?;
        self.serve_listener(listener)
    }

    /// Like [`bind`](Self::bind), for WebSocket clients (rule
    /// `transport.websocket`; see [`SessionBuilder::listen_ws`]).
    ///
    /// # Cancel safety
    /// As [`bind`](Self::bind).
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the address cannot be bound.
    #[cfg(feature = "websocket")]
    pub async fn bind_ws(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Serving, ServeError> {
        let listener = self.builder.clone().listen_ws(addr).await.map_err(ServeError::Bind)?;
        self.serve_listener(listener)
    }

    /// Serves the sessions of a listener made with this server's builder
    /// (or any other), as [`bind`](Self::bind) does.
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the listener has no local address.
    pub fn serve_listener(self, listener: Listener) -> Result<Serving, ServeError> {
        let local_addr =
            listener.local_addr().map_err(|e| ServeError::Bind(SessionError::Bind(std::sync::Arc::new(e))))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Tracked::default());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), self.max_sessions, stop_rx));
        Ok(Serving { local_addr, stop: stop_tx, shared, grace: self.grace, task })
    }

    /// Serves on `addr` until the process ends.
    ///
    /// # Cancel safety
    /// Once bound it never completes, so dropping the future is how it stops:
    /// accepting stops, without a drain; sessions already accepted are left
    /// to run until their peers end them.
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the address cannot be bound.
    pub async fn serve(self, addr: impl tokio::net::ToSocketAddrs) -> Result<(), ServeError> {
        self.serve_with_shutdown(addr, std::future::pending()).await
    }

    /// Serves on `addr` until `signal` completes, then shuts down
    /// gracefully (see [`Serving::shutdown`]).
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting, without a drain: sessions already
    /// accepted are left to run until their peers end them (to end them too,
    /// complete `signal` instead).
    ///
    /// # Errors
    /// [`ServeError::Bind`] if the address cannot be bound.
    pub async fn serve_with_shutdown(
        self,
        addr: impl tokio::net::ToSocketAddrs,
        signal: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let serving = self.bind(addr).await?;
        signal.await;
        serving.shutdown().await;
        Ok(())
    }
}

/// The sessions a server keeps, by a serial number.
#[derive(Default)]
struct Tracked {
    sessions: Mutex<HashMap<u64, SessionHandle>>,
    next: AtomicU64,
    served: AtomicU64,
    refused: AtomicU64,
}

/// A running [`Server`].
pub struct Serving {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    shared: Arc<Tracked>,
    grace: Duration,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").field("local_addr", &self.local_addr).field("sessions", &self.sessions()).finish()
    }
}

/// What a server did, reported by [`Serving::shutdown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeReport {
    /// Sessions accepted in all.
    pub sessions_served: u64,
    /// Sessions ended right after their handshake because
    /// [`Server::max_sessions`] were running.
    pub sessions_refused: u64,
    /// Sessions that were still open when the shutdown began.
    pub drained: usize,
}

impl Serving {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.lock().len()
    }

    /// Stops accepting, lets every session's handlers in flight finish
    /// within the grace period (calls arriving meanwhile are answered
    /// `Rejected`), then ends every session and returns once all have
    /// ended.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the sessions draining on their own; they
    /// end within the grace period.
    ///
    /// # Errors
    /// Never fails: the report says what the server did.
    pub async fn shutdown(self) -> ServeReport {
        let _ = self.stop.send(true);
        // The accept loop ends at once; its end drops the listener.
        let _ = (&mut { self.task }).await;
        let handles: Vec<SessionHandle> = self.shared.sessions.lock().values().cloned().collect();
        let drained = handles.len();
        tracing::info!(sessions = drained, grace = ?self.grace, "server shutting down");
        let grace = self.grace;
        let mut ends = tokio::task::JoinSet::new();
        for handle in handles {
            ends.spawn(async move { handle.drain(grace).await });
        }
        while ends.join_next().await.is_some() {}
        ServeReport {
            sessions_served: self.shared.served.load(Ordering::Relaxed),
            sessions_refused: self.shared.refused.load(Ordering::Relaxed),
            drained,
        }
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Tracked>, max_sessions: usize, mut stop: watch::Receiver<bool>) {
    loop {
        let session = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            s = listener.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "listener stopped");
                    return;
                }
            },
        };
        let handle = session.handle.clone();
        let id = shared.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut sessions = shared.sessions.lock();
            if sessions.len() >= max_sessions {
                drop(sessions);
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(max_sessions, "session limit reached; ending the new session");
                let _ = handle.shutdown();
                continue;
            }
            sessions.insert(id, handle.clone());
        }
        shared.served.fetch_add(1, Ordering::Relaxed);
        // The session outlives `Session` (rule rpc.caller.liveness); this
        // task only forgets it once it has ended.
        drop(session);
        let shared = shared.clone();
        tokio::spawn(async move {
            let reason = handle.closed().await;
            tracing::debug!(%reason, "session ended");
            shared.sessions.lock().remove(&id);
        });
    }
}
