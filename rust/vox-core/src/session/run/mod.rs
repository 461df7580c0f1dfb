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
//!
//! This module holds the loop itself: what it waits on, how each event
//! becomes a [`Step`], and the verdicts shared by every handler (protocol
//! violations, budgets, owed messages). Each kind of event is handled in its
//! own submodule: requests from handles (`control`), the peer's messages
//! (`inbound`), keepalive (`keepalive`), losing and regaining the conduit
//! (`resume`, over the per-conduit state in `attachment`), and the end
//! (`teardown`).

mod attachment;
mod control;
mod inbound;
mod keepalive;
mod resume;
mod teardown;

pub(crate) use attachment::Attachment;
use control::{Draining, drain_event};
use resume::resume_event;
pub(crate) use resume::{Resume, ResumeSide};

use crate::conduit::ConduitRx;
use crate::conduit::stable::{StableEnd, StableError};
use crate::driver::ConnectionCore;
use crate::driver::Inbound;
use crate::plumbing::ops::SessionOps;
use crate::session::budget::BudgetKind;
use crate::session::builder::{ListenerShared, SessionConfig};
use crate::session::control::{ControlMsg, MailboxRx, MailboxTx};
use crate::session::handle::RootSlot;
use crate::session::phase::{CloseReason, SessionPhase};
use crate::session::resume::NewConduit;
use crate::session::table::ConnTable;
use crate::wire::{ConduitMsg, Message, Payload};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
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
    pub(crate) shared: Arc<ListenerShared>,
    pub(crate) closed_tx: watch::Sender<Option<CloseReason>>,
    pub(crate) generation_tx: watch::Sender<u64>,
    pub(crate) ops: Option<Arc<SessionOps>>,
    /// `Some` when the session outlives its conduit (rule `session.resume`).
    pub(crate) resume: Option<Resume>,
    pub(crate) ping_nonce: u64,
    /// Rule `session.abuse-budget`.
    pub(crate) budgets: crate::session::budget::Budgets,
    /// `Some` while draining (graceful shutdown, `SessionHandle::drain`).
    pub(crate) draining: Option<Draining>,
}

enum Event {
    WriterEnded(Result<Result<(), crate::plumbing::outbound::WriterError>, tokio::task::JoinError>),
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
    w: &mut Option<JoinHandle<Result<(), crate::plumbing::outbound::WriterError>>>,
) -> Result<Result<(), crate::plumbing::outbound::WriterError>, tokio::task::JoinError> {
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
            let live = self.phase.is_established();
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
                e = resume_event(&self.phase, &mut self.resume) => e,
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
                        Ok(Err(e)) => CloseReason::LinkError(e.to_string()),
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
                    Step::End(CloseReason::Shutdown, None, self.phase.is_established())
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
}

#[allow(dead_code)]
fn _assert_send(r: RunLoop) -> impl std::future::Future<Output = ()> + Send {
    r.run()
}

#[allow(dead_code)]
const _LINGER: Duration = Duration::from_secs(5);
