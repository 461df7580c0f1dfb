//! loom models of the channel registry, the session's control mailbox and a
//! connection's liveness gate: their mutexes, atomics and wake-up come from
//! `crate::sync`, so under `cfg(loom)` every interleaving of the threads below
//! is explored (bounded by `LOOM_MAX_PREEMPTIONS`).
//!
//! tokio does not build with a global `--cfg loom` (its `net` module is
//! configured out), so `.ci/proofs` sets the cfg for vox-core's own crates
//! only, through a small `RUSTC_WRAPPER`; see the ADR's "Proofs" section.
//!
//! The mailbox's bounded lane is tokio's mpsc (model-checked by tokio's own
//! loom suite); loom sees each of its operations as one step, and explores
//! every interleaving of the reserved lane and the `Signal` wake-up around it.
#![cfg(loom)]

use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use vox_core::test_util::channel::{
    ItemOutcome, LossCause, RecvError, Registry, RegistryConfig, RemoteOutcome, SendError, StateKind,
};
use vox_core::wire::{ChannelDecl, ChannelDirection, ChannelId, Parity, Payload};

/// Runs `body` under `loom::model` and prints how many interleavings were
/// explored (the ADR's table quotes these counts; run with `--nocapture`).
fn model<F: Fn() + Sync + Send + 'static>(body: F) {
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
    let runs = StdArc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    loom::model(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        body();
    });
    let name = std::thread::current().name().unwrap_or("model").to_owned();
    println!("{name}: {} interleavings", runs.load(StdOrdering::Relaxed));
}

/// A waker that raises a loom flag.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: StdArc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag() -> (StdArc<Flag>, Waker) {
    let flag = StdArc::new(Flag(AtomicBool::new(false)));
    (flag.clone(), Waker::from(flag))
}

fn woken(flag: &Flag) -> bool {
    flag.0.load(Ordering::SeqCst)
}

fn registry(parity: Parity) -> Arc<Registry> {
    Arc::new(Registry::new(RegistryConfig {
        local_parity: parity,
        max_initial_credit: 8,
        max_channels: 8,
        tombstones: 8,
        // The shipped default: the models check receive-window tuning too.
        ..RegistryConfig::new(parity)
    }))
}

/// One flush: whether it was `Pending`, and what it produced.
fn flush(reg: &Registry, waker: &Waker) -> (bool, Vec<Payload>) {
    let mut out = Vec::new();
    let pending = reg.poll_outbound(&mut Context::from_waker(waker), &mut out).is_pending();
    (pending, out)
}

/// The driver's view: flush once concurrently with the model's threads, then
/// again after they joined. A first `Pending` followed by work owed later
/// must have woken the driver (no lost wake-up).
fn driver_round(reg: &Registry) -> (StdArc<Flag>, bool, Vec<Payload>) {
    let (driver, waker) = flag();
    let (pending, out) = flush(reg, &waker);
    (driver, pending, out)
}

fn after_join_flush(reg: &Registry, driver: &Flag, was_pending: bool, mut out: Vec<Payload>) -> Vec<Payload> {
    let (_, more) = flush(reg, Waker::noop());
    assert!(!(was_pending && !more.is_empty() && !woken(driver)), "driver not woken for {more:?}");
    out.extend(more);
    out
}

fn count(out: &[Payload], pick: impl Fn(&Payload) -> bool) -> usize {
    out.iter().filter(|p| pick(p)).count()
}

/// Sender with no credit: send (poll_credit + spend_credit) vs the peer's
/// GrantCredit, then the sender drops; the driver flushes concurrently.
#[test]
fn tx_send_vs_grant_vs_drop() {
    model(|| {
        let reg = registry(Parity::Odd);
        let id = reg.create_outgoing(ChannelDirection::CallerToHandler, 0).expect("create").id;
        let sender = {
            let reg = reg.clone();
            thread::spawn(move || {
                let (tx_flag, waker) = flag();
                match reg.poll_credit(id, &mut Context::from_waker(&waker)) {
                    Poll::Ready(Ok(())) => {
                        assert_eq!(reg.spend_credit(id), Ok(()));
                        reg.sender_dropped(id);
                        (true, None)
                    }
                    Poll::Pending => (false, Some(tx_flag)),
                    Poll::Ready(Err(error)) => panic!("unexpected {error:?}"),
                }
            })
        };
        let peer = {
            let reg = reg.clone();
            thread::spawn(move || reg.on_remote_grant(id, 1))
        };
        let (driver, was_pending, out) = driver_round(&reg);
        let (sent, waiting) = sender.join().expect("sender");
        assert_eq!(peer.join().expect("peer"), Ok(RemoteOutcome::Applied));
        if let Some(tx_flag) = waiting {
            // The sender saw zero credit, so the grant came later and must have woken it.
            assert!(woken(&tx_flag), "sender waiting for credit was never woken");
            assert_eq!(reg.spend_credit(id), Ok(()));
            assert_eq!(reg.spend_credit(id), Err(SendError::NoCredit(id)), "credit went negative");
            reg.sender_dropped(id);
        } else {
            assert!(sent);
            assert_eq!(reg.spend_credit(id), Err(SendError::Closed));
        }
        let out = after_join_flush(&reg, &driver, was_pending, out);
        assert_eq!(count(&out, |p| matches!(p, Payload::CloseChannel { .. })), 1, "exactly one close: {out:?}");
        assert_eq!(reg.state_kind(id), None, "the entry is finished");
    });
}

/// Receiver drop vs an inbound item vs the inbound close; the driver flushes
/// concurrently. The item is delivered, dropped unread or discarded after the
/// reset, exactly once; at most one reset leaves.
#[test]
fn rx_drop_vs_item_vs_close() {
    model(|| {
        let reg = registry(Parity::Odd);
        let id = reg.create_outgoing(ChannelDirection::HandlerToCaller, 2).expect("create").id;
        let receiver = {
            let reg = reg.clone();
            thread::spawn(move || {
                let got = reg.poll_recv(id, &mut Context::from_waker(Waker::noop()));
                reg.receiver_dropped(id);
                got
            })
        };
        let peer = {
            let reg = reg.clone();
            thread::spawn(move || (reg.on_remote_item(id, Bytes::from_static(b"x")), reg.on_remote_close(id)))
        };
        let (driver, was_pending, out) = driver_round(&reg);
        let got = receiver.join().expect("receiver");
        let (item, close) = peer.join().expect("peer");
        assert!(matches!(item, Ok(ItemOutcome::Delivered | ItemOutcome::DiscardedAfterReset)), "{item:?}");
        assert!(matches!(close, Ok(RemoteOutcome::Applied | RemoteOutcome::CrossingIgnored)), "{close:?}");
        let out = after_join_flush(&reg, &driver, was_pending, out);
        let stats = reg.stats();
        let taken = u64::from(matches!(got, Poll::Ready(Ok(Some(_)))));
        assert_eq!(taken + stats.items_dropped_unread + stats.items_discarded_after_reset, 1, "item lost: {stats:?}");
        assert!(count(&out, |p| matches!(p, Payload::ResetChannel { .. })) <= 1, "{out:?}");
        assert!(!out.iter().any(|p| matches!(p, Payload::CloseChannel { .. })));
        assert_eq!(reg.state_kind(id), None, "exactly one end, entry finished");
    });
}

/// Connection loss vs a send in progress: the send either succeeds or
/// reports the loss (the caller keeps its value); a sender then waiting for
/// credit is woken; nothing stays open.
#[test]
fn connection_loss_vs_send() {
    model(|| {
        let reg = registry(Parity::Odd);
        let id = reg.create_outgoing(ChannelDirection::CallerToHandler, 1).expect("create").id;
        let sender = {
            let reg = reg.clone();
            thread::spawn(move || {
                let first = reg.poll_credit(id, &mut Context::from_waker(Waker::noop()));
                let spent = match first {
                    Poll::Ready(Ok(())) => reg.spend_credit(id),
                    Poll::Ready(Err(error)) => Err(error),
                    Poll::Pending => panic!("credit 1 never waits"),
                };
                let (tx_flag, waker) = flag();
                let second = reg.poll_credit(id, &mut Context::from_waker(&waker));
                (spent, second.is_pending(), tx_flag)
            })
        };
        let loss = {
            let reg = reg.clone();
            thread::spawn(move || reg.on_connection_lost(LossCause::ConnectionClosed))
        };
        let (driver, _, out) = driver_round(&reg);
        let (spent, waited, tx_flag) = sender.join().expect("sender");
        loss.join().expect("loss");
        match spent {
            Ok(()) | Err(SendError::ConnectionLost(_)) => {}
            other => panic!("the value must be sent or reported back with the loss: {other:?}"),
        }
        if waited {
            assert!(woken(&tx_flag), "sender waiting for credit not woken by the loss");
        }
        assert!(out.is_empty());
        let (pending, late) = flush(&reg, Waker::noop());
        assert!(pending && late.is_empty(), "nothing is due after loss");
        let _ = driver;
        assert!(matches!(reg.spend_credit(id), Err(SendError::ConnectionLost(_))));
        let stats = reg.stats();
        assert_eq!((stats.open, stats.pending, stats.closing), (0, 0, 0), "{stats:?}");
    });
}

/// Handler binds an announced channel while the caller's early items and
/// close arrive: every item is delivered, in order, then the end.
#[test]
fn bind_vs_early_items_vs_close() {
    model(|| {
        let reg = registry(Parity::Even);
        let decl = ChannelDecl { id: ChannelId(1), direction: ChannelDirection::CallerToHandler, initial_credit: 2 };
        reg.on_remote_announce(&[decl]).expect("announce");
        let id = decl.id;
        let handler = {
            let reg = reg.clone();
            thread::spawn(move || reg.bind(id))
        };
        let peer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let a = reg.on_remote_item(id, Bytes::from_static(b"a"));
                let b = reg.on_remote_item(id, Bytes::from_static(b"b"));
                (a, b, reg.on_remote_close(id))
            })
        };
        assert_eq!(handler.join().expect("handler"), Ok(()));
        let (a, b, close) = peer.join().expect("peer");
        for outcome in [a, b] {
            assert!(matches!(outcome, Ok(ItemOutcome::Delivered | ItemOutcome::Buffered)), "{outcome:?}");
        }
        assert!(matches!(close, Ok(RemoteOutcome::Applied | RemoteOutcome::Buffered)), "{close:?}");
        let mut cx = Context::from_waker(Waker::noop());
        let mut seen = Vec::new();
        loop {
            match reg.poll_recv(id, &mut cx) {
                Poll::Ready(Ok(Some(item))) => seen.push(item),
                Poll::Ready(Ok(None)) => break,
                other => panic!("unexpected {other:?} after {seen:?}"),
            }
        }
        assert_eq!(seen, [Bytes::from_static(b"a"), Bytes::from_static(b"b")], "order kept across bind");
        assert_eq!(reg.state_kind(id), None::<StateKind>);
        assert!(matches!(reg.poll_recv(id, &mut cx), Poll::Ready(Ok(None)) | Poll::Ready(Err(RecvError::Reset))));
    });
}

/// A waker that raises a flag under a loom mutex and signals a loom condvar.
/// (Unparking the thread instead would also wake it while it is blocked on an
/// unrelated loom mutex, which loom rejects.)
#[derive(Default)]
struct Wakeup {
    woken: loom::sync::Mutex<bool>,
    cond: loom::sync::Condvar,
}

impl Wake for Wakeup {
    fn wake(self: StdArc<Self>) {
        *self.woken.lock().expect("wakeup lock") = true;
        self.cond.notify_one();
    }
}

/// Drives `future` on the current loom thread, sleeping on the condvar
/// between polls. A wake that never comes leaves the thread blocked, which
/// loom reports as a deadlock: that is how the models detect a lost wake-up.
/// (loom's own `block_on` needs its `futures` feature and one more crate.)
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let wakeup = StdArc::new(Wakeup::default());
    let waker = Waker::from(wakeup.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        let mut woken = wakeup.woken.lock().expect("wakeup lock");
        while !*woken {
            woken = wakeup.cond.wait(woken).expect("wakeup wait");
        }
        *woken = false;
    }
}

/// Model 5 — control mailbox full vs a drop-path request. The bounded queue
/// (capacity 1) is full and an async caller waits on it while a `Drop` posts on
/// the reserved lane; the run loop (this thread) must be woken for every
/// request (a lost wake-up is a loom deadlock), take each exactly once, keep
/// FIFO on the queue, and never need more than the bounded space.
#[test]
fn mailbox_full_vs_drop_request() {
    use tokio::sync::oneshot;
    use vox_core::test_util::control::{ControlMsg, DropRequest, mailbox};
    use vox_core::wire::{ConnectionId, Metadata};

    fn close(id: u64) -> ControlMsg {
        // The reply receiver is dropped: the model only checks delivery.
        let (reply, _) = oneshot::channel();
        ControlMsg::CloseConnection { id: ConnectionId(id), metadata: Metadata::new(), reply }
    }

    model(|| {
        let (tx, mut rx) = mailbox(1);
        assert!(block_on(tx.send(close(1))).is_ok(), "first request fills the queue");
        let caller = {
            let tx = tx.clone();
            thread::spawn(move || block_on(tx.send(close(3))).is_ok())
        };
        let dropper = {
            let tx = tx.clone();
            thread::spawn(move || tx.post(DropRequest::ConnectionDropped(ConnectionId(5))))
        };
        let mut got = Vec::new();
        for _ in 0..3 {
            match block_on(rx.recv()) {
                Some(ControlMsg::CloseConnection { id, .. }) => got.push(('q', id.0)),
                Some(ControlMsg::ConnectionDropped(id)) => got.push(('d', id.0)),
                other => panic!("unexpected {other:?}"),
            }
            assert!(tx.reserved_len() <= 1, "reserved lane grew beyond one mark per connection");
        }
        assert!(caller.join().expect("caller"), "the waiting caller got its place");
        dropper.join().expect("dropper");
        let queued: Vec<u64> = got.iter().filter(|(lane, _)| *lane == 'q').map(|(_, id)| *id).collect();
        assert_eq!(queued, [1, 3], "queue lane is FIFO and lossless: {got:?}");
        assert_eq!(got.iter().filter(|(lane, _)| *lane == 'd').count(), 1, "drop request exactly once: {got:?}");
        assert_eq!(tx.reserved_len(), 0);
        assert!(tx.queue_high_water() <= tx.queue_capacity(), "queue stayed bounded");
    });
}

// Model 6 (`close_connection_vs_inbound_traffic`) runs the real
// `ConnectionCore`, which is crate-private: it lives in-crate, in
// `src/driver/liveness_loom.rs`, and `.ci/proofs` runs it with the lib tests
// under `--cfg loom`.

/// Model 7 — two channels at once: our send side (no credit) closes while the
/// peer grants and then resets it, and our receive side drops while the
/// peer's item and close arrive; the driver flushes concurrently. Checked:
/// credit is never spent twice, the item is taken, dropped unread or
/// discarded exactly once, each channel ends once (at most one close, one
/// reset, none owed by a channel whose peer ended it first), nothing is lost
/// for a parked driver, and both entries are finished at the end.
#[test]
fn two_channels_close_vs_grant_vs_item() {
    model(|| {
        let reg = registry(Parity::Odd);
        let tx = reg.create_outgoing(ChannelDirection::CallerToHandler, 0).expect("create").id;
        let rx = reg.create_outgoing(ChannelDirection::HandlerToCaller, 1).expect("create").id;
        let local = {
            let reg = reg.clone();
            thread::spawn(move || {
                let sent = match reg.poll_credit(tx, &mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(Ok(())) => reg.spend_credit(tx).map(|()| true),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Ok(false),
                };
                let closed = reg.local_close(tx);
                let got = reg.poll_recv(rx, &mut Context::from_waker(Waker::noop()));
                reg.receiver_dropped(rx);
                (sent, closed, got)
            })
        };
        let peer = {
            let reg = reg.clone();
            thread::spawn(move || {
                let grant = reg.on_remote_grant(tx, 1);
                let item = reg.on_remote_item(rx, Bytes::from_static(b"x"));
                let reset = reg.on_remote_reset(tx);
                let close = reg.on_remote_close(rx);
                (grant, item, reset, close)
            })
        };
        let (driver, was_pending, out) = driver_round(&reg);
        let (sent, closed, got) = local.join().expect("local");
        let (grant, item, reset, close) = peer.join().expect("peer");
        let out = after_join_flush(&reg, &driver, was_pending, out);
        // The send side: one credit at most, spent at most once; the close
        // succeeds unless the reset came first.
        assert!(matches!(sent, Ok(_) | Err(SendError::Reset)), "{sent:?}");
        assert!(matches!(closed, Ok(()) | Err(SendError::Reset)), "{closed:?}");
        assert!(matches!(grant, Ok(RemoteOutcome::Applied | RemoteOutcome::CrossingIgnored)), "{grant:?}");
        assert!(matches!(reset, Ok(RemoteOutcome::Applied | RemoteOutcome::CrossingIgnored)), "{reset:?}");
        if sent == Ok(true) {
            assert_eq!(grant, Ok(RemoteOutcome::Applied), "credit spent that was never granted");
        }
        let closes = count(&out, |p| matches!(p, Payload::CloseChannel { id, .. } if *id == tx));
        // Our close left exactly when the peer's reset crossed it; a reset
        // that came first (or found the close still owed) made it moot.
        let crossed = reset == Ok(RemoteOutcome::CrossingIgnored);
        assert_eq!(closes, usize::from(crossed), "closes {out:?}, reset {reset:?}, close {closed:?}");
        // The receive side: the item exactly once, at most one reset.
        assert!(matches!(item, Ok(ItemOutcome::Delivered | ItemOutcome::DiscardedAfterReset)), "{item:?}");
        assert!(matches!(close, Ok(RemoteOutcome::Applied | RemoteOutcome::CrossingIgnored)), "{close:?}");
        let stats = reg.stats();
        let taken = u64::from(matches!(got, Poll::Ready(Ok(Some(_)))));
        assert_eq!(taken + stats.items_dropped_unread + stats.items_discarded_after_reset, 1, "{stats:?}");
        let resets = count(&out, |p| matches!(p, Payload::ResetChannel { id, .. } if *id == rx));
        assert!(resets <= 1, "{out:?}");
        if close == Ok(RemoteOutcome::Applied) {
            assert_eq!(resets, 0, "a reset after the peer's close is never sent: {out:?}");
        }
        assert!(!out.iter().any(|p| matches!(p, Payload::GrantCredit { id, .. } if *id == rx) && resets > 0));
        assert_eq!((reg.state_kind(tx), reg.state_kind(rx)), (None, None), "both entries finished: {stats:?}");
        assert_eq!((stats.open, stats.closing, stats.closed), (0, 0, 0), "{stats:?}");
    });
}

/// Model 8 — connection loss vs owed control messages on two channels: a
/// receiver consumes (a grant falls due) and a sender closes (a close falls
/// due) while the connection is lost and the driver flushes. Checked: after
/// the loss nothing is ever flushed, both handles see the loss or their
/// normal outcome, every waiting party is woken, nothing stays live.
#[test]
fn connection_loss_vs_owed_grant_and_close() {
    model(|| {
        let reg = registry(Parity::Odd);
        let tx = reg.create_outgoing(ChannelDirection::CallerToHandler, 1).expect("create").id;
        let rx = reg.create_outgoing(ChannelDirection::HandlerToCaller, 1).expect("create").id;
        assert_eq!(reg.on_remote_item(rx, Bytes::from_static(b"x")), Ok(ItemOutcome::Delivered));
        let local = {
            let reg = reg.clone();
            thread::spawn(move || {
                let got = reg.poll_recv(rx, &mut Context::from_waker(Waker::noop()));
                let (rx_flag, waker) = flag();
                let next = reg.poll_recv(rx, &mut Context::from_waker(&waker));
                let closed = reg.local_close(tx);
                (got, next, rx_flag, closed)
            })
        };
        let loss = {
            let reg = reg.clone();
            thread::spawn(move || reg.on_connection_lost(LossCause::ConnectionClosed))
        };
        // After the loss nothing is due, so a driver parked then is never needed.
        let (_driver, _, out) = driver_round(&reg);
        let (got, next, rx_flag, closed) = local.join().expect("local");
        loss.join().expect("loss");
        assert!(matches!(got, Poll::Ready(Ok(Some(_)) | Err(RecvError::ConnectionLost(_)))), "{got:?}");
        match next {
            Poll::Pending => assert!(woken(&rx_flag), "a receiver waiting when the loss came was not woken"),
            Poll::Ready(Err(RecvError::ConnectionLost(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(closed, Ok(()) | Err(SendError::ConnectionLost(_))), "{closed:?}");
        // What the concurrent flush sent left before the loss: at most the
        // grant and the close, each once; afterwards nothing is due.
        assert!(count(&out, |p| matches!(p, Payload::GrantCredit { .. })) <= 1, "{out:?}");
        assert!(count(&out, |p| matches!(p, Payload::CloseChannel { .. })) <= 1, "{out:?}");
        assert_eq!(out.len(), count(&out, |p| matches!(p, Payload::GrantCredit { .. } | Payload::CloseChannel { .. })));
        if out.iter().any(|p| matches!(p, Payload::CloseChannel { .. })) {
            assert_eq!(closed, Ok(()), "a close left for a sender that never closed");
        }
        let (pending, late) = flush(&reg, Waker::noop());
        assert!(pending && late.is_empty(), "nothing is due after the loss: {late:?}");
        let stats = reg.stats();
        assert_eq!((stats.open, stats.pending, stats.closing), (0, 0, 0), "{stats:?}");
    });
}
