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

use super::channel::{
    ChannelLimits, ItemOutcome, LossCause, Registry, RegistryConfig, RemoteOutcome, Violation as ChannelViolation,
};
use super::context::{self, CallContext};
use super::error::CallError;
use super::handler::{Call, ChannelBinder, Handler, ReplySink};
use super::liveness::Liveness;
use crate::plumbing::operations::{ArgsDigest, Ticket, read_op_id};
use crate::plumbing::ops::{Decision, SessionOps};
use crate::plumbing::outbound::{Outbound, OutboundPermit};
use crate::sync::Mutex;
use crate::wire::{
    Blob, ChannelDecl, ConnectionId, ConnectionSettings, IdAllocator, Message, Metadata, MethodId, Parity, Payload,
    RequestId, ResponseBody,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

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

/// A protocol violation by the peer on one connection. The session turns
/// it into a `ProtocolError` and tears down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A channel rule was broken.
    #[error("connection {conn}: {source}")]
    Channel {
        /// The connection.
        conn: ConnectionId,
        /// The channel violation.
        source: ChannelViolation,
    },
    /// A request or response rule was broken.
    #[error("connection {conn}: request {id}: {what} (rule {rule})")]
    Request {
        /// The connection.
        conn: ConnectionId,
        /// The request id.
        id: RequestId,
        /// What happened.
        what: String,
        /// The rule id in PROTOCOL.md.
        rule: &'static str,
    },
}

pub(crate) type CallReply = Result<(ResponseBody, Metadata), CallError>;

enum CallEntry {
    Waiting { reply: oneshot::Sender<CallReply>, _slot: OwnedSemaphorePermit },
    // The caller gave up; the slot stays taken until the peer's response
    // arrives, because until then the peer still counts the request as in
    // flight and a new request could exceed its limit.
    Cancelled { _slot: OwnedSemaphorePermit },
}

struct CoreState {
    lost: Liveness,
    requests: IdAllocator,
    calls: HashMap<RequestId, CallEntry>,
    // Inbound requests in flight; the sender stops the handler.
    handlers: HashMap<RequestId, Option<oneshot::Sender<()>>>,
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

/// Where the connection's flush task is in its life. The session's graceful
/// teardown asks it to finish (`Draining`) and waits for `Done`, so nothing
/// made due before the end (a channel close, a cancel) is dropped by the
/// connection loss that follows.
#[derive(Debug, Default)]
enum FlushPhase {
    /// Sends what becomes due, until the connection is lost.
    #[default]
    Running,
    /// Sends what is due, then stops; `waiter` is the teardown.
    Draining { waiter: Option<Waker> },
    /// The flush task has returned: nothing more will be sent by it.
    Done,
}

/// A snapshot of one connection's driver counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    pub(crate) registry: Registry,
    pub(crate) outbound: Outbound,
    slots: Arc<Semaphore>,
    state: Mutex<CoreState>,
    handler: Option<Arc<dyn Handler>>,
    /// The session's operation table (section 10); `None` serves every
    /// request as a plain call.
    ops: Option<Arc<SessionOps>>,
    limits: ChannelLimits,
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
    /// A driver core for connection `id`, allocating request and channel ids
    /// of `local_parity`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ConnectionId,
        local_parity: Parity,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
        outbound: Outbound,
        handler: Option<Arc<dyn Handler>>,
        limits: ChannelLimits,
        ops: Option<Arc<SessionOps>>,
    ) -> Arc<ConnectionCore> {
        let registry = Registry::new(Self::registry_config(local_parity, &local_settings, limits));
        Self::build(id, local_parity, local_settings, peer_settings, outbound, handler, limits, ops, registry, None)
    }

    fn registry_config(local_parity: Parity, local: &ConnectionSettings, limits: ChannelLimits) -> RegistryConfig {
        RegistryConfig {
            local_parity,
            max_initial_credit: local.max_initial_credit,
            max_channels: limits.max_channels,
            tombstones: 1024,
            max_receive_window: limits.max_receive_window,
        }
    }

    /// The same connection on a new attachment of a resumed session (rule
    /// `session.resume`): same id, parity, handler and operation table, the
    /// newly negotiated settings, a new outbound path, and nothing in flight.
    /// Its request and channel ids continue above this core's, so nothing of
    /// the old attachment's ids is reused (rule `retry.channel.volatile.rebinding`).
    /// Call it after [`ConnectionCore::on_lost`] on this core.
    pub(crate) fn successor(
        &self,
        outbound: Outbound,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
    ) -> Arc<ConnectionCore> {
        let registry = Registry::succeeding(
            Self::registry_config(self.local_parity, &local_settings, self.limits),
            &self.registry,
        );
        let requests = self.state.lock().requests.continuation();
        Self::build(
            self.id,
            self.local_parity,
            local_settings,
            peer_settings,
            outbound,
            self.handler.clone(),
            self.limits,
            self.ops.clone(),
            registry,
            Some(requests),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        id: ConnectionId,
        local_parity: Parity,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
        outbound: Outbound,
        handler: Option<Arc<dyn Handler>>,
        limits: ChannelLimits,
        ops: Option<Arc<SessionOps>>,
        registry: Registry,
        requests: Option<IdAllocator>,
    ) -> Arc<ConnectionCore> {
        let slots = Arc::new(Semaphore::new(peer_settings.max_concurrent_requests as usize));
        Arc::new(ConnectionCore {
            id,
            local_parity,
            local_settings,
            peer_settings,
            registry,
            outbound,
            slots,
            state: Mutex::new(CoreState {
                lost: Liveness::Live,
                requests: requests.unwrap_or_else(|| IdAllocator::new(local_parity)),
                calls: HashMap::new(),
                handlers: HashMap::new(),
                cancels_due: VecDeque::new(),
                draining: None,
                flush_waker: None,
                flush: FlushPhase::Running,
                stats: CoreStats::default(),
            }),
            handler,
            ops,
            limits,
            peer: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        })
    }

    /// The connection id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The counterpart's settings for this connection.
    pub fn peer_settings(&self) -> &ConnectionSettings {
        &self.peer_settings
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

    // ------------------------------------------------------------ sending

    /// Queues `payload` on this connection unless it has ended.
    pub(crate) async fn send(&self, payload: Payload) -> Result<(), LossCause> {
        let permit = self.reserve().await?;
        self.send_with(permit, payload)
    }

    pub(crate) async fn reserve(&self) -> Result<OutboundPermit<'_>, LossCause> {
        match self.outbound.reserve().await {
            Ok(p) => Ok(p),
            Err(_) => Err(self.lost().unwrap_or(LossCause::ConnectionClosed)),
        }
    }

    pub(crate) fn try_reserve(&self) -> Option<OutboundPermit<'_>> {
        self.outbound.try_reserve()
    }

    pub(crate) fn send_with(&self, permit: OutboundPermit<'_>, payload: Payload) -> Result<(), LossCause> {
        let st = self.state.lock();
        if let Err(c) = st.lost.admit() {
            return Err(c.clone());
        }
        permit.send(Message { connection_id: self.id, payload });
        Ok(())
    }

    /// Sends one channel item, spending one credit, atomically with respect
    /// to connection loss.
    pub(crate) fn send_item_with(
        &self,
        permit: OutboundPermit<'_>,
        id: crate::wire::ChannelId,
        item: Blob,
    ) -> Result<(), super::channel::SendError> {
        let st = self.state.lock();
        if let Err(c) = st.lost.admit() {
            return Err(super::channel::SendError::ConnectionLost(c.clone()));
        }
        self.registry.spend_credit(id)?;
        permit.send(Message { connection_id: self.id, payload: Payload::ChannelItem { id, item } });
        Ok(())
    }

    // ------------------------------------------------------------ calling

    /// Performs one call: waits for a slot under the peer's
    /// `max_concurrent_requests`, sends the request (with the channels it
    /// announces), and waits for the response. Dropping the future cancels.
    pub(crate) async fn call(
        self: &Arc<Self>,
        method_id: MethodId,
        args: Blob,
        channels: &[super::handle::ChannelArg],
        metadata: Metadata,
    ) -> CallReply {
        let (id, reply_rx) = match self.send_request(method_id, args, channels, metadata).await {
            Ok(v) => v,
            Err(e) => {
                // The request never left: the kept channel ends must not wait
                // for a binding that will never come.
                for arg in channels {
                    arg.fail(&e.to_string());
                }
                return Err(e);
            }
        };
        let mut guard = CancelOnDrop { core: self, id, armed: true };
        let result = reply_rx.await;
        guard.armed = false;
        match result {
            Ok(r) => r,
            Err(_) => Err(self.lost().unwrap_or(LossCause::ConnectionClosed).into()),
        }
    }

    async fn send_request(
        self: &Arc<Self>,
        method_id: MethodId,
        args: Blob,
        channels: &[super::handle::ChannelArg],
        metadata: Metadata,
    ) -> Result<(RequestId, oneshot::Receiver<CallReply>), CallError> {
        // rule: rpc.flow-control.max-concurrent-requests
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => s,
            Err(_) => return Err(self.lost().unwrap_or(LossCause::ConnectionClosed).into()),
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, decls) = loop {
            let permit = self.reserve().await?;
            let mut st = self.state.lock();
            if let Err(c) = st.lost.admit() {
                return Err(c.clone().into());
            }
            // rule: rpc.cancel — a call dropped before this one was made is
            // cancelled first; its cancel takes this place and we wait again.
            if let Some(cancelled) = st.cancels_due.pop_front() {
                permit.send(Message { connection_id: self.id, payload: Payload::CancelRequest { id: cancelled } });
                continue;
            }
            let Some(raw) = st.requests.allocate() else {
                return Err(CallError::SendFailed("request id space exhausted on this connection".into()));
            };
            let id = RequestId(raw);
            // rule: rpc.channel.allocation
            let mut decls: Vec<ChannelDecl> = Vec::with_capacity(channels.len());
            for arg in channels {
                match self.registry.create_outgoing(arg.direction, arg.initial_credit) {
                    Ok(d) => decls.push(d),
                    Err(e) => return Err(CallError::SendFailed(format!("cannot create channel: {e}"))),
                }
            }
            st.calls.insert(id, CallEntry::Waiting { reply: reply_tx, _slot: slot });
            permit.send(Message {
                connection_id: self.id,
                payload: Payload::Request { id, method_id, args, channels: decls.clone(), metadata },
            });
            break (id, decls);
        };
        // The request is queued: items of its channels may follow it now.
        // Items sent before the call go first, before the `Tx` is usable.
        for (arg, decl) in channels.iter().zip(&decls) {
            if let Some(early) = arg.slot.bind(self.clone(), decl.id) {
                let mut flush = EarlyFlush { core: self.clone(), slot: &arg.slot, id: decl.id, done: false };
                let result = flush.run(early).await;
                flush.done = true;
                arg.slot.flushed(self.clone(), decl.id, result);
            }
        }
        Ok((id, reply_rx))
    }

    fn cancel(&self, id: RequestId) {
        let waker = {
            let mut st = self.state.lock();
            if st.lost.is_lost() {
                return;
            }
            match st.calls.remove(&id) {
                Some(CallEntry::Waiting { _slot, .. }) => {
                    st.calls.insert(id, CallEntry::Cancelled { _slot });
                    st.cancels_due.push_back(id);
                    st.flush_waker.take()
                }
                Some(other) => {
                    st.calls.insert(id, other);
                    None
                }
                None => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    // ------------------------------------------------------------ flushing

    /// Collects the channel control messages that non-async code made due
    /// (grants, channel closes and resets) into `out`; cancels stay in
    /// `cancels_due` (see [`ConnectionCore::send_due_cancels`]).
    /// `Ready(true)` when there is work, `Ready(false)` once the connection
    /// has ended or a drain found nothing left.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>, out: &mut Vec<Payload>) -> Poll<bool> {
        let (cancels, draining) = {
            let mut st = self.state.lock();
            if st.lost.is_lost() {
                return Poll::Ready(false);
            }
            st.flush_waker = Some(cx.waker().clone());
            (!st.cancels_due.is_empty(), matches!(st.flush, FlushPhase::Draining { .. }))
        };
        let _ = self.registry.poll_outbound(cx, out);
        if cancels || !out.is_empty() {
            Poll::Ready(true)
        } else if draining {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Queues the due cancels, each popped only once a place is held, so no
    /// request can be queued between the pop and the cancel.
    async fn send_due_cancels(&self) -> Result<(), LossCause> {
        loop {
            if self.state.lock().cancels_due.is_empty() {
                return Ok(());
            }
            let permit = self.reserve().await?;
            let mut st = self.state.lock();
            st.lost.admit()?;
            let Some(id) = st.cancels_due.pop_front() else { return Ok(()) };
            permit.send(Message { connection_id: self.id, payload: Payload::CancelRequest { id } });
        }
    }

    /// The connection's flush task: the only sender of messages made due by
    /// drops and by consumption (grants), besides cancels that a later
    /// request queues ahead of itself.
    pub(crate) async fn run_flush(self: Arc<Self>) {
        // Tells a waiting teardown on every way out, including a panic or
        // the runtime dropping the task.
        let _done = FlushDone(&self);
        let mut out = Vec::new();
        loop {
            out.clear();
            let alive = std::future::poll_fn(|cx| self.poll_flush(cx, &mut out)).await;
            if !alive {
                return;
            }
            if self.send_due_cancels().await.is_err() {
                return;
            }
            for payload in out.drain(..) {
                if self.send(payload).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Graceful end: asks the flush task to queue everything already due
    /// (channel closes, resets, grants, cancels) and resolves once it has
    /// stopped. Call it before [`ConnectionCore::on_lost`], which discards
    /// whatever is still due. Cancel-safe; bound it with a timeout, since it
    /// waits for outbound room.
    pub(crate) async fn drain_flush(&self) {
        std::future::poll_fn(|cx| {
            let flush_waker = {
                let mut st = self.state.lock();
                match &mut st.flush {
                    FlushPhase::Done => return Poll::Ready(()),
                    FlushPhase::Running | FlushPhase::Draining { .. } => {
                        st.flush = FlushPhase::Draining { waiter: Some(cx.waker().clone()) };
                    }
                }
                st.flush_waker.take()
            };
            if let Some(w) = flush_waker {
                w.wake();
            }
            Poll::Pending
        })
        .await
    }

    // ------------------------------------------------------------ loss

    /// The connection ended: every pending call fails with `cause`, every
    /// handler is stopped, every channel ends. Idempotent.
    pub(crate) fn on_lost(&self, cause: LossCause) {
        let (calls, handlers, waker) = {
            let mut st = self.state.lock();
            if !st.lost.end(cause.clone()) {
                return;
            }
            st.cancels_due.clear();
            (std::mem::take(&mut st.calls), std::mem::take(&mut st.handlers), st.flush_waker.take())
        };
        self.slots.close();
        for (_, entry) in calls {
            if let CallEntry::Waiting { reply, .. } = entry {
                // The caller may be gone already; nothing is lost then.
                let _ = reply.send(Err(cause.clone().into()));
            }
        }
        // Dropping the stop senders stops every handler (rule: connection.close).
        drop(handlers);
        self.registry.on_connection_lost(cause);
        if let Some(w) = waker {
            w.wake();
        }
    }

    // ------------------------------------------------------------ inbound

    fn violation(&self, id: RequestId, what: impl Into<String>, rule: &'static str) -> Violation {
        Violation::Request { conn: self.id, id, what: what.into(), rule }
    }

    fn channel_violation(&self, source: ChannelViolation) -> Violation {
        Violation::Channel { conn: self.id, source }
    }

    /// Handles one inbound payload for this connection. Never waits: work
    /// that needs to send is spawned or made due for the flush task, so a
    /// slow connection cannot stall the session's receive loop.
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

    /// Handles one inbound payload of this connection. `Ok` says whether it
    /// was one of the legal-but-costly kinds the session meters (rule
    /// `session.abuse-budget`); `Err` is the peer's violation.
    pub(crate) fn on_payload(self: &Arc<Self>, payload: Payload) -> Result<Inbound, Violation> {
        let remote = |r: Result<RemoteOutcome, ChannelViolation>| match r {
            Ok(
                RemoteOutcome::CrossingIgnored | RemoteOutcome::DiscardedLate | RemoteOutcome::GrantAfterResetIgnored,
            ) => Ok(Inbound::Late),
            Ok(_) => Ok(Inbound::Handled),
            Err(v) => Err(self.channel_violation(v)),
        };
        match payload {
            Payload::Request { id, method_id, args, channels, metadata } => {
                self.on_request(id, method_id, args, channels, metadata).map(|()| Inbound::Handled)
            }
            Payload::Response { id, ret, metadata } => self.on_response(id, ret, metadata),
            Payload::CancelRequest { id } => Ok(self.on_cancel(id)),
            Payload::ChannelItem { id, item } => match self.registry.on_remote_item(id, item.0) {
                Ok(ItemOutcome::DiscardedAfterReset | ItemOutcome::DiscardedLate) => Ok(Inbound::Late),
                Ok(_) => Ok(Inbound::Handled),
                Err(v) => Err(self.channel_violation(v)),
            },
            Payload::CloseChannel { id, .. } => remote(self.registry.on_remote_close(id)),
            Payload::ResetChannel { id, .. } => remote(self.registry.on_remote_reset(id)),
            Payload::GrantCredit { id, additional } => remote(self.registry.on_remote_grant(id, additional)),
            // The session handles connection-level and keepalive payloads
            // before dispatching; reaching here is the session's bug, but it
            // is still the peer's message, so report instead of panicking.
            other => Err(self.violation(
                RequestId(0),
                format!("unexpected {} on a connection", other.kind()),
                "session.message",
            )),
        }
    }

    fn on_request(
        self: &Arc<Self>,
        id: RequestId,
        method_id: MethodId,
        args: Blob,
        channels: Vec<ChannelDecl>,
        metadata: Metadata,
    ) -> Result<(), Violation> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let refuse;
        {
            let mut st = self.state.lock();
            if st.lost.is_lost() {
                return Ok(());
            }
            // rule: rpc.request.id
            if id.parity() == self.local_parity {
                return Err(self.violation(id, "request id has the receiver's parity", "rpc.request.id"));
            }
            if st.handlers.contains_key(&id) {
                return Err(self.violation(id, "request id is already in flight", "rpc.request.id"));
            }
            // rule: rpc.flow-control.max-concurrent-requests
            let limit = self.local_settings.max_concurrent_requests as usize;
            if st.handlers.len() >= limit {
                return Err(self.violation(
                    id,
                    format!("request exceeds max_concurrent_requests = {limit}"),
                    "rpc.flow-control.max-concurrent-requests",
                ));
            }
            refuse = st.draining.is_some();
            self.registry.on_remote_announce(&channels).map_err(|v| self.channel_violation(v))?;
            st.handlers.insert(id, Some(stop_tx));
        }
        let has_channels = !channels.is_empty();
        let binder = ChannelBinder::new(self.clone(), channels);
        // rule: rpc.deadline — counted from the request's arrival.
        let deadline = context::read_deadline(&metadata);
        let work = if refuse {
            // Graceful shutdown: nothing new runs; `Rejected` tells the
            // caller that nothing ran, so it may retry elsewhere.
            Work::Answer(ResponseBody::Rejected { reason: "the server is shutting down; the call did not run".into() })
        } else if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            Work::Answer(ResponseBody::DeadlineExceeded)
        } else {
            self.admit(method_id, &args, &metadata, has_channels)
        };
        use tracing::Instrument;
        let span = tracing::debug_span!("handle", conn = %self.id, request = %id, method = %method_id);
        let attempt = Attempt { core: self.clone(), id, stop: stop_rx, deadline };
        match work {
            Work::Handle(None) => self.start_plain(attempt, method_id, args, metadata, binder, span),
            Work::Handle(Some(op)) => {
                tokio::spawn(run_handler(attempt, method_id, args, metadata, binder, op).instrument(span));
            }
            Work::Attach { ops, op, waiter, outcome } => {
                drop(binder);
                tokio::spawn(run_attached(attempt, ops, op, waiter, outcome).instrument(span));
            }
            Work::Answer(body) => {
                // Nothing runs: unbound channels are ended by the binder.
                drop(binder);
                tokio::spawn(attempt.answer(body).instrument(span));
            }
        }
        Ok(())
    }

    /// Starts a plain call (one the operation table does not track): its
    /// handler is created and polled once right here, on the session's
    /// receive loop. A handler that replies in that first poll (any handler
    /// with nothing to wait for) is answered at once, without a task of its
    /// own: one spawn and two task hops less per call. Anything else goes on
    /// in a request task ([`run_inline`]), which polls it again at once and
    /// so takes over its wake-ups.
    ///
    /// The first poll runs the handler's code up to its first await on this
    /// loop, which is why handlers must not block (ADR 0004).
    fn start_plain(
        self: &Arc<Self>,
        attempt: Attempt,
        method_id: MethodId,
        args: Blob,
        metadata: Metadata,
        binder: ChannelBinder,
        span: tracing::Span,
    ) {
        use tracing::Instrument;
        let Some(handler) = self.handler.as_ref() else {
            // rule: rpc.unknown-method — no service on this connection (the
            // call's channels are ended with its binder).
            drop(binder);
            tokio::spawn(attempt.answer(ResponseBody::UnknownMethod).instrument(span));
            return;
        };
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let ctx = CallContext {
            connection_id: self.id,
            method_id,
            metadata: metadata.clone(),
            deadline: attempt.deadline,
            peer_addr: self.peer_addr(),
            peer_identity: self.peer_identity(),
        };
        let call = Call { method_id, args: args.0, metadata, channels: binder, reply: ReplySink::new(reply_tx) };
        let running = {
            let _entered = span.enter();
            let mut running = Contained::start(|| Box::pin(ctx.scope(handler.handle(call))));
            // A no-op waker: if the handler is not done, the request task
            // polls it again before anything can be due, and a future
            // registers the waker of its latest poll.
            let _ = std::pin::Pin::new(&mut running).poll(&mut Context::from_waker(Waker::noop()));
            running
        };
        let reply = match reply_rx.try_recv() {
            Ok(reply) => Some(reply),
            Err(oneshot::error::TryRecvError::Closed) => None,
            Err(oneshot::error::TryRecvError::Empty) => {
                tokio::spawn(run_inline(attempt, running, reply_rx).instrument(span));
                return;
            }
        };
        let (ret, md) = reply_or_failure(reply);
        match self.try_reserve() {
            Some(permit) => {
                self.finish_handler(permit, attempt.id, ret, md);
                if running.is_running() {
                    // Work after its reply is driven to its end, as in `run_inline`.
                    tokio::spawn(running.instrument(span));
                }
            }
            // The outbound queue is full: wait for room in a task, never here.
            None => {
                tokio::spawn(
                    async move {
                        attempt.answer_with(ret, md).await;
                        running.await;
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Section 10: a request that carries an operation id, on a connection
    /// whose session keeps an operation table and serves calls, is admitted
    /// against the table; anything else is a plain call.
    fn admit(&self, method_id: MethodId, args: &Blob, metadata: &Metadata, has_channels: bool) -> Work {
        let (Some(ops), Some(handler)) = (&self.ops, &self.handler) else { return Work::Handle(None) };
        let op = match read_op_id(metadata) {
            Ok(Some(op)) => op,
            Ok(None) => return Work::Handle(None),
            Err(e) => return Work::Answer(ResponseBody::InvalidPayload { reason: e.to_string() }),
        };
        // The args never embed channel ids (those travel in the request's
        // channel list), so every attempt of one call digests the same.
        let digest = ArgsDigest::of(&args.0);
        match ops.admit(op, method_id, digest, handler.policy(method_id), has_channels) {
            Decision::Run(ticket) => Work::Handle(Some(OpRun { ops: ops.clone(), ticket, has_channels })),
            Decision::Attach { op, waiter, outcome } => Work::Attach { ops: ops.clone(), op, waiter, outcome },
            Decision::Answer(body) => Work::Answer(body),
        }
    }

    fn on_response(&self, id: RequestId, ret: ResponseBody, metadata: Metadata) -> Result<Inbound, Violation> {
        let mut st = self.state.lock();
        if st.lost.is_lost() {
            return Ok(Inbound::Handled);
        }
        match st.calls.remove(&id) {
            Some(CallEntry::Waiting { reply, _slot }) => {
                drop(st);
                // rule: rpc.cancel — if the caller is gone, it lost interest.
                let _ = reply.send(Ok((ret, metadata)));
                Ok(Inbound::Handled)
            }
            Some(CallEntry::Cancelled { .. }) => {
                // rule: rpc.cancel — a response after cancelling is ignored.
                st.stats.late_responses += 1;
                Ok(Inbound::Late)
            }
            // rule: rpc.response.one-per-request
            None => Err(self.violation(
                id,
                "response for a request that is not in flight (never sent, or already answered)",
                "rpc.response.one-per-request",
            )),
        }
    }

    fn on_cancel(&self, id: RequestId) -> Inbound {
        let mut st = self.state.lock();
        match st.handlers.get_mut(&id) {
            Some(stop) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                Inbound::Cancelled
            }
            // rule: rpc.cancel.crossing — the response already left.
            None => {
                st.stats.late_cancels += 1;
                Inbound::Late
            }
        }
    }

    fn finish_handler(&self, permit: OutboundPermit<'_>, id: RequestId, ret: ResponseBody, metadata: Metadata) {
        let mut st = self.state.lock();
        if st.lost.is_lost() || st.handlers.remove(&id).is_none() {
            return;
        }
        if let (true, Some(idle)) = (st.handlers.is_empty(), &st.draining) {
            idle.notify_one();
        }
        // Removing the entry and queueing the response under one lock: the
        // peer can only send its next request after seeing this response,
        // by which time the slot is free (rule: rpc.flow-control.max-concurrent-requests).
        permit.send(Message { connection_id: self.id, payload: Payload::Response { id, ret, metadata } });
    }
}

/// Sends the items a caller-side `Tx` took before its call (rule
/// `rpc.flow-control.credit`: they spend credit like any other), then its
/// close if it was closed or dropped. If the call is dropped meanwhile, the
/// `Tx` end reports it and the channel is released.
struct EarlyFlush<'a> {
    core: Arc<ConnectionCore>,
    slot: &'a super::handle::SlotRef,
    id: crate::wire::ChannelId,
    done: bool,
}

impl EarlyFlush<'_> {
    /// `Ok(true)` when the close was sent too.
    async fn run(&mut self, early: super::handle::Early) -> Result<bool, String> {
        let (core, id) = (&self.core, self.id);
        for item in early.items {
            std::future::poll_fn(|cx| core.registry.poll_credit(id, cx)).await.map_err(|e| e.to_string())?;
            let permit = core.reserve().await.map_err(|e| e.to_string())?;
            core.send_item_with(permit, id, Blob(item)).map_err(|e| e.to_string())?;
        }
        if early.closed {
            core.registry.local_close(id).map_err(|e| e.to_string())?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Drop for EarlyFlush<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slot.flushed(
                self.core.clone(),
                self.id,
                Err("the call was dropped before its early items were sent".into()),
            );
        }
    }
}

/// Marks the flush task finished when it returns, waking a draining teardown.
struct FlushDone<'a>(&'a ConnectionCore);

impl Drop for FlushDone<'_> {
    fn drop(&mut self) {
        let waiter = {
            let mut st = self.0.state.lock();
            match std::mem::replace(&mut st.flush, FlushPhase::Done) {
                FlushPhase::Draining { waiter } => waiter,
                FlushPhase::Running | FlushPhase::Done => None,
            }
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

struct CancelOnDrop<'a> {
    core: &'a ConnectionCore,
    id: RequestId,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            // rule: rpc.cancel
            self.core.cancel(self.id);
        }
    }
}

/// What an admitted request does (see [`ConnectionCore::admit`]).
enum Work {
    /// Run the handler; with an operation ticket if the table tracks it.
    Handle(Option<OpRun>),
    /// Wait for the live execution of the same operation.
    Attach {
        ops: Arc<SessionOps>,
        op: crate::plumbing::operations::OpId,
        waiter: crate::plumbing::operations::WaiterId,
        outcome: oneshot::Receiver<ResponseBody>,
    },
    /// Answer without running anything.
    Answer(ResponseBody),
}

/// The operation-table side of one execution.
struct OpRun {
    ops: Arc<SessionOps>,
    ticket: Ticket,
    has_channels: bool,
}

/// One inbound request in flight: answered exactly once through
/// [`Attempt::answer`] unless its connection ended (rule
/// `rpc.response.one-per-request`).
struct Attempt {
    core: Arc<ConnectionCore>,
    id: RequestId,
    /// Fires on `CancelRequest` (`Ok`) or when the connection ends (`Err`).
    stop: oneshot::Receiver<()>,
    /// When the handler is stopped and answered `DeadlineExceeded` (rule
    /// `rpc.deadline`).
    deadline: Option<tokio::time::Instant>,
}

/// Resolves at `deadline`; never without one.
async fn deadline_passes(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Attempt {
    async fn answer(self, body: ResponseBody) {
        self.answer_with(body, Metadata::new()).await
    }

    async fn answer_with(self, body: ResponseBody, metadata: Metadata) {
        let Ok(permit) = self.core.reserve().await else { return };
        self.core.finish_handler(permit, self.id, body, metadata);
    }
}

/// Runs one inbound request: spawns the handler, waits for its one reply or
/// a cancel, and sends exactly one response (rule: rpc.response.one-per-request).
///
/// With an operation ticket, the outcome also goes to the table (and to the
/// attempts attached to this execution). If the attachment dies meanwhile,
/// an execution without channels keeps running so a retry can attach to it
/// or get its outcome (`retry.duplicate.live`, `retry.duplicate.sealed`);
/// one with channels is stopped and marked indeterminate, since its
/// channels died with the attachment (`retry.channel.disconnect.closes`).
async fn run_handler(
    mut attempt: Attempt,
    method_id: MethodId,
    args: Blob,
    metadata: Metadata,
    binder: ChannelBinder,
    op: OpRun,
) {
    let (reply_tx, mut reply_rx) = oneshot::channel();
    let ctx = CallContext {
        connection_id: attempt.core.id,
        method_id,
        metadata: metadata.clone(),
        deadline: attempt.deadline,
        peer_addr: attempt.core.peer_addr(),
        peer_identity: attempt.core.peer_identity(),
    };
    let call = Call { method_id, args: args.0, metadata, channels: binder, reply: ReplySink::new(reply_tx) };
    let Some(running) = attempt.core.handler.as_ref().map(|h| ctx.scope(h.handle(call))) else {
        // rule: rpc.unknown-method — no service on this connection (the
        // call's channels are ended with its binder).
        return attempt.answer(ResponseBody::UnknownMethod).await;
    };
    // An execution the operation table tracks runs as its own task: it may
    // have to outlive this attempt (below) or be stopped by a later attempt
    // that supersedes it (`SessionOps::admit`).
    let task = tokio::spawn(running);
    op.ops.started(op.ticket, task.abort_handle());
    let (ret, md) = tokio::select! {
        r = &mut reply_rx => reply_or_failure(r.ok()),
        s = &mut attempt.stop => {
            if s.is_err() && !op.has_channels {
                // The attachment died, the execution did not: its outcome
                // is owed to the operation, not to this dead attempt.
                let (ret, _) = reply_or_failure(reply_rx.await.ok());
                op.ops.complete(op.ticket, &ret);
                return;
            }
            task.abort();
            op.ops.interrupt(op.ticket);
            if s.is_err() {
                // The connection ended; nothing can be sent.
                return;
            }
            // rule: rpc.cancel
            (ResponseBody::Cancelled, Metadata::new())
        }
        () = deadline_passes(attempt.deadline) => {
            // rule: rpc.deadline — the handler is stopped.
            task.abort();
            op.ops.interrupt(op.ticket);
            (ResponseBody::DeadlineExceeded, Metadata::new())
        }
    };
    // A superseded execution's completion is refused: its attempt's outcome
    // is unknown to the caller's logical call.
    let ret = if !matches!(ret, ResponseBody::Cancelled | ResponseBody::DeadlineExceeded)
        && !op.ops.complete(op.ticket, &ret)
    {
        ResponseBody::Indeterminate
    } else {
        ret
    };
    attempt.answer_with(ret, md).await
}

/// Runs a plain call's handler inside the request's own task: one spawn and
/// one cross-task wake-up less per call than a task of its own. Cancelling
/// or losing the connection drops the handler future, which is what aborting
/// its task did; a panic is contained by [`Contained`]. A handler that goes
/// on working after it replied is driven to its end after the response left.
async fn run_inline(
    mut attempt: Attempt,
    mut handler: Contained,
    mut reply_rx: oneshot::Receiver<(ResponseBody, Metadata)>,
) {
    let (ret, md) = loop {
        tokio::select! {
            biased;
            r = &mut reply_rx => break reply_or_failure(r.ok()),
            s = &mut attempt.stop => {
                handler.stop();
                if s.is_err() {
                    // The connection ended; nothing can be sent.
                    return;
                }
                // rule: rpc.cancel
                break (ResponseBody::Cancelled, Metadata::new());
            }
            () = deadline_passes(attempt.deadline) => {
                // rule: rpc.deadline — the handler is stopped.
                handler.stop();
                break (ResponseBody::DeadlineExceeded, Metadata::new());
            }
            // Finished or panicked: its sink is gone, so `reply_rx` is ready.
            () = &mut handler, if handler.is_running() => {}
        }
    };
    attempt.answer_with(ret, md).await;
    handler.await;
}

/// A handler future polled in place, with panics caught the way a task
/// catches them: the panicking future is dropped (with it its reply sink,
/// so the caller gets `HandlerFailed`) and the process goes on.
struct Contained(Option<crate::driver::handler::BoxFuture>);

impl Contained {
    /// Creates the handler's future; a panic while creating it is contained
    /// like one while polling it (the call, with its reply sink, is dropped).
    fn start(make: impl FnOnce() -> crate::driver::handler::BoxFuture) -> Contained {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
            Ok(fut) => Contained(Some(fut)),
            Err(_) => {
                tracing::debug!("handler panicked");
                Contained(None)
            }
        }
    }

    fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Drops the handler (cancellation); a panic while dropping is contained too.
    fn stop(&mut self) {
        let dead = self.0.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(dead)));
    }
}

impl std::future::Future for Contained {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let Some(fut) = self.0.as_mut() else { return Poll::Ready(()) };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.0 = None;
                Poll::Ready(())
            }
            Err(_) => {
                tracing::debug!("handler panicked");
                // Dropping a future that panicked may panic again.
                self.stop();
                Poll::Ready(())
            }
        }
    }
}

/// The handler's reply, or `HandlerFailed` if its sink went unanswered.
fn reply_or_failure(r: Option<(ResponseBody, Metadata)>) -> (ResponseBody, Metadata) {
    match r {
        Some(v) => v,
        None => {
            // The sink was dropped: by the handler itself, or while
            // unwinding from a panic. Either way this is the one reply.
            let reason = "handler ended without replying (it panicked or dropped its reply sink)".to_string();
            (ResponseBody::HandlerFailed { reason }, Metadata::new())
        }
    }
}

/// An attempt attached to a live execution of its operation (rule
/// `retry.duplicate.live`): answered with that execution's outcome.
async fn run_attached(
    mut attempt: Attempt,
    ops: Arc<SessionOps>,
    op: crate::plumbing::operations::OpId,
    waiter: crate::plumbing::operations::WaiterId,
    outcome: oneshot::Receiver<ResponseBody>,
) {
    let body = tokio::select! {
        // The sender is only dropped unanswered if the table went away
        // with its session; the outcome is then unknown.
        r = outcome => r.unwrap_or(ResponseBody::Indeterminate),
        s = &mut attempt.stop => {
            ops.detach(op, waiter);
            if s.is_err() {
                return;
            }
            ResponseBody::Cancelled
        }
    };
    attempt.answer(body).await
}
