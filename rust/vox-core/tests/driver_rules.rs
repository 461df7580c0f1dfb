//! One test per rule of PROTOCOL.md sections 7 (requests and responses) and
//! 9 (channels), named after the rule id. Violations are sent by a raw peer
//! (`common::raw_peer`), so the tests can say what a correct runtime never
//! would; everything else runs against the real runtime on both sides.
//!
//! Synchronisation: a `Ping`/`Pong` round trip through a raw peer proves that
//! every message sent before the `Ping` was processed (the session's run loop
//! handles inbound messages in order and synchronously). "Nothing more
//! arrives" is checked with paused time: the runtime auto-advances the clock
//! only once every task is idle, so an elapsed virtual timeout proves
//! quiescence rather than guessing at it.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}

use bytes::Bytes;
use common::raw_peer::*;
use common::testbed::*;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use vox_core::driver::{Call, CallError, ChannelError, Fault, Handler, LossCause, channel, channel_with_credit};
use vox_core::session::{CloseReason, Session, SessionBuilder};
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ConnectionId, ConnectionSettings, Message, Metadata,
    MetadataEntry, MetadataValue, MethodId, NO_PROPAGATE, Parity, Payload, RequestId, ResponseBody, SENSITIVE,
};

// ------------------------------------------------------------------ helpers

fn blob<T: Serialize + ?Sized>(value: &T) -> Blob {
    Blob::from(wire::encode("test value", value).expect("encode"))
}

fn decode<T: serde::de::DeserializeOwned>(b: &Blob) -> T {
    wire::decode("test value", b.bytes()).expect("decode")
}

fn req(id: u64, method: &str, args: &(impl Serialize + ?Sized), channels: Vec<ChannelDecl>) -> Payload {
    Payload::Request {
        id: RequestId(id),
        method_id: mid(method),
        args: blob(args),
        channels,
        metadata: Metadata::new(),
    }
}

fn decl(id: u64, direction: ChannelDirection, initial_credit: u32) -> ChannelDecl {
    ChannelDecl { id: ChannelId(id), direction, initial_credit }
}

fn item(id: u64, value: &(impl Serialize + ?Sized)) -> Payload {
    Payload::ChannelItem { id: ChannelId(id), item: blob(value) }
}

fn ok_response(id: RequestId, value: &(impl Serialize + ?Sized)) -> Payload {
    Payload::Response { id, ret: ResponseBody::Ok(blob(value)), metadata: Metadata::new() }
}

const C2H: ChannelDirection = ChannelDirection::CallerToHandler;
const H2C: ChannelDirection = ChannelDirection::HandlerToCaller;

/// The next `Request` the runtime sends, skipping other messages.
async fn next_request(raw: &mut RawPeer) -> (RequestId, MethodId, Blob, Vec<ChannelDecl>, Metadata) {
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Request { .. })).await;
    assert_eq!(m.connection_id, ConnectionId::ROOT);
    match m.payload {
        Payload::Request { id, method_id, args, channels, metadata } => (id, method_id, args, channels, metadata),
        _ => unreachable!(),
    }
}

/// The response body for request `id`, skipping other messages.
async fn response_for(raw: &mut RawPeer, id: u64) -> (ResponseBody, Metadata) {
    let m = raw.recv_until(|m| matches!(&m.payload, Payload::Response { id: r, .. } if r.0 == id)).await;
    match m.payload {
        Payload::Response { ret, metadata, .. } => (ret, metadata),
        _ => unreachable!(),
    }
}

/// Sends a `Ping` and returns every message received before its `Pong`.
/// When it returns, the runtime has processed everything sent before.
async fn sync(raw: &mut RawPeer, nonce: u64) -> Vec<Message> {
    raw.send(0, Payload::Ping { nonce }).await;
    let mut seen = Vec::new();
    loop {
        match raw.recv().await {
            Some(Message { payload: Payload::Pong { nonce: n }, .. }) if n == nonce => return seen,
            Some(m) => seen.push(m),
            None => panic!("link closed while waiting for Pong {nonce}; before it: {seen:?}"),
        }
    }
}

/// Asserts that the runtime sends nothing more while it is idle. Needs paused
/// time: the virtual clock only advances once every task waits.
async fn assert_quiet(raw: &mut RawPeer) {
    match tokio::time::timeout(Duration::from_secs(1), raw.rx.recv()).await {
        Err(_) => {}
        Ok(m) => panic!("expected the runtime to stay quiet, got {m:?}"),
    }
}

/// Reads until `ProtocolError`, returning it and everything before it; then
/// checks that the link ends.
async fn until_protocol_error(raw: &mut RawPeer) -> (String, Vec<Message>) {
    let mut before = Vec::new();
    loop {
        match raw.recv().await {
            Some(Message { payload: Payload::ProtocolError { description }, connection_id }) => {
                assert!(connection_id.is_root(), "ProtocolError must use connection 0");
                assert!(raw.recv().await.is_none(), "link must close after ProtocolError");
                return (description, before);
            }
            Some(m) => before.push(m),
            None => panic!("link closed without a ProtocolError; got {before:?}"),
        }
    }
}

async fn closed(s: &Session) -> CloseReason {
    tokio::time::timeout(PATIENCE, s.handle.closed()).await.expect("session did not end")
}

async fn assert_local_protocol_error(s: &Session) {
    let reason = closed(s).await;
    assert!(matches!(reason, CloseReason::LocalProtocolError(_)), "{reason:?}");
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.expect("hang detector: operation did not finish")
}

struct OnDrop(mpsc::UnboundedSender<&'static str>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// The testbed plus test-only methods:
/// - `probe_forever`: reports "started", waits forever, reports "dropped" when stopped;
/// - `echo_md`: replies with the request's metadata as response metadata;
/// - `gated_collect`: waits for `gate`, then binds `Rx<i32>` 0 and replies `(items, error)`;
/// - `gated_send`: waits for `gate`, then binds `Tx<i32>` 0, sends one item, replies the result as text;
/// - `take_one`: binds `Rx<i32>` 0, takes one item, drops the `Rx`, replies the item.
fn rules_builder(events: mpsc::UnboundedSender<&'static str>, gate: Arc<Notify>) -> SessionBuilder {
    let tb = testbed();
    SessionBuilder::new().handler(move |mut call: Call| {
        let tb = tb.clone();
        let events = events.clone();
        let gate = gate.clone();
        async move {
            let m = call.method_id;
            if m == mid("probe_forever") {
                let _guard = OnDrop(events.clone());
                let _ = events.send("started");
                std::future::pending::<()>().await;
            } else if m == mid("echo_md") {
                call.reply.reply(ResponseBody::Ok(Blob::default()), call.metadata.clone());
            } else if m == mid("gated_collect") {
                gate.notified().await;
                let mut rx = match call.channels.rx::<i32>(0) {
                    Ok(rx) => rx,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                let mut items = Vec::new();
                let error = loop {
                    match rx.recv().await {
                        Ok(Some(v)) => items.push(v),
                        Ok(None) => break None,
                        Err(e) => break Some(e.to_string()),
                    }
                };
                call.reply.ok(&(items, error));
            } else if m == mid("gated_send") {
                gate.notified().await;
                let mut tx = match call.channels.tx::<i32>(0) {
                    Ok(tx) => tx,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                let r = tx.send(&1).await;
                call.reply.ok(&format!("{r:?}"));
            } else if m == mid("take_one") {
                let mut rx = match call.channels.rx::<i32>(0) {
                    Ok(rx) => rx,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                let first = rx.recv().await.ok().flatten();
                drop(rx);
                call.reply.ok(&first);
            } else {
                tb.handle(call).await;
            }
        }
    })
}

fn rules() -> (SessionBuilder, mpsc::UnboundedReceiver<&'static str>, Arc<Notify>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    (rules_builder(tx, gate.clone()), rx, gate)
}

// ------------------------------------------------------ 7. requests

#[tokio::test]
async fn rpc_request_carries_caller_parity_id_method_id_args_and_channel_ids_in_argument_order() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let local = client.negotiated.local_parity;
    let caller = client.root.caller.clone();
    let (_in_tx, in_rx) = channel::<String>();
    let (out_tx, _out_rx) = channel_with_credit::<String>(4);
    let call = tokio::spawn(async move {
        let args = ("abc".to_string(), 7u32);
        caller
            .call::<_, u32>(mid("transform"), &args, vec![in_rx.into_arg().unwrap(), out_tx.into_arg().unwrap()])
            .await
    });
    let (id, method_id, args, channels, metadata) = next_request(&mut raw).await;
    assert_eq!(id.parity(), local, "request id has the caller's parity");
    // Method id: first 8 bytes (LE) of BLAKE3("testbed.transform").
    let hash = blake3::hash(b"testbed.transform");
    let expected = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap());
    assert_eq!(method_id, MethodId(expected));
    assert_eq!(decode::<(String, u32)>(&args), ("abc".to_string(), 7));
    assert!(metadata.is_empty());
    assert_eq!(channels.len(), 2, "{channels:?}");
    assert_eq!((channels[0].direction, channels[0].initial_credit), (C2H, 16), "first argument: Rx<String>");
    assert_eq!((channels[1].direction, channels[1].initial_credit), (H2C, 4), "second argument: Tx<String>");
    assert!(channels.iter().all(|c| c.id.parity() == local), "{channels:?}");
    assert!(channels[0].id < channels[1].id, "ids follow argument order: {channels:?}");
    raw.send(0, ok_response(id, &9u32)).await;
    assert_eq!(within(call).await.unwrap().unwrap(), 9);
}

#[tokio::test]
async fn rpc_request_id_wrong_parity_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(2, "echo", "x", vec![])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.request.id"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_request_id_duplicate_in_flight_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "wait_forever", &(), vec![])).await;
    sync(&mut raw, 1).await;
    raw.send(0, req(1, "echo", "again", vec![])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.request.id") && d.contains("in flight"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_request_id_reuse_after_response_is_allowed() {
    // Only ids *in flight* are refused; this pins the boundary of the rule.
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "echo", "first", vec![])).await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::Ok(blob("first")));
    raw.send(0, req(3, "echo", "second", vec![])).await;
    assert_eq!(response_for(&mut raw, 3).await.0, ResponseBody::Ok(blob("second")));
}

#[tokio::test]
async fn rpc_response_one_per_request_unsolicited_response_is_protocol_error() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    raw.send(0, ok_response(RequestId(1), &())).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.response.one-per-request"), "{d}");
    assert_local_protocol_error(&client).await;
}

#[tokio::test]
async fn rpc_response_one_per_request_second_response_is_protocol_error() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let call = tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &"hi".to_string(), vec![]).await });
    let (id, _, args, _, _) = next_request(&mut raw).await;
    raw.send(0, Payload::Response { id, ret: ResponseBody::Ok(args.clone()), metadata: Metadata::new() }).await;
    raw.send(0, Payload::Response { id, ret: ResponseBody::Ok(args), metadata: Metadata::new() }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.response.one-per-request"), "{d}");
    // The first response was delivered; only the second one was the violation.
    assert_eq!(within(call).await.unwrap().unwrap(), "hi");
    assert_local_protocol_error(&client).await;
}

#[tokio::test]
async fn rpc_response_one_per_request_panic_forget_and_cancel_each_produce_exactly_one_response() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "panic", &(), vec![])).await;
    raw.send(0, req(3, "forget", &(), vec![])).await;
    raw.send(0, req(5, "wait_forever", &(), vec![])).await;
    raw.send(0, Payload::CancelRequest { id: RequestId(5) }).await;
    let mut responses: HashMap<u64, Vec<ResponseBody>> = HashMap::new();
    while [1, 3, 5].iter().any(|id| !responses.contains_key(id)) {
        match raw.recv().await {
            Some(Message { payload: Payload::Response { id, ret, .. }, .. }) => {
                responses.entry(id.0).or_default().push(ret);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("link closed"),
        }
    }
    // A later request and a ping: any duplicate response queued meanwhile
    // would show up before these.
    raw.send(0, req(7, "echo", "after", vec![])).await;
    let mut tail = Vec::new();
    loop {
        let m = raw.recv().await.expect("link closed");
        if matches!(&m.payload, Payload::Response { id, .. } if id.0 == 7) {
            break;
        }
        tail.push(m);
    }
    tail.extend(sync(&mut raw, 9).await);
    assert!(tail.is_empty(), "extra messages after the single responses: {tail:?}");
    for id in [1, 3, 5] {
        assert_eq!(responses[&id].len(), 1, "request {id}: {:?}", responses[&id]);
    }
    assert!(matches!(responses[&1][0], ResponseBody::HandlerFailed { .. }), "panic: {:?}", responses[&1]);
    assert!(matches!(responses[&3][0], ResponseBody::HandlerFailed { .. }), "forget: {:?}", responses[&3]);
    assert_eq!(responses[&5][0], ResponseBody::Cancelled, "cancel");
    assert_eq!(s.root.caller.stats().handlers_in_flight, 0);
    assert!(s.handle.close_reason().is_none());
}

#[tokio::test]
async fn rpc_unknown_method_gets_error_response_and_connection_stays_up() {
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(
        0,
        Payload::Request {
            id: RequestId(1),
            method_id: MethodId(0x1234_5678),
            args: Blob::default(),
            channels: vec![],
            metadata: Metadata::new(),
        },
    )
    .await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::UnknownMethod);
    raw.send(0, req(3, "echo", "still up", vec![])).await;
    assert_eq!(response_for(&mut raw, 3).await.0, ResponseBody::Ok(blob("still up")));

    // The same through the runtime's caller.
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = &client.root.caller;
    let err = caller.call::<_, ()>(MethodId::from_names("Testbed", "no_such_method"), &(), vec![]).await.unwrap_err();
    assert!(matches!(err, CallError::UnknownMethod { .. }), "{:?}", err);
    let echoed: String = caller.call(mid("echo"), &"ok".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "ok");
}

#[tokio::test]
async fn rpc_invalid_payload_gets_error_response_and_connection_stays_up() {
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    // 0xff is an unterminated varint: not a String.
    let bad = Payload::Request {
        id: RequestId(1),
        method_id: mid("echo"),
        args: Blob::new(Bytes::from_static(&[0xff])),
        channels: vec![],
        metadata: Metadata::new(),
    };
    raw.send(0, bad).await;
    assert!(matches!(response_for(&mut raw, 1).await.0, ResponseBody::InvalidPayload { .. }));
    raw.send(0, req(3, "echo", "later", vec![])).await;
    assert_eq!(response_for(&mut raw, 3).await.0, ResponseBody::Ok(blob("later")));

    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = &client.root.caller;
    let err = caller.call_raw(mid("echo"), Bytes::from_static(&[0xff]), vec![], Metadata::new()).await.unwrap_err();
    assert!(matches!(err, CallError::InvalidPayload(_)), "{err:?}");
    let echoed: String = caller.call(mid("echo"), &"later".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "later");
}

#[tokio::test]
async fn rpc_error_scope_call_errors_affect_only_their_call() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = &client.root.caller;
    let (mut tx, rx) = channel::<i32>();
    let sum = caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]);
    let feed = async move {
        for i in 0..100 {
            tx.send(&i).await.unwrap();
        }
        tx.close().await.unwrap();
    };
    let fine = "fine".to_string();
    let (sum, (), div, panic, unknown, invalid, echo) = within(async {
        tokio::join!(
            sum,
            feed,
            caller.call::<_, i64>(mid("divide"), &(1i64, 0i64), vec![]),
            caller.call::<_, ()>(mid("panic"), &(), vec![]),
            caller.call::<_, ()>(MethodId(7), &(), vec![]),
            caller.call_raw(mid("echo"), Bytes::from_static(&[0xff]), vec![], Metadata::new()),
            caller.call::<_, String>(mid("echo"), &fine, vec![]),
        )
    })
    .await;
    assert_eq!(sum.unwrap(), (0..100).sum::<i64>());
    match div.unwrap_err() {
        CallError::User(b) => assert_eq!(decode::<String>(&b), "division by zero"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(panic.unwrap_err(), CallError::HandlerFailed(_)));
    let unknown = unknown.unwrap_err();
    assert!(matches!(unknown, CallError::UnknownMethod { .. }), "{unknown:?}");
    assert!(matches!(invalid.unwrap_err(), CallError::InvalidPayload(_)));
    assert_eq!(echo.unwrap(), "fine");
    assert!(client.handle.close_reason().is_none());
    let again: i64 = caller.call(mid("divide"), &(9i64, 3i64), vec![]).await.unwrap();
    assert_eq!(again, 3);
}

#[tokio::test]
async fn rpc_pipelining_slow_handler_blocks_neither_other_calls_nor_the_message_loop() {
    let (server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = client.root.caller.clone();
    let slow = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<_, ()>(mid("wait_forever"), &(), vec![]).await }
    });
    for i in 0..10 {
        let echoed: String = within(caller.call(mid("echo"), &format!("m{i}"), vec![])).await.unwrap();
        assert_eq!(echoed, format!("m{i}"));
    }
    let (tx, mut rx) = channel::<i32>();
    let gen_call = caller.call::<_, ()>(mid("generate"), &40u32, vec![tx.into_arg().unwrap()]);
    let drain = async {
        let mut n = 0;
        while let Some(v) = rx.recv().await.unwrap() {
            assert_eq!(v, n);
            n += 1;
        }
        n
    };
    let (r, n) = within(async { tokio::join!(gen_call, drain) }).await;
    r.unwrap();
    assert_eq!(n, 40);
    assert!(!slow.is_finished());
    assert_eq!(server.root.caller.stats().handlers_in_flight, 1, "only the slow handler is left");

    // At the raw level: the run loop still answers pings and calls.
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "wait_forever", &(), vec![])).await;
    assert!(sync(&mut raw, 1).await.is_empty());
    raw.send(0, req(3, "echo", "quick", vec![])).await;
    assert_eq!(response_for(&mut raw, 3).await.0, ResponseBody::Ok(blob("quick")));
    slow.abort();
}

#[tokio::test]
async fn rpc_cancel_dropping_call_future_sends_cancel_request_and_ignores_late_response() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = &client.root.caller;
    let arg = "x".to_string();
    let mut call = Box::pin(caller.call::<_, String>(mid("echo"), &arg, vec![]));
    let (id, ..) = tokio::select! {
        r = &mut call => panic!("call finished without a response: {r:?}"),
        r = next_request(&mut raw) => r,
    };
    drop(call);
    let m = raw.recv_until(|m| matches!(m.payload, Payload::CancelRequest { .. })).await;
    assert_eq!(m.payload, Payload::CancelRequest { id });
    // The slot stays taken until the peer answers.
    assert_eq!(caller.stats().calls_in_flight, 1);
    raw.send(0, Payload::Response { id, ret: ResponseBody::Cancelled, metadata: Metadata::new() }).await;
    // A later call on the same link: its response is processed after the late one.
    let next = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<_, String>(mid("echo"), &"y".to_string(), vec![]).await }
    });
    let (id2, _, args, _, _) = next_request(&mut raw).await;
    raw.send(0, Payload::Response { id: id2, ret: ResponseBody::Ok(args), metadata: Metadata::new() }).await;
    assert_eq!(within(next).await.unwrap().unwrap(), "y");
    let stats = caller.stats();
    assert_eq!((stats.late_responses, stats.calls_in_flight), (1, 0), "{stats:?}");
    assert!(client.handle.close_reason().is_none());
}

#[tokio::test]
async fn rpc_cancel_request_stops_handler_and_gets_cancelled_response() {
    let (builder, mut events, _gate) = rules();
    let (s, mut raw) = raw_initiator(builder, Parity::Odd).await;
    raw.send(0, req(1, "probe_forever", &(), vec![])).await;
    assert_eq!(within(events.recv()).await, Some("started"));
    raw.send(0, Payload::CancelRequest { id: RequestId(1) }).await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::Cancelled);
    assert_eq!(within(events.recv()).await, Some("dropped"), "the handler was stopped");
    assert_eq!(s.root.caller.stats().handlers_in_flight, 0);
}

#[tokio::test]
async fn rpc_cancel_crossing_cancel_for_answered_request_is_ignored() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "echo", "done", vec![])).await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::Ok(blob("done")));
    raw.send(0, Payload::CancelRequest { id: RequestId(1) }).await;
    let between = sync(&mut raw, 1).await;
    assert!(between.is_empty(), "a late cancel gets no answer: {between:?}");
    assert_eq!(s.root.caller.stats().late_cancels, 1);
    raw.send(0, req(3, "echo", "still up", vec![])).await;
    assert_eq!(response_for(&mut raw, 3).await.0, ResponseBody::Ok(blob("still up")));
    assert!(s.handle.close_reason().is_none());
}

#[tokio::test]
async fn rpc_cancel_channels_cancelling_neither_closes_nor_resets_the_requests_channels() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = &client.root.caller;
    let (mut tx, rx) = channel::<u32>();
    let (out_tx, mut out_rx) = channel::<u32>();
    let mut call =
        Box::pin(caller.call::<_, ()>(mid("transform"), &(), vec![rx.into_arg().unwrap(), out_tx.into_arg().unwrap()]));
    let (id, _, _, channels, _) = tokio::select! {
        r = &mut call => panic!("call finished without a response: {r:?}"),
        r = next_request(&mut raw) => r,
    };
    let (up, down) = (channels[0].id, channels[1].id);
    drop(call);
    let m = raw.recv_until(|m| matches!(m.payload, Payload::CancelRequest { .. })).await;
    assert_eq!(m.payload, Payload::CancelRequest { id });
    // The kept Tx still sends; the kept Rx still receives.
    within(tx.send(&7)).await.unwrap();
    let m = raw.recv_until(|m| matches!(m.payload, Payload::ChannelItem { .. })).await;
    assert_eq!(m.payload, Payload::ChannelItem { id: up, item: blob(&7u32) });
    raw.send(0, Payload::ChannelItem { id: down, item: blob(&8u32) }).await;
    assert_eq!(within(out_rx.recv()).await.unwrap(), Some(8));
    raw.send(0, Payload::Response { id, ret: ResponseBody::Cancelled, metadata: Metadata::new() }).await;
    let seen = sync(&mut raw, 1).await;
    assert!(
        !seen.iter().any(|m| matches!(m.payload, Payload::CloseChannel { .. } | Payload::ResetChannel { .. })),
        "cancel ended a channel: {seen:?}"
    );
    within(tx.send(&9)).await.unwrap();
    let m = raw.recv_until(|m| matches!(m.payload, Payload::ChannelItem { .. })).await;
    assert_eq!(m.payload, Payload::ChannelItem { id: up, item: blob(&9u32) });
}

#[tokio::test(start_paused = true)]
async fn rpc_flow_control_max_concurrent_requests_caller_waits_under_peer_limit() {
    let settings = ConnectionSettings { max_concurrent_requests: 2, ..ConnectionSettings::default() };
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), settings).await;
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let caller = client.root.caller.clone();
            tokio::spawn(async move { caller.call::<_, String>(mid("echo"), &format!("m{i}"), vec![]).await })
        })
        .collect();
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        in_flight.push(next_request(&mut raw).await);
    }
    assert_quiet(&mut raw).await;
    let mut answered = 0;
    while answered < 5 {
        let (id, _, args, _, _) = in_flight.remove(0);
        raw.send(0, Payload::Response { id, ret: ResponseBody::Ok(args), metadata: Metadata::new() }).await;
        answered += 1;
        if answered + in_flight.len() < 5 {
            in_flight.push(next_request(&mut raw).await);
        }
        assert_quiet(&mut raw).await;
        assert!(in_flight.len() <= 2);
    }
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap(), format!("m{i}"));
    }
}

#[tokio::test]
async fn rpc_flow_control_max_concurrent_requests_inbound_over_limit_is_protocol_error() {
    let settings = ConnectionSettings { max_concurrent_requests: 2, ..ConnectionSettings::default() };
    let (s, mut raw) = raw_initiator(server_builder().root_settings(settings), Parity::Odd).await;
    assert_eq!(raw.negotiated.peer_root.max_concurrent_requests, 2);
    raw.send(0, req(1, "wait_forever", &(), vec![])).await;
    raw.send(0, req(3, "wait_forever", &(), vec![])).await;
    assert!(sync(&mut raw, 1).await.is_empty(), "two requests are within the limit");
    raw.send(0, req(5, "echo", "one too many", vec![])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("rpc.flow-control.max-concurrent-requests"), "{d}");
    assert_local_protocol_error(&s).await;
}

// ------------------------------------------------------ 9. channels

async fn four_streams(client: &Session, items: u32, credit: u32) {
    let caller = &client.root.caller;
    // sum: caller to handler.
    let (mut tx, rx) = channel_with_credit::<i32>(credit);
    let call = caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]);
    let feed = async move {
        for i in 0..items {
            tx.send(&(i as i32)).await.unwrap();
        }
        tx.close().await.unwrap();
    };
    let (total, ()) = within(async { tokio::join!(call, feed) }).await;
    assert_eq!(total.unwrap(), (0..i64::from(items)).sum::<i64>());
    // generate: handler to caller, in order.
    let (tx, mut rx) = channel_with_credit::<i32>(credit);
    let call = caller.call::<_, ()>(mid("generate"), &items, vec![tx.into_arg().unwrap()]);
    let drain = async move {
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await.unwrap() {
            got.push(v);
        }
        got
    };
    let (r, got) = within(async { tokio::join!(call, drain) }).await;
    r.unwrap();
    assert_eq!(got, (0..items as i32).collect::<Vec<_>>());
    // transform: both directions.
    let (mut in_tx, in_rx) = channel_with_credit::<String>(credit);
    let (out_tx, mut out_rx) = channel_with_credit::<String>(credit);
    let call = caller.call::<_, ()>(mid("transform"), &(), vec![in_rx.into_arg().unwrap(), out_tx.into_arg().unwrap()]);
    let feed = async move {
        for i in 0..items {
            in_tx.send(&format!("item{i}")).await.unwrap();
        }
        in_tx.close().await.unwrap();
    };
    let drain = async move {
        let mut got = Vec::new();
        while let Some(s) = out_rx.recv().await.unwrap() {
            got.push(s);
        }
        got
    };
    let (r, (), got) = within(async { tokio::join!(call, feed, drain) }).await;
    r.unwrap();
    assert_eq!(got, (0..items).map(|i| format!("ITEM{i}")).collect::<Vec<_>>());
    // echo still works alongside.
    let echoed: String = caller.call(mid("echo"), &"e".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "e");
}

#[tokio::test]
async fn rpc_channel_streams_in_both_directions_with_more_items_than_the_credit() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    four_streams(&client, 200, 2).await;
    four_streams(&client, 100, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_channel_streams_over_tcp_with_more_items_than_the_credit() {
    let (_server, client) = tcp_sessions(server_builder(), SessionBuilder::new()).await;
    four_streams(&client, 200, 3).await;
}

#[tokio::test]
async fn rpc_channel_allocation_caller_allocates_increasing_ids_of_its_parity_separate_from_request_ids() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let local = client.negotiated.local_parity;
    let caller = client.root.caller.clone();
    let (_a_tx, a_rx) = channel::<u8>();
    let (b_tx, _b_rx) = channel::<u8>();
    let c1 = tokio::spawn({
        let caller = caller.clone();
        async move {
            caller.call::<_, ()>(mid("transform"), &(), vec![a_rx.into_arg().unwrap(), b_tx.into_arg().unwrap()]).await
        }
    });
    let (id1, _, _, ch1, _) = next_request(&mut raw).await;
    let (_c_tx, c_rx) = channel::<u8>();
    let c2 = tokio::spawn(async move { caller.call::<_, ()>(mid("sum"), &(), vec![c_rx.into_arg().unwrap()]).await });
    let (id2, _, _, ch2, _) = next_request(&mut raw).await;
    // Separate namespaces: both start at the parity's first id.
    assert_eq!(id1.0, local.first());
    assert_eq!(ch1[0].id.0, local.first());
    assert!(id2 > id1 && id2.parity() == local);
    let ids: Vec<u64> = ch1.iter().chain(&ch2).map(|c| c.id.0).collect();
    assert!(ids.iter().all(|&i| Parity::of(i) == local), "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing across requests: {ids:?}");
    raw.send(0, ok_response(id1, &())).await;
    raw.send(0, ok_response(id2, &())).await;
    within(c1).await.unwrap().unwrap();
    within(c2).await.unwrap().unwrap();
}

#[tokio::test]
async fn rpc_channel_allocation_announced_id_of_wrong_parity_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "sum", &(), vec![decl(2, C2H, 16)])).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("wrong parity"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_channel_lifecycle_channel_outlives_its_request() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = &client.root.caller;
    // Handler-to-caller: items arrive after the response.
    let (tx, mut rx) = channel::<u32>();
    let call = caller.call::<_, ()>(mid("generate"), &3u32, vec![tx.into_arg().unwrap()]);
    let answer = async {
        let (id, _, _, channels, _) = next_request(&mut raw).await;
        raw.send(0, ok_response(id, &())).await;
        channels[0].id
    };
    let (r, down) = within(async { tokio::join!(call, answer) }).await;
    r.unwrap();
    for v in 0..3u32 {
        raw.send(0, Payload::ChannelItem { id: down, item: blob(&v) }).await;
    }
    raw.send(0, Payload::CloseChannel { id: down, metadata: Metadata::new() }).await;
    for v in 0..3u32 {
        assert_eq!(within(rx.recv()).await.unwrap(), Some(v));
    }
    assert_eq!(within(rx.recv()).await.unwrap(), None);

    // Caller-to-handler: the kept Tx sends after the response.
    let (mut tx, rx) = channel::<u32>();
    let call = caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap()]);
    let answer = async {
        let (id, _, _, channels, _) = next_request(&mut raw).await;
        raw.send(0, ok_response(id, &())).await;
        channels[0].id
    };
    let (r, up) = within(async { tokio::join!(call, answer) }).await;
    r.unwrap();
    tx.send(&5).await.unwrap();
    tx.close().await.unwrap();
    let m = raw.recv_until(|m| matches!(m.payload, Payload::ChannelItem { .. })).await;
    assert_eq!(m.payload, Payload::ChannelItem { id: up, item: blob(&5u32) });
    let m = raw.recv().await.unwrap();
    assert_eq!(m.payload, Payload::CloseChannel { id: up, metadata: Metadata::new() });
}

#[tokio::test]
async fn rpc_channel_item_carries_one_serialized_item() {
    // Runtime as sender: one ChannelItem per item, holding its postcard encoding.
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let (mut tx, rx) = channel::<(u8, String)>();
    let caller = client.root.caller.clone();
    let _call = tokio::spawn(async move { caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    let values = [(1u8, "a".to_string()), (2, String::new()), (3, "ccc".to_string())];
    for v in &values {
        tx.send(v).await.unwrap();
    }
    for v in &values {
        let m = raw.recv_until(|m| matches!(m.payload, Payload::ChannelItem { .. })).await;
        assert_eq!(m.payload, Payload::ChannelItem { id: channels[0].id, item: blob(v) });
    }

    // Runtime as receiver: a raw peer's items decode one by one (channel id
    // equal to the request id: separate namespaces).
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "sum", &(), vec![decl(1, C2H, 16)])).await;
    for v in [5i32, -2, 40] {
        raw.send(0, item(1, &v)).await;
    }
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::Ok(blob(&43i64)));
}

#[tokio::test]
async fn rpc_channel_close_item_after_close_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "sum", &(), vec![decl(1, C2H, 16)])).await;
    raw.send(0, item(1, &1i32)).await;
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    raw.send(0, item(1, &2i32)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("after the sender closed"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_channel_close_second_close_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "sum", &(), vec![decl(1, C2H, 16)])).await;
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    assert_eq!(response_for(&mut raw, 1).await.0, ResponseBody::Ok(blob(&0i64)));
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("second CloseChannel"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_channel_close_sender_closes_after_its_items_and_sends_nothing_more() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (mut tx, rx) = channel::<u32>();
    let (dropped_tx, rx2) = channel::<u32>();
    let _call = tokio::spawn(async move {
        caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap(), rx2.into_arg().unwrap()]).await
    });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    let (a, b) = (channels[0].id, channels[1].id);
    for v in 0..3u32 {
        tx.send(&v).await.unwrap();
    }
    tx.close().await.unwrap();
    drop(dropped_tx); // dropping a sender closes too
    let seen = sync(&mut raw, 1).await;
    let on_a: Vec<&Payload> = seen.iter().map(|m| &m.payload).filter(|p| channel_of(p) == Some(a)).collect();
    let expected: Vec<Payload> = (0..3u32)
        .map(|v| Payload::ChannelItem { id: a, item: blob(&v) })
        .chain([Payload::CloseChannel { id: a, metadata: Metadata::new() }])
        .collect();
    assert_eq!(on_a, expected.iter().collect::<Vec<_>>());
    let on_b: Vec<&Payload> = seen.iter().map(|m| &m.payload).filter(|p| channel_of(p) == Some(b)).collect();
    assert_eq!(on_b, vec![&Payload::CloseChannel { id: b, metadata: Metadata::new() }]);
}

fn channel_of(p: &Payload) -> Option<ChannelId> {
    match p {
        Payload::ChannelItem { id, .. }
        | Payload::CloseChannel { id, .. }
        | Payload::ResetChannel { id, .. }
        | Payload::GrantCredit { id, .. } => Some(*id),
        _ => None,
    }
}

#[tokio::test]
async fn rpc_channel_reset_next_send_reports_reset() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (mut tx, rx) = channel::<u32>();
    let _call = tokio::spawn(async move { caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    tx.send(&1).await.unwrap();
    raw.send(0, Payload::ResetChannel { id: channels[0].id, metadata: Metadata::new() }).await;
    sync(&mut raw, 1).await;
    assert_eq!(within(tx.send(&2)).await, Err(ChannelError::Reset));
    assert!(client.handle.close_reason().is_none());
}

#[tokio::test]
async fn rpc_channel_reset_dropping_rx_resets_and_sender_sees_reset_end_to_end() {
    let (builder, _events, _gate) = rules();
    let (server, client) = memory_sessions(builder, SessionBuilder::new()).await;
    let caller = &client.root.caller;
    let (mut tx, rx) = channel::<i32>();
    let call = caller.call::<_, Option<i32>>(mid("take_one"), &(), vec![rx.into_arg().unwrap()]);
    let feed = async move {
        let mut sent = 0u64;
        loop {
            match tx.send(&(sent as i32)).await {
                Ok(()) => sent += 1,
                Err(e) => return (sent, e),
            }
        }
    };
    let (first, (sent, err)) = within(async { tokio::join!(call, feed) }).await;
    assert_eq!(first.unwrap(), Some(0));
    assert_eq!(err, ChannelError::Reset);
    assert!(sent >= 1);
    // A later call's request follows every item on the link, so once it is
    // answered the server has seen them all: none lost silently.
    let _: String = caller.call(mid("echo"), &"sync".to_string(), vec![]).await.unwrap();
    let st = server.root.caller.channel_stats();
    assert_eq!(1 + st.items_dropped_unread + st.items_discarded_after_reset, sent, "{st:?}");
}

#[tokio::test]
async fn rpc_channel_reset_late_items_are_discarded_and_counted() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (tx, mut rx) = channel::<u32>();
    let _call = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<_, ()>(mid("generate"), &10u32, vec![tx.into_arg().unwrap()]).await }
    });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    let ch = channels[0].id.0;
    raw.send(0, item(ch, &0u32)).await;
    assert_eq!(within(rx.recv()).await.unwrap(), Some(0));
    drop(rx);
    let m = raw.recv_until(|m| matches!(m.payload, Payload::ResetChannel { .. })).await;
    assert_eq!(m.payload, Payload::ResetChannel { id: ChannelId(ch), metadata: Metadata::new() });
    // Items that were in flight when the reset left, then the sender's close.
    for v in 1..4u32 {
        raw.send(0, item(ch, &v)).await;
    }
    raw.send(0, Payload::CloseChannel { id: ChannelId(ch), metadata: Metadata::new() }).await;
    sync(&mut raw, 1).await;
    let st = caller.channel_stats();
    assert_eq!(st.items_discarded_after_reset, 3, "{st:?}");
    assert_eq!(st.crossing_ignored, 1, "the crossing close: {st:?}");
    assert!(client.handle.close_reason().is_none());
    // But nothing may follow the sender's own close.
    raw.send(0, item(ch, &9u32)).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("after the sender closed"), "{d}");
}

#[tokio::test]
async fn rpc_flow_control_credit_item_beyond_credit_is_protocol_error_without_stall() {
    // Runtime as receiver of a handler-to-caller channel with credit 2 that
    // it does not consume: the third item has no credit.
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (tx, mut rx) = channel_with_credit::<u32>(2);
    let call =
        tokio::spawn(async move { caller.call::<_, ()>(mid("generate"), &3u32, vec![tx.into_arg().unwrap()]).await });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    let ch = channels[0].id.0;
    assert!(sync(&mut raw, 1).await.is_empty());
    for v in 0..3u32 {
        raw.send(0, item(ch, &v)).await;
    }
    let (d, before) = until_protocol_error(&mut raw).await;
    assert!(d.contains("without credit"), "{d}");
    assert!(before.is_empty(), "{before:?}");
    assert_local_protocol_error(&client).await;
    // Every pending call and live channel handle reports the protocol error.
    assert!(matches!(within(call).await.unwrap(), Err(CallError::ProtocolError { fault: Fault::Peer, .. })));
    assert!(matches!(rx.recv().await, Err(ChannelError::ProtocolError { fault: Fault::Peer, .. })));
}

#[tokio::test]
async fn rpc_flow_control_credit_early_items_beyond_initial_credit_is_protocol_error() {
    // The handler never binds: early items are bounded by the initial credit.
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "wait_forever", &(), vec![decl(1, C2H, 2)])).await;
    for v in 0..3i32 {
        raw.send(0, item(1, &v)).await;
    }
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("without credit"), "{d}");
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_flow_control_credit_pings_sent_before_the_violation_are_answered() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, req(1, "wait_forever", &(), vec![decl(1, C2H, 2)])).await;
    raw.send(0, Payload::Ping { nonce: 41 }).await;
    for v in 0..3i32 {
        raw.send(0, item(1, &v)).await;
    }
    let (d, before) = until_protocol_error(&mut raw).await;
    assert!(d.contains("without credit"), "{d}");
    assert!(
        before.iter().any(|m| m.payload == Payload::Pong { nonce: 41 }),
        "the ping sent before the violation must be answered before the ProtocolError; got {before:?}"
    );
    assert_local_protocol_error(&s).await;
}

#[tokio::test]
async fn rpc_flow_control_credit_zero_channel_works_end_to_end() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    four_streams(&client, 30, 0).await;
}

#[tokio::test(start_paused = true)]
async fn rpc_flow_control_credit_sender_waits_at_zero_until_granted() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (mut tx, rx) = channel_with_credit::<u32>(0);
    let _call = tokio::spawn(async move { caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await });
    let feed = tokio::spawn(async move {
        for v in 0..3u32 {
            tx.send(&v).await.unwrap();
        }
        tx
    });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    assert_eq!(channels[0].initial_credit, 0);
    let ch = channels[0].id;
    assert_quiet(&mut raw).await;
    raw.send(0, Payload::GrantCredit { id: ch, additional: 2 }).await;
    for v in 0..2u32 {
        let m = raw.recv().await.unwrap();
        assert_eq!(m.payload, Payload::ChannelItem { id: ch, item: blob(&v) });
    }
    assert_quiet(&mut raw).await;
    raw.send(0, Payload::GrantCredit { id: ch, additional: 1 }).await;
    let m = raw.recv().await.unwrap();
    assert_eq!(m.payload, Payload::ChannelItem { id: ch, item: blob(&2u32) });
    let _tx = within(feed).await.unwrap();
}

#[tokio::test]
async fn rpc_channel_early_items_before_bind_are_kept_and_delivered_in_order() {
    let (builder, _events, gate) = rules();
    let (s, mut raw) = raw_initiator(builder, Parity::Odd).await;
    raw.send(0, req(1, "gated_collect", &(), vec![decl(1, C2H, 4)])).await;
    for v in [10i32, 20, 30, 40] {
        raw.send(0, item(1, &v)).await;
    }
    raw.send(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    assert!(sync(&mut raw, 1).await.is_empty());
    let st = s.root.caller.channel_stats();
    assert_eq!((st.pending, st.max_queue_depth), (1, 4), "{st:?}");
    gate.notify_one();
    let (body, _) = response_for(&mut raw, 1).await;
    assert_eq!(body, ResponseBody::Ok(blob(&(vec![10i32, 20, 30, 40], None::<String>))));
}

#[tokio::test]
async fn rpc_channel_early_items_reset_before_bind_is_reported_to_the_sender() {
    let (builder, _events, gate) = rules();
    let (_s, mut raw) = raw_initiator(builder, Parity::Odd).await;
    raw.send(0, req(1, "gated_send", &(), vec![decl(1, H2C, 4)])).await;
    raw.send(0, Payload::ResetChannel { id: ChannelId(1), metadata: Metadata::new() }).await;
    assert!(sync(&mut raw, 1).await.is_empty());
    gate.notify_one();
    let (body, _) = response_for(&mut raw, 1).await;
    assert_eq!(body, ResponseBody::Ok(blob(&format!("{:?}", Err::<(), _>(ChannelError::Reset)))));
}

#[tokio::test]
async fn rpc_channel_unknown_id_is_protocol_error_and_creates_no_state() {
    type Make = fn(ChannelId) -> Payload;
    let kinds: [(&str, Make); 4] = [
        ("item", |id| Payload::ChannelItem { id, item: Blob::default() }),
        ("close", |id| Payload::CloseChannel { id, metadata: Metadata::new() }),
        ("reset", |id| Payload::ResetChannel { id, metadata: Metadata::new() }),
        ("grant", |id| Payload::GrantCredit { id, additional: 1 }),
    ];
    for (name, make) in kinds {
        // 7: the raw peer's parity, never announced. 8: the runtime's parity, never allocated.
        for id in [7u64, 8] {
            let (s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
            raw.send(0, make(ChannelId(id))).await;
            let d = raw.expect_protocol_error().await;
            assert!(d.contains("unknown channel"), "{name} on {id}: {d}");
            assert_local_protocol_error(&s).await;
            let st = s.root.caller.channel_stats();
            assert_eq!(st.pending + st.open + st.closing + st.closed + st.tombstones, 0, "{name} on {id}: {st:?}");
        }
    }
}

#[tokio::test]
async fn rpc_channel_unknown_message_in_wrong_direction_is_protocol_error() {
    // The runtime receives on this channel: a GrantCredit for it is the
    // receiver's message, which the runtime's peer (the sender) may not send.
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (tx, _rx) = channel::<u32>();
    let _call =
        tokio::spawn(async move { caller.call::<_, ()>(mid("generate"), &1u32, vec![tx.into_arg().unwrap()]).await });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    raw.send(0, Payload::GrantCredit { id: channels[0].id, additional: 1 }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("wrong direction"), "{d}");
    assert_local_protocol_error(&client).await;
}

#[tokio::test]
async fn rpc_channel_crossing_grant_and_reset_after_our_close_are_ignored_and_counted() {
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let (mut tx, rx) = channel::<u32>();
    let _call = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<_, ()>(mid("sum"), &(), vec![rx.into_arg().unwrap()]).await }
    });
    let (_, _, _, channels, _) = next_request(&mut raw).await;
    let ch = channels[0].id;
    tx.send(&1).await.unwrap();
    tx.close().await.unwrap();
    raw.recv_until(|m| matches!(m.payload, Payload::CloseChannel { .. })).await;
    raw.send(0, Payload::GrantCredit { id: ch, additional: 5 }).await;
    raw.send(0, Payload::ResetChannel { id: ch, metadata: Metadata::new() }).await;
    assert!(sync(&mut raw, 1).await.is_empty());
    assert_eq!(caller.channel_stats().crossing_ignored, 2);
    assert!(client.handle.close_reason().is_none());
    // A second reset is not a crossing any more.
    raw.send(0, Payload::ResetChannel { id: ch, metadata: Metadata::new() }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("second ResetChannel"), "{d}");
}

#[tokio::test]
async fn rpc_channel_crossing_late_message_for_forgotten_id_is_tolerated_but_id_above_all_is_unknown() {
    const N: usize = 1100; // more ended channels than the 1024 remembered
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    // Spread over requests of 100 channels: one request may declare at
    // most `DecodeLimits::max_channels` (128).
    const PER_CALL: usize = 100;
    let mut kept = Vec::with_capacity(N);
    let mut calls = Vec::new();
    let mut channels = Vec::with_capacity(N);
    for _ in 0..N / PER_CALL {
        let mut args = Vec::with_capacity(PER_CALL);
        for _ in 0..PER_CALL {
            let (tx, rx) = channel::<u8>();
            kept.push(tx);
            args.push(rx.into_arg().unwrap());
        }
        calls.push(tokio::spawn({
            let caller = caller.clone();
            async move { caller.call::<_, ()>(mid("sum"), &(), args).await }
        }));
        let (_, _, _, declared, _) = next_request(&mut raw).await;
        channels.extend(declared);
    }
    assert_eq!(channels.len(), N);
    drop(kept);
    let mut closes = 0;
    while closes < N {
        raw.recv_until(|m| matches!(m.payload, Payload::CloseChannel { .. })).await;
        closes += 1;
    }
    let (first, last) = (channels[0].id, channels[N - 1].id);
    raw.send(0, Payload::GrantCredit { id: first, additional: 1 }).await;
    raw.send(0, Payload::GrantCredit { id: last, additional: 1 }).await;
    assert!(sync(&mut raw, 1).await.is_empty());
    let st = caller.channel_stats();
    assert_eq!((st.late_messages, st.crossing_ignored), (1, 1), "{st:?}");
    assert!(st.tombstones <= 1024, "bounded state: {st:?}");
    assert!(client.handle.close_reason().is_none());
    raw.send(0, Payload::GrantCredit { id: ChannelId(last.0 + 2), additional: 1 }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("unknown channel"), "{d}");
}

// ------------------------------------------------------ 8. metadata

fn tricky_metadata() -> Metadata {
    Metadata(vec![
        MetadataEntry { key: "z-first".into(), value: MetadataValue::String("1".into()), flags: 0 },
        MetadataEntry { key: "dup".into(), value: MetadataValue::String("a".into()), flags: 0 },
        MetadataEntry {
            key: "bytes".into(),
            value: MetadataValue::Bytes(Blob::from(vec![0u8, 255, 7])),
            flags: 1 << 9,
        },
        MetadataEntry { key: "dup".into(), value: MetadataValue::U64(u64::MAX), flags: NO_PROPAGATE | (1 << 63) },
        MetadataEntry { key: "token".into(), value: MetadataValue::String("s3cret".into()), flags: SENSITIVE },
        MetadataEntry { key: "dup".into(), value: MetadataValue::String("c".into()), flags: 1 << 40 },
        MetadataEntry { key: "a-last".into(), value: MetadataValue::String(String::new()), flags: 0 },
    ])
}

#[tokio::test]
async fn rpc_metadata_order_duplicates_and_unknown_flags_are_preserved_end_to_end() {
    let md = tricky_metadata();
    // Runtime to runtime: request metadata reaches the handler, response metadata the caller.
    let (builder, _events, _gate) = rules();
    let (_server, client) = memory_sessions(builder, SessionBuilder::new()).await;
    let resp = client.root.caller.call_raw(mid("echo_md"), Bytes::new(), vec![], md.clone()).await.unwrap();
    assert_eq!(resp.metadata, md);

    // On the wire, both ways.
    let (client, mut raw) = raw_acceptor(SessionBuilder::new(), ConnectionSettings::default()).await;
    let caller = client.root.caller.clone();
    let sent = md.clone();
    let call = tokio::spawn(async move { caller.call_raw(mid("echo"), Bytes::new(), vec![], sent).await });
    let (id, _, _, _, wire_md) = next_request(&mut raw).await;
    assert_eq!(wire_md, md);
    let mut back = md.clone();
    back.0.reverse();
    raw.send(0, Payload::Response { id, ret: ResponseBody::Ok(Blob::default()), metadata: back.clone() }).await;
    assert_eq!(within(call).await.unwrap().unwrap().metadata, back);

    // Forwarding keeps everything but NO_PROPAGATE, in order, unknown bits included.
    let fwd = md.for_forwarding();
    let expected: Vec<MetadataEntry> = md.0.iter().filter(|e| e.flags & NO_PROPAGATE == 0).cloned().collect();
    assert_eq!(fwd.0, expected);
    assert_eq!(fwd.0.len(), md.0.len() - 1);
}

// ------------------------------------------------------ error classification

#[test]
fn rpc_call_error_is_retryable_only_for_errors_before_any_effect() {
    assert!(CallError::ConnectionClosed.is_retryable());
    assert_eq!(CallError::ConnectionClosed.fault(), Fault::Environment);
    let final_errors = [
        // Local: a retry on the same session meets the same shutdown, the
        // same unencodable arguments.
        CallError::SessionShutdown,
        CallError::SendFailed("arguments did not encode".into()),
        CallError::DeadlineExceeded,
        CallError::Rejected("conflict".into()),
        CallError::User(Blob::default()),
        CallError::UnknownMethod { method: "x".into() },
        CallError::InvalidPayload("x".into()),
        CallError::Cancelled,
        CallError::Indeterminate,
        CallError::HandlerFailed("panic".into()),
        CallError::ProtocolError { fault: Fault::Peer, description: "x".into() },
        CallError::InvalidResponse("x".into()),
    ];
    for e in &final_errors {
        assert!(!e.is_retryable(), "{e:?}");
    }
}

#[test]
fn call_error_fault_says_who_caused_it() {
    let peer = [
        CallError::User(Blob::default()),
        CallError::UnknownMethod { method: "x".into() },
        CallError::InvalidPayload("x".into()),
        CallError::HandlerFailed("panic".into()),
        CallError::Rejected("conflict".into()),
        CallError::ProtocolError { fault: Fault::Peer, description: "x".into() },
        CallError::InvalidResponse("x".into()),
    ];
    let local = [
        CallError::Cancelled,
        CallError::DeadlineExceeded,
        CallError::SessionShutdown,
        CallError::SendFailed("x".into()),
    ];
    let environment = [CallError::ConnectionClosed, CallError::Indeterminate];
    for (errors, fault) in
        [(&peer[..], Fault::Peer), (&local[..], Fault::Local), (&environment[..], Fault::Environment)]
    {
        for e in errors {
            assert_eq!(e.fault(), fault, "{e:?}");
            // Only the environment's errors may be retryable.
            assert!(!e.is_retryable() || fault == Fault::Environment, "{e:?}");
        }
    }
    assert_eq!(LossCause::ConnectionClosed.fault(), Fault::Environment);
    assert_eq!(LossCause::SessionShutdown.fault(), Fault::Local);
}

#[tokio::test]
async fn rpc_call_error_is_retryable_as_produced_by_the_runtime() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    let caller = client.root.caller.clone();
    let err = caller.call::<_, ()>(MethodId(1), &(), vec![]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let err = caller.call::<_, i64>(mid("divide"), &(1i64, 0i64), vec![]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");

    let conn = client.handle.open_connection(ConnectionSettings::default(), Metadata::new()).await.unwrap();
    client.handle.close_connection(conn.id, Metadata::new()).await.unwrap();
    let err = conn.caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await.unwrap_err();
    assert_eq!(err, CallError::ConnectionClosed);
    assert!(err.is_retryable());

    client.handle.shutdown().unwrap();
    closed(&client).await;
    let err = caller.call::<_, String>(mid("echo"), &"x".to_string(), vec![]).await.unwrap_err();
    assert_eq!(err, CallError::SessionShutdown);
    // Our own shutdown: a retry meets the same closed session.
    assert_eq!(err.fault(), Fault::Local);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn rpc_handler_work_after_its_reply_still_runs_and_cancel_drops_the_handler() {
    // The handler runs inside its request's task: what it does after
    // replying must still happen, and a cancel must drop (stop) it.
    let (after_tx, mut after_rx) = mpsc::channel::<&'static str>(4);
    let dropped = Arc::new(Notify::new());
    let handler = {
        let dropped = dropped.clone();
        move |call: Call| {
            let after_tx = after_tx.clone();
            let dropped = dropped.clone();
            async move {
                if call.method_id == mid("reply_then_work") {
                    call.reply.ok(&());
                    tokio::task::yield_now().await;
                    let _ = after_tx.send("worked after replying").await;
                } else {
                    // Parks until dropped; the guard tells the test it was.
                    struct OnDrop(Arc<Notify>);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            self.0.notify_one();
                        }
                    }
                    let _guard = OnDrop(dropped);
                    let _reply = call.reply;
                    let _ = after_tx.send("parked").await;
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let (_server, client) = memory_sessions(SessionBuilder::new().handler(handler), SessionBuilder::new()).await;
    let caller = client.root.caller.clone();
    within(caller.call::<_, ()>(mid("reply_then_work"), &(), vec![])).await.unwrap();
    assert_eq!(within(after_rx.recv()).await, Some("worked after replying"));
    let parked = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<_, ()>(mid("park"), &(), vec![]).await }
    });
    // Once the handler runs, cancel by dropping the call.
    assert_eq!(within(after_rx.recv()).await, Some("parked"));
    parked.abort();
    within(dropped.notified()).await;
}

#[tokio::test]
async fn rpc_handler_panicking_before_returning_its_future_gets_handler_failed_and_session_stays_up() {
    // `Handler::handle` runs on the session's receive loop (it is polled
    // there first): a panic in it must be contained like one in the future,
    // with exactly one HandlerFailed, and the loop must go on.
    struct PanicsInHandle;
    impl Handler for PanicsInHandle {
        fn handle(&self, call: Call) -> vox_core::driver::BoxFuture {
            if call.method_id == mid("panic_in_handle") {
                panic!("handle panicked before making a future");
            }
            Box::pin(async move {
                let args = call.args.clone();
                call.reply.ok_raw(args);
            })
        }
    }
    let (server, client) = memory_sessions(SessionBuilder::new().handler(PanicsInHandle), SessionBuilder::new()).await;
    let caller = client.root.caller.clone();
    let err = within(caller.call::<_, ()>(mid("panic_in_handle"), &(), vec![])).await.unwrap_err();
    assert!(matches!(err, CallError::HandlerFailed(_)), "{err:?}");
    let echoed = within(caller.call::<_, String>(mid("echo"), &"still up".to_string(), vec![])).await.unwrap();
    assert_eq!(echoed, "still up");
    assert_eq!(server.root.caller.stats().handlers_in_flight, 0);
    assert!(server.handle.close_reason().is_none());
}

#[tokio::test]
async fn rpc_response_one_per_request_when_the_outbound_queue_is_full_every_response_still_arrives() {
    // Handlers that reply in their first poll are answered from the receive
    // loop through a place taken without waiting; when the outbound queue is
    // full (the peer is not reading) that place is waited for in a task.
    // Either way every request gets exactly its one response, in full.
    let mut builder = server_builder();
    builder.config_mut().outbound_capacity = 1;
    let (s, mut raw) = raw_initiator(builder, Parity::Odd).await;
    // More requests than the link's send queue (32) and the outbound queue
    // (1) hold together, all sent before the peer reads anything.
    let ids: Vec<u64> = (0..60).map(|i| 2 * i + 1).collect();
    for &id in &ids {
        raw.send(0, req(id, "echo", &format!("call {id}"), vec![])).await;
    }
    let mut answered: HashMap<u64, Vec<ResponseBody>> = HashMap::new();
    while answered.len() < ids.len() {
        match raw.recv().await {
            Some(Message { payload: Payload::Response { id, ret, .. }, .. }) => {
                answered.entry(id.0).or_default().push(ret);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("link closed"),
        }
    }
    assert!(sync(&mut raw, 1001).await.is_empty(), "a request was answered twice");
    for &id in &ids {
        assert_eq!(answered[&id], vec![ResponseBody::Ok(blob(&format!("call {id}")))], "request {id}");
    }
    assert_eq!(s.root.caller.stats().handlers_in_flight, 0);
}
