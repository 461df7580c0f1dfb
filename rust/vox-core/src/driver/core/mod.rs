//! The per-connection driver core: outgoing calls, in-flight handlers, and
//! inbound dispatch. Channel state is NOT here: it lives in the connection's
//! [`Registry`], and this module only forwards channel events to it.
//!
//! Every message this connection sends goes through [`ConnectionCore`]'s
//! send methods, which reserve a place in the session's outbound queue and
//! then, under the core's lock, check that the connection is still live
//! before queueing. Marking the connection lost takes the same lock, so no
//! message of a connection can be queued after the session queued its
//! `CloseConnection` or its teardown.
//!
//! The core is one type with one lock, split here by concern: each child
//! module adds an `impl ConnectionCore` block for one job, so the state the
//! jobs share (the fields below) stays in one place while no file has to
//! hold them all. `construct` makes cores; `gate` is the send path above;
//! `outgoing` has this side's calls; `flush` the task sending what became
//! due; `loss` the end; `dispatch` routes inbound payloads; `incoming`,
//! `admission`, `running` and `contained` serve the peer's requests;
//! `violation` names the peer's broken rules; `port` is all that channel
//! handles may ask of the core.

mod admission;
mod construct;
mod contained;
mod dispatch;
mod flush;
mod gate;
mod incoming;
mod loss;
mod outgoing;
mod port;
mod running;
mod violation;

pub(crate) use port::ChannelPort;
pub use violation::Violation;

use self::flush::FlushPhase;
use self::incoming::IncomingCall;
use self::outgoing::CallEntry;
use super::channel::{ChannelLimits, LossCause, Registry};
use super::error::CallError;
use super::handler::Handler;
use super::liveness::Liveness;
use crate::plumbing::ops::SessionOps;
use crate::plumbing::outbound::Outbound;
use crate::sync::Mutex;
use crate::wire::IdMap;
use crate::wire::{ConnectionId, ConnectionSettings, IdAllocator, Metadata, MethodId, Parity, RequestId, ResponseBody};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use tokio::sync::Semaphore;

/// What an inbound payload that broke no rule was, as far as the session's
/// abuse budgets care (rule `session.abuse-budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Ordinary traffic.
    Handled,
    /// Tolerated under a crossing rule and discarded (late).
    Late,
    /// A `CancelRequest` that stopped a request still in flight.
    Cancelled,
}

pub(crate) type CallReply = Result<(ResponseBody, Metadata), CallError>;

/// A request in one of the core's in-flight tables: its state, and for
/// which method and since when (what the debug snapshot shows; the state
/// machines see only `state`).
pub(super) struct Tracked<S> {
    pub(super) state: S,
    pub(super) method: MethodId,
    pub(super) started: std::time::Instant,
}

impl<S> Tracked<S> {
    pub(super) fn new(state: S, method: MethodId) -> Tracked<S> {
        Tracked { state, method, started: std::time::Instant::now() }
    }

    fn show(&self, id: RequestId, state: &str, now: std::time::Instant) -> InFlight {
        let age = now.saturating_duration_since(self.started);
        InFlight { request_id: id.0, method: self.method, age_ms: age.as_millis() as u64, state: state.into() }
    }
}

/// One request in flight, as a debug snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    /// The request id.
    pub request_id: u64,
    /// The method called.
    pub method: MethodId,
    /// How long it has been in flight, in milliseconds.
    pub age_ms: u64,
    /// Outgoing: `waiting`, or `cancelled` (dropped by the caller, the
    /// peer's answer still due); incoming: `running`, or `stopping`
    /// (cancelled by the peer, the answer still due).
    pub state: String,
}

struct CoreState {
    lost: Liveness,
    requests: IdAllocator,
    calls: IdMap<RequestId, Tracked<CallEntry>>,
    // Inbound requests in flight.
    handlers: IdMap<RequestId, Tracked<IncomingCall>>,
    // Cancels of dropped calls not yet queued. Whoever holds an outbound
    // place pops them under this lock (the flush task, or `send_request`
    // before its own request), so a cancel always precedes on the wire every
    // request made after the call was dropped.
    cancels_due: VecDeque<RequestId>,
    /// `Some` once the session drains (graceful shutdown): new requests are
    /// refused, and the notify fires when the last handler in flight ends.
    draining: Option<Arc<tokio::sync::Notify>>,
    flush_waker: Option<Waker>,
    flush: FlushPhase,
    stats: CoreStats,
}

/// A snapshot of one connection's driver counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreStats {
    /// Outgoing calls awaiting a response (including cancelled ones whose
    /// `Cancelled` response has not arrived yet).
    pub calls_in_flight: usize,
    /// Inbound requests being handled.
    pub handlers_in_flight: usize,
    /// Responses that arrived after the caller cancelled (ignored).
    pub late_responses: u64,
    /// `CancelRequest`s for requests no longer in flight (ignored).
    pub late_cancels: u64,
}

/// Driver state of one connection (root or virtual).
pub struct ConnectionCore {
    pub(crate) id: ConnectionId,
    pub(crate) local_parity: Parity,
    pub(crate) local_settings: ConnectionSettings,
    pub(crate) peer_settings: ConnectionSettings,
    /// Reached from outside the core only through [`ChannelPort`] (handles)
    /// and [`ConnectionCore::channel_stats`].
    registry: Registry,
    pub(crate) outbound: Outbound,
    slots: Arc<Semaphore>,
    state: Mutex<CoreState>,
    handler: Option<Arc<dyn Handler>>,
    /// The session's operation table (section 10); `None` serves every
    /// request as a plain call.
    ops: Option<Arc<SessionOps>>,
    limits: ChannelLimits,
    /// What the handler side knows of the peer's schemas (rule
    /// `schema.evolution`); kept by a successor, like the connection.
    schemas: Arc<crate::schema::HandlerSchemas>,
    /// The peer's network address, for handlers' `CallContext`.
    peer: std::sync::OnceLock<std::net::SocketAddr>,
    /// The peer's verified identity (TLS), for handlers' `CallContext`.
    identity: std::sync::OnceLock<crate::link::PeerIdentity>,
}

impl std::fmt::Debug for ConnectionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCore").field("id", &self.id).field("local_parity", &self.local_parity).finish()
    }
}

impl ConnectionCore {
    /// The connection id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The counterpart's settings for this connection.
    pub fn peer_settings(&self) -> &ConnectionSettings {
        &self.peer_settings
    }

    /// The outbound path this core sends on (its attachment's).
    pub(crate) fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Every channel of this connection still in the registry (for the
    /// debug snapshot).
    pub fn channels(&self) -> Vec<crate::driver::channel::ChannelView> {
        self.registry.channels()
    }

    /// The channel registry's counters for this connection.
    pub fn channel_stats(&self) -> crate::driver::channel::ChannelStats {
        self.registry.stats()
    }

    /// The channel registry, for the models and tests that drive it
    /// beside the core (liveness tests, loom model 6).
    #[cfg(test)]
    pub(crate) fn registry_for_models(&self) -> &Registry {
        &self.registry
    }

    /// The requests in flight now: this side's calls and the peer's
    /// requests being handled, each oldest first (for the debug snapshot).
    pub fn in_flight(&self) -> (Vec<InFlight>, Vec<InFlight>) {
        let now = std::time::Instant::now();
        let st = self.state.lock();
        let mut calls: Vec<_> = st
            .calls
            .iter()
            .map(|(id, t)| {
                let state = match t.state {
                    CallEntry::Waiting { .. } => "waiting",
                    CallEntry::Cancelled { .. } => "cancelled",
                };
                t.show(*id, state, now)
            })
            .collect();
        let mut handlers: Vec<_> = st
            .handlers
            .iter()
            .map(|(id, t)| {
                let state = match t.state {
                    IncomingCall::Running { .. } => "running",
                    IncomingCall::Stopping => "stopping",
                };
                t.show(*id, state, now)
            })
            .collect();
        drop(st);
        calls.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
        handlers.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
        (calls, handlers)
    }

    /// Driver counters.
    pub fn stats(&self) -> CoreStats {
        let st = self.state.lock();
        CoreStats { calls_in_flight: st.calls.len(), handlers_in_flight: st.handlers.len(), ..st.stats.clone() }
    }

    /// Why the connection ended, if it has.
    pub fn lost(&self) -> Option<LossCause> {
        self.state.lock().lost.cause().cloned()
    }

    /// Starts a graceful shutdown of this connection's serving side: new
    /// requests are answered `Rejected` without running, and `idle` is
    /// notified once no handler is in flight. Returns whether none is now.
    pub(crate) fn start_draining(&self, idle: Arc<tokio::sync::Notify>) -> bool {
        let mut st = self.state.lock();
        st.draining = Some(idle);
        st.handlers.is_empty()
    }

    /// Whether no handler of this connection is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.state.lock().handlers.is_empty()
    }

    /// The peer's network address, once the session recorded it.
    pub(crate) fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer.get().copied()
    }

    /// Records the peer's network address (the session does, for every core
    /// of an attachment whose link has one).
    pub(crate) fn set_peer_addr(&self, addr: Option<std::net::SocketAddr>) {
        if let Some(addr) = addr {
            let _ = self.peer.set(addr);
        }
    }

    /// The peer's verified identity, once the session recorded it.
    pub(crate) fn peer_identity(&self) -> Option<crate::link::PeerIdentity> {
        self.identity.get().cloned()
    }

    /// Records the peer's verified identity (the session does, for every
    /// core of an attachment whose link has one).
    pub(crate) fn set_peer_identity(&self, identity: Option<crate::link::PeerIdentity>) {
        if let Some(identity) = identity {
            let _ = self.identity.set(identity);
        }
    }

    /// Whether this side serves a handler on the connection (rule
    /// `rpc.caller.liveness`: then the peer may still call it, so dropping
    /// this side's callers does not end it).
    pub(crate) fn serves_handler(&self) -> bool {
        self.handler.is_some()
    }
}
