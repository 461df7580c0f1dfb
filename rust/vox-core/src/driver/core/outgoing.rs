//! Outgoing calls: a slot under the peer's concurrency limit, the request
//! and its channels on the wire, the wait for the response, and the cancel
//! owed when the caller drops the call. The call's entry in the core's table
//! is what the response and the connection's loss settle; every change to
//! it is one [`CallEntry::step`], so the call's life reads in one place.

use super::{CallReply, ConnectionCore, CoreState, Tracked};
use crate::driver::channel::LossCause;
use crate::driver::error::CallError;
use crate::driver::handle::{ChannelArg, Early, SlotRef};
use crate::wire::{Blob, ChannelDecl, ChannelId, Message, Metadata, MethodId, Payload, RequestId, ResponseBody};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// One outgoing call in the core's table, from the queueing of its request
/// until its response or the connection's end. Not in the table: not in
/// flight (never sent, or settled).
pub(super) enum CallEntry {
    /// The caller waits for the response.
    Waiting { reply: oneshot::Sender<CallReply>, _slot: OwnedSemaphorePermit },
    /// The caller gave up; the slot stays taken until the peer's response
    /// arrives, because until then the peer still counts the request as in
    /// flight and a new request could exceed its limit.
    Cancelled { _slot: OwnedSemaphorePermit },
}

/// What happens to an outgoing call.
pub(super) enum CallEvent {
    /// The caller dropped the call.
    Dropped,
    /// The peer's response arrived.
    Response(ResponseBody, Metadata),
    /// The connection ended.
    Lost(LossCause),
}

/// What a step owes beyond the table. The core acts on it itself, so that
/// what happens under its lock and what after stays visible at the caller.
#[must_use]
pub(super) enum CallEffect {
    /// Nothing beyond the table.
    Nothing,
    /// A `CancelRequest` is owed to the peer (rule `rpc.cancel`).
    CancelDue,
    /// The outcome goes to the caller ([`CallEffect::deliver`]); the slot
    /// goes with it and is freed after the hand-over.
    Deliver { reply: oneshot::Sender<CallReply>, outcome: CallReply, _slot: OwnedSemaphorePermit },
    /// A response after the caller cancelled, ignored (rule `rpc.cancel`).
    Late,
    /// A response for no call in flight (rule `rpc.response.one-per-request`).
    Unsolicited,
}

impl CallEntry {
    /// The one transition of an outgoing call: its state in the table
    /// (`None`: not in flight) and an event give its next state and what
    /// that owes.
    pub(super) fn step(entry: Option<CallEntry>, event: CallEvent) -> (Option<CallEntry>, CallEffect) {
        match (entry, event) {
            (Some(CallEntry::Waiting { _slot, .. }), CallEvent::Dropped) => {
                (Some(CallEntry::Cancelled { _slot }), CallEffect::CancelDue)
            }
            // Cancelled once is enough; an unknown call was settled already.
            (entry @ (Some(CallEntry::Cancelled { .. }) | None), CallEvent::Dropped) => (entry, CallEffect::Nothing),
            (Some(CallEntry::Waiting { reply, _slot }), CallEvent::Response(ret, metadata)) => {
                (None, CallEffect::Deliver { reply, outcome: Ok((ret, metadata)), _slot })
            }
            // rule: rpc.cancel — a response after cancelling is ignored.
            (Some(CallEntry::Cancelled { .. }), CallEvent::Response(..)) => (None, CallEffect::Late),
            // rule: rpc.response.one-per-request
            (None, CallEvent::Response(..)) => (None, CallEffect::Unsolicited),
            (Some(CallEntry::Waiting { reply, _slot }), CallEvent::Lost(cause)) => {
                (None, CallEffect::Deliver { reply, outcome: Err(cause.into()), _slot })
            }
            (Some(CallEntry::Cancelled { .. }) | None, CallEvent::Lost(_)) => (None, CallEffect::Nothing),
        }
    }
}

impl CallEffect {
    /// Hands a delivered outcome to its caller; call it outside the core's
    /// lock, since the caller's task may run at once.
    pub(super) fn deliver(self) {
        if let CallEffect::Deliver { reply, outcome, _slot } = self {
            // rule: rpc.cancel — if the caller is gone, it lost interest.
            let _ = reply.send(outcome);
        }
    }
}

impl CoreState {
    /// Steps call `id` of the table (see [`CallEntry::step`]).
    pub(super) fn step_call(&mut self, id: RequestId, event: CallEvent) -> CallEffect {
        let Some(tracked) = self.calls.remove(&id) else {
            // Not in flight: a step from nothing never puts a call back.
            return CallEntry::step(None, event).1;
        };
        let Tracked { state, method, started } = tracked;
        let (next, effect) = CallEntry::step(Some(state), event);
        if let Some(next) = next {
            self.calls.insert(id, Tracked { state: next, method, started });
        }
        effect
    }
}

impl ConnectionCore {
    /// Performs one call: waits for a slot under the peer's
    /// `max_concurrent_requests`, sends the request (with the channels it
    /// announces), and waits for the response. Dropping the future cancels.
    pub(crate) async fn call(
        self: &Arc<Self>,
        method_id: MethodId,
        args: Blob,
        channels: &[ChannelArg],
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
        channels: &[ChannelArg],
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
            st.calls.insert(id, Tracked::new(CallEntry::Waiting { reply: reply_tx, _slot: slot }, method_id));
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
            match st.step_call(id, CallEvent::Dropped) {
                CallEffect::CancelDue => {
                    st.cancels_due.push_back(id);
                    st.flush_waker.take()
                }
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Sends the items a caller-side `Tx` took before its call (rule
/// `rpc.flow-control.credit`: they spend credit like any other), then its
/// close if it was closed or dropped. If the call is dropped meanwhile, the
/// `Tx` end reports it and the channel is released.
struct EarlyFlush<'a> {
    core: Arc<ConnectionCore>,
    slot: &'a SlotRef,
    id: ChannelId,
    done: bool,
}

impl EarlyFlush<'_> {
    /// `Ok(true)` when the close was sent too.
    async fn run(&mut self, early: Early) -> Result<bool, String> {
        let (core, id) = (&self.core, self.id);
        for item in early.items {
            std::future::poll_fn(|cx| core.registry.poll_credit(id, cx)).await.map_err(|e| e.to_string())?;
            let permit = core.reserve().await.map_err(|e| e.to_string())?;
            core.send_item_with(permit, id, Blob::new(item)).map_err(|e| e.to_string())?;
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
