//! The session's decisions, without tasks or IO (the sans-IO half of the
//! run loop): what to make of the peer's message, of a request from a
//! handle and of a keepalive tick. Each entry point takes the event and the
//! current time and returns a [`Step`]; what must go to the peer is queued
//! in [`Machine::poll_transmit`]'s queue, and the one thing that needs the
//! runtime (starting a new connection's driver core) is asked of an
//! [`Env`]. The run loop (`session::run`) is the thin task around it: it
//! waits for events, feeds them in, and writes out what is owed. Because
//! nothing here waits or spawns, two machines can be wired back to back
//! and driven step by step (the `pair` tests), like quinn's `Pair`.
//!
//! Each kind of event has its own file: requests from handles (`control`),
//! the peer's messages (`inbound`), keepalive (`keepalive`).

mod control;
mod inbound;
mod keepalive;
#[cfg(test)]
mod pair;

use crate::driver::{ConnectionCore, Handler, Inbound, Violation};
use crate::plumbing::loss::LossCause;
use crate::plumbing::outbound::Outbound;
use crate::session::SessionError;
use crate::session::budget::{BudgetKind, Budgets};
use crate::session::builder::{Acceptor, KeepaliveConfig};
use crate::session::control::MailboxTx;
use crate::session::phase::{CloseReason, ConnState, PhaseError, SessionPhase};
use crate::session::snapshot::{ConnectionSnapshot, SessionSnapshot};
use crate::session::table::{ConnEntry, ConnTable};
use crate::wire::{ConnectionId, ConnectionSettings, Message, Parity, Payload};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// How many messages the machine may owe the peer before the run loop stops
/// taking new events (it reads nothing more until they are written): the
/// bound on the one queue the session itself sends from.
pub(crate) const OWED_CAPACITY: usize = 64;

/// What the run loop does after an event.
#[derive(Debug)]
pub(crate) enum Step {
    Continue,
    /// The conduit is gone: resume if the session can, else end with it.
    Lost(CloseReason),
    /// The session ends for `reason`, writing `last` (a `ProtocolError`)
    /// after what is owed; `drain` lets what was handed over go first.
    End(CloseReason, Option<Message>, bool),
}

/// What the machine needs from its surroundings.
pub(crate) trait Env {
    /// A driver core for a new virtual connection, started (its tasks
    /// running), sending on `outbound`, the current attachment's path.
    #[allow(clippy::too_many_arguments)]
    fn new_core(
        &mut self,
        id: ConnectionId,
        parity: Parity,
        local: ConnectionSettings,
        peer: ConnectionSettings,
        handler: Option<Arc<dyn Handler>>,
        outbound: &Outbound,
    ) -> Arc<ConnectionCore>;
}

/// The limits the machine enforces, fixed for the session's life.
#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) keepalive: Option<KeepaliveConfig>,
}

/// The session's decision state: the phase, the connection table, the
/// budgets, keepalive, and what is owed to the peer on this attachment.
/// `A` and `R` are what the phase holds while established and while
/// resuming (the run loop's attachment and redial; `()` in the models).
pub(crate) struct Machine<A = (), R = ()> {
    pub(crate) phase: SessionPhase<A, R>,
    pub(crate) table: ConnTable,
    /// The current attachment's root core.
    pub(crate) root: Arc<ConnectionCore>,
    /// The application dropped its last root caller (rule
    /// `rpc.caller.liveness`).
    root_released: bool,
    /// Owed to the peer on the current attachment, oldest first; bounded by
    /// the run loop taking no event while [`OWED_CAPACITY`] are owed.
    owed: VecDeque<Message>,
    ping_nonce: u64,
    /// Our ping awaiting its pong, and when it was sent.
    ping_outstanding: Option<(u64, Instant)>,
    /// Rule `session.abuse-budget`.
    budgets: Budgets,
    /// A graceful shutdown is in progress: new opens are refused.
    draining: bool,
    limits: Limits,
    acceptor: Option<Arc<dyn Acceptor>>,
    /// For the handles of connections we open.
    mailbox_tx: MailboxTx,
}

impl<A, R> Machine<A, R> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        attachment: A,
        root: Arc<ConnectionCore>,
        local_parity: Parity,
        limits: Limits,
        budgets: Budgets,
        acceptor: Option<Arc<dyn Acceptor>>,
        mailbox_tx: MailboxTx,
    ) -> Self {
        Machine {
            phase: SessionPhase::established(attachment),
            table: ConnTable::new(local_parity, 1024),
            root,
            root_released: false,
            owed: VecDeque::new(),
            ping_nonce: 0,
            ping_outstanding: None,
            budgets,
            draining: false,
            limits,
            acceptor,
            mailbox_tx,
        }
    }

    /// The next message owed to the peer, oldest first.
    pub(crate) fn poll_transmit(&mut self) -> Option<Message> {
        self.owed.pop_front()
    }

    /// The phase (to wait on what it holds) and the queue of what is owed,
    /// borrowed apart: the run loop waits on the attachment's outbound path
    /// and then moves owed messages into it.
    pub(crate) fn split_mut(&mut self) -> (&mut SessionPhase<A, R>, &mut VecDeque<Message>) {
        (&mut self.phase, &mut self.owed)
    }

    /// Whether anything is owed to the peer.
    pub(crate) fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Whether the machine can take another event: it may owe a message
    /// for each, and what it owes is bounded.
    pub(crate) fn can_take(&self) -> bool {
        self.owed.len() < OWED_CAPACITY
    }

    /// `Some` once the session has nothing left to live for (rule
    /// `rpc.caller.liveness`): the application released the root, no
    /// virtual connection is open, and this side serves no handler on the
    /// root (a side that serves one keeps the session until the peer ends
    /// it: a server never drops a client because its own code holds no
    /// caller).
    pub(crate) fn released(&self) -> Option<Step> {
        let done = self.root_released && self.table.open_count() == 0 && !self.root.serves_handler();
        done.then_some(Step::End(CloseReason::RootReleased, None, true))
    }

    /// A graceful shutdown begins: every core stops admitting new requests
    /// and signals `idle` as its handlers finish; opens are refused.
    pub(crate) fn start_draining(&mut self, idle: Arc<tokio::sync::Notify>) {
        self.draining = true;
        self.root.start_draining(idle.clone());
        for core in self.table.open_cores() {
            core.start_draining(idle.clone());
        }
    }

    /// Whether no handler of any connection is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.root.is_idle() && self.table.open_cores().iter().all(|c| c.is_idle())
    }

    /// The attachment ended and the session waits for a replacement until
    /// `deadline` (rule `session.resume`). What was in flight on it fails:
    /// pending calls retryably, handlers stop (or, for operations, go to the
    /// table), channels report the break (rule
    /// `retry.channel.disconnect.closes`); virtual connections end with the
    /// attachment (whether an open, an accept or a close crossed the break
    /// is unknowable, so neither side keeps any; ids are never reused), and
    /// nothing owed on it is sent on the next. `redial` is the wait for a
    /// replacement. Returns the lost generation and its attachment.
    pub(crate) fn on_attachment_lost(&mut self, deadline: Instant, redial: R) -> Result<(u64, A), PhaseError> {
        let lost = self.phase.on_attachment_lost(deadline, redial)?;
        self.root.on_lost(LossCause::ConnectionClosed);
        for entry in self.table.drain() {
            match entry {
                ConnEntry::Open { core } => core.on_lost(LossCause::ConnectionClosed),
                ConnEntry::PendingOutbound { reply, .. } => {
                    let _ = reply.send(Err(SessionError::Resuming));
                }
            }
        }
        self.owed.clear();
        self.ping_outstanding = None;
        Ok(lost)
    }

    /// A replacement conduit is bound as `attachment`, served by `root`
    /// (the successor of the old root core). Returns the new generation and
    /// the finished wait.
    pub(crate) fn on_reattached(&mut self, attachment: A, root: Arc<ConnectionCore>) -> Result<(u64, R), PhaseError> {
        let reattached = self.phase.on_reattached(attachment)?;
        self.root = root;
        Ok(reattached)
    }

    /// Teardown: the session enters `Closing`, and every live connection
    /// leaves the table. Returns every core to end (the root first) and
    /// the attachment, if there is one, for the last writes; fails the
    /// opens still waiting for an answer with `reason`.
    pub(crate) fn on_closing(&mut self, reason: &CloseReason) -> (Vec<Arc<ConnectionCore>>, Option<A>) {
        let attachment = match self.phase.on_closing(reason.clone()) {
            Ok(attachment) => attachment,
            Err(e) => {
                tracing::debug!(error = %e, "teardown in unexpected phase");
                None
            }
        };
        let mut cores = vec![self.root.clone()];
        for entry in self.table.drain() {
            match entry {
                ConnEntry::Open { core } => cores.push(core),
                ConnEntry::PendingOutbound { reply, .. } => {
                    let _ = reply.send(Err(SessionError::Closed(reason.clone())));
                }
            }
        }
        (cores, attachment)
    }

    /// What the session holds now (the run loop adds the queues it owns:
    /// outbound path and mailbox).
    pub(crate) fn snapshot(&self) -> SessionSnapshot {
        let phase = match self.phase {
            SessionPhase::Established { .. } => "established",
            SessionPhase::Resuming { .. } => "resuming",
            SessionPhase::Closing(_) => "closing",
            SessionPhase::Closed(_) => "closed",
        };
        let connection = |id: ConnectionId, state: &str, core: Option<&Arc<ConnectionCore>>| {
            let (outgoing, incoming) = core.map(|c| c.in_flight()).unwrap_or_default();
            ConnectionSnapshot {
                id: id.0,
                state: state.into(),
                calls: core.map(|c| c.stats()),
                channels: core.map(|c| c.channel_stats()),
                outgoing,
                incoming,
                channel_list: core.map(|c| c.channels()).unwrap_or_default(),
            }
        };
        let mut connections = vec![connection(ConnectionId::ROOT, "open", Some(&self.root))];
        for (id, state, core) in self.table.live() {
            let state = if state == ConnState::Open { "open" } else { "opening" };
            connections.push(connection(id, state, core));
        }
        SessionSnapshot {
            phase: phase.into(),
            generation: self.phase.generation().unwrap_or(0),
            connections,
            outbound_queued: 0,
            outbound_capacity: 0,
            owed: self.owed.len(),
            mailbox_queued: 0,
            draining: self.draining,
            root_released: self.root_released,
        }
    }

    fn violation(&mut self, description: String, rule: &'static str) -> Step {
        self.violation_described(format!("{description} (rule {rule})"))
    }

    /// The peer broke a rule: the session ends, writing a `ProtocolError`
    /// last (rule `session.protocol-error`).
    pub(crate) fn violation_described(&mut self, description: String) -> Step {
        tracing::warn!(%description, "peer violated the protocol; tearing the session down");
        let last = Message::root(Payload::ProtocolError { description: description.clone() });
        Step::End(CloseReason::LocalProtocolError(description), Some(last), false)
    }

    /// Meters one legal but costly event (rule `session.abuse-budget`);
    /// `Some` is the teardown for a peer over its budget.
    fn spend(&mut self, kind: BudgetKind, now: Instant) -> Option<Step> {
        match self.budgets.spend(kind, now) {
            Ok(()) => None,
            Err(e) => Some(self.violation_described(e.to_string())),
        }
    }

    /// What a connection's driver made of a payload.
    fn on_inbound(&mut self, outcome: Result<Inbound, Violation>, now: Instant) -> Step {
        let kind = match outcome {
            Ok(Inbound::Handled) => return Step::Continue,
            Ok(Inbound::Late) => BudgetKind::LateMessages,
            Ok(Inbound::Cancelled) => BudgetKind::CancelledRequests,
            Err(v) => return self.violation_described(v.to_string()),
        };
        self.spend(kind, now).unwrap_or(Step::Continue)
    }

    fn owe(&mut self, m: Message) {
        self.owed.push_back(m);
    }
}
