//! Client-side load balancing (feature `tower`): a [`Pool`] of sessions,
//! one per endpoint, with power-of-two-choices over the endpoints that are
//! up, health from each session's end, and retries of idempotent calls on
//! another endpoint.
//!
//! Our own thin layer rather than `tower::balance::p2c`, because what
//! makes a retry safe and useful is vox's, not tower's: only a call to an
//! `#[vox(idem)]` method may run again on another server (an operation id
//! only deduplicates on the server that saw it), the retry must avoid the
//! session that just failed (p2c may pick it again until its readiness
//! changes), and health is pushed by the session's end (keepalive timeout,
//! link loss) rather than polled. `tower::balance` still applies to
//! callers as plain services (see [`super::tower`]).
//!
//! Each endpoint has a supervisor task: it connects, marks the endpoint up,
//! waits for the session to end (a lost link, a keepalive timeout: the
//! builder's keepalive is the health check), marks it down and redials
//! with backoff. Dropping the last clone of the pool stops the supervisors
//! and releases the sessions.

mod tower_service;
pub use tower_service::PoolService;

use super::Client;
use crate::driver::CallError;
use crate::session::{Caller, RawResponse, SessionBuilder};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Default [`PoolConfig::max_attempts`].
pub const DEFAULT_POOL_ATTEMPTS: u32 = 3;
/// Default [`PoolConfig::wait_for_endpoint`].
pub const DEFAULT_WAIT_FOR_ENDPOINT: Duration = Duration::from_secs(5);
/// Default [`PoolConfig::min_backoff`].
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Default [`PoolConfig::max_backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a [`Pool`] retries and redials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Attempts in all for an idempotent call, the first included, each on
    /// an endpoint not yet tried when one is up (default 3).
    pub max_attempts: u32,
    /// How long a call waits for some endpoint to be up before failing with
    /// `ConnectionClosed` (default 5 s).
    pub wait_for_endpoint: Duration,
    /// First redial delay after a failed connect or a lost session; doubles
    /// up to [`max_backoff`](Self::max_backoff) (default 50 ms).
    pub min_backoff: Duration,
    /// Longest redial delay (default 5 s).
    pub max_backoff: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_attempts: DEFAULT_POOL_ATTEMPTS,
            wait_for_endpoint: DEFAULT_WAIT_FOR_ENDPOINT,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// An error a pool can tell retryable from final: [`CallError`] and
/// [`ServiceError`](super::ServiceError) (a user error is never retried).
pub trait PoolError: From<CallError> {
    /// Whether the attempt failed in the environment before taking effect.
    fn is_retryable(&self) -> bool;
}

impl PoolError for CallError {
    fn is_retryable(&self) -> bool {
        CallError::is_retryable(self)
    }
}

impl<E> PoolError for super::ServiceError<E> {
    fn is_retryable(&self) -> bool {
        super::ServiceError::is_retryable(self)
    }
}

/// Where an endpoint is.
#[derive(Clone, Debug)]
enum EndpointState {
    /// The supervisor is dialing.
    Connecting,
    /// A session is up; `serial` tells it from earlier ones.
    Up { caller: Caller, serial: u64 },
    /// The last connect failed or the session ended, with why.
    Down { why: String },
}

/// What happens to an endpoint.
enum EndpointEvent {
    Dialing,
    Connected { caller: Caller, serial: u64 },
    ConnectFailed(String),
    Lost { serial: u64, why: String },
}

impl EndpointState {
    /// The one transition function. A loss of an older session than the
    /// one up is stale and changes nothing.
    fn step(&mut self, event: EndpointEvent) {
        *self = match (std::mem::replace(self, EndpointState::Connecting), event) {
            (EndpointState::Up { caller, serial }, EndpointEvent::Lost { serial: lost, .. }) if lost != serial => {
                EndpointState::Up { caller, serial }
            }
            (_, EndpointEvent::Lost { why, .. }) | (_, EndpointEvent::ConnectFailed(why)) => {
                EndpointState::Down { why }
            }
            (_, EndpointEvent::Connected { caller, serial }) => EndpointState::Up { caller, serial },
            (_, EndpointEvent::Dialing) => EndpointState::Connecting,
        };
    }
}

struct Endpoint {
    addr: String,
    state: Mutex<EndpointState>,
    last_loss: Mutex<Option<String>>,
    in_flight: AtomicUsize,
}

/// What a pool has done, from [`Pool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Logical calls made.
    pub calls: u64,
    /// Attempts made again on another endpoint (idempotent calls only).
    pub retries: u64,
    /// Sessions established, redials included.
    pub sessions: u64,
    /// Sessions that ended under the pool (lost links, keepalive timeouts).
    pub sessions_lost: u64,
}

/// An endpoint as [`Pool::health`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealth {
    /// The address dialed.
    pub addr: String,
    /// Whether a session to it is up.
    pub up: bool,
    /// Why it is down, if it is.
    pub down_because: Option<String>,
    /// Why its last session ended, if one did (kept while it redials).
    pub last_loss: Option<String>,
    /// Calls in flight on it through the pool.
    pub in_flight: usize,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    config: PoolConfig,
    /// Bumped on every endpoint change; calls waiting for an endpoint watch it.
    changed: watch::Sender<u64>,
    rng: AtomicU64,
    serials: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    sessions: AtomicU64,
    lost: AtomicU64,
    supervisors: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.supervisors.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// A pool of sessions over several endpoints; cheap to clone.
///
/// ```no_run
/// # #[vox_core::service] pub trait Calculator { #[vox(idem)] async fn add(&self, a: i64, b: i64) -> i64; }
/// # async fn demo() -> Result<(), vox_core::driver::CallError> {
/// use std::time::Duration;
/// use vox_core::service::balance::{Pool, PoolConfig};
/// use vox_core::session::SessionBuilder;
/// // Keepalive is the health check: a silent server's session ends.
/// let builder = SessionBuilder::new().keepalive(Duration::from_secs(1), Duration::from_secs(3));
/// let pool = Pool::connect(builder, ["127.0.0.1:7000", "127.0.0.1:7001"], PoolConfig::default());
/// let sum = pool.call_idem(|c: CalculatorClient| async move { c.add(2, 3).await }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("endpoints", &self.health()).finish()
    }
}

/// Counts a call in flight on an endpoint while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// A pool over `addrs` (TCP, as [`SessionBuilder::connect`] dials),
    /// each session made with `builder`; returns at once, with every
    /// endpoint connecting in the background. Must be called within a
    /// tokio runtime.
    pub fn connect<A: ToString>(
        builder: SessionBuilder,
        addrs: impl IntoIterator<Item = A>,
        config: PoolConfig,
    ) -> Pool {
        let endpoints: Vec<Endpoint> = addrs
            .into_iter()
            .map(|a| Endpoint {
                addr: a.to_string(),
                state: Mutex::new(EndpointState::Connecting),
                last_loss: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        let inner = Arc::new(Inner {
            endpoints,
            config,
            changed: watch::channel(0).0,
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            serials: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            supervisors: Mutex::new(Vec::new()),
        });
        let tasks = (0..inner.endpoints.len())
            .map(|i| tokio::spawn(supervise(Arc::downgrade(&inner), i, builder.clone())).abort_handle())
            .collect();
        *inner.supervisors.lock() = tasks;
        Pool { inner }
    }

    /// Every endpoint's health, in the order given.
    pub fn health(&self) -> Vec<EndpointHealth> {
        self.inner
            .endpoints
            .iter()
            .map(|e| {
                let state = e.state.lock();
                EndpointHealth {
                    addr: e.addr.clone(),
                    up: matches!(*state, EndpointState::Up { .. }),
                    down_because: match &*state {
                        EndpointState::Down { why } => Some(why.clone()),
                        _ => None,
                    },
                    last_loss: e.last_loss.lock().clone(),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// What the pool has done.
    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        PoolStats {
            calls: i.calls.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            sessions: i.sessions.load(Ordering::Relaxed),
            sessions_lost: i.lost.load(Ordering::Relaxed),
        }
    }

    /// Resolves once `pred` holds for the endpoints' health; a test's or a
    /// start-up's synchronisation point ("at least two up").
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches the pool.
    ///
    /// # Errors
    /// Never fails; bound it with a timeout.
    pub async fn until(&self, mut pred: impl FnMut(&[EndpointHealth]) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if pred(&self.health()) {
                return;
            }
            // The sender lives as long as `self`.
            let _ = rx.changed().await;
        }
    }

    /// Calls an `#[vox(idem)]` method: `call` makes the typed call with a
    /// client of the endpoint picked; an attempt that fails in the
    /// environment (its session was lost) is made again on another endpoint,
    /// up to [`PoolConfig::max_attempts`]. Use it only for methods that
    /// are safe to run twice.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the attempt in flight (`CancelRequest`);
    /// no further attempt is made.
    ///
    /// # Errors
    /// The last attempt's error; `ConnectionClosed` if no endpoint was up
    /// within [`PoolConfig::wait_for_endpoint`].
    pub async fn call_idem<C, F, Fut, T, E>(&self, call: F) -> Result<T, E>
    where
        C: Client,
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: PoolError,
    {
        self.run(self.inner.config.max_attempts.max(1), |caller| call(C::from_caller(caller))).await
    }

    /// Calls any method once, on the endpoint picked: an attempt that fails
    /// is not made again elsewhere (another server's operation table cannot
    /// tell a retry from a new call).
    ///
    /// # Cancel safety
    /// Dropping the future cancels the call (`CancelRequest`).
    ///
    /// # Errors
    /// The call's error; `ConnectionClosed` if no endpoint was up within
    /// [`PoolConfig::wait_for_endpoint`].
    pub async fn call_once<C, F, Fut, T, E>(&self, call: F) -> Result<T, E>
    where
        C: Client,
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: PoolError,
    {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let (index, _, caller) = self.pick(&[]).await.map_err(E::from)?;
        let endpoint = &self.inner.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&endpoint.in_flight);
        call(C::from_caller(caller)).await
    }

    /// A raw call of `method` (as [`Caller::call_raw`]): retried on another
    /// endpoint as [`call_idem`](Self::call_idem) does if `method.idem`,
    /// made once otherwise.
    ///
    /// # Cancel safety
    /// As [`call_idem`](Self::call_idem).
    ///
    /// # Errors
    /// As [`call_idem`](Self::call_idem).
    pub async fn call_raw(
        &self,
        method: &super::MethodInfo,
        args: bytes::Bytes,
        metadata: crate::wire::Metadata,
    ) -> Result<RawResponse, CallError> {
        let attempts = if method.idem { self.inner.config.max_attempts.max(1) } else { 1 };
        self.run(attempts, |caller| {
            let (args, metadata) = (args.clone(), metadata.clone());
            async move { caller.call_raw(method.id(), args, Vec::new(), metadata).await }
        })
        .await
    }

    async fn run<F, Fut, T, E>(&self, attempts: u32, attempt: F) -> Result<T, E>
    where
        F: Fn(Caller) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: PoolError,
    {
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let mut tried: Vec<(usize, u64)> = Vec::new();
        let mut n = 1;
        loop {
            let (index, serial, caller) = self.pick(&tried).await.map_err(E::from)?;
            let endpoint = &self.inner.endpoints[index];
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight(&endpoint.in_flight);
            let result = attempt(caller).await;
            drop(guard);
            match result {
                Err(e) if e.is_retryable() && n < attempts => {
                    tracing::debug!(endpoint = %endpoint.addr, attempt = n, "attempt lost with its session; retrying on another endpoint");
                    tried.push((index, serial));
                    self.inner.retries.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                r => return r,
            }
        }
    }

    /// Power of two choices by calls in flight among the endpoints up,
    /// avoiding the sessions this call already tried while any other is
    /// up; waits (bounded) for one to come up.
    async fn pick(&self, tried: &[(usize, u64)]) -> Result<(usize, u64, Caller), CallError> {
        let wait = self.inner.config.wait_for_endpoint;
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(found) = self.choose(tried) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let health = self.health();
                tracing::warn!(?health, ?wait, "pool: no endpoint up");
                return Err(CallError::ConnectionClosed);
            }
        }
    }

    fn choose(&self, tried: &[(usize, u64)]) -> Option<(usize, u64, Caller)> {
        let up: Vec<(usize, u64, Caller)> = self
            .inner
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &*e.state.lock() {
                EndpointState::Up { caller, serial } => Some((i, *serial, caller.clone())),
                _ => None,
            })
            .collect();
        let fresh: Vec<&(usize, u64, Caller)> = up.iter().filter(|(i, s, _)| !tried.contains(&(*i, *s))).collect();
        let candidates: Vec<&(usize, u64, Caller)> = if fresh.is_empty() { up.iter().collect() } else { fresh };
        let load = |c: &&(usize, u64, Caller)| self.inner.endpoints[c.0].in_flight.load(Ordering::Relaxed);
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let r = self.next_random();
                let a = (r % n as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                if load(&candidates[b]) < load(&candidates[a]) { candidates[b] } else { candidates[a] }
            }
        };
        Some(chosen.clone())
    }

    /// xorshift64*: enough to spread picks; no cryptographic need.
    fn next_random(&self) -> u64 {
        let mut x = self.inner.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.inner.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn step(inner: &Inner, index: usize, event: EndpointEvent) {
    inner.endpoints[index].state.lock().step(event);
    inner.changed.send_modify(|n| *n += 1);
}

/// One endpoint's supervisor: dial, hold the session while it lives, redial
/// with backoff. Holds the pool only between awaits, so dropping the pool
/// ends it (and `Inner::drop` aborts it).
async fn supervise(pool: Weak<Inner>, index: usize, builder: SessionBuilder) {
    let mut backoff = None;
    loop {
        let (addr, config) = match pool.upgrade() {
            Some(inner) => {
                step(&inner, index, EndpointEvent::Dialing);
                (inner.endpoints[index].addr.clone(), inner.config.clone())
            }
            None => return,
        };
        let delay = match builder.clone().connect(&addr).await {
            Ok(session) => {
                let handle = session.handle.clone();
                {
                    let Some(inner) = pool.upgrade() else { return };
                    let serial = inner.serials.fetch_add(1, Ordering::Relaxed);
                    inner.sessions.fetch_add(1, Ordering::Relaxed);
                    step(&inner, index, EndpointEvent::Connected { caller: session.root.caller.clone(), serial });
                    drop(session);
                    backoff = None;
                    tracing::debug!(endpoint = %addr, "pool: endpoint up");
                    drop(inner);
                    let reason = handle.closed().await;
                    let Some(inner) = pool.upgrade() else { return };
                    inner.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(endpoint = %addr, %reason, "pool: endpoint lost; redialing");
                    *inner.endpoints[index].last_loss.lock() = Some(reason.to_string());
                    step(&inner, index, EndpointEvent::Lost { serial, why: reason.to_string() });
                }
                config.min_backoff
            }
            Err(e) => {
                let Some(inner) = pool.upgrade() else { return };
                tracing::debug!(endpoint = %addr, error = %e, "pool: connect failed");
                step(&inner, index, EndpointEvent::ConnectFailed(e.to_string()));
                let next = backoff.map_or(config.min_backoff, |b: Duration| (b * 2).min(config.max_backoff));
                backoff = Some(next);
                next
            }
        };
        tokio::time::sleep(delay).await;
    }
}
