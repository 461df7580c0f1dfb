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
use super::budget::BudgetKind;
use super::builder::{AcceptDecision, ConnectionRequest, SessionConfig, Shared};
use super::control::{ControlMsg, MailboxRx, MailboxTx};
use super::handle::{Caller, ConnectionHandle, CoreRef, LiveToken, RootSlot};
use super::phase::{CloseReason, ConnEvent, SessionPhase};
use super::resume::{NewConduit, Redialer, SessionRegistry, redial};
use super::table::{ConnTable, Entry, Lookup, Released};
use crate::conduit::ConduitRx;
use crate::conduit::stable::{StableEnd, StableError};
use crate::driver::ConnectionCore;
use crate::driver::Inbound;
use crate::plumbing::loss::LossCause;
use crate::plumbing::ops::SessionOps;
use crate::plumbing::outbound::{Finish, Outbound, spawn_writer};
use crate::wire::ResumeKey;
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
    /// The current attachment's root core; `root_slot` points callers at it.
    pub(crate) root: Arc<ConnectionCore>,
    pub(crate) root_slot: Arc<RootSlot>,
    pub(crate) root_released: bool,
    pub(crate) mailbox: MailboxRx,
    pub(crate) mailbox_tx: MailboxTx,
    /// Everything of the current attachment that the loop owns.
    pub(crate) link: Attachment,
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) closed_tx: watch::Sender<Option<CloseReason>>,
    pub(crate) generation_tx: watch::Sender<u64>,
    pub(crate) ops: Option<Arc<SessionOps>>,
    /// `Some` when the session outlives its conduit (rule `session.resume`).
    pub(crate) resume: Option<Resume>,
    pub(crate) ping_nonce: u64,
    /// Rule `session.abuse-budget`.
    pub(crate) budgets: super::budget::Budgets,
    /// `Some` while draining (graceful shutdown, `SessionHandle::drain`).
    pub(crate) draining: Option<Draining>,
}

/// A graceful shutdown in progress: new requests are refused, and the
/// session ends once no handler is in flight or at `deadline`.
pub(crate) struct Draining {
    idle: Arc<tokio::sync::Notify>,
    deadline: Instant,
}

/// While draining: a handler ended (check whether all are done) or the
/// grace period ran out.
async fn drain_event(d: &Option<Draining>) -> Event {
    let Some(d) = d else { return std::future::pending().await };
    tokio::select! {
        _ = d.idle.notified() => Event::DrainProgress,
        _ = tokio::time::sleep_until(d.deadline) => Event::DrainDeadline,
    }
}

/// The loop's part of one attachment. When the attachment ends, all of it
/// is dropped together (the writer aborted), so nothing queued for an old
/// attachment can reach a new conduit.
pub(crate) struct Attachment {
    pub(crate) outbound: Outbound,
    /// `None` while resuming.
    pub(crate) writer: Option<JoinHandle<Result<(), String>>>,
    pub(crate) finish: Option<oneshot::Sender<Finish>>,
    pub(crate) conduit: Option<ConduitRx>,
    pub(crate) owed: VecDeque<Message>,
    pub(crate) ping_outstanding: Option<(u64, Instant)>,
}

impl Attachment {
    pub(crate) fn start(conduit: NewConduit, capacity: usize) -> Attachment {
        let (finish_tx, finish_rx) = oneshot::channel();
        let (outbound, writer) = spawn_writer(conduit.tx, capacity, finish_rx);
        Attachment {
            outbound,
            writer: Some(writer),
            finish: Some(finish_tx),
            conduit: Some(conduit.rx),
            owed: VecDeque::new(),
            ping_outstanding: None,
        }
    }

    fn is_live(&self) -> bool {
        self.writer.is_some()
    }
}

/// How a resumable session gets its next conduit.
pub(crate) struct Resume {
    pub(crate) key: ResumeKey,
    pub(crate) side: ResumeSide,
    /// When `Resuming` gives up.
    pub(crate) deadline: Option<Instant>,
}

pub(crate) enum ResumeSide {
    /// We redial; the attempt's result arrives here.
    Initiator { redialer: Redialer, pending: Option<oneshot::Receiver<Result<NewConduit, String>>> },
    /// The listener routes a resuming `Hello` to us (`ControlMsg::Reattach`).
    Acceptor { registry: SessionRegistry },
}

enum Event {
    WriterEnded(Result<Result<(), String>, tokio::task::JoinError>),
    OwedSent,
    OutboundClosed,
    Control(Option<ControlMsg>),
    Inbound(Result<Option<ConduitMsg>, crate::conduit::ConduitError>),
    Tick,
    Redialed(Result<NewConduit, String>),
    RecoveryTimeout,
    DrainProgress,
    DrainDeadline,
}

enum Step {
    Continue,
    /// The conduit is gone: resume if the session can, else end with it.
    Lost(CloseReason),
    End(CloseReason, Option<Message>, bool),
}

async fn writer_end(
    w: &mut Option<JoinHandle<Result<(), String>>>,
) -> Result<Result<(), String>, tokio::task::JoinError> {
    match w {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

async fn inbound(c: &mut Option<ConduitRx>) -> Result<Option<ConduitMsg>, crate::conduit::ConduitError> {
    match c {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// While resuming: the redial's result (initiator) or the recovery deadline.
async fn resume_event(r: &mut Option<Resume>) -> Event {
    let Some(Resume { deadline: Some(deadline), side, .. }) = r else { return std::future::pending().await };
    let deadline = *deadline;
    let redialed = async {
        match side {
            ResumeSide::Initiator { pending: Some(p), .. } => match p.await {
                Ok(r) => r,
                Err(_) => Err("the redial task ended without a result".into()),
            },
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        r = redialed => Event::Redialed(r),
        _ = tokio::time::sleep_until(deadline) => Event::RecoveryTimeout,
    }
}

impl RunLoop {
    pub(crate) async fn run(mut self) {
        // The first ping goes one interval after the start: the handshake
        // just proved the peer alive.
        let mut ticker =
            self.config.keepalive.as_ref().map(|k| tokio::time::interval_at(Instant::now() + k.interval, k.interval));
        let end = loop {
            // rule: rpc.caller.liveness — a side that serves a handler on
            // the root keeps the session until the peer ends it: a server
            // never drops a client because its own code holds no caller.
            if self.root_released && self.table.open_count() == 0 && !self.root.serves_handler() {
                break (CloseReason::RootReleased, None, true);
            }
            let live = self.link.is_live();
            let can_take = self.link.owed.len() < OWED_CAPACITY;
            let link = &mut self.link;
            let event = tokio::select! {
                biased;
                w = writer_end(&mut link.writer) => Event::WriterEnded(w),
                p = link.outbound.reserve(), if live && !link.owed.is_empty() => match p {
                    Ok(p) => {
                        // Use the place we waited for, then move whatever
                        // else is owed and fits now, without waiting again.
                        if let Some(m) = link.owed.pop_front() {
                            p.send(m);
                        }
                        while !link.owed.is_empty() {
                            let Some(p) = link.outbound.try_reserve() else { break };
                            if let Some(m) = link.owed.pop_front() {
                                p.send(m);
                            }
                        }
                        Event::OwedSent
                    }
                    Err(_) => Event::OutboundClosed,
                },
                m = self.mailbox.recv(), if can_take => Event::Control(m),
                i = inbound(&mut link.conduit), if can_take => Event::Inbound(i),
                e = resume_event(&mut self.resume) => e,
                e = drain_event(&self.draining) => e,
                _ = async {
                    match ticker.as_mut() {
                        Some(t) if live => { t.tick().await; }
                        _ => std::future::pending::<()>().await,
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
                    self.link.writer = None;
                    Step::Lost(reason)
                }
                Event::Redialed(Ok(conduit)) => {
                    self.reattach(conduit);
                    Step::Continue
                }
                Event::Redialed(Err(e)) => Step::End(CloseReason::ResumeFailed(e), None, false),
                Event::RecoveryTimeout => Step::End(
                    CloseReason::ResumeFailed("no replacement conduit within the recovery timeout".into()),
                    None,
                    false,
                ),
                Event::OwedSent => Step::Continue,
                Event::DrainProgress => self.drain_check(),
                Event::DrainDeadline => {
                    tracing::info!("grace period over; ending the session with handlers still in flight");
                    Step::End(CloseReason::Shutdown, None, self.link.is_live())
                }
                Event::OutboundClosed => Step::Lost(CloseReason::LinkError("outbound path closed".into())),
                Event::Control(Some(m)) => self.on_control(m),
                Event::Control(None) => Step::Continue,
                Event::Inbound(Ok(Some(ConduitMsg::Message(m)))) => self.on_message(m),
                Event::Inbound(Ok(Some(ConduitMsg::Handshake(h)))) => self.violation(
                    format!("handshake message {h:?} after the session was established"),
                    "session.handshake",
                ),
                Event::Inbound(Ok(None)) => match self.resume {
                    // A bare link's end may be a break: a resumable session
                    // waits for its peer to come back.
                    Some(_) => Step::Lost(CloseReason::PeerClosed),
                    None => Step::End(CloseReason::PeerClosed, None, true),
                },
                Event::Inbound(Err(crate::conduit::ConduitError::Decode(e))) => match e {
                    e @ crate::wire::DecodeError::LimitExceeded { .. } => {
                        self.violation(e.to_string(), "session.decode.bounded")
                    }
                    e => self.violation(format!("undecodable message: {e}"), "session.message"),
                },
                // rule: session.protocol-error — violations of the stable
                // conduit's rules get a ProtocolError too.
                Event::Inbound(Err(crate::conduit::ConduitError::Stable(StableEnd::Violation(v)))) => {
                    let rule = match v {
                        StableError::Gap { .. } => "stable.seq",
                        StableError::AckBeyondSent { .. } => "stable.ack",
                        StableError::ReplayGap { .. } => "stable.replay-buffer",
                    };
                    self.violation(v.to_string(), rule)
                }
                Event::Inbound(Err(crate::conduit::ConduitError::Stable(StableEnd::Undecodable(e)))) => {
                    self.violation(format!("undecodable stable-conduit message: {e}"), "conduit.stable")
                }
                Event::Inbound(Err(e)) => Step::Lost(CloseReason::LinkError(e.to_string())),
                Event::Tick => self.on_tick(),
            };
            match step {
                Step::Continue => {}
                Step::Lost(reason) => {
                    if let Err(reason) = self.detach(reason) {
                        break (reason, None, false);
                    }
                }
                Step::End(reason, last, drain) => break (reason, last, drain),
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

    /// Meters one legal but costly event (rule `session.abuse-budget`);
    /// `Some` is the teardown for a peer over its budget.
    fn spend(&mut self, kind: BudgetKind) -> Option<Step> {
        match self.budgets.spend(kind, Instant::now()) {
            Ok(()) => None,
            Err(e) => Some(self.violation_described(e.to_string())),
        }
    }

    /// What a connection's driver made of a payload.
    fn on_inbound(&mut self, outcome: Result<Inbound, crate::driver::Violation>) -> Step {
        let kind = match outcome {
            Ok(Inbound::Handled) => return Step::Continue,
            Ok(Inbound::Late) => BudgetKind::LateMessages,
            Ok(Inbound::Cancelled) => BudgetKind::CancelledRequests,
            Err(v) => return self.violation_described(v.to_string()),
        };
        self.spend(kind).unwrap_or(Step::Continue)
    }

    fn owe(&mut self, m: Message) {
        self.link.owed.push_back(m);
    }

    // ------------------------------------------------------------ resume

    /// The conduit is gone. A resumable session keeps its session-scoped
    /// state (connection namespace, operation table, handles) and waits for
    /// a replacement; what was in flight on the lost attachment fails (rule
    /// `session.resume`). Otherwise `Err` says why the session ends.
    fn detach(&mut self, reason: CloseReason) -> Result<(), CloseReason> {
        let Some(resume) = self.resume.as_mut() else { return Err(reason) };
        let lost = match self.phase.on_attachment_lost() {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "conduit loss outside Established");
                return Err(reason);
            }
        };
        tracing::info!(%reason, generation = lost, "session conduit lost; resuming");
        // Pending calls fail retryably, handlers are stopped (or, for
        // operations, handed to the table), channels report the break (rule
        // `retry.channel.disconnect.closes`).
        self.root.on_lost(LossCause::ConnectionClosed);
        // Virtual connections end with the attachment: whether an open, an
        // accept or a close crossed the break is unknowable, so neither side
        // keeps any (the id namespace is kept: ids are never reused).
        for entry in self.table.drain() {
            match entry {
                Entry::Open { core } => core.on_lost(LossCause::ConnectionClosed),
                Entry::PendingOutbound { reply, .. } => {
                    let _ = reply.send(Err(SessionError::Resuming));
                }
            }
        }
        if let Some(w) = self.link.writer.take() {
            w.abort();
        }
        self.link.finish = None;
        self.link.conduit = None;
        self.link.owed.clear();
        self.link.ping_outstanding = None;
        // One deadline for both: the loop gives up when the redial does.
        let deadline = Instant::now() + self.config.session_resume.recovery_timeout;
        resume.deadline = Some(deadline);
        if let ResumeSide::Initiator { redialer, pending } = &mut resume.side {
            let (tx, rx) = oneshot::channel();
            let redialer = redialer.clone();
            tokio::spawn(async move {
                let _ = tx.send(redial(redialer, deadline).await);
            });
            *pending = Some(rx);
        }
        Ok(())
    }

    /// Binds `conduit` as the next attachment. A resume that arrives while
    /// we still think the old attachment is alive first detaches it: the
    /// peer has given it up (rule `session.resume`).
    fn reattach(&mut self, conduit: NewConduit) {
        if self.phase.is_established() {
            if let Err(reason) = self.detach(CloseReason::LinkError("replaced by a resumed conduit".into())) {
                tracing::debug!(%reason, "reattach to a session that cannot resume");
                return;
            }
        }
        if self.root.local_parity != conduit.negotiated.local_parity {
            tracing::warn!("resuming conduit negotiated another parity; dropped");
            return;
        }
        let generation = match self.phase.on_reattached() {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "reattach outside Resuming; conduit dropped");
                return;
            }
        };
        let negotiated = conduit.negotiated.clone();
        let peer_addr = conduit.rx.peer_addr();
        let peer_identity = conduit.rx.peer_identity();
        self.link = Attachment::start(conduit, self.config.outbound_capacity);
        let root = self.root.successor(self.link.outbound.clone(), negotiated.local_root, negotiated.peer_root);
        root.set_peer_addr(peer_addr);
        root.set_peer_identity(peer_identity);
        tokio::spawn(root.clone().run_flush());
        self.root_slot.set(root.clone());
        self.root = root;
        if let Some(resume) = self.resume.as_mut() {
            resume.deadline = None;
            if let ResumeSide::Initiator { pending, .. } = &mut resume.side {
                *pending = None;
            }
        }
        tracing::info!(generation, "session resumed on a new conduit");
        let _ = self.generation_tx.send(generation);
    }

    fn on_tick(&mut self) -> Step {
        let Some(k) = self.config.keepalive.clone() else { return Step::Continue };
        if let Some((_, sent)) = self.link.ping_outstanding {
            if sent.elapsed() >= k.timeout {
                // rule: session.keepalive
                return Step::End(CloseReason::KeepaliveTimeout, None, false);
            }
            return Step::Continue;
        }
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        self.link.ping_outstanding = Some((self.ping_nonce, Instant::now()));
        self.owe(Message::root(Payload::Ping { nonce: self.ping_nonce }));
        Step::Continue
    }

    // ------------------------------------------------------------ control

    fn on_control(&mut self, m: ControlMsg) -> Step {
        match m {
            ControlMsg::OpenConnection { settings, metadata, reply } => {
                if !self.link.is_live() {
                    let _ = reply.send(Err(SessionError::Resuming));
                    return Step::Continue;
                }
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
            ControlMsg::Shutdown => Step::End(CloseReason::Shutdown, None, self.link.is_live()),
            ControlMsg::Drain { grace } => {
                if self.draining.is_none() {
                    let idle = Arc::new(tokio::sync::Notify::new());
                    self.root.start_draining(idle.clone());
                    for core in self.table.open_cores() {
                        core.start_draining(idle.clone());
                    }
                    self.draining = Some(Draining { idle, deadline: Instant::now() + grace });
                }
                self.drain_check()
            }
            ControlMsg::Reattach(conduit) => {
                self.reattach(*conduit);
                Step::Continue
            }
        }
    }

    /// While draining: ends the session once no handler is in flight.
    fn drain_check(&mut self) -> Step {
        if self.draining.is_none() {
            return Step::Continue;
        }
        let idle = self.root.is_idle() && self.table.open_cores().iter().all(|c| c.is_idle());
        if idle { Step::End(CloseReason::Shutdown, None, self.link.is_live()) } else { Step::Continue }
    }

    fn close_local(&mut self, id: ConnectionId, metadata: Metadata) -> bool {
        match self.table.release(id, Released::ByUs) {
            Some(core) => {
                // Marking the core ended first means nothing of this
                // connection can be queued after the CloseConnection.
                core.on_lost(crate::plumbing::loss::LossCause::ConnectionClosed);
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
                if let Some(e) = self.spend(BudgetKind::Pings) {
                    return e;
                }
                // rule: session.keepalive
                self.owe(Message::root(Payload::Pong { nonce }));
                Step::Continue
            }
            Payload::Pong { nonce } if id.is_root() => {
                if matches!(self.link.ping_outstanding, Some((n, _)) if n == nonce) {
                    self.link.ping_outstanding = None;
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
                    let caller = Caller::new(CoreRef::Fixed(core), LiveToken::new(self.mailbox_tx.clone(), id));
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
                    Lookup::Late => self.spend(BudgetKind::LateMessages).unwrap_or(Step::Continue),
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
                self.on_inbound(outcome)
            }
            payload => match self.table.lookup(id) {
                Lookup::Open(core) => {
                    let core = core.clone();
                    let outcome = core.on_payload(payload);
                    self.on_inbound(outcome)
                }
                Lookup::Late => {
                    tracing::debug!(conn = %id, kind = payload.kind(), "discarded message for a connection we closed");
                    self.spend(BudgetKind::LateMessages).unwrap_or(Step::Continue)
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
        let decision = if self.draining.is_some() {
            AcceptDecision::Reject(Metadata::new().with_str("reason", "the server is shutting down", 0))
        } else if self.table.len() >= self.config.max_connections {
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
                if let Some(e) = self.spend(BudgetKind::RejectedOpens) {
                    return e;
                }
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
            self.link.outbound.clone(),
            handler,
            self.config.channel_limits(),
            self.ops.clone(),
        );
        core.set_peer_addr(self.root.peer_addr());
        core.set_peer_identity(self.root.peer_identity());
        tokio::spawn(core.clone().run_flush());
        core
    }

    // ------------------------------------------------------------ teardown

    async fn teardown(mut self, reason: CloseReason, last: Option<Message>, drain: bool) {
        if let Err(e) = self.phase.on_closing(reason.clone()) {
            tracing::debug!(error = %e, "teardown in unexpected phase");
        }
        tracing::debug!(%reason, "session ending");
        if let Some(Resume { key, side: ResumeSide::Acceptor { registry }, .. }) = &self.resume {
            registry.remove(key);
        }
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
        while let Some(m) = self.link.owed.pop_front() {
            if drain {
                if self.link.outbound.send(m).await.is_err() {
                    break;
                }
            } else if let Some(p) = self.link.outbound.try_reserve() {
                p.send(m);
            } else {
                break;
            }
        }
        if let Some(f) = self.link.finish.take() {
            let linger = if drain { self.config.linger } else { self.config.protocol_error_deadline };
            let _ = f.send(Finish { last, drain, linger });
        }
        if let Some(w) = self.link.writer.take() {
            if let Err(e) = w.await {
                tracing::debug!(error = %e, "writer task ended abnormally");
            }
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
