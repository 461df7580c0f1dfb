//! Issue 22, trace context (feature `otel`): a call carries the W3C
//! `traceparent` of the span it is made in, the handler's span continues
//! that trace, and the entry is `NO_PROPAGATE` (rule `rpc.metadata`), so a
//! chain A → B → C is one trace with a fresh parent at every hop.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}

use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use std::sync::{Arc, Mutex};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use vox_core::driver::trace::{TRACEPARENT_KEY, parse_traceparent};
use vox_core::driver::{CallContext, Handler};
use vox_core::session::{Caller, Session, SessionBuilder};
use vox_core::wire::{Blob, Metadata, MethodId, NO_PROPAGATE, Parity, Payload, RequestId, ResponseBody};

/// What a hop saw: the trace its handler span is in, and the
/// `traceparent` entry of its request (value, flags).
#[derive(Clone, Debug, Default)]
struct Seen {
    trace: Option<TraceId>,
    traceparent: Option<(String, u64)>,
    forwarded_traceparent: bool,
}

type Log = Arc<Mutex<Vec<(&'static str, Seen)>>>;

fn look(hop: &'static str, log: &Log) {
    let trace = tracing::Span::current().context().span().span_context().trace_id();
    let ctx = CallContext::current().expect("in a handler");
    let traceparent = ctx.metadata.get(TRACEPARENT_KEY).map(|e| match &e.value {
        vox_core::wire::MetadataValue::String(s) => (s.clone(), e.flags),
        other => panic!("traceparent is not a string: {other:?}"),
    });
    let forwarded_traceparent = ctx.metadata.for_forwarding().get(TRACEPARENT_KEY).is_some();
    log.lock().unwrap().push((hop, Seen { trace: Some(trace), traceparent, forwarded_traceparent }));
}

/// The last hop.
#[vox_core::service]
pub trait Leaf {
    /// Answers.
    async fn leaf(&self) -> u32;
}

/// The middle hop: calls the leaf.
#[vox_core::service]
pub trait Relay {
    /// Calls `Leaf.leaf` and answers what it answered.
    async fn relay(&self) -> u32;
}

struct LeafImpl(Log);

impl Leaf for LeafImpl {
    async fn leaf(&self) -> u32 {
        look("C", &self.0);
        3
    }
}

struct RelayImpl {
    log: Log,
    leaf: Caller,
}

impl Relay for RelayImpl {
    async fn relay(&self) -> u32 {
        look("B", &self.log);
        // Forwards its request's metadata, as a proxy would.
        let forwarded = CallContext::current().expect("in a handler").metadata.for_forwarding();
        let leaf = LeafClient::new(self.leaf.with_metadata(forwarded));
        leaf.leaf().await.expect("leaf") + 1
    }
}

async fn pair(handler: impl Handler) -> (Session, Session) {
    let (a, b) = vox_core::link::memory_pair(Default::default());
    let server = SessionBuilder::new().handler(handler);
    let (s, c) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (s.expect("server"), c.expect("client"))
}

/// A current-thread runtime: every task of every session in the test runs
/// on this thread, under this subscriber.
fn with_tracer() -> (tracing::subscriber::DefaultGuard, opentelemetry_sdk::trace::SdkTracerProvider) {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("vox-test"));
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (guard, provider)
}

#[tokio::test(flavor = "current_thread")]
async fn trace_context_a_to_b_to_c_is_one_trace() {
    let (_guard, _provider) = with_tracer();
    let log: Log = Arc::default();
    let (_c_server, b_to_c) = pair(LeafDispatcher::new(LeafImpl(log.clone()))).await;
    let relay = RelayImpl { log: log.clone(), leaf: b_to_c.root.caller.clone() };
    let (_b_server, a_to_b) = pair(RelayDispatcher::new(relay)).await;

    let a_span = tracing::info_span!("A");
    let a_trace = a_span.context().span().span_context().trace_id();
    assert_ne!(a_trace, TraceId::INVALID, "the tracer gives A a trace");
    let answer = RelayClient::new(a_to_b.root.caller.clone()).relay().instrument(a_span).await;
    assert_eq!(answer, Ok(4));

    let log = log.lock().unwrap().clone();
    let hop = |name: &str| log.iter().find(|(h, _)| *h == name).map(|(_, s)| s.clone()).expect(name);
    let (b, c) = (hop("B"), hop("C"));
    assert_eq!(b.trace, Some(a_trace), "B's handler span continues A's trace");
    assert_eq!(c.trace, Some(a_trace), "C's handler span continues A's trace");

    let (b_parent, b_flags) = b.traceparent.expect("A's call carried a traceparent");
    let (c_parent, c_flags) = c.traceparent.expect("B's call carried a traceparent");
    for (parent, flags) in [(&b_parent, b_flags), (&c_parent, c_flags)] {
        assert_ne!(flags & NO_PROPAGATE, 0, "{parent} is flagged NO_PROPAGATE");
        let sc = parse_traceparent(parent, None).expect("a valid traceparent");
        assert_eq!(sc.trace_id(), a_trace);
    }
    // rule: rpc.metadata — B forwarded its metadata without A's entry, and
    // its own call named B's span as C's parent.
    assert!(!b.forwarded_traceparent, "NO_PROPAGATE entries are not forwarded");
    assert_ne!(b_parent, c_parent, "each hop names its own span as the parent");
}

#[tokio::test(flavor = "current_thread")]
async fn trace_context_without_a_span_context_writes_nothing() {
    // No tracing-opentelemetry layer: spans have no trace context.
    let log: Log = Arc::default();
    let (_server, client) = pair(LeafDispatcher::new(LeafImpl(log.clone()))).await;
    assert_eq!(LeafClient::new(client.root.caller.clone()).leaf().await, Ok(3));
    let seen = log.lock().unwrap()[0].1.clone();
    assert_eq!(seen.traceparent, None);
}

/// Every byte from the network is hostile: a malformed `traceparent` from a
/// raw peer is ignored, and the handler's span starts a trace of its own.
#[tokio::test(flavor = "current_thread")]
async fn trace_context_an_invalid_incoming_traceparent_starts_a_new_trace() {
    let (_guard, _provider) = with_tracer();
    let log: Log = Arc::default();
    let server = SessionBuilder::new().handler(LeafDispatcher::new(LeafImpl(log.clone())));
    let (_session, mut raw) = common::raw_peer::raw_initiator(server, Parity::Odd).await;
    let bogus = "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01";
    let args = Blob::from(vox_core::wire::encode("args", &()).expect("encode"));
    let request = Payload::Request {
        id: RequestId(1),
        method_id: MethodId::from_names("Leaf", "leaf"),
        args,
        channels: vec![],
        metadata: Metadata::new().with_str(TRACEPARENT_KEY, bogus, 0),
    };
    raw.send(0, request).await;
    let answer = raw.recv_until(|m| matches!(m.payload, Payload::Response { .. })).await;
    assert!(matches!(answer.payload, Payload::Response { ret: ResponseBody::Ok(_), .. }), "{answer:?}");
    let seen = log.lock().unwrap()[0].1.clone();
    assert_eq!(seen.traceparent.map(|(v, _)| v).as_deref(), Some(bogus));
    assert_ne!(seen.trace.expect("a trace id"), TraceId::INVALID, "the handler's span has a trace of its own");
}
