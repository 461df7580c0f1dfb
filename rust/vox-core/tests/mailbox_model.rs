//! The session control mailbox against a reference model (proptest;
//! `PROPTEST_CASES`, default 1,000).
//!
//! Random interleavings of async sends (queue lane), drop-path posts
//! (reserved lane) and run-loop receives, polled by hand so every step is
//! deterministic. Checked after every step: the queue lane is bounded (a send
//! to a full queue waits, and a cancelled wait sends nothing), each lane is
//! FIFO, every post is taken exactly once (the root and shutdown marks are
//! flags, so repeats merge), `Shutdown` comes first and is the last request
//! the run loop acts on, and a run loop parked on an empty mailbox is woken
//! by every later request (no lost wake-up).

use proptest::prelude::*;
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use tokio::sync::oneshot;
use vox_core::test_util::control::{ControlMsg, DropRequest, MailboxRx, MailboxTx, mailbox};
use vox_core::wire::{ConnectionId, Metadata};

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    Queued(u64),
    Dropped(u64),
    Root,
    Shutdown,
}

#[derive(Clone, Debug)]
enum Op {
    Send,
    PostDropped,
    PostRoot,
    PostShutdown,
    Recv,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        2 => Just(Op::PostDropped),
        1 => Just(Op::PostRoot),
        1 => Just(Op::PostShutdown),
        4 => Just(Op::Recv),
    ]
}

/// The obviously-correct mailbox: two plain lanes and the take order.
#[derive(Default)]
struct Reference {
    queue: VecDeque<u64>,
    dropped: VecDeque<u64>,
    root: bool,
    shutdown: bool,
}

impl Reference {
    fn take(&mut self) -> Option<Taken> {
        if std::mem::take(&mut self.shutdown) {
            return Some(Taken::Shutdown);
        }
        if let Some(id) = self.dropped.pop_front() {
            return Some(Taken::Dropped(id));
        }
        if std::mem::take(&mut self.root) {
            return Some(Taken::Root);
        }
        self.queue.pop_front().map(Taken::Queued)
    }
}

fn close(id: u64) -> ControlMsg {
    let (reply, _) = oneshot::channel();
    ControlMsg::CloseConnection { id: ConnectionId(id), metadata: Metadata::new(), reply }
}

fn poll_send(tx: &MailboxTx, id: u64) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    // Polled once and dropped when pending: the caller gave up waiting.
    matches!(pin!(tx.send(close(id))).poll(&mut cx), Poll::Ready(Ok(())))
}

fn poll_recv(rx: &mut MailboxRx, waker: &Waker) -> Poll<Option<Taken>> {
    let mut cx = Context::from_waker(waker);
    pin!(rx.recv()).poll(&mut cx).map(|m| {
        m.map(|m| match m {
            ControlMsg::CloseConnection { id, .. } => Taken::Queued(id.0),
            ControlMsg::ConnectionDropped(id) => Taken::Dropped(id.0),
            ControlMsg::RootDropped => Taken::Root,
            ControlMsg::Shutdown => Taken::Shutdown,
            ControlMsg::OpenConnection { .. }
            | ControlMsg::Reattach(_)
            | ControlMsg::Drain { .. }
            | ControlMsg::Snapshot { .. } => Taken::Queued(u64::MAX),
        })
    })
}

use std::future::Future;

fn run(capacity: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (tx, mut rx) = mailbox(capacity);
    let mut model = Reference::default();
    let mut next_id = 1u64;
    // Set while the run loop is parked on an empty mailbox, with its waker's flag.
    let mut parked: Option<Arc<Flag>> = None;
    let mut ended = false;
    // The most requests ever waiting in the queue lane at once.
    let mut high_water = 0;
    prop_assert_eq!(tx.queue_capacity(), capacity, "the queue lane has the capacity asked for");
    for op in ops {
        let posted = match op {
            Op::Send => {
                let id = next_id;
                next_id += 1;
                let accepted = poll_send(&tx, id);
                prop_assert_eq!(accepted, model.queue.len() < capacity, "bounded queue lane");
                if accepted {
                    model.queue.push_back(id);
                    high_water = high_water.max(model.queue.len());
                }
                accepted
            }
            Op::PostDropped => {
                // A connection's liveness token drops once: each id is posted once.
                let id = next_id;
                next_id += 1;
                tx.post(DropRequest::ConnectionDropped(ConnectionId(id)));
                model.dropped.push_back(id);
                true
            }
            Op::PostRoot => {
                tx.post(DropRequest::RootDropped);
                model.root = true;
                true
            }
            Op::PostShutdown => {
                tx.post(DropRequest::Shutdown);
                model.shutdown = true;
                true
            }
            Op::Recv if ended => false,
            Op::Recv => {
                let flag = Arc::new(Flag(AtomicBool::new(false)));
                let waker = Waker::from(flag.clone());
                let expected = model.take();
                match poll_recv(&mut rx, &waker) {
                    Poll::Ready(got) => {
                        prop_assert_eq!(got, expected, "take order");
                        parked = None;
                        // rule: the run loop ends on Shutdown; it acts on nothing after.
                        ended = got == Some(Taken::Shutdown);
                    }
                    Poll::Pending => {
                        prop_assert_eq!(expected, None, "run loop parked with a request waiting");
                        parked = Some(flag);
                    }
                }
                false
            }
        };
        if posted && let Some(flag) = parked.take() {
            prop_assert!(flag.0.load(Ordering::SeqCst), "parked run loop not woken by {:?}", op);
        }
        // Exact, so bounded from both sides: never above the capacity, and
        // it does reach every depth the queue lane reached.
        prop_assert_eq!(tx.queue_high_water(), high_water, "queue lane high-water mark");
        prop_assert!(high_water <= capacity, "queue lane bounded");
        let marks = model.dropped.len() + usize::from(model.root) + usize::from(model.shutdown);
        prop_assert_eq!(tx.reserved_len(), marks, "reserved lane holds exactly the untaken marks");
    }
    if !ended {
        // Drain: everything still waiting comes out exactly once, in model order.
        let waker = Waker::noop();
        while let Some(expected) = model.take() {
            prop_assert_eq!(poll_recv(&mut rx, waker), Poll::Ready(Some(expected)));
        }
        prop_assert!(poll_recv(&mut rx, waker).is_pending(), "nothing taken twice");
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// ADR 0002: bounded, FIFO per lane, exactly once, shutdown first and
    /// last acted on, and no lost wake-up for drop-path posts.
    #[test]
    fn control_mailbox_matches_reference_model(
        capacity in 1usize..4,
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        run(capacity, ops)?;
    }
}
