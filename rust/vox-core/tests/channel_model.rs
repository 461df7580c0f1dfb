//! Model-based test of the channel registry: random sequences of local, remote
//! and connection events (legal and illegal) are applied both to the real
//! [`Registry`] and to a small reference model; after every step the outcome
//! classes must agree and the registry's invariants must hold.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 1,000).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use proptest::prelude::*;
use vox_core::test_util::channel::{
    ItemOutcome, LocalError, LossCause, RecvError, Registry, RegistryConfig, SendError, Violation, ViolationKind,
};
use vox_core::wire::{ChannelDecl, ChannelDirection, ChannelId, Parity, Payload};

/// The largest initial credit the registry under test accepts.
const MAX_CREDIT: u32 = 16;

// --- events

/// How an announced id is chosen.
#[derive(Clone, Copy, Debug)]
enum AnnounceId {
    /// The next legal id (above every id announced so far).
    Next,
    /// The reserved id 0.
    Zero,
    /// An id of our own parity.
    OwnParity,
    /// The highest id announced so far again.
    Repeat,
    /// A legal id that leaves one id unannounced below it.
    Skip,
    /// The highest unannounced id below the highest announced one (a gap
    /// left by `Skip`): never announced, so not increasing, no duplicate.
    Skipped,
    /// The oldest id announced (a duplicate, below the highest).
    Older,
}

/// One event; `slot` picks a channel id (see [`Model::id_of`]).
#[derive(Clone, Debug)]
enum Event {
    Create { to_peer: bool, credit: u32 },
    Announce(Vec<(AnnounceId, bool, u32)>),
    Bind(u8),
    PollCredit(u8),
    Spend(u8),
    Send(u8),
    LocalClose(u8),
    SenderDropped(u8),
    PollRecv(u8),
    LocalReset(u8),
    ReceiverDropped(u8),
    Flush,
    RemoteItem(u8),
    RemoteClose(u8),
    RemoteReset(u8),
    RemoteGrant(u8, u32),
    ConnectionLost,
}

/// Small credits, and both sides of the limit: exactly the maximum is
/// accepted, one more is not.
fn credit() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..=4, 1 => Just(MAX_CREDIT), 1 => Just(MAX_CREDIT + 1)]
}

fn grant_amount() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1u32..=4, 1 => Just(0u32), 1 => (u32::MAX - 4)..=u32::MAX]
}

fn slot() -> impl Strategy<Value = u8> {
    0u8..10
}

fn announce_id() -> impl Strategy<Value = AnnounceId> {
    prop_oneof![
        12 => Just(AnnounceId::Next),
        1 => Just(AnnounceId::Zero),
        1 => Just(AnnounceId::OwnParity),
        1 => Just(AnnounceId::Repeat),
        2 => Just(AnnounceId::Skip),
        1 => Just(AnnounceId::Skipped),
        1 => Just(AnnounceId::Older),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (any::<bool>(), credit()).prop_map(|(to_peer, credit)| Event::Create { to_peer, credit }),
        4 => proptest::collection::vec((announce_id(), any::<bool>(), credit()), 1..=3).prop_map(Event::Announce),
        3 => slot().prop_map(Event::Bind),
        2 => slot().prop_map(Event::PollCredit),
        2 => slot().prop_map(Event::Spend),
        4 => slot().prop_map(Event::Send),
        2 => slot().prop_map(Event::LocalClose),
        2 => slot().prop_map(Event::SenderDropped),
        5 => slot().prop_map(Event::PollRecv),
        1 => slot().prop_map(Event::LocalReset),
        2 => slot().prop_map(Event::ReceiverDropped),
        4 => Just(Event::Flush),
        6 => slot().prop_map(Event::RemoteItem),
        2 => slot().prop_map(Event::RemoteClose),
        2 => slot().prop_map(Event::RemoteReset),
        3 => (slot(), grant_amount()).prop_map(|(s, n)| Event::RemoteGrant(s, n)),
        1 => Just(Event::ConnectionLost),
    ]
}

// --- wakers

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker plus its wake count.
struct Counted {
    count: Arc<CountingWaker>,
    waker: Waker,
}

impl Counted {
    fn new() -> Counted {
        let count = Arc::new(CountingWaker::default());
        Counted { waker: Waker::from(count.clone()), count }
    }

    fn wakes(&self) -> usize {
        self.count.0.load(Ordering::SeqCst)
    }
}

// --- reference model

/// The sender side of a channel in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tx {
    Pending { credit: u64, reset: bool },
    Open { credit: u64 },
    CloseOwed,
    Ended(End),
}

/// How a channel ended, as a local handle sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Closed,
    Reset,
}

/// The receiving side of a channel in the model.
#[derive(Clone, Debug)]
struct Rx {
    bound: bool,
    window: u32,
    /// Credit the peer holds: the window plus flushed grants minus items sent.
    peer_credit: u64,
    /// Items the peer sent that were accepted, in order.
    sent: Vec<u32>,
    /// How many of `sent` the receiver took.
    taken: usize,
    peer_closed: bool,
    /// The receiver stopped: `Some(Reset)` before the peer closed, `Some(Closed)` after.
    stopped: Option<End>,
    reset_owed: bool,
    /// `poll_recv` returned `Pending` and no item arrived since.
    waiting: bool,
    /// Items taken since the last grant fell due.
    since_grant: u32,
    /// The peer's close met items still queued (on a bound channel, or at
    /// bind): the channel drains until the receiver sees the end.
    draining: bool,
}

#[derive(Clone, Debug)]
enum Side {
    Tx { state: Tx, peer_reset: bool },
    Rx(Rx),
}

struct Chan {
    side: Side,
    waker: Counted,
    /// Wake count when the handle last got `Pending` (cleared by its own terminal action).
    pending_at: Option<usize>,
}

#[derive(Default)]
struct Model {
    ids: Vec<ChannelId>,
    chans: HashMap<ChannelId, Chan>,
    highest_remote: u64,
    /// Every id the peer announced (none is ever forgotten in these runs:
    /// there are more tombstones than channels).
    announced: std::collections::BTreeSet<u64>,
    lost: bool,
    next_item: u32,
    discarded: u64,
    dropped_unread: u64,
    max_depth: usize,
    max_window: u32,
}

/// An outcome reduced to the class the model predicts.
type Class = String;

fn class<T: std::fmt::Debug, E: std::fmt::Debug>(result: &Result<T, E>) -> Class {
    let text = match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(error) => format!("Err({error:?})"),
    };
    // Drop the data inside variants (ids, loss causes), keep the variant names.
    text.split('(').take(3).collect::<Vec<_>>().join("(")
}

fn send_err(end: End) -> SendError {
    match end {
        End::Closed => SendError::Closed,
        End::Reset => SendError::Reset,
    }
}

fn lost_cause() -> LossCause {
    LossCause::ConnectionClosed
}

impl Model {
    /// `slot` names the slot-th channel created so far, or an id never used.
    fn id_of(&self, slot: u8) -> ChannelId {
        match self.ids.get(usize::from(slot)) {
            Some(id) => *id,
            None => ChannelId(1001 + u64::from(slot)),
        }
    }

    fn add(&mut self, id: ChannelId, side: Side) {
        if let Side::Rx(rx) = &side {
            self.max_window = self.max_window.max(rx.window);
        }
        self.ids.push(id);
        self.chans.insert(id, Chan { side, waker: Counted::new(), pending_at: None });
    }
}

fn rx(bound: bool, window: u32) -> Side {
    Side::Rx(Rx {
        bound,
        window,
        peer_credit: u64::from(window),
        sent: Vec::new(),
        taken: 0,
        peer_closed: false,
        stopped: None,
        reset_owed: false,
        waiting: false,
        since_grant: 0,
        draining: false,
    })
}

/// Receive-window tuning as the registry documents it: a grant falls due
/// after `max(1, W / 2)` items taken; if the queue is empty then, the window
/// doubles, up to `max_receive_window` (= `MAX_CREDIT` here; 4-byte items
/// never reach the registry's byte bound).
fn grow_window(rx: &mut Rx, max_window: &mut u32) {
    if rx.window == 0 {
        return;
    }
    rx.since_grant += 1;
    if rx.since_grant < (rx.window / 2).max(1) {
        return;
    }
    rx.since_grant = 0;
    if rx.taken == rx.sent.len() {
        rx.window = (rx.window * 2).min(MAX_CREDIT).max(rx.window);
        *max_window = (*max_window).max(rx.window);
    }
}

fn item_bytes(n: u32) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

/// Applies one event to both; returns an error describing the first discrepancy.
fn step(
    reg: &Registry,
    m: &mut Model,
    driver: &Counted,
    driver_pending: &mut Option<usize>,
    ev: &Event,
) -> Result<(), String> {
    let check = |what: &str, got: Class, want: Class| {
        if got == want { Ok(()) } else { Err(format!("{what}: registry {got}, model {want}")) }
    };
    match ev {
        Event::Create { to_peer, credit } => {
            let direction =
                if *to_peer { ChannelDirection::CallerToHandler } else { ChannelDirection::HandlerToCaller };
            let got = reg.create_outgoing(direction, *credit);
            let want: Result<(), LocalError> = if m.lost {
                Err(LocalError::ConnectionLost(lost_cause()))
            } else if *credit > MAX_CREDIT {
                Err(LocalError::CreditAboveLimit { credit: *credit, max: MAX_CREDIT })
            } else {
                Ok(())
            };
            check("create", class(&got.as_ref().map(|_| ())), class(&want))?;
            if let Ok(decl) = got {
                let side = if *to_peer {
                    Side::Tx { state: Tx::Open { credit: u64::from(*credit) }, peer_reset: false }
                } else {
                    rx(true, *credit)
                };
                m.add(decl.id, side);
            }
        }
        Event::Announce(specs) => {
            let mut highest = m.highest_remote;
            let mut decls = Vec::new();
            let mut want: Result<(), Violation> = Ok(());
            for (choice, to_us, credit) in specs {
                let id = match choice {
                    AnnounceId::Next => highest + 2,
                    AnnounceId::Zero => 0,
                    AnnounceId::OwnParity => highest + 1,
                    AnnounceId::Repeat => highest,
                    AnnounceId::Skip => highest + 4,
                    AnnounceId::Skipped => (1..highest / 2)
                        .rev()
                        .map(|k| 2 * k)
                        .find(|id| !m.announced.contains(id))
                        .unwrap_or(highest + 2),
                    AnnounceId::Older => m.announced.first().copied().unwrap_or(highest + 2),
                };
                // rule: rpc.channel.allocation — the first bad declaration names the violation.
                let kind = if id == 0 {
                    Some(ViolationKind::ReservedId)
                } else if id % 2 != 0 {
                    Some(ViolationKind::WrongParity)
                } else if id <= highest {
                    let seen = id == highest || m.announced.contains(&id);
                    Some(if seen { ViolationKind::Duplicate } else { ViolationKind::NotIncreasing })
                } else if *credit > MAX_CREDIT {
                    Some(ViolationKind::CreditAboveLimit { credit: *credit, max: MAX_CREDIT })
                } else {
                    None
                };
                match kind {
                    Some(kind) if want.is_ok() => want = Err(Violation { id: ChannelId(id), kind }),
                    Some(_) => {}
                    None => highest = id,
                }
                let direction =
                    if *to_us { ChannelDirection::CallerToHandler } else { ChannelDirection::HandlerToCaller };
                decls.push(ChannelDecl { id: ChannelId(id), direction, initial_credit: *credit });
            }
            let got = reg.on_remote_announce(&decls);
            let ok = want.is_ok();
            if m.lost {
                want = Ok(());
            }
            if got != want {
                return Err(format!("announce {decls:?}: registry {got:?}, model {want:?}"));
            }
            if ok && !m.lost {
                m.highest_remote = highest;
                for decl in decls {
                    m.announced.insert(decl.id.0);
                    let side = if decl.direction == ChannelDirection::CallerToHandler {
                        rx(false, decl.initial_credit)
                    } else {
                        Side::Tx {
                            state: Tx::Pending { credit: u64::from(decl.initial_credit), reset: false },
                            peer_reset: false,
                        }
                    };
                    m.add(decl.id, side);
                }
            }
        }
        Event::Bind(slot) => {
            let id = m.id_of(*slot);
            let got = reg.bind(id);
            let want: Result<(), LocalError> = if m.lost {
                Err(LocalError::ConnectionLost(lost_cause()))
            } else {
                match m.chans.get_mut(&id).map(|c| &mut c.side) {
                    None => Err(LocalError::UnknownChannel(id)),
                    Some(Side::Tx { state, .. }) => match *state {
                        Tx::Pending { credit, reset } => {
                            *state = if reset { Tx::Ended(End::Reset) } else { Tx::Open { credit } };
                            Ok(())
                        }
                        _ => Err(LocalError::AlreadyBound(id)),
                    },
                    Some(Side::Rx(rx)) if !rx.bound => {
                        rx.bound = true;
                        rx.draining = rx.peer_closed && rx.taken < rx.sent.len();
                        Ok(())
                    }
                    Some(Side::Rx(_)) => Err(LocalError::AlreadyBound(id)),
                }
            };
            // A channel ended and removed reports Unknown; the model keeps it: accept both.
            if !(matches!(got, Err(LocalError::UnknownChannel(_))) && matches!(want, Err(LocalError::AlreadyBound(_))))
            {
                check("bind", class(&got), class(&want))?;
            }
        }
        Event::PollCredit(slot) | Event::Spend(slot) | Event::Send(slot) => {
            let id = m.id_of(*slot);
            let poll = !matches!(ev, Event::Spend(_));
            let spend = !matches!(ev, Event::PollCredit(_));
            let lost = m.lost;
            let waker = m.chans.get(&id).map_or_else(|| Waker::noop().clone(), |c| c.waker.waker.clone());
            let mut spend_now = spend;
            if poll {
                let got = reg.poll_credit(id, &mut Context::from_waker(&waker));
                let want = send_outcome(lost, id, m.chans.get(&id).map(|c| &c.side), true);
                check("poll_credit", poll_class(&got), poll_class(&want))?;
                if let Some(c) = m.chans.get_mut(&id).filter(|c| matches!(c.side, Side::Tx { .. })) {
                    note_poll(c, got.is_pending())?;
                }
                spend_now &= matches!(got, Poll::Ready(Ok(())));
            }
            if spend_now {
                let got = reg.spend_credit(id);
                let want = match send_outcome(lost, id, m.chans.get(&id).map(|c| &c.side), false) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(SendError::NoCredit(id)),
                };
                check("spend_credit", class(&got), class(&want))?;
                if got.is_ok() {
                    if let Some(Chan { side: Side::Tx { state: Tx::Open { credit }, .. }, .. }) = m.chans.get_mut(&id) {
                        *credit -= 1;
                    }
                }
            }
        }
        Event::LocalClose(slot) | Event::SenderDropped(slot) => {
            let id = m.id_of(*slot);
            let dropped = matches!(ev, Event::SenderDropped(_));
            let lost = m.lost;
            let want: Result<(), SendError> = match m.chans.get_mut(&id) {
                _ if lost => Err(SendError::ConnectionLost(lost_cause())),
                None => Err(SendError::UnknownChannel(id)),
                Some(c) => match &mut c.side {
                    Side::Rx(_) => Err(SendError::WrongDirection(id)),
                    Side::Tx { state, .. } => match *state {
                        Tx::Pending { .. } => Err(SendError::NotBound(id)),
                        Tx::Open { .. } => {
                            *state = Tx::CloseOwed;
                            c.pending_at = None;
                            Ok(())
                        }
                        Tx::CloseOwed => Err(SendError::Closed),
                        Tx::Ended(end) => Err(send_err(end)),
                    },
                },
            };
            if dropped {
                reg.sender_dropped(id);
            } else {
                check("local_close", class(&reg.local_close(id)), class(&want))?;
            }
        }
        Event::PollRecv(slot) => {
            let id = m.id_of(*slot);
            let waker = m.chans.get(&id).map_or_else(|| Waker::noop().clone(), |c| c.waker.waker.clone());
            let got = reg.poll_recv(id, &mut Context::from_waker(&waker));
            let want: Poll<Result<Option<u32>, RecvError>> = match m.chans.get_mut(&id) {
                _ if m.lost => Poll::Ready(Err(RecvError::ConnectionLost(lost_cause()))),
                None => Poll::Ready(Err(RecvError::UnknownChannel(id))),
                Some(c) => match &mut c.side {
                    Side::Tx { .. } => Poll::Ready(Err(RecvError::WrongDirection(id))),
                    Side::Rx(rx) if !rx.bound => Poll::Ready(Err(RecvError::NotBound(id))),
                    Side::Rx(rx) => match rx.stopped {
                        Some(End::Reset) => Poll::Ready(Err(RecvError::Reset)),
                        Some(End::Closed) => Poll::Ready(Ok(None)),
                        None if rx.taken < rx.sent.len() => {
                            rx.taken += 1;
                            grow_window(rx, &mut m.max_window);
                            Poll::Ready(Ok(Some(rx.sent[rx.taken - 1])))
                        }
                        None if rx.peer_closed => {
                            // The receiver has seen the end.
                            rx.stopped = Some(End::Closed);
                            Poll::Ready(Ok(None))
                        }
                        None => {
                            rx.waiting = true;
                            Poll::Pending
                        }
                    },
                },
            };
            // Items are compared by value: what the receiver gets is a prefix of what the peer sent.
            let got_items =
                got.clone().map(|r| r.map(|o| o.map(|b| u32::from_be_bytes(b[..].try_into().unwrap_or([0; 4])))));
            if poll_class(&got_items) != poll_class(&want)
                || (got_items != want && want.is_ready() && matches!(want, Poll::Ready(Ok(_))))
            {
                return Err(format!("poll_recv: registry {got_items:?}, model {want:?}"));
            }
            if let Some(c) = m.chans.get_mut(&id).filter(|c| matches!(c.side, Side::Rx(_))) {
                if !m.lost {
                    note_poll(c, got.is_pending())?;
                }
            }
        }
        Event::LocalReset(slot) | Event::ReceiverDropped(slot) => {
            let id = m.id_of(*slot);
            let dropped = matches!(ev, Event::ReceiverDropped(_));
            let lost = m.lost;
            let mut unread = 0;
            let want: Result<(), RecvError> = match m.chans.get_mut(&id) {
                _ if lost => Err(RecvError::ConnectionLost(lost_cause())),
                None => Err(RecvError::UnknownChannel(id)),
                Some(c) => match &mut c.side {
                    Side::Tx { .. } => Err(RecvError::WrongDirection(id)),
                    Side::Rx(rx) if !rx.bound => Err(RecvError::NotBound(id)),
                    Side::Rx(rx) => {
                        c.pending_at = None;
                        if rx.stopped.is_none() {
                            unread = rx.sent.len() - rx.taken;
                            rx.stopped = Some(if rx.peer_closed { End::Closed } else { End::Reset });
                            rx.reset_owed = !rx.peer_closed;
                        }
                        Ok(())
                    }
                },
            };
            m.dropped_unread += unread as u64;
            if dropped {
                reg.receiver_dropped(id);
            } else {
                check("local_reset", class(&reg.local_reset(id)), class(&want))?;
            }
        }
        Event::Flush => {
            let mut out = Vec::new();
            let got = reg.poll_outbound(&mut Context::from_waker(&driver.waker), &mut out);
            if let (Some(at), Poll::Ready(())) = (*driver_pending, &got) {
                if driver.wakes() <= at {
                    return Err("flush became due without waking the driver (lost wake-up)".into());
                }
            }
            if got.is_ready() == out.is_empty() {
                return Err(format!("flush answered {got:?} with {out:?}: Ready exactly when something is due"));
            }
            *driver_pending = if got.is_pending() { Some(driver.wakes()) } else { None };
            if m.lost && !out.is_empty() {
                return Err(format!("flush after connection loss produced {out:?}"));
            }
            for payload in &out {
                apply_flushed(m, payload)?;
            }
            for (id, c) in &m.chans {
                match &c.side {
                    Side::Tx { state: Tx::CloseOwed, .. } => return Err(format!("close for {id:?} not flushed")),
                    Side::Rx(rx) if rx.reset_owed => return Err(format!("reset for {id:?} not flushed")),
                    Side::Rx(rx) if rx.bound && rx.stopped.is_none() && !rx.peer_closed && !m.lost => {
                        let empty = rx.taken == rx.sent.len();
                        if empty && rx.peer_credit == 0 && (rx.window > 0 || rx.waiting) {
                            return Err(format!(
                                "receiver {id:?} waits on an empty queue but the peer holds no credit"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        Event::RemoteItem(slot) => {
            let id = m.id_of(*slot);
            let n = m.next_item;
            m.next_item += 1;
            let got = reg.on_remote_item(id, item_bytes(n));
            let mut depth = None;
            let want: Result<ItemOutcome, ViolationKind> = match m.chans.get_mut(&id) {
                _ if m.lost => Ok(ItemOutcome::ConnectionLost),
                None => Err(ViolationKind::UnknownChannel),
                Some(c) => match &mut c.side {
                    Side::Tx { .. } => Err(ViolationKind::WrongDirection),
                    Side::Rx(rx) if rx.peer_closed => Err(ViolationKind::ItemAfterClose),
                    Side::Rx(rx) if rx.stopped.is_some() => Ok(ItemOutcome::DiscardedAfterReset),
                    Side::Rx(rx) if rx.peer_credit == 0 => Err(ViolationKind::ItemWithoutCredit),
                    Side::Rx(rx) => {
                        rx.peer_credit -= 1;
                        rx.sent.push(n);
                        rx.waiting = false;
                        depth = Some(rx.sent.len() - rx.taken);
                        Ok(if rx.bound { ItemOutcome::Delivered } else { ItemOutcome::Buffered })
                    }
                },
            };
            if let Some(d) = depth {
                m.max_depth = m.max_depth.max(d);
            }
            if want == Ok(ItemOutcome::DiscardedAfterReset) {
                m.discarded += 1;
            }
            check("remote item", class(&got.map_err(|v: Violation| v.kind)), class(&want))?;
        }
        Event::RemoteClose(slot) => {
            let id = m.id_of(*slot);
            let got = reg.on_remote_close(id);
            let want: Result<(), ViolationKind> = match m.chans.get_mut(&id) {
                _ if m.lost => Ok(()),
                None => Err(ViolationKind::UnknownChannel),
                Some(c) => match &mut c.side {
                    Side::Tx { .. } => Err(ViolationKind::WrongDirection),
                    Side::Rx(rx) if rx.peer_closed => Err(ViolationKind::CloseAfterClose),
                    Side::Rx(rx) => {
                        rx.peer_closed = true;
                        rx.draining = rx.bound && rx.stopped.is_none() && rx.taken < rx.sent.len();
                        rx.reset_owed = false;
                        Ok(())
                    }
                },
            };
            check("remote close", class(&got.map(|_| ()).map_err(|v| v.kind)), class(&want))?;
        }
        Event::RemoteReset(slot) => {
            let id = m.id_of(*slot);
            let got = reg.on_remote_reset(id);
            let want: Result<(), ViolationKind> = match m.chans.get_mut(&id) {
                _ if m.lost => Ok(()),
                None => Err(ViolationKind::UnknownChannel),
                Some(c) => match &mut c.side {
                    Side::Rx(_) => Err(ViolationKind::WrongDirection),
                    Side::Tx { peer_reset: true, .. } => Err(ViolationKind::ResetAfterReset),
                    Side::Tx { state, peer_reset } => {
                        *peer_reset = true;
                        match *state {
                            Tx::Pending { credit, .. } => *state = Tx::Pending { credit, reset: true },
                            Tx::Open { .. } | Tx::CloseOwed => *state = Tx::Ended(End::Reset),
                            Tx::Ended(_) => {}
                        }
                        Ok(())
                    }
                },
            };
            check("remote reset", class(&got.map(|_| ()).map_err(|v| v.kind)), class(&want))?;
        }
        Event::RemoteGrant(slot, n) => {
            let id = m.id_of(*slot);
            let got = reg.on_remote_grant(id, *n);
            let want: Result<(), ViolationKind> = match m.chans.get_mut(&id) {
                _ if m.lost => Ok(()),
                None => Err(ViolationKind::UnknownChannel),
                Some(c) => match &mut c.side {
                    Side::Rx(_) => Err(ViolationKind::WrongDirection),
                    // A grant after the receiver's own reset breaks no rule: ignored.
                    Side::Tx { peer_reset: true, .. } => Ok(()),
                    Side::Tx { state: Tx::Pending { credit, .. } | Tx::Open { credit }, .. } => {
                        if *credit + u64::from(*n) > u64::from(u32::MAX) {
                            Err(ViolationKind::GrantOverflow)
                        } else {
                            *credit += u64::from(*n);
                            Ok(())
                        }
                    }
                    Side::Tx { .. } => Ok(()),
                },
            };
            check("remote grant", class(&got.map(|_| ()).map_err(|v| v.kind)), class(&want))?;
        }
        Event::ConnectionLost => {
            reg.on_connection_lost(lost_cause());
            if !m.lost {
                m.lost = true;
                for c in m.chans.values_mut() {
                    if let Side::Rx(rx) = &mut c.side {
                        rx.reset_owed = false;
                    }
                    if let Side::Tx { state: state @ Tx::CloseOwed, .. } = &mut c.side {
                        *state = Tx::Ended(End::Closed);
                    }
                }
            }
        }
    }
    invariants(reg, m)
}

/// What `poll_credit` (`poll`) or `spend_credit` should answer.
fn send_outcome(lost: bool, id: ChannelId, side: Option<&Side>, poll: bool) -> Poll<Result<(), SendError>> {
    Poll::Ready(match side {
        _ if lost => Err(SendError::ConnectionLost(lost_cause())),
        None => Err(SendError::UnknownChannel(id)),
        Some(Side::Rx(_)) => Err(SendError::WrongDirection(id)),
        Some(Side::Tx { state, .. }) => match *state {
            Tx::Pending { .. } => Err(SendError::NotBound(id)),
            Tx::Open { credit: 0 } if poll => return Poll::Pending,
            Tx::Open { credit: 0 } => Err(SendError::NoCredit(id)),
            Tx::Open { .. } => Ok(()),
            Tx::CloseOwed => Err(SendError::Closed),
            Tx::Ended(end) => Err(send_err(end)),
        },
    })
}

fn poll_class<T: std::fmt::Debug, E: std::fmt::Debug>(p: &Poll<Result<T, E>>) -> Class {
    match p {
        Poll::Pending => "Pending".into(),
        Poll::Ready(r) => class(r),
    }
}

/// A handle that got `Pending` and later gets `Ready` must have been woken in between.
fn note_poll(c: &mut Chan, pending: bool) -> Result<(), String> {
    if let Some(at) = c.pending_at {
        if !pending && c.waker.wakes() <= at {
            return Err("handle became ready without being woken (lost wake-up)".into());
        }
    }
    c.pending_at = if pending { Some(c.waker.wakes()) } else { None };
    Ok(())
}

/// One control message left through the flush: check it was owed and apply it to the peer.
fn apply_flushed(m: &mut Model, payload: &Payload) -> Result<(), String> {
    let (id, what) = match payload {
        Payload::GrantCredit { id, .. } => (*id, "grant"),
        Payload::CloseChannel { id, .. } => (*id, "close"),
        Payload::ResetChannel { id, .. } => (*id, "reset"),
        other => return Err(format!("unexpected flushed payload {other:?}")),
    };
    let side = m.chans.get_mut(&id).map(|c| &mut c.side);
    match (payload, side) {
        (Payload::GrantCredit { additional, .. }, Some(Side::Rx(rx)))
            if rx.stopped.is_none() && !rx.peer_closed && *additional > 0 =>
        {
            rx.peer_credit += u64::from(*additional);
            let buffered = (rx.sent.len() - rx.taken) as u64;
            if rx.peer_credit + buffered > u64::from(rx.window.max(1)) {
                return Err(format!("grant on {id:?} lets the peer exceed the window (credit is the buffer)"));
            }
        }
        (Payload::CloseChannel { .. }, Some(Side::Tx { state: state @ Tx::CloseOwed, .. })) => {
            *state = Tx::Ended(End::Closed);
        }
        (Payload::ResetChannel { .. }, Some(Side::Rx(rx))) if rx.reset_owed => rx.reset_owed = false,
        _ => return Err(format!("flushed a {what} for {id:?} that was not owed")),
    }
    Ok(())
}

/// Invariants checked after every step.
fn invariants(reg: &Registry, m: &Model) -> Result<(), String> {
    let stats = reg.stats();
    if stats.items_discarded_after_reset != m.discarded {
        return Err(format!(
            "discarded after reset: registry {}, model {}",
            stats.items_discarded_after_reset, m.discarded
        ));
    }
    if stats.items_dropped_unread != m.dropped_unread {
        return Err(format!("dropped unread: registry {}, model {}", stats.items_dropped_unread, m.dropped_unread));
    }
    if stats.max_queue_depth != m.max_depth || stats.max_queue_depth > m.max_window.max(1) as usize {
        return Err(format!(
            "max queue depth {} (model {}, window {})",
            stats.max_queue_depth, m.max_depth, m.max_window
        ));
    }
    if m.lost && (stats.open != 0 || stats.pending != 0 || stats.closing != 0) {
        return Err(format!("channels still live after connection loss: {stats:?}"));
    }
    // Entries per phase, exactly (all gone after loss).
    let (mut pending, mut open, mut closing) = (0, 0, 0);
    for c in m.chans.values().filter(|_| !m.lost) {
        match &c.side {
            Side::Tx { state: Tx::Pending { .. }, .. } => pending += 1,
            Side::Tx { state: Tx::Open { .. }, .. } => open += 1,
            Side::Tx { state: Tx::CloseOwed, .. } => closing += 1,
            Side::Tx { state: Tx::Ended(_), .. } => {}
            Side::Rx(rx) if !rx.bound => pending += 1,
            Side::Rx(rx) if rx.stopped.is_none() && !rx.peer_closed => open += 1,
            // Our reset is owed, or the peer closed with items still to take.
            Side::Rx(rx) if rx.reset_owed || (rx.draining && rx.stopped.is_none()) => closing += 1,
            Side::Rx(_) => {}
        }
    }
    if (stats.pending, stats.open, stats.closing) != (pending, open, closing) {
        return Err(format!("pending/open/closing: registry {stats:?}, model ({pending}, {open}, {closing})"));
    }
    for (id, c) in &m.chans {
        if let Side::Rx(rx) = &c.side {
            if rx.bound && rx.stopped.is_none() && !rx.peer_closed && !m.lost {
                let buffered = (rx.sent.len() - rx.taken) as u64;
                if rx.peer_credit + buffered > u64::from(rx.window.max(1)) {
                    return Err(format!("{id:?}: peer credit + buffered above the window"));
                }
            }
        }
    }
    Ok(())
}

fn run(events: &[Event]) -> Result<(), TestCaseError> {
    let reg = Registry::new(RegistryConfig {
        local_parity: Parity::Odd,
        max_initial_credit: MAX_CREDIT,
        max_channels: 512,
        tombstones: 512,
        max_receive_window: MAX_CREDIT,
    });
    let mut model = Model::default();
    let driver = Counted::new();
    let mut driver_pending = None;
    for (index, ev) in events.iter().enumerate() {
        if let Err(why) = step(&reg, &mut model, &driver, &mut driver_pending, ev) {
            return Err(TestCaseError::fail(format!("step {index} {ev:?}: {why}")));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    // No regression file: the mutant runs of `.ci/proofs` fail on purpose.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn registry_matches_reference_model(events in proptest::collection::vec(event(), 1..64)) {
        run(&events)?;
    }
}

/// A fixed sequence through the main paths, so a regression shows even with few cases.
#[test]
fn scripted_sequence_matches_model() {
    use Event::*;
    let events = vec![
        Create { to_peer: false, credit: 2 },
        Create { to_peer: true, credit: 1 },
        Announce(vec![(AnnounceId::Next, true, 2), (AnnounceId::Next, false, 0)]),
        Flush,
        RemoteItem(0),
        RemoteItem(0),
        RemoteItem(0),
        PollRecv(0),
        PollRecv(0),
        PollRecv(0),
        Flush,
        RemoteItem(0),
        RemoteClose(0),
        RemoteItem(0),
        PollRecv(0),
        PollRecv(0),
        Send(1),
        Send(1),
        RemoteGrant(1, u32::MAX),
        SenderDropped(1),
        Flush,
        RemoteItem(2),
        RemoteClose(2),
        RemoteItem(2),
        Bind(2),
        PollRecv(2),
        PollRecv(2),
        Bind(3),
        Send(3),
        RemoteGrant(3, 1),
        Flush,
        Send(3),
        ReceiverDropped(0),
        Create { to_peer: false, credit: 1 },
        Flush,
        PollRecv(4),
        RemoteItem(4),
        ReceiverDropped(4),
        Flush,
        RemoteItem(4),
        ConnectionLost,
        Send(3),
        PollRecv(4),
        Flush,
    ];
    if let Err(e) = run(&events) {
        panic!("{e}");
    }
}
