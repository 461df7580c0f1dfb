//! The peer's messages: session-level ones (ping, pong, protocol errors)
//! answered here, connection lifecycle (open, accept, reject, close) applied
//! to the table, and everything else handed to its connection's driver,
//! which never waits.

use super::{Env, Machine, Step};
use crate::driver::{ConnectionCore, Handler};
use crate::session::SessionError;
use crate::session::budget::BudgetKind;
use crate::session::builder::{AcceptDecision, ConnectionRequest};
use crate::session::handle::{Caller, ConnectionHandle, CoreRef, LiveToken};
use crate::session::phase::{CloseReason, ConnEvent};
use crate::session::table::{Lookup, Released};
use crate::wire::{ConnectionId, ConnectionSettings, Message, Metadata, Parity, Payload};
use std::sync::Arc;
use tokio::time::Instant;

impl<A, R> Machine<A, R> {
    /// Decides one message from the peer, received at `now`.
    pub(crate) fn on_message(&mut self, m: Message, now: Instant, env: &mut dyn Env) -> Step {
        let id = m.connection_id;
        match m.payload {
            Payload::Ping { nonce } if id.is_root() => {
                if let Some(e) = self.spend(BudgetKind::Pings, now) {
                    return e;
                }
                // rule: session.keepalive
                self.owe(Message::root(Payload::Pong { nonce }));
                Step::Continue
            }
            Payload::Pong { nonce } if id.is_root() => {
                if matches!(self.ping_outstanding, Some((n, _)) if n == nonce) {
                    self.ping_outstanding = None;
                }
                Step::Continue
            }
            Payload::ProtocolError { description } if id.is_root() => {
                // rule: session.protocol-error
                Step::End(CloseReason::PeerProtocolError(description), None, false)
            }
            p @ (Payload::Ping { .. } | Payload::Pong { .. } | Payload::ProtocolError { .. }) => {
                self.violation(format!("{} on connection {id}", p.kind()), "session.message.connection-id")
            }
            Payload::CloseConnection { .. } if id.is_root() => {
                self.violation("CloseConnection for the root connection".into(), "connection.root")
            }
            Payload::OpenConnection { parity, settings, metadata } => {
                self.on_open(id, parity, settings, metadata, now, env)
            }
            Payload::AcceptConnection { settings, .. } => {
                let accepted = self.table.pending(id, ConnEvent::PeerAccepted).and_then(|(local_settings, parity)| {
                    let core = self.new_core(env, id, parity, local_settings, settings, None);
                    self.table.accept_outbound(id, core.clone()).map(|reply| (reply, core))
                });
                match accepted {
                    Ok((reply, core)) => {
                        let caller = Caller::new(CoreRef::Fixed(core), LiveToken::new(self.mailbox_tx.clone(), id));
                        // If the opener stopped waiting, dropping the handle
                        // closes the connection through the liveness rule.
                        let _ = reply.send(Ok(ConnectionHandle { id, caller }));
                        Step::Continue
                    }
                    Err(e) => self.violation(e, "connection.open"),
                }
            }
            Payload::RejectConnection { metadata } => match self.table.reject_outbound(id) {
                Ok(reply) => {
                    let _ = reply.send(Err(SessionError::Rejected { metadata }));
                    Step::Continue
                }
                Err(e) => self.violation(e, "connection.open.rejection"),
            },
            Payload::CloseConnection { .. } => {
                if let Some(core) = self.table.release(id, Released::ByPeer) {
                    // rule: connection.close
                    core.on_lost(crate::plumbing::loss::LossCause::ConnectionClosed);
                    return Step::Continue;
                }
                if self.table.released_by_us(id) {
                    // rule: connection.close.crossing — both sides closed at
                    // once; after the peer's close nothing more may come.
                    self.table.mark_peer_closed(id);
                    return Step::Continue;
                }
                match self.table.lookup(id) {
                    Lookup::Late => self.spend(BudgetKind::LateMessages, now).unwrap_or(Step::Continue),
                    Lookup::Violation(e) => self.violation(e, "connection.close"),
                    _ => self.violation(
                        format!("CloseConnection for connection {id} before it was accepted"),
                        "connection.open",
                    ),
                }
            }
            payload if id.is_root() => {
                let root = self.root.clone();
                let outcome = root.on_payload(payload);
                self.on_inbound(outcome, now)
            }
            payload => match self.table.lookup(id) {
                Lookup::Open(core) => {
                    let core = core.clone();
                    let outcome = core.on_payload(payload);
                    self.on_inbound(outcome, now)
                }
                Lookup::Late => {
                    tracing::debug!(conn = %id, kind = payload.kind(), "discarded message for a connection we closed");
                    self.spend(BudgetKind::LateMessages, now).unwrap_or(Step::Continue)
                }
                Lookup::PendingOutbound => self.violation(
                    format!("{} on connection {id} before AcceptConnection", payload.kind()),
                    "connection.open",
                ),
                Lookup::Violation(e) => self.violation(e, "connection.close"),
            },
        }
    }

    fn on_open(
        &mut self,
        id: ConnectionId,
        parity: Parity,
        settings: ConnectionSettings,
        metadata: Metadata,
        now: Instant,
        env: &mut dyn Env,
    ) -> Step {
        if let Err(e) = self.table.check_inbound_open(id) {
            return self.violation(e, "connection.open");
        }
        // rule: connection.open.rejection
        let decision = if self.draining {
            AcceptDecision::Reject(Metadata::new().with_str("reason", "the server is shutting down", 0))
        } else if self.table.len() >= self.limits.max_connections {
            AcceptDecision::Reject(Metadata::new().with_str("reason", "too many connections", 0))
        } else {
            match &self.acceptor {
                None => AcceptDecision::Reject(Metadata::new().with_str("reason", "no acceptor configured", 0)),
                Some(a) => a.decide(&ConnectionRequest { id, metadata, peer_settings: settings.clone() }),
            }
        };
        match decision {
            AcceptDecision::Accept { settings: local, metadata, handler } => {
                // rule: connection.parity — we use the opener's opposite.
                let core = self.new_core(env, id, parity.opposite(), local.clone(), settings, handler);
                if let Err(e) = self.table.insert_open(id, core) {
                    tracing::error!(error = %e, "connection table refused an accepted connection");
                }
                self.owe(Message {
                    connection_id: id,
                    payload: Payload::AcceptConnection { settings: local, metadata },
                });
            }
            AcceptDecision::Reject(metadata) => {
                if let Some(e) = self.spend(BudgetKind::RejectedOpens, now) {
                    return e;
                }
                self.table.reject_inbound(id);
                self.owe(Message { connection_id: id, payload: Payload::RejectConnection { metadata } });
            }
        }
        Step::Continue
    }

    /// A core for a new virtual connection, knowing the peer as the root
    /// does (address, verified identity).
    fn new_core(
        &self,
        env: &mut dyn Env,
        id: ConnectionId,
        parity: Parity,
        local: ConnectionSettings,
        peer: ConnectionSettings,
        handler: Option<Arc<dyn Handler>>,
    ) -> Arc<ConnectionCore> {
        let core = env.new_core(id, parity, local, peer, handler, self.root.outbound());
        core.set_peer_addr(self.root.peer_addr());
        core.set_peer_identity(self.root.peer_identity());
        core
    }
}
