//! What a handler knows about the request it serves (its [`CallContext`]),
//! and request deadlines (rule `rpc.deadline`).
//!
//! The context is a task-local set around every handler's future, so typed
//! handlers reach it with [`CallContext::current`] without a parameter in
//! every method signature; calls made from inside a handler inherit its
//! deadline through it.

use crate::wire::{ConnectionId, Metadata, MetadataValue, MethodId, NO_PROPAGATE};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The request metadata entry that carries a deadline: the time remaining,
/// in microseconds (`U64`), when the request was sent, so the two clocks
/// never need to agree (rule `rpc.deadline`). Flagged `NO_PROPAGATE`: a
/// downstream call carries its own remaining time, not this one.
pub const DEADLINE_KEY: &str = crate::wire::runtime_key::DEADLINE;

/// The request a handler is serving.
///
/// ```
/// use vox_core::driver::CallContext;
/// async fn in_a_handler() {
///     if let Some(ctx) = CallContext::current() {
///         let trace = ctx.metadata.get_str("trace-id");
///         let left = ctx.remaining();
///         println!("{trace:?}, {left:?} left");
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The connection the request came on.
    pub connection_id: ConnectionId,
    /// The method called.
    pub method_id: MethodId,
    /// The request's metadata.
    pub metadata: Metadata,
    /// When the handler is stopped and the caller gets `DeadlineExceeded`,
    /// if the caller set a deadline.
    pub deadline: Option<Instant>,
    /// The peer's network address, where the session's link has one.
    pub peer_addr: Option<std::net::SocketAddr>,
    /// The peer's verified identity (its TLS certificate and names), where
    /// the session's link authenticated it (rule `transport.tls`).
    pub peer_identity: Option<crate::link::PeerIdentity>,
}

tokio::task_local! {
    static CURRENT: CallContext;
}

impl CallContext {
    /// The context of the request the current task is handling; `None`
    /// outside a handler.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Time left before the deadline (zero once it passed); `None` without
    /// a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `fut` with this context as the current one.
    pub(crate) fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }
}

/// The deadline of the request being handled by the current task, if any.
pub(crate) fn inherited_deadline() -> Option<Instant> {
    CURRENT.try_with(|c| c.deadline).ok().flatten()
}

/// The deadline a request's metadata asks for, counted from now (its
/// arrival). An entry of another type is ignored, as unknown keys are.
pub(crate) fn read_deadline(metadata: &Metadata) -> Option<Instant> {
    match metadata.get(DEADLINE_KEY).map(|e| &e.value) {
        Some(MetadataValue::U64(us)) => Some(Instant::now() + Duration::from_micros(*us)),
        _ => None,
    }
}

/// Puts the time left until `deadline` into `metadata`, replacing an entry
/// the caller may have copied from elsewhere.
pub(crate) fn write_deadline(metadata: &mut Metadata, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let us = u64::try_from(left.as_micros()).unwrap_or(u64::MAX);
    metadata.0.retain(|e| e.key != DEADLINE_KEY);
    metadata.push(DEADLINE_KEY, MetadataValue::U64(us), NO_PROPAGATE);
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rpc_deadline_travels_as_time_remaining() {
        let mut md = Metadata::new();
        write_deadline(&mut md, Instant::now() + Duration::from_millis(1500));
        assert!(matches!(md.get(DEADLINE_KEY).map(|e| &e.value), Some(MetadataValue::U64(1_500_000))));
        // Written twice: one entry, the latest.
        write_deadline(&mut md, Instant::now() + Duration::from_millis(10));
        assert_eq!(md.0.len(), 1);
        let read = read_deadline(&md).expect("a deadline");
        assert_eq!(read - Instant::now(), Duration::from_millis(10));
    }

    #[test]
    fn rpc_deadline_earliest_of_two() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(earliest(Some(now), Some(later)), Some(now));
        assert_eq!(earliest(None, Some(later)), Some(later));
        assert_eq!(earliest(Some(now), None), Some(now));
        assert_eq!(earliest(None, None), None);
    }
}
