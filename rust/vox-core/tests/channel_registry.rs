//! The channel registry against the channel rules of PROTOCOL.md section 9.
//! Test names carry the rule they check.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use vox_core::test_util::channel::{
    ChannelStats, ItemOutcome, LocalError, LossCause, RecvError, Registry, RegistryConfig, RemoteOutcome, SendError,
    StateKind, Violation, ViolationKind, transition_table,
};
use vox_core::wire::{ChannelDecl, ChannelDirection, ChannelId, Metadata, Parity, Payload};

// --- helpers

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    (counter, waker)
}

fn wakes(counter: &CountingWaker) -> usize {
    counter.0.load(Ordering::SeqCst)
}

fn config(local_parity: Parity) -> RegistryConfig {
    RegistryConfig { local_parity, max_initial_credit: 64, max_channels: 64, tombstones: 16, max_receive_window: 64 }
}

/// The caller side (odd ids) of a connection.
fn caller() -> Registry {
    Registry::new(config(Parity::Odd))
}

/// The handler side (receives the caller's odd ids).
fn handler() -> Registry {
    Registry::new(config(Parity::Even))
}

fn item(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

fn noop_poll<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    f(&mut Context::from_waker(Waker::noop()))
}

fn recv(registry: &Registry, id: ChannelId) -> Poll<Result<Option<Bytes>, RecvError>> {
    noop_poll(|cx| registry.poll_recv(id, cx))
}

fn credit(registry: &Registry, id: ChannelId) -> Poll<Result<(), SendError>> {
    noop_poll(|cx| registry.poll_credit(id, cx))
}

fn flush(registry: &Registry) -> Vec<Payload> {
    let mut out = Vec::new();
    let _ = noop_poll(|cx| registry.poll_outbound(cx, &mut out));
    out
}

fn decl(id: u64, direction: ChannelDirection, initial_credit: u32) -> ChannelDecl {
    ChannelDecl { id: ChannelId(id), direction, initial_credit }
}

/// A caller-side channel where we receive, with window `window`.
fn caller_receiving(registry: &Registry, window: u32) -> ChannelId {
    registry.create_outgoing(ChannelDirection::HandlerToCaller, window).expect("create").id
}

/// A caller-side channel where we send, with `credit`.
fn caller_sending(registry: &Registry, credit: u32) -> ChannelId {
    registry.create_outgoing(ChannelDirection::CallerToHandler, credit).expect("create").id
}

fn violation(id: ChannelId, kind: ViolationKind) -> Violation {
    Violation { id, kind }
}

// --- rpc.channel.close

#[test]
fn rpc_channel_close_item_after_close_is_protocol_error() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    assert_eq!(registry.on_remote_item(id, item("a")), Ok(ItemOutcome::Delivered));
    assert_eq!(registry.on_remote_close(id), Ok(RemoteOutcome::Applied));
    assert_eq!(registry.on_remote_item(id, item("b")), Err(violation(id, ViolationKind::ItemAfterClose)));
    // Still an error once the receiver drained and the entry became a tombstone.
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item("a")))));
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(None)));
    assert_eq!(registry.state_kind(id), None);
    assert_eq!(registry.on_remote_item(id, item("c")), Err(violation(id, ViolationKind::ItemAfterClose)));
    let shown = registry.on_remote_item(id, item("c")).unwrap_err().to_string();
    assert_eq!(shown, format!("channel {}: item after the sender closed the channel", id.0));
}

#[test]
fn rpc_channel_close_second_close_is_violation() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    registry.on_remote_item(id, item("a")).unwrap();
    registry.on_remote_close(id).unwrap();
    assert_eq!(registry.on_remote_close(id), Err(violation(id, ViolationKind::CloseAfterClose)));
    // Early (pending) close, twice.
    let handler = handler();
    handler.on_remote_announce(&[decl(1, ChannelDirection::CallerToHandler, 2)]).unwrap();
    assert_eq!(handler.on_remote_close(ChannelId(1)), Ok(RemoteOutcome::Buffered));
    assert_eq!(handler.on_remote_close(ChannelId(1)), Err(violation(ChannelId(1), ViolationKind::CloseAfterClose)));
}

#[test]
fn rpc_channel_close_queued_items_drain_before_end() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    for text in ["a", "b", "c"] {
        registry.on_remote_item(id, item(text)).unwrap();
    }
    registry.on_remote_close(id).unwrap();
    assert_eq!(registry.state_kind(id), Some(StateKind::Closing));
    for text in ["a", "b", "c"] {
        assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item(text)))));
    }
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(None)));
    // Polling again after the end keeps answering the end (from the tombstone).
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(None)));
    // No grant is sent after the peer closed.
    assert!(flush(&registry).iter().all(|p| !matches!(p, Payload::GrantCredit { .. })));
}

#[test]
fn rpc_channel_close_local_close_flushes_close_and_fails_later_sends() {
    let registry = caller();
    let id = caller_sending(&registry, 2);
    registry.spend_credit(id).unwrap();
    registry.local_close(id).unwrap();
    assert_eq!(registry.spend_credit(id), Err(SendError::Closed));
    assert_eq!(credit(&registry, id), Poll::Ready(Err(SendError::Closed)));
    assert_eq!(registry.local_close(id), Err(SendError::Closed));
    assert_eq!(flush(&registry), vec![Payload::CloseChannel { id, metadata: Metadata::default() }]);
    assert_eq!(registry.state_kind(id), None, "a flushed close by a handle that let go finishes the entry");
    assert_eq!(registry.spend_credit(id), Err(SendError::Closed));
}

// --- rpc.channel.reset

#[test]
fn rpc_channel_reset_late_items_are_discarded_and_counted() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    registry.on_remote_item(id, item("queued")).unwrap();
    registry.local_reset(id).unwrap();
    assert_eq!(recv(&registry, id), Poll::Ready(Err(RecvError::Reset)));
    // In flight before the reset left: discarded, counted.
    assert_eq!(registry.on_remote_item(id, item("late1")), Ok(ItemOutcome::DiscardedAfterReset));
    assert_eq!(flush(&registry), vec![Payload::ResetChannel { id, metadata: Metadata::default() }]);
    assert_eq!(registry.state_kind(id), None);
    // In flight after the reset left: still discarded (judged by the tombstone).
    assert_eq!(registry.on_remote_item(id, item("late2")), Ok(ItemOutcome::DiscardedAfterReset));
    let stats = registry.stats();
    assert_eq!(stats.items_discarded_after_reset, 2);
    assert_eq!(stats.items_dropped_unread, 1);
}

#[test]
fn rpc_channel_reset_close_after_reset_finishes_entry() {
    // The sender's close crossed our reset before the reset left.
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    registry.local_reset(id).unwrap();
    assert_eq!(registry.on_remote_close(id), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(flush(&registry), vec![], "the reset is no longer needed");
    assert_eq!(registry.state_kind(id), None);
    // ... and after it left: still fine, once. Anything after the close is a violation.
    let id = caller_receiving(&registry, 4);
    registry.local_reset(id).unwrap();
    flush(&registry);
    assert_eq!(registry.on_remote_item(id, item("late")), Ok(ItemOutcome::DiscardedAfterReset));
    assert_eq!(registry.on_remote_close(id), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(registry.on_remote_item(id, item("x")), Err(violation(id, ViolationKind::ItemAfterClose)));
    assert_eq!(registry.on_remote_close(id), Err(violation(id, ViolationKind::CloseAfterClose)));
}

#[test]
fn rpc_channel_reset_sender_sees_reset_and_close_not_needed() {
    let registry = caller();
    let id = caller_sending(&registry, 0);
    let (counter, waker) = counting();
    assert_eq!(registry.poll_credit(id, &mut Context::from_waker(&waker)), Poll::Pending);
    assert_eq!(registry.on_remote_reset(id), Ok(RemoteOutcome::Applied));
    assert_eq!(wakes(&counter), 1, "a waiting sender is woken by the reset");
    assert_eq!(credit(&registry, id), Poll::Ready(Err(SendError::Reset)));
    assert_eq!(registry.spend_credit(id), Err(SendError::Reset));
    registry.sender_dropped(id);
    assert_eq!(flush(&registry), vec![], "no CloseChannel after the peer's reset");
    assert_eq!(registry.state_kind(id), None);
    // A reset crossing our still-unsent close cancels the close.
    let id = caller_sending(&registry, 1);
    registry.local_close(id).unwrap();
    assert_eq!(registry.on_remote_reset(id), Ok(RemoteOutcome::Applied));
    assert_eq!(flush(&registry), vec![]);
    // The receiver may not reset twice.
    let id = caller_sending(&registry, 1);
    registry.on_remote_reset(id).unwrap();
    assert_eq!(registry.on_remote_reset(id), Err(violation(id, ViolationKind::ResetAfterReset)));
}

#[test]
fn rpc_channel_crossing_grant_after_receivers_own_reset_is_ignored_and_counted() {
    // PROTOCOL.md names no rule against it, and grants after a channel ended
    // are ignored: tolerated in every sender state that knows of the reset.
    let registry = caller();
    // Open, then reset: Closed(Reset) with the handle still there.
    let id = caller_sending(&registry, 1);
    assert_eq!(registry.on_remote_reset(id), Ok(RemoteOutcome::Applied));
    assert_eq!(registry.on_remote_grant(id, 1), Ok(RemoteOutcome::GrantAfterResetIgnored));
    assert_eq!(credit(&registry, id), Poll::Ready(Err(SendError::Reset)), "the grant revives nothing");
    // Handle gone: the tombstone judges it the same way.
    registry.sender_dropped(id);
    assert_eq!(registry.state_kind(id), None);
    assert_eq!(registry.on_remote_grant(id, u32::MAX), Ok(RemoteOutcome::GrantAfterResetIgnored));
    // Handler side: reset before bind (early), then a grant.
    let registry = handler();
    let id = ChannelId(1);
    registry.on_remote_announce(&[decl(1, ChannelDirection::HandlerToCaller, 1)]).unwrap();
    assert_eq!(registry.on_remote_reset(id), Ok(RemoteOutcome::Buffered));
    assert_eq!(registry.on_remote_grant(id, 1), Ok(RemoteOutcome::GrantAfterResetIgnored));
    assert_eq!(registry.stats().grants_after_reset_ignored, 1);
}

// --- rpc.channel.early-items

#[test]
fn rpc_channel_early_items_delivered_in_order_after_bind() {
    let registry = handler();
    let id = ChannelId(1);
    registry.on_remote_announce(&[decl(1, ChannelDirection::CallerToHandler, 4)]).unwrap();
    assert_eq!(registry.state_kind(id), Some(StateKind::Pending));
    assert_eq!(recv(&registry, id), Poll::Ready(Err(RecvError::NotBound(id))));
    for text in ["a", "b", "c"] {
        assert_eq!(registry.on_remote_item(id, item(text)), Ok(ItemOutcome::Buffered));
    }
    assert_eq!(registry.on_remote_close(id), Ok(RemoteOutcome::Buffered));
    registry.bind(id).unwrap();
    assert_eq!(registry.bind(id), Err(LocalError::AlreadyBound(id)));
    for text in ["a", "b", "c"] {
        assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item(text)))));
    }
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(None)), "the early close is applied after the items");

    // The sending direction: early grants add up, an early reset shows on the first send.
    registry.on_remote_announce(&[decl(3, ChannelDirection::HandlerToCaller, 0)]).unwrap();
    assert_eq!(registry.on_remote_grant(ChannelId(3), 2), Ok(RemoteOutcome::Buffered));
    registry.bind(ChannelId(3)).unwrap();
    assert_eq!(registry.spend_credit(ChannelId(3)), Ok(()));
    assert_eq!(registry.spend_credit(ChannelId(3)), Ok(()));
    assert_eq!(registry.spend_credit(ChannelId(3)), Err(SendError::NoCredit(ChannelId(3))));
    registry.on_remote_announce(&[decl(5, ChannelDirection::HandlerToCaller, 1)]).unwrap();
    registry.on_remote_reset(ChannelId(5)).unwrap();
    registry.bind(ChannelId(5)).unwrap();
    assert_eq!(registry.spend_credit(ChannelId(5)), Err(SendError::Reset));
}

#[test]
fn rpc_channel_early_items_bounded_by_initial_credit() {
    let registry = handler();
    let id = ChannelId(1);
    registry.on_remote_announce(&[decl(1, ChannelDirection::CallerToHandler, 2)]).unwrap();
    registry.on_remote_item(id, item("a")).unwrap();
    registry.on_remote_item(id, item("b")).unwrap();
    assert_eq!(registry.on_remote_item(id, item("c")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    assert_eq!(registry.stats().max_queue_depth, 2);
    // Zero initial credit: not one early item.
    registry.on_remote_announce(&[decl(3, ChannelDirection::CallerToHandler, 0)]).unwrap();
    assert_eq!(
        registry.on_remote_item(ChannelId(3), item("a")),
        Err(violation(ChannelId(3), ViolationKind::ItemWithoutCredit))
    );
}

// --- rpc.channel.unknown / allocation

#[test]
fn rpc_channel_unknown_id_creates_no_state() {
    let registry = handler();
    for id in [ChannelId(1), ChannelId(2), ChannelId(99)] {
        assert_eq!(registry.on_remote_item(id, item("x")), Err(violation(id, ViolationKind::UnknownChannel)));
        assert_eq!(registry.on_remote_close(id), Err(violation(id, ViolationKind::UnknownChannel)));
        assert_eq!(registry.on_remote_reset(id), Err(violation(id, ViolationKind::UnknownChannel)));
        assert_eq!(registry.on_remote_grant(id, 1), Err(violation(id, ViolationKind::UnknownChannel)));
        assert_eq!(registry.state_kind(id), None);
    }
    let stats = registry.stats();
    assert_eq!((stats.pending, stats.open, stats.closing, stats.closed, stats.tombstones), (0, 0, 0, 0, 0));
    // Above the highest announced id is still unknown.
    registry.on_remote_announce(&[decl(5, ChannelDirection::CallerToHandler, 1)]).unwrap();
    assert_eq!(
        registry.on_remote_item(ChannelId(7), item("x")),
        Err(violation(ChannelId(7), ViolationKind::UnknownChannel))
    );
    assert_eq!(registry.state_kind(ChannelId(7)), None);
}

#[test]
fn rpc_channel_allocation_announce_rules_all_or_nothing() {
    let registry = handler();
    let c2h = ChannelDirection::CallerToHandler;
    assert_eq!(
        registry.on_remote_announce(&[decl(2, c2h, 1)]),
        Err(violation(ChannelId(2), ViolationKind::WrongParity))
    );
    assert_eq!(
        registry.on_remote_announce(&[decl(1, c2h, 65)]),
        Err(violation(ChannelId(1), ViolationKind::CreditAboveLimit { credit: 65, max: 64 }))
    );
    // A bad second decl rejects the whole request: the first is not created.
    assert_eq!(
        registry.on_remote_announce(&[decl(5, c2h, 1), decl(3, c2h, 1)]),
        Err(violation(ChannelId(3), ViolationKind::NotIncreasing))
    );
    assert_eq!(registry.state_kind(ChannelId(5)), None);
    assert_eq!(
        registry.on_remote_announce(&[decl(5, c2h, 1), decl(5, c2h, 1)]),
        Err(violation(ChannelId(5), ViolationKind::Duplicate))
    );
    registry.on_remote_announce(&[decl(5, c2h, 1)]).unwrap();
    assert_eq!(registry.on_remote_announce(&[decl(5, c2h, 1)]), Err(violation(ChannelId(5), ViolationKind::Duplicate)));
    assert_eq!(
        registry.on_remote_announce(&[decl(3, c2h, 1)]),
        Err(violation(ChannelId(3), ViolationKind::NotIncreasing))
    );
    // The live channel limit.
    let small = Registry::new(RegistryConfig { max_channels: 2, ..config(Parity::Even) });
    assert_eq!(
        small.on_remote_announce(&[decl(1, c2h, 1), decl(3, c2h, 1), decl(5, c2h, 1)]),
        Err(violation(ChannelId(5), ViolationKind::TooManyChannels { max: 2 }))
    );
    assert_eq!(small.stats().pending, 0);
    small.on_remote_announce(&[decl(1, c2h, 1), decl(3, c2h, 1)]).unwrap();
    assert_eq!(small.create_outgoing(c2h, 1), Err(LocalError::TooManyChannels { max: 2 }));
    // Local allocation: our parity, increasing.
    let caller = caller();
    let ids: Vec<u64> = (0..3).map(|_| caller.create_outgoing(c2h, 1).unwrap().id.0).collect();
    assert_eq!(ids, vec![1, 3, 5]);
    assert_eq!(caller.create_outgoing(c2h, 65), Err(LocalError::CreditAboveLimit { credit: 65, max: 64 }));
}

#[test]
fn rpc_channel_wrong_direction_is_violation() {
    let registry = caller();
    let sending = caller_sending(&registry, 1);
    let receiving = caller_receiving(&registry, 1);
    let wrong = |id| violation(id, ViolationKind::WrongDirection);
    assert_eq!(registry.on_remote_item(sending, item("x")), Err(wrong(sending)));
    assert_eq!(registry.on_remote_close(sending), Err(wrong(sending)));
    assert_eq!(registry.on_remote_grant(receiving, 1), Err(wrong(receiving)));
    assert_eq!(registry.on_remote_reset(receiving), Err(wrong(receiving)));
    // Local misuse is a typed local error, not a violation.
    assert_eq!(registry.spend_credit(receiving), Err(SendError::WrongDirection(receiving)));
    assert_eq!(recv(&registry, sending), Poll::Ready(Err(RecvError::WrongDirection(sending))));
    // Handler side: the roles flip.
    let handler = handler();
    handler.on_remote_announce(&[decl(1, ChannelDirection::HandlerToCaller, 1)]).unwrap();
    assert_eq!(handler.on_remote_item(ChannelId(1), item("x")), Err(wrong(ChannelId(1))));
    assert_eq!(handler.on_remote_grant(ChannelId(1), 1), Ok(RemoteOutcome::Buffered));
}

// --- rpc.channel.crossing

#[test]
fn rpc_channel_crossing_grant_after_close_is_ignored() {
    let registry = caller();
    let id = caller_sending(&registry, 1);
    registry.local_close(id).unwrap();
    // Before the close left ...
    assert_eq!(registry.on_remote_grant(id, 5), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(flush(&registry), vec![Payload::CloseChannel { id, metadata: Metadata::default() }]);
    // ... and after: grant and reset are ignored, a second reset is not.
    assert_eq!(registry.on_remote_grant(id, 5), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(registry.on_remote_reset(id), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(registry.on_remote_reset(id), Err(violation(id, ViolationKind::ResetAfterReset)));
    assert_eq!(registry.stats().crossing_ignored, 3);
}

#[test]
fn rpc_channel_crossing_late_id_is_tolerated_and_counted() {
    let registry = Registry::new(RegistryConfig { tombstones: 2, ..config(Parity::Odd) });
    let ids: Vec<ChannelId> = (0..4).map(|_| caller_sending(&registry, 1)).collect();
    for &id in &ids {
        registry.local_close(id).unwrap();
    }
    flush(&registry);
    assert_eq!(registry.stats().tombstones, 2);
    // The two oldest are forgotten: their late messages are tolerated and counted.
    assert_eq!(registry.on_remote_grant(ids[0], 1), Ok(RemoteOutcome::DiscardedLate));
    assert_eq!(registry.on_remote_reset(ids[1]), Ok(RemoteOutcome::DiscardedLate));
    assert_eq!(registry.stats().late_messages, 2);
    // The recent ones are still judged precisely.
    assert_eq!(registry.on_remote_grant(ids[3], 1), Ok(RemoteOutcome::CrossingIgnored));
    // Above every allocated id: unknown.
    assert_eq!(registry.on_remote_grant(ChannelId(9), 1), Err(violation(ChannelId(9), ViolationKind::UnknownChannel)));
}

// --- rpc.flow-control.credit

#[test]
fn rpc_flow_control_credit_item_without_credit_is_violation() {
    let registry = caller();
    let id = caller_receiving(&registry, 2);
    registry.on_remote_item(id, item("a")).unwrap();
    registry.on_remote_item(id, item("b")).unwrap();
    assert_eq!(registry.on_remote_item(id, item("c")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    // Consuming makes a grant due, but the sender holds no credit until it is flushed.
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item("a")))));
    assert_eq!(registry.on_remote_item(id, item("c")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 1 }]);
    assert_eq!(registry.on_remote_item(id, item("c")), Ok(ItemOutcome::Delivered));
    assert_eq!(registry.stats().max_queue_depth, 2, "the queue never exceeds the window");
}

#[test]
fn rpc_flow_control_credit_grants_batched_at_half_window() {
    let registry = caller();
    let id = caller_receiving(&registry, 8);
    for n in 0..8 {
        registry.on_remote_item(id, Bytes::from(vec![n])).unwrap();
    }
    for n in 0..3 {
        assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(Bytes::from(vec![n])))));
    }
    assert_eq!(flush(&registry), vec![], "3 < W/2 = 4: no grant yet");
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(Bytes::from(vec![3])))));
    assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 4 }]);
    let (counter, waker) = counting();
    let mut out = Vec::new();
    assert_eq!(registry.poll_outbound(&mut Context::from_waker(&waker), &mut out), Poll::Pending);
    for _ in 4..8 {
        assert!(recv(&registry, id).is_ready());
    }
    assert_eq!(wakes(&counter), 1, "the driver is woken when a grant becomes due");
    // The consumer emptied the queue: the window doubles to 16 with this grant.
    assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 4 + 8 }]);
}

/// Takes `n` items from `id` after the peer sent them one at a time, each
/// taken at once (a consumer that keeps up); returns the grants flushed.
fn keep_up(registry: &Registry, id: ChannelId, n: usize, body: &Bytes) -> Vec<u32> {
    let mut grants = Vec::new();
    for _ in 0..n {
        registry.on_remote_item(id, body.clone()).expect("within credit");
        assert_eq!(recv(registry, id), Poll::Ready(Ok(Some(body.clone()))));
        for p in flush(registry) {
            if let Payload::GrantCredit { additional, .. } = p {
                grants.push(additional);
            }
        }
    }
    grants
}

#[test]
fn rpc_flow_control_credit_window_grows_while_consumer_keeps_up_up_to_max_initial_credit() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    // W = 4, 8, 16, 32, 64 (the limit): each grant returns W/2 and adds W.
    let grants = keep_up(&registry, id, 2 + 4 + 8 + 16 + 32 + 32 + 32, &item("x"));
    assert_eq!(grants, vec![2 + 4, 4 + 8, 8 + 16, 16 + 32, 32, 32, 32]);
    // The peer may now have 64 in flight, and no more.
    for _ in 0..64 {
        assert_eq!(registry.on_remote_item(id, item("x")), Ok(ItemOutcome::Delivered));
    }
    assert_eq!(registry.on_remote_item(id, item("x")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
}

#[test]
fn rpc_flow_control_credit_window_does_not_grow_for_a_slow_consumer() {
    let registry = caller();
    let id = caller_receiving(&registry, 8);
    for _ in 0..8 {
        assert_eq!(registry.on_remote_item(id, item("x")), Ok(ItemOutcome::Delivered));
    }
    for round in 0..20 {
        // The consumer is behind: when its grant falls due, items are queued.
        for _ in 0..4 {
            assert!(recv(&registry, id).is_ready());
        }
        assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 4 }], "round {round}");
        for _ in 0..4 {
            assert_eq!(registry.on_remote_item(id, item("x")), Ok(ItemOutcome::Delivered));
        }
        assert_eq!(
            registry.on_remote_item(id, item("x")),
            Err(violation(id, ViolationKind::ItemWithoutCredit)),
            "round {round}: the window is still 8"
        );
    }
}

#[test]
fn rpc_flow_control_credit_window_growth_is_bounded_by_bytes_for_large_items() {
    let registry = caller();
    // Each queued item counts with its queue entry (a `Bytes`).
    let entry = std::mem::size_of::<Bytes>();
    let id = caller_receiving(&registry, 4);
    // 64 KiB items with their entries: 256 KiB holds 4 of them, so the
    // window stays at 4.
    let big = Bytes::from(vec![7u8; 64 * 1024 - entry]);
    let grants = keep_up(&registry, id, 40, &big);
    assert!(grants.iter().all(|g| *g == 2), "{grants:?}");
    // 32 KiB items with their entries: the window may reach 8, not more.
    let id = caller_receiving(&registry, 4);
    let grants = keep_up(&registry, id, 40, &Bytes::from(vec![7u8; 32 * 1024 - entry]));
    assert_eq!(grants[..2], [2 + 4, 4]);
    assert!(grants[2..].iter().all(|g| *g == 4), "{grants:?}");
}

#[test]
fn rpc_flow_control_credit_zero_initial_waits_for_grant() {
    // Sender side: zero credit waits, a grant wakes it.
    let registry = caller();
    let id = caller_sending(&registry, 0);
    let (counter, waker) = counting();
    assert_eq!(registry.poll_credit(id, &mut Context::from_waker(&waker)), Poll::Pending);
    assert_eq!(registry.spend_credit(id), Err(SendError::NoCredit(id)));
    assert_eq!(registry.on_remote_grant(id, 1), Ok(RemoteOutcome::Applied));
    assert_eq!(wakes(&counter), 1);
    assert_eq!(credit(&registry, id), Poll::Ready(Ok(())));
    registry.spend_credit(id).unwrap();
    assert_eq!(credit(&registry, id), Poll::Pending);
    // An abandoned send gives its credit back.
    registry.refund_credit(id);
    assert_eq!(credit(&registry, id), Poll::Ready(Ok(())));

    // Receiver side: with W = 0 the receiver grants 1 when its consumer waits.
    let id = caller_receiving(&registry, 0);
    assert_eq!(registry.on_remote_item(id, item("x")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    assert_eq!(recv(&registry, id), Poll::Pending);
    assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 1 }]);
    assert_eq!(recv(&registry, id), Poll::Pending);
    assert_eq!(flush(&registry), vec![], "no second grant while the sender holds credit");
    registry.on_remote_item(id, item("a")).unwrap();
    assert_eq!(registry.on_remote_item(id, item("b")), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item("a")))));
    assert_eq!(recv(&registry, id), Poll::Pending);
    assert_eq!(flush(&registry), vec![Payload::GrantCredit { id, additional: 1 }]);
}

#[test]
fn rpc_flow_control_credit_grant_overflow_is_violation() {
    let registry = caller();
    let id = caller_sending(&registry, 1);
    assert_eq!(registry.on_remote_grant(id, u32::MAX - 1), Ok(RemoteOutcome::Applied));
    assert_eq!(registry.on_remote_grant(id, 1), Err(violation(id, ViolationKind::GrantOverflow)));
    assert_eq!(registry.describe(id), "send Open(credit=4294967295)", "a violation leaves the state untouched");
    let handler = handler();
    handler.on_remote_announce(&[decl(1, ChannelDirection::HandlerToCaller, 1)]).unwrap();
    assert_eq!(
        handler.on_remote_grant(ChannelId(1), u32::MAX),
        Err(violation(ChannelId(1), ViolationKind::GrantOverflow))
    );
}

// --- session.protocol-error / connection loss

#[test]
fn connection_loss_closes_everything_and_wakes_waiters() {
    let registry = caller();
    let sending = caller_sending(&registry, 0);
    let receiving = caller_receiving(&registry, 4);
    let (sender_wakes, sender_waker) = counting();
    let (receiver_wakes, receiver_waker) = counting();
    let (driver_wakes, driver_waker) = counting();
    assert!(registry.poll_credit(sending, &mut Context::from_waker(&sender_waker)).is_pending());
    registry.on_remote_item(receiving, item("queued")).unwrap();
    let other = caller_receiving(&registry, 4);
    assert!(registry.poll_recv(other, &mut Context::from_waker(&receiver_waker)).is_pending());
    let mut out = Vec::new();
    assert!(registry.poll_outbound(&mut Context::from_waker(&driver_waker), &mut out).is_pending());

    let cause = LossCause::ProtocolError { fault: vox_core::driver::Fault::Peer, description: "bad".to_owned() };
    registry.on_connection_lost(cause.clone());
    assert_eq!((wakes(&sender_wakes), wakes(&receiver_wakes), wakes(&driver_wakes)), (1, 1, 1));
    let stats = registry.stats();
    assert_eq!((stats.open, stats.closing, stats.closed), (0, 0, 3));

    assert_eq!(credit(&registry, sending), Poll::Ready(Err(SendError::ConnectionLost(cause.clone()))));
    assert_eq!(registry.spend_credit(sending), Err(SendError::ConnectionLost(cause.clone())));
    // The queued item is not delivered: the loss is reported instead.
    assert_eq!(recv(&registry, receiving), Poll::Ready(Err(RecvError::ConnectionLost(cause.clone()))));
    assert_eq!(registry.on_remote_item(other, item("x")), Ok(ItemOutcome::ConnectionLost));
    assert_eq!(registry.on_remote_grant(sending, 1), Ok(RemoteOutcome::ConnectionLost));
    assert_eq!(registry.create_outgoing(ChannelDirection::CallerToHandler, 1), Err(LocalError::ConnectionLost(cause)));
    assert_eq!(registry.poll_outbound(&mut Context::from_waker(Waker::noop()), &mut out), Poll::Pending);
    assert!(out.is_empty());
    registry.receiver_dropped(other);
    assert_eq!(registry.stats().closed, 0, "every handle observed the loss, nothing is left");
}

// --- bounded memory

#[test]
fn closed_entries_are_removed() {
    let caller = Registry::new(RegistryConfig { tombstones: 1024, ..config(Parity::Odd) });
    let handler = Registry::new(RegistryConfig { tombstones: 1024, ..config(Parity::Even) });
    for n in 0..10_000u32 {
        // Alternate the four ways a channel ends.
        match n % 4 {
            0 => {
                let id = caller_sending(&caller, 1);
                caller.spend_credit(id).unwrap();
                caller.sender_dropped(id);
            }
            1 => {
                let id = caller_receiving(&caller, 1);
                caller.on_remote_item(id, item("x")).unwrap();
                caller.on_remote_close(id).unwrap();
                while let Poll::Ready(Ok(Some(_))) = recv(&caller, id) {}
            }
            2 => {
                let id = caller_receiving(&caller, 1);
                caller.receiver_dropped(id);
            }
            _ => {
                let id = caller_sending(&caller, 1);
                caller.on_remote_reset(id).unwrap();
                caller.sender_dropped(id);
            }
        }
        let id = ChannelId(u64::from(n) * 2 + 1);
        handler.on_remote_announce(&[decl(id.0, ChannelDirection::CallerToHandler, 1)]).unwrap();
        handler.bind(id).unwrap();
        handler.on_remote_close(id).unwrap();
        assert_eq!(recv(&handler, id), Poll::Ready(Ok(None)));
        flush(&caller);
    }
    for registry in [&caller, &handler] {
        let stats = registry.stats();
        assert_eq!((stats.pending, stats.open, stats.closing, stats.closed), (0, 0, 0, 0));
        assert_eq!(stats.tombstones, 1024);
    }
}

// --- ordering of a sender's items and its close

#[test]
fn rpc_channel_sender_drop_closes_after_items_already_sent() {
    // The wire between a caller (sending) and a handler (receiving), in order.
    let caller = caller();
    let handler = handler();
    let decl = caller.create_outgoing(ChannelDirection::CallerToHandler, 4).unwrap();
    handler.on_remote_announce(&[decl]).unwrap();
    let mut wire: Vec<Payload> = Vec::new();
    for text in ["a", "b", "c"] {
        assert!(caller.poll_credit(decl.id, &mut Context::from_waker(Waker::noop())).is_ready());
        caller.spend_credit(decl.id).unwrap();
        wire.push(Payload::ChannelItem { id: decl.id, item: vox_core::wire::Blob::new(item(text)) });
    }
    // One more send was abandoned after spending: refunded, not lost.
    caller.spend_credit(decl.id).unwrap();
    caller.refund_credit(decl.id);
    caller.sender_dropped(decl.id);
    // The driver flushes after the items it already enqueued.
    wire.extend(flush(&caller));
    assert_eq!(wire.len(), 4);
    assert!(matches!(wire[3], Payload::CloseChannel { .. }));

    for payload in wire {
        match payload {
            Payload::ChannelItem { id, item } => {
                assert_eq!(handler.on_remote_item(id, item.into_bytes()), Ok(ItemOutcome::Buffered))
            }
            Payload::CloseChannel { id, .. } => assert_eq!(handler.on_remote_close(id), Ok(RemoteOutcome::Buffered)),
            other => panic!("unexpected {other:?}"),
        }
    }
    handler.bind(decl.id).unwrap();
    for text in ["a", "b", "c"] {
        assert_eq!(recv(&handler, decl.id), Poll::Ready(Ok(Some(item(text)))));
    }
    assert_eq!(recv(&handler, decl.id), Poll::Ready(Ok(None)));
    assert_eq!(caller.stats().closed + caller.stats().closing + caller.stats().open, 0);
}

// --- rpc.channel.item: a run of items (`ChannelItems`)

// Each item of a run is one item event, in order: the ones before a
// violation stay delivered, and the receiver is woken once for the run.
#[test]
fn rpc_channel_item_run_applies_each_item_in_order_up_to_the_first_violation() {
    let registry = caller();
    let id = caller_receiving(&registry, 2);
    let (counter, waker) = counting();
    assert!(registry.poll_recv(id, &mut Context::from_waker(&waker)).is_pending());
    let run = [item("a"), item("b"), item("c")];
    assert_eq!(registry.on_remote_items(id, run), Err(violation(id, ViolationKind::ItemWithoutCredit)));
    assert_eq!(wakes(&counter), 1, "one wake-up for the run");
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item("a")))));
    assert_eq!(recv(&registry, id), Poll::Ready(Ok(Some(item("b")))));
    assert!(recv(&registry, id).is_pending(), "the item past the credit was not queued");
}

// A run for a channel we reset is discarded item by item, and counted.
#[test]
fn rpc_channel_reset_run_after_reset_is_discarded_and_counted() {
    let registry = caller();
    let id = caller_receiving(&registry, 4);
    assert_eq!(registry.on_remote_items(id, [item("a")]), Ok(0));
    registry.local_reset(id).unwrap();
    assert_eq!(registry.on_remote_items(id, [item("late1"), item("late2")]), Ok(2));
    assert_eq!(registry.stats().items_discarded_after_reset, 2);
}

// --- stats

// The stats count every entry by its phase, and each tolerated message in
// its own counter, exactly.
#[test]
fn channel_stats_count_each_phase_and_counter_exactly() {
    let registry = caller();
    let _open_tx = caller_sending(&registry, 1);
    let _open_rx = caller_receiving(&registry, 2);
    let closing_tx = caller_sending(&registry, 1);
    registry.local_close(closing_tx).unwrap();
    let draining = caller_receiving(&registry, 2);
    registry.on_remote_item(draining, item("a")).unwrap();
    registry.on_remote_close(draining).unwrap();
    let reset_tx = caller_sending(&registry, 1);
    registry.on_remote_reset(reset_tx).unwrap();
    let reset_rx = caller_receiving(&registry, 2);
    registry.on_remote_item(reset_rx, item("b")).unwrap();
    registry.on_remote_item(reset_rx, item("c")).unwrap();
    registry.local_reset(reset_rx).unwrap();
    registry.on_remote_announce(&[decl(2, ChannelDirection::CallerToHandler, 1)]).unwrap();
    registry.on_remote_announce(&[decl(4, ChannelDirection::HandlerToCaller, 1)]).unwrap();
    let done = caller_receiving(&registry, 1);
    registry.on_remote_close(done).unwrap();
    assert_eq!(recv(&registry, done), Poll::Ready(Ok(None)));
    // One of each tolerated message.
    assert_eq!(registry.on_remote_item(reset_rx, item("d")), Ok(ItemOutcome::DiscardedAfterReset));
    assert_eq!(registry.on_remote_grant(closing_tx, 1), Ok(RemoteOutcome::CrossingIgnored));
    assert_eq!(registry.on_remote_grant(reset_tx, 1), Ok(RemoteOutcome::GrantAfterResetIgnored));
    let stats = registry.stats();
    let want = ChannelStats {
        pending: 2,
        open: 2,
        // The sender's close and the receiver's reset are owed; `draining` has an item left.
        closing: 3,
        // `reset_tx`: the peer's reset is not observed by the sender yet.
        closed: 1,
        tombstones: 1,
        items_discarded_after_reset: 1,
        items_dropped_unread: 2,
        late_messages: 0,
        crossing_ignored: 1,
        grants_after_reset_ignored: 1,
        max_queue_depth: 2,
    };
    assert_eq!(stats, want);
    // A late message for a forgotten id (no tombstones at all) has its own counter.
    let forgetful = Registry::new(RegistryConfig { tombstones: 0, ..config(Parity::Odd) });
    let id = caller_sending(&forgetful, 1);
    forgetful.on_remote_reset(id).unwrap();
    assert_eq!(forgetful.spend_credit(id), Err(SendError::Reset));
    assert_eq!(forgetful.on_remote_grant(id, 1), Ok(RemoteOutcome::DiscardedLate));
    assert_eq!(forgetful.stats(), ChannelStats { late_messages: 1, ..ChannelStats::default() });
}

// --- the table
//
// `transition_table()` drives real registries through every (state, event)
// pair. What checks it is the committed snapshot, an independent record
// reviewed when it changes (re-bless with `VOX_BLESS=1`); generating the
// table twice only shows that it is deterministic (no map order, no clock).
#[test]
fn channel_transition_table_matches_snapshot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/channel_transitions.txt");
    let table = transition_table();
    assert_eq!(table, transition_table(), "the table is deterministic");
    if std::env::var("VOX_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &table).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != table {
        let first = expected.lines().zip(table.lines()).position(|(a, b)| a != b);
        panic!(
            "the channel transition table changed (first differing line: {first:?}).\n\
             Review the new table and re-run with VOX_BLESS=1 to accept it; then update \
             docs/adr/0001-channel-lifecycle.md.\n--- new table ---\n{table}"
        );
    }
}

// rule: rpc.flow-control.credit — the byte bound on window growth counts
// each item's queue entry, not only its bytes: one-byte items stop the
// window at 256 KiB of entries, far below an item cap of 65,536.
#[test]
fn rpc_flow_control_credit_window_growth_counts_queue_entries_for_tiny_items() {
    let config =
        RegistryConfig { max_initial_credit: 64, max_receive_window: 65_536, ..RegistryConfig::new(Parity::Odd) };
    let registry = Registry::new(config);
    let id = caller_receiving(&registry, 16);
    let grants = keep_up(&registry, id, 200_000, &Bytes::from_static(&[1]));
    // Once grown, each grant returns half the window.
    let window = u64::from(*grants.last().expect("grants")) * 2;
    let entries = (256 * 1024 / (1 + std::mem::size_of::<Bytes>())) as u64;
    assert!(window <= entries + 2, "window grew to about {window} items, past {entries} entries of 256 KiB");
    assert!(window > 2048, "the window stopped at about {window} items");
}
