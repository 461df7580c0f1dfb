//! Inbound dispatch: every payload the session routes to this connection
//! enters here and goes to the part that owns it. Responses and cancels are
//! settled right here against the core's tables; requests go to
//! `incoming`, channel traffic to the registry.

use super::incoming::IncomingEvent;
use super::outgoing::{CallEffect, CallEvent};
use super::{ConnectionCore, Inbound, Violation};
use crate::driver::channel::{ItemOutcome, RemoteOutcome, Violation as ChannelViolation};
use crate::wire::{Blob, Metadata, Payload, RequestId, ResponseBody};
use std::sync::Arc;

impl ConnectionCore {
    /// Handles one inbound payload of this connection. `Ok` says whether it
    /// was one of the legal-but-costly kinds the session meters (rule
    /// `session.abuse-budget`); `Err` is the peer's violation.
    ///
    /// Never waits: work that needs to send is spawned or made due for the
    /// flush task, so a slow connection cannot stall the session's receive
    /// loop.
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
            Payload::ChannelItem { id, item } => match self.registry.on_remote_item(id, item.into_bytes()) {
                Ok(ItemOutcome::DiscardedAfterReset | ItemOutcome::DiscardedLate) => Ok(Inbound::Late),
                Ok(_) => Ok(Inbound::Handled),
                Err(v) => Err(self.channel_violation(v)),
            },
            // Exactly as many ChannelItems, in order: each spends a credit
            // and the first violation ends it (rule rpc.channel.item).
            Payload::ChannelItems { id, items } => {
                if items.is_empty() {
                    return Err(self.violation(
                        RequestId(0),
                        format!("ChannelItems for channel {id} carries no item"),
                        "rpc.channel.item",
                    ));
                }
                match self.registry.on_remote_items(id, items.into_iter().map(Blob::into_bytes)) {
                    Ok(0) => Ok(Inbound::Handled),
                    Ok(_) => Ok(Inbound::Late),
                    Err(v) => Err(self.channel_violation(v)),
                }
            }
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

    fn on_response(&self, id: RequestId, ret: ResponseBody, metadata: Metadata) -> Result<Inbound, Violation> {
        let mut st = self.state.lock();
        if st.lost.is_lost() {
            return Ok(Inbound::Handled);
        }
        match st.step_call(id, CallEvent::Response(ret, metadata)) {
            effect @ CallEffect::Deliver { .. } => {
                drop(st);
                effect.deliver();
                Ok(Inbound::Handled)
            }
            CallEffect::Late => {
                st.stats.late_responses += 1;
                Ok(Inbound::Late)
            }
            CallEffect::Unsolicited => Err(self.violation(
                id,
                "response for a request that is not in flight (never sent, or already answered)",
                "rpc.response.one-per-request",
            )),
            // A response neither owes a cancel nor leaves the call unsettled.
            CallEffect::Nothing | CallEffect::CancelDue => Ok(Inbound::Handled),
        }
    }

    fn on_cancel(&self, id: RequestId) -> Inbound {
        let mut st = self.state.lock();
        match st.handlers.get_mut(&id) {
            Some(call) => {
                call.state.step(IncomingEvent::Cancel);
                Inbound::Cancelled
            }
            // rule: rpc.cancel.crossing — the response already left.
            None => {
                st.stats.late_cancels += 1;
                Inbound::Late
            }
        }
    }
}
