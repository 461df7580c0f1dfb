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
//! This module is the task around the session's decisions
//! (`session::machine`): it waits on the mailbox, the conduit, the writer,
//! the keepalive ticker and the resume and drain timers, turns each into an
//! event for the machine, writes out what the machine owes the peer, and
//! carries out the [`Step`] it returns. Its own concerns each have a file:
//! draining (`drain`), losing and regaining the conduit (`resume`, over the
//! per-conduit state in `attachment`), and the end (`teardown`).

mod attachment;
mod drain;
mod resume;
mod teardown;

pub(crate) use attachment::Attachment;
use drain::{Draining, drain_event};
use resume::resume_event;
pub(crate) use resume::{Resume, ResumeSide};

use crate::conduit::ConduitRx;
use crate::conduit::stable::{StableEnd, StableError};
use crate::driver::{ConnectionCore, Handler};
use crate::plumbing::ops::SessionOps;
use crate::plumbing::outbound::{Outbound, OutboundPermit};
use crate::session::builder::SessionConfig;
use crate::session::control::{ControlMsg, MailboxRx};
use crate::session::handle::RootSlot;
use crate::session::machine::{Env, Machine, Step};
use crate::session::phase::{CloseReason, SessionPhase};
use crate::session::resume::NewConduit;
use crate::wire::{CHANNEL_ITEMS_FEATURE, ConduitMsg, ConnectionId, ConnectionSettings, Parity, Payload};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// While resuming as the initiator: the redial in flight, whose result
/// arrives here (`None` for the acceptor, which waits for the listener).
pub(crate) type Redial = Option<oneshot::Receiver<Result<NewConduit, String>>>;

pub(crate) struct RunLoop {
    /// The session's decisions and the state they need; its phase holds
    /// the attachment while established and the redial while resuming.
    pub(crate) machine: Machine<Attachment, Redial>,
    /// Points callers at the machine's current root core.
    pub(crate) root_slot: Arc<RootSlot>,
    pub(crate) mailbox: MailboxRx,
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) closed_tx: watch::Sender<Option<CloseReason>>,
    pub(crate) generation_tx: watch::Sender<u64>,
    pub(crate) ops: Option<Arc<SessionOps>>,
    /// `Some` when the session outlives its conduit (rule `session.resume`).
    pub(crate) resume: Option<Resume>,
    /// `Some` while draining (graceful shutdown, `SessionHandle::drain`).
    pub(crate) draining: Option<Draining>,
}

/// What the machine asks of the runtime: driver cores that run their own
/// tasks.
struct Wiring<'a> {
    config: &'a SessionConfig,
    ops: &'a Option<Arc<SessionOps>>,
}

impl Env for Wiring<'_> {
    fn new_core(
        &mut self,
        id: ConnectionId,
        parity: Parity,
        local: ConnectionSettings,
        peer: ConnectionSettings,
        handler: Option<Arc<dyn Handler>>,
        outbound: &Outbound,
    ) -> Arc<ConnectionCore> {
        ConnectionCore::started(
            id,
            parity,
            local,
            peer,
            outbound.clone(),
            handler,
            self.config.channel_limits(),
            self.ops.clone(),
        )
    }
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

async fn writer_end(
    w: Option<&mut Option<JoinHandle<Result<(), crate::plumbing::outbound::WriterError>>>>,
) -> Result<Result<(), crate::plumbing::outbound::WriterError>, tokio::task::JoinError> {
    match w {
        Some(Some(w)) => w.await,
        _ => std::future::pending().await,
    }
}

/// A place on the attachment's outbound path; `None` once it closed.
async fn reserve(o: Option<&Outbound>) -> Option<OutboundPermit<'_>> {
    match o {
        Some(o) => o.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

async fn inbound(c: Option<&mut Option<ConduitRx>>) -> Result<Option<ConduitMsg>, crate::conduit::ConduitError> {
    match c {
        Some(Some(c)) => c.recv().await,
        _ => std::future::pending().await,
    }
}

/// Polls `f` once: its output if it is ready now, `None` (and `f` dropped)
/// otherwise. Only for cancel-safe futures.
async fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// How many more inbound messages the loop takes straight after one, while
/// each is already there and nothing is owed, before it waits on
/// everything again. A stream's items arrive many per read: without this
/// every one of them would pay for polling the writer, the mailbox and the
/// timers too; with it, a mailbox message waits behind at most this many.
const INBOUND_BURST: usize = 16;

impl RunLoop {
    pub(crate) async fn run(mut self) {
        // The first ping goes one interval after the start: the handshake
        // just proved the peer alive.
        let mut ticker =
            self.config.keepalive.as_ref().map(|k| tokio::time::interval_at(Instant::now() + k.interval, k.interval));
        let mut burst = 0;
        let end = loop {
            // rule: rpc.caller.liveness
            if let Some(Step::End(reason, last, drain)) = self.machine.released() {
                break (reason, last, drain);
            }
            let owes = self.machine.owes();
            let can_take = self.machine.can_take();
            // What there is to wait on is what the phase holds: the
            // attachment while established, the redial while resuming.
            let (phase, owed) = self.machine.split_mut();
            let (writer, outbound, conduit, wait) = match phase {
                SessionPhase::Established { attachment: a, .. } => {
                    (Some(&mut a.writer), Some(&a.outbound), Some(&mut a.conduit), None)
                }
                SessionPhase::Resuming { deadline, redial, .. } => (None, None, None, Some((*deadline, redial))),
                SessionPhase::Closing(_) | SessionPhase::Closed(_) => (None, None, None, None),
            };
            let live = outbound.is_some();
            let mut conduit = conduit;
            // The next message, if it was read with the last one (`inbound`
            // is cancel-safe: a pending poll drops nothing).
            let ready = if burst > 0 && !owes && can_take {
                burst -= 1;
                ready_now(inbound(conduit.as_deref_mut())).await
            } else {
                None
            };
            let event = if let Some(i) = ready {
                Event::Inbound(i)
            } else {
                burst = INBOUND_BURST;
                tokio::select! {
                biased;
                w = writer_end(writer) => Event::WriterEnded(w),
                p = reserve(outbound), if owes => match p {
                    Some(p) => {
                        // Use the place we waited for, then move whatever
                        // else is owed and fits now, without waiting again.
                        if let Some(m) = owed.pop_front() {
                            p.send(m);
                        }
                        while !owed.is_empty() {
                            let Some(p) = outbound.and_then(|o| o.try_reserve()) else { break };
                            if let Some(m) = owed.pop_front() {
                                p.send(m);
                            }
                        }
                        Event::OwedSent
                    }
                    None => Event::OutboundClosed,
                },
                m = self.mailbox.recv(), if can_take => Event::Control(m),
                i = inbound(conduit), if can_take => Event::Inbound(i),
                e = resume_event(wait) => e,
                e = drain_event(&self.draining) => e,
                _ = async {
                    match ticker.as_mut() {
                        Some(t) if live => { t.tick().await; }
                        _ => std::future::pending::<()>().await,
                    }
                } => Event::Tick,
                }
            };
            if !matches!(event, Event::Inbound(Ok(Some(_)))) {
                burst = 0;
            }
            let step = match event {
                Event::WriterEnded(w) => {
                    let reason = match w {
                        Ok(Ok(())) => CloseReason::PeerClosed,
                        Ok(Err(e)) => CloseReason::LinkError(e.to_string()),
                        Err(e) => CloseReason::LinkError(format!("writer task failed: {e}")),
                    };
                    // The finished handle must not be polled again.
                    if let Some(a) = self.machine.phase.attachment_mut() {
                        a.writer = None;
                    }
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
                    Step::End(CloseReason::Shutdown, None, self.machine.phase.is_established())
                }
                Event::OutboundClosed => Step::Lost(CloseReason::LinkError("outbound path closed".into())),
                Event::Control(Some(m)) => match self.machine.on_control(m) {
                    Ok(step) => step,
                    Err(ControlMsg::Drain { grace }) => self.start_drain(grace),
                    Err(ControlMsg::Reattach(conduit)) => {
                        self.reattach(*conduit);
                        Step::Continue
                    }
                    Err(ControlMsg::Snapshot { reply }) => {
                        let _ = reply.send(self.snapshot());
                        Step::Continue
                    }
                    Err(_) => Step::Continue,
                },
                Event::Control(None) => Step::Continue,
                Event::Inbound(Ok(Some(ConduitMsg::Message(m))))
                    if matches!(m.payload, Payload::ChannelItems { .. })
                        && !self.machine.phase.attachment_mut().is_some_and(|a| a.channel_items) =>
                {
                    self.machine.violation_described(format!(
                        "ChannelItems on connection {} without the feature {CHANNEL_ITEMS_FEATURE} agreed in the \
                         handshake (rule session.message)",
                        m.connection_id
                    ))
                }
                Event::Inbound(Ok(Some(ConduitMsg::Message(m)))) => {
                    let mut env = Wiring { config: &self.config, ops: &self.ops };
                    self.machine.on_message(m, Instant::now(), &mut env)
                }
                Event::Inbound(Ok(Some(ConduitMsg::Handshake(h)))) => self.machine.violation_described(format!(
                    "handshake message {h:?} after the session was established (rule session.handshake)"
                )),
                Event::Inbound(Ok(None)) => match self.resume {
                    // A bare link's end may be a break: a resumable session
                    // waits for its peer to come back.
                    Some(_) => Step::Lost(CloseReason::PeerClosed),
                    None => Step::End(CloseReason::PeerClosed, None, true),
                },
                Event::Inbound(Err(crate::conduit::ConduitError::Decode(e))) => match e {
                    e @ crate::wire::DecodeError::LimitExceeded { .. } => {
                        self.machine.violation_described(format!("{e} (rule session.decode.bounded)"))
                    }
                    e => self.machine.violation_described(format!("undecodable message: {e} (rule session.message)")),
                },
                // rule: session.protocol-error — violations of the stable
                // conduit's rules get a ProtocolError too.
                Event::Inbound(Err(crate::conduit::ConduitError::Stable(StableEnd::Violation(v)))) => {
                    let rule = match v {
                        StableError::Gap { .. } => "stable.seq",
                        StableError::AckBeyondSent { .. } => "stable.ack",
                        StableError::ReplayGap { .. } => "stable.replay-buffer",
                    };
                    self.machine.violation_described(format!("{v} (rule {rule})"))
                }
                Event::Inbound(Err(crate::conduit::ConduitError::Stable(StableEnd::Undecodable(e)))) => self
                    .machine
                    .violation_described(format!("undecodable stable-conduit message: {e} (rule conduit.stable)")),
                Event::Inbound(Err(e)) => Step::Lost(CloseReason::LinkError(e.to_string())),
                Event::Tick => self.machine.on_tick(Instant::now()),
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
}

impl RunLoop {
    /// The machine's snapshot with the queues the loop owns.
    fn snapshot(&mut self) -> crate::session::SessionSnapshot {
        let mut snapshot = self.machine.snapshot();
        snapshot.mailbox_queued = self.mailbox.queued();
        if let Some(a) = self.machine.phase.attachment_mut() {
            snapshot.outbound_queued = a.outbound.queued();
            snapshot.outbound_capacity = a.outbound.capacity();
        }
        snapshot
    }
}

#[allow(dead_code)]
fn _assert_send(r: RunLoop) -> impl std::future::Future<Output = ()> + Send {
    r.run()
}
