//! The session run loop: owns the conduit's receive half, the connection
//! table and the mailbox's receiving side.
//!
//! The loop never waits on a connection: inbound messages are handed to the
//! connection's driver synchronously (which only touches bounded state or
//! spawns), so a congested connection cannot stop pings from being
//! answered. Messages the loop itself must send (pongs, open/accept/reject/
//! close) go into `owed`, a small bounded queue drained into the outbound
//! path; while it is full the loop stops reading from the peer, which is
//! backpressure instead of unbounded growth.

use super::SessionError;
use super::builder::{AcceptDecision, ConnectionRequest, SessionConfig, Shared};
use super::control::{ControlMsg, MailboxRx, MailboxTx};
use super::handle::{Caller, ConnectionHandle, LiveToken};
use super::outbound::{Finish, Outbound};
use super::phase::{CloseReason, ConnEvent, SessionPhase};
use super::table::{ConnTable, Entry, Lookup, Released};
use crate::conduit::ConduitRx;
use crate::driver::ConnectionCore;
use crate::wire::{ConduitMsg, ConnectionId, Message, Metadata, Payload};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const OWED_CAPACITY: usize = 64;

pub(crate) struct RunLoop {
    pub(crate) phase: SessionPhase,
    pub(crate) table: ConnTable,
    pub(crate) root: Arc<ConnectionCore>,
    pub(crate) root_released: bool,
    pub(crate) mailbox: MailboxRx,
    pub(crate) mailbox_tx: MailboxTx,
    pub(crate) outbound: Outbound,
    pub(crate) owed: VecDeque<Message>,
    pub(crate) conduit: ConduitRx,
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) closed_tx: watch::Sender<Option<CloseReason>>,
    pub(crate) finish: Option<oneshot::Sender<Finish>>,
    pub(crate) writer: JoinHandle<Result<(), String>>,
    pub(crate) ping_nonce: u64,
    pub(crate) ping_outstanding: Option<(u64, Instant)>,
}

enum Event {
    WriterEnded(Result<Result<(), String>, tokio::task::JoinError>),
    OwedSent,
    OutboundClosed,
    Control(Option<ControlMsg>),
    Inbound(Result<Option<ConduitMsg>, crate::conduit::ConduitError>),
    Tick,
}

enum Step {
    Continue,
    End(CloseReason, Option<Message>, bool),
}

impl RunLoop {
    pub(crate) async fn run(mut self) {
        let mut ticker = self.config.keepalive.as_ref().map(|k| tokio::time::interval(k.interval));
        let end = loop {
            if self.root_released && self.table.open_count() == 0 {
                break (CloseReason::RootReleased, None, true);
            }
            let can_take = self.owed.len() < OWED_CAPACITY;
            let event = tokio::select! {
                biased;
                w = &mut self.writer => Event::WriterEnded(w),
                p = self.outbound.reserve(), if !self.owed.is_empty() => match p {
                    Ok(p) => {
                        // Use the place we waited for, then move whatever
                        // else is owed and fits now, without waiting again.
                        if let Some(m) = self.owed.pop_front() {
                            p.send(m);
                        }
                        while !self.owed.is_empty() {
                            let Some(p) = self.outbound.try_reserve() else { break };
                            if let Some(m) = self.owed.pop_front() {
                                p.send(m);
                            }
                        }
                        Event::OwedSent
                    }
                    Err(_) => Event::OutboundClosed,
                },
                m = self.mailbox.recv(), if can_take => Event::Control(m),
                i = self.conduit.recv(), if can_take => Event::Inbound(i),
                _ = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => Event::Tick,
            };
            let step = match event {
                Event::WriterEnded(w) => {
                    let reason = match w {
                        Ok(Ok(())) => CloseReason::PeerClosed,
                        Ok(Err(e)) => CloseReason::LinkError(e),
                        Err(e) => CloseReason::LinkError(format!("writer task failed: {e}")),
                    };
                    // The finished handle must not be polled again.
                    self.writer = tokio::spawn(async { Ok(()) });
                    Step::End(reason, None, false)
                }
                Event::OwedSent => Step::Continue,
                Event::OutboundClosed => Step::End(CloseReason::LinkError("outbound path closed".into()), None, false),
                Event::Control(Some(m)) => self.on_control(m),
                Event::Control(None) => Step::Continue,
                Event::Inbound(Ok(Some(ConduitMsg::Message(m)))) => self.on_message(m),
                Event::Inbound(Ok(Some(ConduitMsg::Handshake(h)))) => self.violation(
                    format!("handshake message {h:?} after the session was established"),
                    "session.handshake",
                ),
                Event::Inbound(Ok(None)) => Step::End(CloseReason::PeerClosed, None, true),
                Event::Inbound(Err(crate::conduit::ConduitError::Decode(e))) => {
                    self.violation(format!("undecodable message: {e}"), "session.message")
                }
                Event::Inbound(Err(e)) => Step::End(CloseReason::LinkError(e.to_string()), None, false),
                Event::Tick => self.on_tick(),
            };
            if let Step::End(reason, last, drain) = step {
                break (reason, last, drain);
            }
        };
        self.teardown(end.0, end.1, end.2).await;
    }

    fn violation(&mut self, description: String, rule: &'static str) -> Step {
        self.violation_described(format!("{description} (rule {rule})"))
    }

    fn violation_described(&mut self, description: String) -> Step {
        tracing::warn!(%description, "peer violated the protocol; tearing the session down");
        let last = Message::root(Payload::ProtocolError { description: description.clone() });
        // rule: session.protocol-error
        Step::End(CloseReason::LocalProtocolError(description), Some(last), false)
    }

    fn owe(&mut self, m: Message) {
        self.owed.push_back(m);
    }

    fn on_tick(&mut self) -> Step {
        let Some(k) = self.config.keepalive.clone() else { return Step::Continue };
        if let Some((_, sent)) = self.ping_outstanding {
            if sent.elapsed() >= k.timeout {
                // rule: session.keepalive
                return Step::End(CloseReason::KeepaliveTimeout, None, false);
            }
            return Step::Continue;
        }
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        self.ping_outstanding = Some((self.ping_nonce, Instant::now()));
        self.owe(Message::root(Payload::Ping { nonce: self.ping_nonce }));
        Step::Continue
    }

    // ------------------------------------------------------------ control

    fn on_control(&mut self, m: ControlMsg) -> Step {
        match m {
            ControlMsg::OpenConnection { settings, metadata, reply } => {
                if self.table.len() >= self.config.max_connections {
                    let _ = reply.send(Err(SessionError::TooManyConnections { limit: self.config.max_connections }));
                    return Step::Continue;
                }
                match self.table.open_outbound(settings.clone(), reply) {
                    Ok((id, parity)) => {
                        // rule: connection.open
                        self.owe(Message {
                            connection_id: id,
                            payload: Payload::OpenConnection { parity, settings, metadata },
                        });
                    }
                    Err((reply, e)) => {
                        let _ = reply.send(Err(e));
                    }
                }
                Step::Continue
            }
            ControlMsg::CloseConnection { id, metadata, reply } => {
                let r = if id.is_root() {
                    Err(SessionError::CannotCloseRoot)
                } else if self.close_local(id, metadata) {
                    Ok(())
                } else {
                    Err(SessionError::UnknownConnection(id))
                };
                let _ = reply.send(r);
                Step::Continue
            }
            ControlMsg::ConnectionDropped(id) => {
                // rule: rpc.caller.liveness
                self.close_local(id, Metadata::new());
                Step::Continue
            }
            ControlMsg::RootDropped => {
                // rule: rpc.caller.liveness — no CloseConnection for id 0.
                self.root_released = true;
                Step::Continue
            }
            ControlMsg::Shutdown => Step::End(CloseReason::Shutdown, None, true),
        }
    }

    fn close_local(&mut self, id: ConnectionId, metadata: Metadata) -> bool {
        match self.table.release(id, Released::ByUs) {
            Some(core) => {
                // Marking the core ended first means nothing of this
                // connection can be queued after the CloseConnection.
                core.on_lost(crate::driver::channel::LossCause::ConnectionClosed);
                self.owe(Message { connection_id: id, payload: Payload::CloseConnection { metadata } });
                true
            }
            None => false,
        }
    }

    // ------------------------------------------------------------ inbound

    fn on_message(&mut self, m: Message) -> Step {
        let id = m.connection_id;
        match m.payload {
            Payload::Ping { nonce } if id.is_root() => {
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
            Payload::OpenConnection { parity, settings, metadata } => self.on_open(id, parity, settings, metadata),
            Payload::AcceptConnection { settings, .. } => match self.table.take_pending(id, ConnEvent::PeerAccepted) {
                Ok((reply, local_settings, parity)) => {
                    let core = self.new_core(id, parity, local_settings, settings, None);
                    self.table.set_open(id, core.clone());
                    let caller = Caller { core, _live: LiveToken::new(self.mailbox_tx.clone(), id) };
                    // If the opener stopped waiting, dropping the handle
                    // closes the connection through the liveness rule.
                    let _ = reply.send(Ok(ConnectionHandle { id, caller }));
                    Step::Continue
                }
                Err(e) => self.violation(e, "connection.open"),
            },
            Payload::RejectConnection { metadata } => match self.table.take_pending(id, ConnEvent::PeerRejected) {
                Ok((reply, _, _)) => {
                    let _ = reply.send(Err(SessionError::Rejected { metadata }));
                    Step::Continue
                }
                Err(e) => self.violation(e, "connection.open.rejection"),
            },
            Payload::CloseConnection { .. } => {
                if let Some(core) = self.table.release(id, Released::ByPeer) {
                    // rule: connection.close
                    core.on_lost(crate::driver::channel::LossCause::ConnectionClosed);
                    return Step::Continue;
                }
                if self.table.released_by_us(id) {
                    // rule: connection.close.crossing — both sides closed at
                    // once; after the peer's close nothing more may come.
                    self.table.mark_peer_closed(id);
                    return Step::Continue;
                }
                match self.table.lookup(id) {
                    Lookup::Late => Step::Continue,
                    Lookup::Violation(e) => self.violation(e, "connection.close"),
                    _ => self.violation(
                        format!("CloseConnection for connection {id} before it was accepted"),
                        "connection.open",
                    ),
                }
            }
            payload if id.is_root() => {
                let root = self.root.clone();
                match root.on_payload(payload) {
                    Ok(()) => Step::Continue,
                    Err(v) => self.violation_described(v.to_string()),
                }
            }
            payload => match self.table.lookup(id) {
                Lookup::Open(core) => {
                    let core = core.clone();
                    match core.on_payload(payload) {
                        Ok(()) => Step::Continue,
                        Err(v) => self.violation_described(v.to_string()),
                    }
                }
                Lookup::Late => {
                    tracing::debug!(conn = %id, kind = payload.kind(), "discarded message for a connection we closed");
                    Step::Continue
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
        parity: crate::wire::Parity,
        settings: crate::wire::ConnectionSettings,
        metadata: Metadata,
    ) -> Step {
        if let Err(e) = self.table.check_inbound_open(id) {
            return self.violation(e, "connection.open");
        }
        // rule: connection.open.rejection
        let decision = if self.table.len() >= self.config.max_connections {
            AcceptDecision::Reject(Metadata::new().with_str("reason", "too many connections", 0))
        } else {
            match &self.shared.acceptor {
                None => AcceptDecision::Reject(Metadata::new().with_str("reason", "no acceptor configured", 0)),
                Some(a) => a.decide(&ConnectionRequest { id, metadata, peer_settings: settings.clone() }),
            }
        };
        match decision {
            AcceptDecision::Accept { settings: local, metadata, handler } => {
                // rule: connection.parity — we use the opener's opposite.
                let core = self.new_core(id, parity.opposite(), local.clone(), settings, handler);
                if let Err(e) = self.table.insert_open(id, core) {
                    tracing::error!(error = %e, "connection table refused an accepted connection");
                }
                self.owe(Message {
                    connection_id: id,
                    payload: Payload::AcceptConnection { settings: local, metadata },
                });
            }
            AcceptDecision::Reject(metadata) => {
                self.table.reject_inbound(id);
                self.owe(Message { connection_id: id, payload: Payload::RejectConnection { metadata } });
            }
        }
        Step::Continue
    }

    fn new_core(
        &self,
        id: ConnectionId,
        parity: crate::wire::Parity,
        local: crate::wire::ConnectionSettings,
        peer: crate::wire::ConnectionSettings,
        handler: Option<Arc<dyn crate::driver::Handler>>,
    ) -> Arc<ConnectionCore> {
        let core = ConnectionCore::new(
            id,
            parity,
            local,
            peer,
            self.outbound.clone(),
            handler,
            self.config.max_channels_per_connection,
        );
        tokio::spawn(core.clone().run_flush());
        core
    }

    // ------------------------------------------------------------ teardown

    async fn teardown(mut self, reason: CloseReason, last: Option<Message>, drain: bool) {
        if let Err(e) = self.phase.on_closing(reason.clone()) {
            tracing::debug!(error = %e, "teardown in unexpected phase");
        }
        tracing::debug!(%reason, "session ending");
        let cause = reason.loss_cause();
        let mut cores = vec![self.root.clone()];
        for entry in self.table.drain() {
            match entry {
                Entry::Open { core } => cores.push(core),
                Entry::PendingOutbound { reply, .. } => {
                    let _ = reply.send(Err(SessionError::Closed(reason.clone())));
                }
            }
        }
        if drain {
            // What the application handed over before the end (a channel
            // close, the cancel of a dropped call) is already accepted for
            // sending and must not be lost to the connection loss below:
            // let every flush task queue what is due first (rule:
            // rpc.caller.liveness — releasing the root ends the session
            // gracefully). `linger` bounds it if the peer stopped reading.
            // One after the other is enough: every flush task makes progress
            // meanwhile, each wait only observes its task's end.
            let flushes = async {
                for core in &cores {
                    core.drain_flush().await;
                }
            };
            if tokio::time::timeout(self.config.linger, flushes).await.is_err() {
                tracing::debug!("flush tasks did not finish within linger; dropping what they still owe");
            }
        }
        for core in &cores {
            core.on_lost(cause.clone());
        }
        // Owed messages (a pong, a close) were decided before the end: they
        // go first. A graceful end waits for room; a violation only takes
        // the room there is, so a peer that stopped reading cannot stall us.
        while let Some(m) = self.owed.pop_front() {
            if drain {
                if self.outbound.send(m).await.is_err() {
                    break;
                }
            } else if let Some(p) = self.outbound.try_reserve() {
                p.send(m);
            } else {
                break;
            }
        }
        if let Some(f) = self.finish.take() {
            let _ = f.send(Finish { last, drain, linger: self.config.linger });
        }
        if let Err(e) = (&mut self.writer).await {
            tracing::debug!(error = %e, "writer task ended abnormally");
        }
        let reason = self.phase.on_closed().unwrap_or(reason);
        let _ = self.closed_tx.send(Some(reason));
    }
}

#[allow(dead_code)]
fn _assert_send(r: RunLoop) -> impl std::future::Future<Output = ()> + Send {
    r.run()
}

#[allow(dead_code)]
const _LINGER: Duration = Duration::from_secs(5);
