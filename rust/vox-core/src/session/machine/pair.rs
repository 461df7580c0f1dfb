//! Two session machines wired back to back and driven step by step, with
//! no runtime, no task and no clock but the one the test moves (the idea of
//! quinn's `Pair`): every message one side owes is handed to the other's
//! `on_message` until both are quiet, so each test is one deterministic
//! interleaving, chosen by the test.

use super::{Env, Limits, Machine, Step};
use crate::driver::channel::ChannelLimits;
use crate::driver::{ConnectionCore, Handler};
use crate::plumbing::outbound::{self, Outbound};
use crate::session::budget::{AbuseBudgets, BudgetConfig, Budgets};
use crate::session::builder::{AcceptDecision, Acceptor, ConnectionRequest, KeepaliveConfig};
use crate::session::control::{ControlMsg, MailboxRx, mailbox};
use crate::session::phase::CloseReason;
use crate::session::{ConnectionHandle, SessionError};
use crate::wire::{ConnectionId, ConnectionSettings, Message, Metadata, Parity, Payload};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Cores that start no task (nothing here sends calls, so the queue they
/// send into is never drained).
struct TestEnv;

impl Env for TestEnv {
    fn new_core(
        &mut self,
        id: ConnectionId,
        parity: Parity,
        local: ConnectionSettings,
        peer: ConnectionSettings,
        handler: Option<Arc<dyn Handler>>,
        outbound: &Outbound,
    ) -> Arc<ConnectionCore> {
        ConnectionCore::new(id, parity, local, peer, outbound.clone(), handler, LIMITS, None)
    }
}

const LIMITS: ChannelLimits = ChannelLimits { max_channels: 8, max_receive_window: 64 };
const KEEPALIVE: KeepaliveConfig =
    KeepaliveConfig { interval: Duration::from_secs(10), timeout: Duration::from_secs(20) };

struct Side {
    machine: Machine,
    env: TestEnv,
    /// Every step other than `Continue` this side returned, in order.
    steps: Vec<Step>,
    _outbound: outbound::Detached,
    _mailbox: MailboxRx,
}

impl Side {
    fn new(parity: Parity, acceptor: Option<Arc<dyn Acceptor>>, budgets: AbuseBudgets, now: Instant) -> Side {
        let (outbound, outbound_rx) = outbound::detached(64);
        let (mailbox_tx, mailbox_rx) = mailbox(16);
        let settings = ConnectionSettings::default();
        let root = ConnectionCore::new(
            ConnectionId::ROOT,
            parity,
            settings.clone(),
            settings,
            outbound.clone(),
            None,
            LIMITS,
            None,
        );
        let limits = Limits { max_connections: 4, keepalive: Some(KEEPALIVE) };
        let machine = Machine::new((), root, parity, limits, Budgets::new(&budgets, now), acceptor, mailbox_tx);
        Side { machine, env: TestEnv, steps: Vec::new(), _outbound: outbound_rx, _mailbox: mailbox_rx }
    }

    fn control(&mut self, m: ControlMsg) {
        match self.machine.on_control(m) {
            Ok(Step::Continue) => {}
            Ok(step) => self.steps.push(step),
            Err(_) => panic!("not a decision of the machine"),
        }
    }

    fn receive(&mut self, m: Message, now: Instant) {
        match self.machine.on_message(m, now, &mut self.env) {
            Step::Continue => {}
            step => self.steps.push(step),
        }
    }

    fn tick(&mut self, now: Instant) {
        match self.machine.on_tick(now) {
            Step::Continue => {}
            step => self.steps.push(step),
        }
    }

    fn open(&mut self) -> oneshot::Receiver<Result<ConnectionHandle, SessionError>> {
        let (reply, rx) = oneshot::channel();
        self.control(ControlMsg::OpenConnection {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            reply,
        });
        rx
    }

    fn close(&mut self, id: ConnectionId) -> oneshot::Receiver<Result<(), SessionError>> {
        let (reply, rx) = oneshot::channel();
        self.control(ControlMsg::CloseConnection { id, metadata: Metadata::new(), reply });
        rx
    }

    /// What this side owes, taken out of it.
    fn take_owed(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.machine.poll_transmit()).collect()
    }
}

struct Pair {
    /// The initiator (odd ids).
    a: Side,
    /// The acceptor (even ids).
    b: Side,
    now: Instant,
}

fn accept_all() -> Arc<dyn Acceptor> {
    Arc::new(|_: &ConnectionRequest| AcceptDecision::Accept {
        settings: ConnectionSettings::default(),
        metadata: Metadata::new(),
        handler: None,
    })
}

impl Pair {
    fn new(b_acceptor: Option<Arc<dyn Acceptor>>) -> Pair {
        Pair::with_budgets(b_acceptor, AbuseBudgets::default())
    }

    fn with_budgets(b_acceptor: Option<Arc<dyn Acceptor>>, budgets: AbuseBudgets) -> Pair {
        let now = Instant::now();
        Pair {
            a: Side::new(Parity::Odd, None, budgets, now),
            b: Side::new(Parity::Even, b_acceptor, budgets, now),
            now,
        }
    }

    /// Hands each side what the other owes until neither owes anything;
    /// returns how many messages crossed.
    fn drive(&mut self) -> usize {
        let mut crossed = 0;
        loop {
            let (to_b, to_a) = (self.a.take_owed(), self.b.take_owed());
            if to_b.is_empty() && to_a.is_empty() {
                return crossed;
            }
            crossed += to_b.len() + to_a.len();
            for m in to_b {
                self.b.receive(m, self.now);
            }
            for m in to_a {
                self.a.receive(m, self.now);
            }
        }
    }
}

fn opened(rx: &mut oneshot::Receiver<Result<ConnectionHandle, SessionError>>) -> ConnectionHandle {
    match rx.try_recv() {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => panic!("open failed: {e}"),
        Err(e) => panic!("open not answered: {e}"),
    }
}

#[test]
fn connection_open_accepted_gives_both_sides_the_connection() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut rx = pair.a.open();
    assert_eq!(pair.drive(), 2, "OpenConnection, then AcceptConnection");
    let handle = opened(&mut rx);
    assert_eq!(handle.id, ConnectionId(1), "the initiator opens odd ids");
    assert_eq!(pair.a.machine.table.open_count(), 1);
    assert_eq!(pair.b.machine.table.open_count(), 1);
    assert!(pair.a.steps.is_empty() && pair.b.steps.is_empty(), "neither side ends");
}

#[test]
fn connection_open_rejection_reaches_the_opener_with_the_reason() {
    let mut pair = Pair::new(None);
    let mut rx = pair.a.open();
    assert_eq!(pair.drive(), 2);
    match rx.try_recv() {
        Ok(Err(SessionError::Rejected { metadata })) => {
            assert_eq!(metadata.get_str("reason"), Some("no acceptor configured"))
        }
        other => panic!("expected a rejection, got {:?}", other.map(|r| r.map(|h| h.id))),
    }
    assert_eq!(pair.a.machine.table.open_count(), 0);
    assert_eq!(pair.b.machine.table.open_count(), 0);
}

#[test]
fn connection_close_crossing_both_sides_close_at_once_without_violation() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut rx = pair.a.open();
    pair.drive();
    let id = opened(&mut rx).id;
    // Both closes are queued before either side sees the other's.
    let (mut a_closed, mut b_closed) = (pair.a.close(id), pair.b.close(id));
    assert_eq!(pair.drive(), 2, "one CloseConnection each way");
    assert!(matches!(a_closed.try_recv(), Ok(Ok(()))));
    assert!(matches!(b_closed.try_recv(), Ok(Ok(()))));
    assert!(pair.a.steps.is_empty() && pair.b.steps.is_empty(), "crossing closes are legal");
    assert_eq!(pair.a.machine.table.open_count() + pair.b.machine.table.open_count(), 0);
    // After the peer's close crossed ours, anything more is a violation.
    pair.a.receive(
        Message { connection_id: id, payload: Payload::CloseConnection { metadata: Metadata::new() } },
        pair.now,
    );
    assert!(matches!(pair.a.steps.as_slice(), [Step::End(CloseReason::LocalProtocolError(_), Some(_), false)]));
}

#[test]
fn connection_close_message_crossing_our_close_is_discarded_as_late() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut rx = pair.a.open();
    pair.drive();
    let id = opened(&mut rx).id;
    let _closed = pair.a.close(id);
    // The peer's traffic on the connection, sent before it saw our close.
    pair.a.receive(
        Message { connection_id: id, payload: Payload::CancelRequest { id: crate::wire::RequestId(2) } },
        pair.now,
    );
    assert!(pair.a.steps.is_empty(), "a message crossing our close is late, not a violation");
    pair.drive();
    assert_eq!(pair.b.machine.table.open_count(), 0, "the peer applied our close");
}

#[test]
fn session_keepalive_pong_clears_the_ping_and_the_next_interval_pings_again() {
    let mut pair = Pair::new(None);
    pair.a.tick(pair.now);
    assert_eq!(pair.drive(), 2, "Ping, then Pong");
    pair.now += KEEPALIVE.interval;
    pair.a.tick(pair.now);
    let owed = pair.a.take_owed();
    assert!(
        matches!(owed.as_slice(), [Message { payload: Payload::Ping { nonce: 2 }, .. }]),
        "answered ping: a new one goes out, got {owed:?}"
    );
    assert!(pair.a.steps.is_empty());
}

#[test]
fn session_keepalive_no_pong_within_the_timeout_ends_the_session() {
    let mut pair = Pair::new(None);
    let start = pair.now;
    pair.a.tick(start);
    let _lost_in_transit = pair.a.take_owed();
    pair.a.tick(start + KEEPALIVE.interval);
    assert!(pair.a.steps.is_empty(), "still within the timeout");
    assert!(!pair.a.machine.owes(), "one ping outstanding at a time");
    pair.a.tick(start + KEEPALIVE.timeout);
    assert!(matches!(pair.a.steps.as_slice(), [Step::End(CloseReason::KeepaliveTimeout, None, false)]));
}

#[test]
fn session_abuse_budget_ping_flood_ends_with_a_protocol_error_both_sides_see() {
    let budgets = AbuseBudgets { pings: BudgetConfig { burst: 3, per_second: 0 }, ..AbuseBudgets::default() };
    let mut pair = Pair::with_budgets(None, budgets);
    for nonce in 0..4 {
        pair.b.receive(Message::root(Payload::Ping { nonce }), pair.now);
    }
    assert_eq!(pair.b.take_owed().len(), 3, "pongs within the budget only");
    let last = match pair.b.steps.as_slice() {
        [Step::End(CloseReason::LocalProtocolError(d), Some(last), false)] => {
            assert!(d.contains("pings"), "names the budget: {d}");
            last.clone()
        }
        other => panic!("expected a violation, got {other:?}"),
    };
    pair.a.receive(last, pair.now);
    assert!(matches!(pair.a.steps.as_slice(), [Step::End(CloseReason::PeerProtocolError(_), None, false)]));
}

#[test]
fn connection_root_close_from_the_peer_is_a_protocol_error() {
    let mut pair = Pair::new(None);
    pair.b.receive(Message::root(Payload::CloseConnection { metadata: Metadata::new() }), pair.now);
    match pair.b.steps.as_slice() {
        [Step::End(CloseReason::LocalProtocolError(d), Some(_), false)] => {
            assert!(d.contains("connection.root"), "cites the rule: {d}")
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn rpc_caller_liveness_releasing_the_root_ends_only_once_no_connection_is_open() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut rx = pair.a.open();
    pair.drive();
    let id = opened(&mut rx).id;
    pair.a.control(ControlMsg::RootDropped);
    assert!(pair.a.machine.released().is_none(), "a virtual connection keeps the session");
    pair.a.control(ControlMsg::ConnectionDropped(id));
    assert!(matches!(pair.a.machine.released(), Some(Step::End(CloseReason::RootReleased, None, true))));
    pair.drive();
    assert_eq!(pair.b.machine.table.open_count(), 0, "the drop closed the connection on the wire");
    assert!(pair.b.machine.released().is_none(), "the peer's root was not released");
}

#[test]
fn session_resume_losing_the_attachment_fails_pending_opens_and_forgets_what_was_owed() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut rx = pair.a.open();
    pair.a.tick(pair.now);
    assert!(pair.a.machine.owes());
    let lost = pair.a.machine.on_attachment_lost(pair.now + Duration::from_secs(30), ());
    assert_eq!(lost, Ok((1, ())));
    assert!(matches!(rx.try_recv(), Ok(Err(SessionError::Resuming))));
    assert!(!pair.a.machine.owes(), "nothing of the old attachment goes on the next");
    let mut again = pair.a.open();
    assert!(matches!(again.try_recv(), Ok(Err(SessionError::Resuming))), "no opens while resuming");
    assert!(pair.a.machine.on_attachment_lost(pair.now, ()).is_err(), "lost once per attachment");
}

#[test]
fn session_snapshot_follows_the_machine() {
    let mut pair = Pair::new(Some(accept_all()));
    let fresh = pair.a.machine.snapshot();
    assert_eq!((fresh.phase.as_str(), fresh.generation, fresh.owed), ("established", 1, 0));
    assert_eq!(fresh.connections.len(), 1, "only the root");
    assert_eq!((fresh.connections[0].id, fresh.connections[0].state.as_str()), (0, "open"));
    assert!(fresh.connections[0].calls.is_some() && fresh.connections[0].channels.is_some());

    let mut rx = pair.a.open();
    let _more: Vec<_> = (0..3).map(|_| pair.a.open()).collect();
    let opening = pair.a.machine.snapshot();
    assert_eq!(opening.owed, 4, "four OpenConnection owed");
    let states: Vec<_> = opening.connections.iter().map(|c| (c.id, c.state.as_str(), c.calls.is_some())).collect();
    assert_eq!(
        states,
        [(0, "open", true), (1, "opening", false), (3, "opening", false), (5, "opening", false), (7, "opening", false)],
        "the root first, then by id whatever the table's order; no driver yet"
    );

    pair.drive();
    let _handle = opened(&mut rx);
    let open = pair.a.machine.snapshot();
    assert_eq!(open.connections[1].state, "open");
    assert!(open.connections[1].calls.is_some(), "an open connection has its driver");
    assert!(!open.root_released && !open.draining);

    pair.a.control(ControlMsg::RootDropped);
    pair.a.machine.start_draining(Arc::new(tokio::sync::Notify::new()));
    let flags = pair.a.machine.snapshot();
    assert!(flags.root_released && flags.draining);

    pair.a.machine.on_attachment_lost(pair.now, ()).expect("lost");
    let resuming = pair.a.machine.snapshot();
    assert_eq!((resuming.phase.as_str(), resuming.generation), ("resuming", 1), "the lost generation");
    assert_eq!(resuming.connections.len(), 1, "virtual connections end with the attachment");
}

#[test]
fn session_owed_messages_are_bounded_the_loop_takes_no_event_once_the_queue_is_full() {
    let mut pair = Pair::new(None);
    for nonce in 0..super::OWED_CAPACITY as u64 - 1 {
        pair.b.receive(Message::root(Payload::Ping { nonce }), pair.now);
    }
    assert!(pair.b.machine.can_take(), "one place left");
    pair.b.receive(Message::root(Payload::Ping { nonce: 99 }), pair.now);
    assert!(!pair.b.machine.can_take(), "{} pongs owed: no more events until they are written", super::OWED_CAPACITY);
    assert!(pair.b.machine.poll_transmit().is_some());
    assert!(pair.b.machine.can_take(), "writing one makes room for one more event");
}

#[test]
fn connection_close_for_a_connection_never_opened_is_a_violation_of_connection_close() {
    let mut pair = Pair::new(None);
    // Even ids are the peer's; 4 was never opened.
    pair.a.receive(
        Message { connection_id: ConnectionId(4), payload: Payload::CloseConnection { metadata: Metadata::new() } },
        pair.now,
    );
    match pair.a.steps.as_slice() {
        [Step::End(CloseReason::LocalProtocolError(d), Some(_), false)] => {
            assert!(d.contains("never opened") && d.contains("(rule connection.close)"), "{d}")
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn connection_close_for_a_connection_released_beyond_memory_is_late_not_a_violation() {
    let mut pair = Pair::new(Some(accept_all()));
    let mut first = None;
    // More connections closed by us than the table remembers (1,024).
    for _ in 0..1030 {
        let mut rx = pair.a.open();
        pair.drive();
        let id = opened(&mut rx).id;
        first.get_or_insert(id);
        let _closed = pair.a.close(id);
        pair.drive();
    }
    let first = first.expect("opened");
    pair.a.receive(
        Message { connection_id: first, payload: Payload::CloseConnection { metadata: Metadata::new() } },
        pair.now,
    );
    assert!(pair.a.steps.is_empty(), "too old to judge: tolerated (and metered), got {:?}", pair.a.steps);
}

/// A handler that never answers: its calls stay in flight.
fn never_answers() -> Arc<dyn Handler> {
    Arc::new(|call: crate::driver::Call| async move {
        std::future::pending::<()>().await;
        drop(call);
    })
}

#[tokio::test(flavor = "current_thread")]
async fn session_drain_idle_only_once_no_handler_of_any_connection_is_in_flight() {
    let busy = never_answers();
    let acceptor: Arc<dyn Acceptor> = Arc::new(move |_: &ConnectionRequest| AcceptDecision::Accept {
        settings: ConnectionSettings::default(),
        metadata: Metadata::new(),
        handler: Some(busy.clone()),
    });
    let mut pair = Pair::new(Some(acceptor));
    assert!(pair.b.machine.is_idle(), "nothing runs yet");
    let mut rx = pair.a.open();
    pair.drive();
    let id = opened(&mut rx).id;
    let request = Payload::Request {
        id: crate::wire::RequestId(1),
        method_id: crate::wire::MethodId(7),
        args: crate::wire::Blob::new(bytes::Bytes::new()),
        channels: Vec::new(),
        metadata: Metadata::new(),
    };
    pair.b.receive(Message { connection_id: id, payload: request }, pair.now);
    assert!(pair.b.steps.is_empty());
    assert!(!pair.b.machine.is_idle(), "a handler in flight on a virtual connection (the root is idle)");
    assert!(pair.a.machine.is_idle(), "the caller side runs no handler");
}
