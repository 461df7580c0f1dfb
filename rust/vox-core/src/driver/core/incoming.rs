//! Incoming requests: the checks a request must pass to be in flight, the
//! start of its handler, and its one response. A request is in flight from
//! `on_request` until `finish_handler` (or the connection's loss) removes it,
//! and only while it is may a response for it be queued.

use super::admission::{OpRun, Work};
use super::contained::Contained;
use super::running::{reply_or_failure, run_attached, run_inline, run_tracked};
use super::{ConnectionCore, Tracked, Violation};
use crate::driver::context::{self, CallContext};
use crate::driver::handler::{Call, CallSchema, ChannelBinder, ReplySink};
use crate::plumbing::outbound::OutboundPermit;
use crate::wire::{Blob, ChannelDecl, Message, Metadata, MethodId, Payload, RequestId, ResponseBody};
use std::sync::Arc;
use std::task::{Context, Waker};
use tokio::sync::oneshot;

impl ConnectionCore {
    pub(super) fn on_request(
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
            st.handlers.insert(id, Tracked::new(IncomingCall::Running { stop: stop_tx }, method_id));
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
        crate::driver::trace::extract(&span, &metadata);
        crate::driver::metrics::request_received(method_id);
        let attempt = Attempt { core: self.clone(), id, stop: stop_rx, deadline };
        match work {
            Work::Handle(None) => self.start_plain(attempt, method_id, args, metadata, binder, span),
            Work::Handle(Some(op)) => self.start_tracked(attempt, method_id, args, metadata, binder, op, span),
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
        let Some((running, mut reply_rx)) = self.first_poll(&attempt, method_id, args, metadata, binder, &span) else {
            tokio::spawn(attempt.answer(ResponseBody::UnknownMethod).instrument(span));
            return;
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
        self.answer_first(attempt, ret, md, running, span);
    }

    /// Starts a call the operation table tracks (ticket `op`) the same way:
    /// created and polled once here. One that answers in that poll has its
    /// outcome recorded in the table and is answered at once, with no task
    /// of its own (nothing is left to supersede or to outlive the attempt);
    /// anything else becomes its own task ([`run_tracked`]), as the table's
    /// rules need.
    #[allow(clippy::too_many_arguments)]
    fn start_tracked(
        self: &Arc<Self>,
        attempt: Attempt,
        method_id: MethodId,
        args: Blob,
        metadata: Metadata,
        binder: ChannelBinder,
        op: OpRun,
        span: tracing::Span,
    ) {
        use tracing::Instrument;
        let Some((running, mut reply_rx)) = self.first_poll(&attempt, method_id, args, metadata, binder, &span) else {
            tokio::spawn(attempt.answer(ResponseBody::UnknownMethod).instrument(span));
            return;
        };
        let reply = match reply_rx.try_recv() {
            Ok(reply) => Some(reply),
            Err(oneshot::error::TryRecvError::Closed) => None,
            Err(oneshot::error::TryRecvError::Empty) => {
                tokio::spawn(run_tracked(attempt, running, reply_rx, op).instrument(span));
                return;
            }
        };
        let (ret, md) = reply_or_failure(reply);
        // A superseded execution's completion is refused: its attempt's
        // outcome is unknown to the caller's logical call.
        let ret = op.ops.complete(op.ticket, ret).unwrap_or(ResponseBody::Indeterminate);
        self.answer_first(attempt, ret, md, running, span);
    }

    /// Creates the handler's future for a request and polls it once, here
    /// on the receive loop, with a no-op waker: if it is not done, the
    /// request task polls it again before anything can be due, and a future
    /// registers the waker of its latest poll. `None`: no handler serves
    /// this connection (rule `rpc.unknown-method`; the call's channels are
    /// ended with its binder).
    fn first_poll(
        &self,
        attempt: &Attempt,
        method_id: MethodId,
        args: Blob,
        metadata: Metadata,
        binder: ChannelBinder,
        span: &tracing::Span,
    ) -> Option<(Contained, oneshot::Receiver<(ResponseBody, Metadata)>)> {
        let handler = self.handler.as_ref()?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let ctx = CallContext {
            connection_id: self.id,
            method_id,
            metadata: metadata.clone(),
            deadline: attempt.deadline,
            peer_addr: self.peer_addr(),
            peer_identity: self.peer_identity(),
        };
        let (schema, binder) = self.call_schema(method_id, binder);
        let reply = ReplySink::new(reply_tx);
        let call = Call { method_id, args: args.into_bytes(), metadata, channels: binder, reply, schema };
        let _entered = span.enter();
        let mut running = Contained::start(|| Box::pin(ctx.scope(handler.handle(call))));
        let _ = std::pin::Pin::new(&mut running).poll(&mut Context::from_waker(Waker::noop()));
        Some((running, reply_rx))
    }

    /// What the connection's schema exchange says about a request of
    /// `method_id` (one atomic load while no method needs translating).
    fn call_schema(&self, method_id: MethodId, mut binder: ChannelBinder) -> (CallSchema, ChannelBinder) {
        if method_id == crate::schema::schema_method_id() {
            return (CallSchema::Exchange(self.schemas.clone()), binder);
        }
        let Some(inbound) = self.schemas.inbound(method_id) else { return (CallSchema::Plain, binder) };
        if let crate::schema::Inbound::Translate(plans) = &inbound {
            binder.translating(plans.clone());
        }
        (CallSchema::Inbound(inbound), binder)
    }

    /// Answers a request whose handler replied in its first poll: at once
    /// if the outbound queue has room, else from a task (never waiting
    /// here); work the handler does after its reply is driven to its end.
    fn answer_first(
        self: &Arc<Self>,
        attempt: Attempt,
        ret: ResponseBody,
        md: Metadata,
        running: Contained,
        span: tracing::Span,
    ) {
        use tracing::Instrument;
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

    fn finish_handler(&self, permit: OutboundPermit<'_>, id: RequestId, ret: ResponseBody, metadata: Metadata) {
        let mut st = self.state.lock();
        if st.lost.is_lost() {
            return;
        }
        let Some(call) = st.handlers.get_mut(&id) else { return };
        if !call.state.step(IncomingEvent::Answered) {
            st.handlers.remove(&id);
        }
        if let (true, Some(idle)) = (st.handlers.is_empty(), &st.draining) {
            idle.notify_one();
        }
        // Removing the entry and queueing the response under one lock: the
        // peer can only send its next request after seeing this response,
        // by which time the slot is free (rule: rpc.flow-control.max-concurrent-requests).
        crate::driver::metrics::request_answered(&ret);
        permit.send(Message { connection_id: self.id, payload: Payload::Response { id, ret, metadata } });
    }
}

/// One incoming request in the core's table, from its admission until its
/// response is queued or the connection ends. Not in the table: not in
/// flight, so a cancel for it crossed its response (rule `rpc.cancel.crossing`).
pub(super) enum IncomingCall {
    /// The handler runs; sending on `stop` stops it (rule `rpc.cancel`).
    Running { stop: oneshot::Sender<()> },
    /// The peer cancelled and the handler was told to stop; the request's
    /// one response (usually `Cancelled`) is still owed.
    Stopping,
}

/// What happens to an incoming request in flight.
pub(super) enum IncomingEvent {
    /// The peer's `CancelRequest`.
    Cancel,
    /// Its response is being queued.
    Answered,
}

impl IncomingCall {
    /// The one transition of an incoming request: `true` while it stays in
    /// flight, `false` when it leaves the table.
    pub(super) fn step(&mut self, event: IncomingEvent) -> bool {
        match event {
            IncomingEvent::Cancel => {
                if let IncomingCall::Running { stop } = std::mem::replace(self, IncomingCall::Stopping) {
                    // The handler's task may have ended; its answer is then
                    // on its way anyway.
                    let _ = stop.send(());
                }
                true
            }
            IncomingEvent::Answered => false,
        }
    }
}

/// One inbound request in flight: answered exactly once through
/// [`Attempt::answer`] unless its connection ended (rule
/// `rpc.response.one-per-request`).
pub(super) struct Attempt {
    pub(super) core: Arc<ConnectionCore>,
    pub(super) id: RequestId,
    /// Fires on `CancelRequest` (`Ok`) or when the connection ends (`Err`).
    pub(super) stop: oneshot::Receiver<()>,
    /// When the handler is stopped and answered `DeadlineExceeded` (rule
    /// `rpc.deadline`).
    pub(super) deadline: Option<tokio::time::Instant>,
}

impl Attempt {
    pub(super) async fn answer(self, body: ResponseBody) {
        self.answer_with(body, Metadata::new()).await
    }

    pub(super) async fn answer_with(self, body: ResponseBody, metadata: Metadata) {
        let Ok(permit) = self.core.reserve().await else { return };
        self.core.finish_handler(permit, self.id, body, metadata);
    }
}
