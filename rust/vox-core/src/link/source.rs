//! Link sources: how a client gets a fresh link, again and again.
//!
//! A stable conduit redials through a [`LinkSource`] after a break, and
//! [`connect_waiting`] uses one to wait for a server that is not up yet
//! (rule `session.initial-connect-waiting`). Both retry with [`Backoff`].

use super::{Link, LinkConfig, LinkError};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future returned by [`LinkSource::dial`].
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<Link, LinkError>> + Send + 'a>>;

/// Something that can produce a new link to the same peer.
///
/// Implemented for TCP ([`TcpSource`]) and for any
/// `Fn() -> impl Future<Output = Result<Link, LinkError>>` closure, which is
/// how tests hand out in-memory links.
pub trait LinkSource: Send + Sync + 'static {
    /// Opens one new link. Errors are classified by [`is_transient`].
    fn dial(&self) -> DialFuture<'_>;
}

impl<F, Fut> LinkSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Link, LinkError>> + Send + 'static,
{
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(self())
    }
}

/// Dials a TCP address.
#[derive(Clone, Debug)]
pub struct TcpSource {
    /// Where to connect (resolved on every dial).
    pub addr: String,
    /// Settings of the links it makes.
    pub config: LinkConfig,
}

impl LinkSource for TcpSource {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            // Name the address: "connection refused" alone does not say
            // where nothing was listening.
            let mut link = super::connect_tcp(self.addr.clone(), self.config.clone()).await.map_err(|e| match e {
                LinkError::Io { context, source } => LinkError::Io {
                    context,
                    source: std::io::Error::new(source.kind(), format!("{}: {source}", self.addr)),
                },
                other => other,
            })?;
            if let Ok(addr) = self.addr.parse() {
                link.rx.set_peer_addr(addr);
            }
            Ok(link)
        })
    }
}

/// Whether retrying after `e` can help: I/O failures (refused, reset,
/// timed out, a frame that stalled) can; a message-size or protocol problem
/// will repeat.
pub fn is_transient(e: &LinkError) -> bool {
    matches!(e, LinkError::Io { .. } | LinkError::Closed | LinkError::Dead | LinkError::Stalled { .. })
}

/// Exponential backoff between attempts, capped.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Wait before the second attempt.
    pub initial: Duration,
    /// Largest wait between attempts.
    pub max: Duration,
    /// Multiplier per attempt (at least 1).
    pub factor: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(20), max: Duration::from_secs(2), factor: 2 }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based; attempt 0 does not wait).
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let mut d = self.initial;
        for _ in 1..attempt {
            d = d.saturating_mul(self.factor.max(1));
            if d >= self.max {
                return self.max;
            }
        }
        d.min(self.max)
    }
}

/// Why [`connect_waiting`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A failure that retrying cannot fix.
    #[error("connect: permanent failure: {0}")]
    Permanent(LinkError),
    /// Every attempt failed transiently until the deadline; this is the last error.
    #[error("connect: gave up after {attempts} attempts in {waited:?}; last error: {last}")]
    TimedOut {
        /// Attempts made.
        attempts: u32,
        /// How long it waited.
        waited: Duration,
        /// The last transient error.
        last: LinkError,
    },
}

/// Dials `source` until it succeeds, retrying transient errors with
/// `backoff` for at most `timeout` (rule `session.initial-connect-waiting`).
/// Permanent errors are returned at once; on timeout the last transient
/// error is reported.
///
/// # Cancel safety
/// Dropping the future abandons the attempt in progress (its half-open
/// connection is dropped) and makes no more; nothing else is left behind.
///
/// # Errors
/// [`ConnectError::Permanent`] at once for an error retrying cannot fix,
/// [`ConnectError::TimedOut`] with the last transient error once `timeout` has
/// passed.
pub async fn connect_waiting(
    source: &dyn LinkSource,
    backoff: &Backoff,
    timeout: Duration,
) -> Result<Link, ConnectError> {
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let mut attempt = 0u32;
    let mut previous: Option<LinkError> = None;
    loop {
        let result = match tokio::time::timeout_at(deadline, source.dial()).await {
            Ok(r) => r,
            Err(_) => {
                // Cut short by the deadline: the error worth reporting is
                // the last one an attempt actually got, if there was one.
                let cut = LinkError::Io {
                    context: "connecting (deadline reached)",
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                };
                let last = previous.unwrap_or(cut);
                return Err(ConnectError::TimedOut { attempts: attempt, waited: start.elapsed(), last });
            }
        };
        attempt += 1;
        let e = match result {
            Ok(link) => return Ok(link),
            Err(e) if !is_transient(&e) => return Err(ConnectError::Permanent(e)),
            Err(e) => e,
        };
        // Keep trying until the deadline itself: the last wait is cut short
        // so that one more attempt falls on it, instead of giving up as soon
        // as a full backoff step would overshoot.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(ConnectError::TimedOut { attempts: attempt, waited: start.elapsed(), last: e });
        }
        tracing::debug!(attempt, error = %e, "transient connect failure; retrying");
        previous = Some(e);
        tokio::time::sleep(backoff.delay(attempt).min(left)).await;
    }
}
