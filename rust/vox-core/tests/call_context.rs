//! Issue 18: deadlines (rule `rpc.deadline`), the handler's call context and
//! metadata sent by typed clients.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::{PATIENCE, raw_initiator};
use common::testbed::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vox_core::driver::{BoxFuture, Call, CallContext, CallError, DEADLINE_KEY, Handler};
use vox_core::session::{Caller, SessionBuilder};
use vox_core::wire::{self, Blob, Message, Metadata, NO_PROPAGATE, Parity, Payload, RequestId, ResponseBody};

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Sets its flag when dropped: tells that a handler's future was stopped.
struct Stopped(Arc<AtomicBool>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `hang`: never answers (and flags its own drop). `remaining`: answers the
/// time left before its deadline, in ms (`None` without one), and the value
/// of metadata key `who`. `relay`: calls `remaining` back on the peer
/// through `back` (with `back`'s own timeout, if any) and returns its answer.
#[derive(Clone)]
struct Service {
    stopped: Arc<AtomicBool>,
    back: Arc<std::sync::OnceLock<Caller>>,
}

impl Service {
    fn new() -> Service {
        Service { stopped: Arc::new(AtomicBool::new(false)), back: Arc::new(std::sync::OnceLock::new()) }
    }
}

type Report = (Option<u64>, Option<String>);

impl Handler for Service {
    fn handle(&self, call: Call) -> BoxFuture {
        let this = self.clone();
        Box::pin(async move {
            if call.method_id == mid("hang") {
                let _flag = Stopped(this.stopped.clone());
                std::future::pending::<()>().await;
            } else if call.method_id == mid("remaining") {
                let ctx = CallContext::current().expect("a handler has a context");
                assert_eq!(ctx.method_id, mid("remaining"));
                let left = ctx.remaining().map(|d| d.as_millis() as u64);
                let who = ctx.metadata.get_str("who").map(str::to_owned);
                call.reply.ok(&(left, who));
            } else if call.method_id == mid("relay") {
                let Some(back) = this.back.get().cloned() else { return call.reply.invalid_payload("no way back") };
                let r: Result<Report, CallError> = back.call(mid("remaining"), &(), vec![]).await;
                match r {
                    Ok(v) => call.reply.ok(&v),
                    Err(e) => call.reply.user_error(&e.to_string()),
                }
            } else {
                call.reply.unknown_method();
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn rpc_deadline_call_to_a_handler_that_never_answers_fails_at_the_deadline_and_the_handler_is_stopped() {
    let service = Service::new();
    let (_server, client) =
        memory_sessions(SessionBuilder::new().handler(service.clone()), SessionBuilder::new()).await;
    let caller = client.root.caller.with_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let r = caller.call::<_, ()>(mid("hang"), &(), vec![]).await;
    assert_eq!(r, Err(CallError::DeadlineExceeded));
    assert_eq!(started.elapsed(), Duration::from_millis(300), "failed exactly at the deadline (paused clock)");
    assert!(!CallError::DeadlineExceeded.is_retryable());
    // The handler side stops the handler (the caller's cancel crosses it).
    within("the handler to stop", async {
        while !service.stopped.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// The handler side on its own: a request whose deadline passes (and whose
/// caller never cancels) is answered `DeadlineExceeded` and its handler
/// stopped.
#[tokio::test(start_paused = true)]
async fn rpc_deadline_handler_side_answers_deadline_exceeded_and_stops_the_handler() {
    let service = Service::new();
    let (_server, mut raw) =
        raw_initiator(SessionBuilder::new().handler(service.clone()).no_keepalive(), Parity::Odd).await;
    let metadata = Metadata::new().with_u64(DEADLINE_KEY, 250_000, NO_PROPAGATE);
    let started = tokio::time::Instant::now();
    raw.send(
        0,
        Payload::Request {
            id: RequestId(1),
            method_id: mid("hang"),
            args: Blob::from(wire::encode("a", &()).unwrap()),
            channels: vec![],
            metadata,
        },
    )
    .await;
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Response { .. })).await;
    assert!(
        matches!(m, Message { payload: Payload::Response { ret: ResponseBody::DeadlineExceeded, .. }, .. }),
        "{m:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert!(service.stopped.load(Ordering::SeqCst), "the handler was stopped");
}

#[tokio::test(start_paused = true)]
async fn rpc_deadline_is_inherited_by_calls_made_while_handling_a_request() {
    // The client serves `remaining`; the server's `relay` calls it back.
    let server_service = Service::new();
    let (server, client) = memory_sessions(
        SessionBuilder::new().handler(server_service.clone()),
        SessionBuilder::new().handler(Service::new()),
    )
    .await;
    let back = server.root.caller.clone();
    server_service.back.set(back.clone()).ok();
    // No deadline anywhere: none downstream either.
    let (left, _): Report = client.root.caller.call(mid("relay"), &(), vec![]).await.expect("relay");
    assert_eq!(left, None);
    // The relay's own call sets none: it inherits the 5 s of the request.
    let five = client.root.caller.with_timeout(Duration::from_secs(5));
    let (left, _): Report = five.call(mid("relay"), &(), vec![]).await.expect("relay");
    assert_eq!(left, Some(5000), "inherited");
    // A shorter one of its own wins; a longer one does not.
    for (own, expected) in [(Duration::from_secs(1), 1000), (Duration::from_secs(60), 5000)] {
        let service = Service::new();
        let (server, client) = memory_sessions(
            SessionBuilder::new().handler(service.clone()),
            SessionBuilder::new().handler(Service::new()),
        )
        .await;
        service.back.set(server.root.caller.with_timeout(own)).ok();
        let (left, _): Report = client
            .root
            .caller
            .with_timeout(Duration::from_secs(5))
            .call(mid("relay"), &(), vec![])
            .await
            .expect("relay");
        assert_eq!(left, Some(expected), "own timeout {own:?}");
    }
}

#[tokio::test]
async fn rpc_metadata_caller_defaults_reach_the_handler_context() {
    let (_server, client) = memory_sessions(SessionBuilder::new().handler(Service::new()), SessionBuilder::new()).await;
    let tagged = client.root.caller.with_metadata(Metadata::new().with_str("who", "alice", 0));
    let (_, who): Report = within("call", tagged.call(mid("remaining"), &(), vec![])).await.expect("call");
    assert_eq!(who.as_deref(), Some("alice"));
    let (_, who): Report = within("call", client.root.caller.call(mid("remaining"), &(), vec![])).await.expect("call");
    assert_eq!(who, None, "the plain caller sends none");
}

/// A typed service: its handler reads the request's metadata from the
/// context, and its typed client sends metadata through its caller.
#[vox_core::service]
pub trait Greeter {
    /// Greets in the language the request's metadata asks for.
    async fn greet(&self, name: String) -> String;
}

#[derive(Clone)]
struct Greet;

impl Greeter for Greet {
    async fn greet(&self, name: String) -> String {
        let ctx = CallContext::current().expect("context");
        let lang = ctx.metadata.get_str("lang").unwrap_or("en").to_owned();
        match lang.as_str() {
            "fr" => format!("bonjour {name}"),
            _ => format!("hello {name}"),
        }
    }
}

#[tokio::test]
async fn rpc_metadata_typed_client_sends_metadata_and_typed_handler_reads_it() {
    let (_server, client) =
        memory_sessions(SessionBuilder::new().handler(GreeterDispatcher::new(Greet)), SessionBuilder::new()).await;
    let plain = GreeterClient::new(client.root.caller.clone());
    assert_eq!(within("greet", plain.greet("ann".into())).await.expect("greet"), "hello ann");
    let french = GreeterClient::new(client.root.caller.with_metadata(Metadata::new().with_str("lang", "fr", 0)));
    assert_eq!(within("greet", french.greet("ann".into())).await.expect("greet"), "bonjour ann");
}

/// The context names the peer's address on a TCP link.
#[vox_core::service]
pub trait Whoami {
    /// The caller's address as the handler sees it.
    async fn peer(&self) -> Option<String>;
}

#[derive(Clone)]
struct Mirror;

impl Whoami for Mirror {
    async fn peer(&self) -> Option<String> {
        CallContext::current().and_then(|c| c.peer_addr).map(|a| a.to_string())
    }
}

#[tokio::test]
async fn rpc_call_context_has_the_peer_address_on_tcp() {
    let listener =
        SessionBuilder::new().handler(WhoamiDispatcher::new(Mirror)).listen("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    // The client serves the same service, so the server can ask it too.
    let (server, client) =
        tokio::join!(listener.accept(), SessionBuilder::new().handler(WhoamiDispatcher::new(Mirror)).connect(addr));
    let (server, client) = (server.expect("server"), client.expect("client"));
    let seen_by_server = within("peer", WhoamiClient::new(client.root.caller.clone()).peer()).await.expect("call");
    let seen_by_server: std::net::SocketAddr = seen_by_server.expect("an address").parse().expect("an address");
    assert!(seen_by_server.ip().is_loopback() && seen_by_server.port() != addr.port(), "{seen_by_server}");
    let seen_by_client = within("peer", WhoamiClient::new(server.root.caller.clone()).peer()).await.expect("call");
    assert_eq!(seen_by_client, Some(addr.to_string()), "the client sees the server's address");
}
