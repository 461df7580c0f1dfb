//! Issue 22, tower integration (feature `tower`): callers and typed clients
//! are `tower::Service`s, so tower's layers apply on the client side; a
//! `TowerHandler` serves a layered `tower::Service`, so they apply on the
//! server side too; each layer's error becomes the vox answer it means.

use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use vox_core::driver::{CallError, Handler, Rx, Tx, channel};
use vox_core::service::ServiceError;
use vox_core::service::tower::{ClientService, HandlerService, RawRequest, TowerHandler, TypedCall};
use vox_core::session::{Caller, Session, SessionBuilder};
use vox_core::wire::MethodId;

/// A service whose `wait` runs until the test opens the gate, and says
/// when it started and when it was stopped (dropped) before finishing.
#[vox_core::service]
pub trait Lab {
    /// Adds.
    #[vox(idem)]
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Waits for the gate.
    async fn wait(&self) -> u32;
    /// Fails with a user error.
    async fn refuse(&self) -> Result<(), String>;
    /// Streams `from..=0` back.
    async fn countdown(&self, from: u32, out: Tx<u32>);
    /// Sums what the caller streams.
    async fn sum(&self, numbers: Rx<i64>) -> i64;
}

#[derive(Clone)]
struct LabImpl {
    started: Arc<tokio::sync::Semaphore>,
    gate: Arc<tokio::sync::Semaphore>,
    stopped: Arc<tokio::sync::Semaphore>,
}

impl Default for LabImpl {
    fn default() -> Self {
        let none = || Arc::new(tokio::sync::Semaphore::new(0));
        LabImpl { started: none(), gate: none(), stopped: none() }
    }
}

/// Adds a permit to `stopped` if dropped while armed.
struct StopGuard(Option<Arc<tokio::sync::Semaphore>>);
impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.add_permits(1);
        }
    }
}

impl Lab for LabImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn wait(&self) -> u32 {
        let mut guard = StopGuard(Some(self.stopped.clone()));
        self.started.add_permits(1);
        let _open = self.gate.acquire().await.expect("gate");
        guard.0 = None;
        7
    }
    async fn refuse(&self) -> Result<(), String> {
        Err("no".into())
    }
    async fn countdown(&self, from: u32, mut out: Tx<u32>) {
        for i in (0..=from).rev() {
            if out.send(&i).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
    }
    async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
        let mut total = 0;
        while let Ok(Some(n)) = numbers.recv().await {
            total += n;
        }
        total
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A session pair over an in-memory link, `handler` on the acceptor's root.
async fn pair(handler: impl Handler) -> (Session, Session) {
    let (a, b) = vox_core::link::memory_pair(Default::default());
    let server = SessionBuilder::new().handler(handler);
    let (server, client) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (server.expect("server"), client.expect("client"))
}

fn client_of(s: &Session) -> LabClient {
    LabClient::new(s.root.caller.clone())
}

#[tokio::test]
async fn tower_caller_is_a_raw_service() {
    let (_server, client) = pair(LabDispatcher::new(LabImpl::default())).await;
    let mut caller: Caller = client.root.caller.clone();
    let req = RawRequest::encode(MethodId::from_names("Lab", "add"), &(2i64, 40i64)).expect("encode");
    let resp = within("call", caller.ready().await.expect("ready").call(req)).await.expect("answer");
    assert_eq!(vox_core::wire::decode::<i64>("sum", &resp.ret).expect("decode"), 42);
    // An unknown method is the peer's answer, as with call_raw.
    let req = RawRequest::encode(MethodId::from_names("Lab", "nope"), &()).expect("encode");
    let err = within("call", caller.ready().await.expect("ready").call(req)).await.expect_err("unknown");
    assert!(matches!(err, CallError::UnknownMethod { .. }), "{err:?}");
}

#[tokio::test]
async fn tower_raw_request_clones_only_without_channels() {
    let req = RawRequest::encode(MethodId::from_names("Lab", "add"), &(1i64, 2i64)).expect("encode");
    let copy = req.try_clone().expect("a plain request clones");
    assert_eq!((copy.method_id, copy.args.clone()), (req.method_id, req.args.clone()));
    let (_tx, rx) = channel::<i64>();
    let mut with_channel = RawRequest::encode(MethodId::from_names("Lab", "sum"), &()).expect("encode");
    with_channel.channels.push(rx.into_arg().expect("a fresh end"));
    assert!(with_channel.try_clone().is_none(), "a channel end belongs to one attempt");
}

#[tokio::test]
async fn tower_caller_is_not_ready_once_its_session_ended() {
    let (_server, client) = pair(LabDispatcher::new(LabImpl::default())).await;
    let mut caller = client.root.caller.clone();
    caller.ready().await.expect("ready while the session lives");
    client.handle.shutdown().expect("shutdown");
    within("the session to end", client.handle.closed()).await;
    let err = caller.ready().await.expect_err("an ended session is never ready again");
    assert_eq!(err, CallError::SessionShutdown);
    let mut typed: ClientService<LabClient, i64, CallError> = ClientService::new(client_of(&client));
    let err = typed.ready().await.expect_err("the typed client's service says so too");
    assert_eq!(err, CallError::SessionShutdown);
}

#[tokio::test]
async fn tower_typed_client_calls_go_through_the_service() {
    let (_server, client) = pair(LabDispatcher::new(LabImpl::default())).await;
    let mut svc = ClientService::new(client_of(&client));
    // The request is built first: its type names the answer and the error.
    let add = TypedCall::new(|c: LabClient| async move { c.add(2, 3).await });
    let sum = svc.ready().await.expect("ready").call(add);
    assert_eq!(within("add", sum).await, Ok(5));
    let refuse = TypedCall::new(|c: LabClient| async move { c.refuse().await });
    // Another answer type, another service over the same client.
    let mut fallible = ClientService::new(client_of(&client));
    let refused = fallible.ready().await.expect("ready").call(refuse);
    assert_eq!(within("refuse", refused).await, Err(ServiceError::User("no".to_string())));
}

/// rule: rpc.cancel — a client-side `Timeout` drops the call's future,
/// which cancels it: the handler is stopped.
// Paused time: the deadline passes only once everything else is idle,
// so the handler has surely started, however loaded the machine.
#[tokio::test(start_paused = true)]
async fn tower_client_timeout_cancels_the_call_on_the_server() {
    let lab = LabImpl::default();
    let (_server, client) = pair(LabDispatcher::new(lab.clone())).await;
    let mut svc =
        ServiceBuilder::new().timeout(Duration::from_millis(50)).service(ClientService::new(client_of(&client)));
    let wait = TypedCall::new(|c: LabClient| async move { c.wait().await });
    let err =
        within("the timeout", svc.ready().await.expect("ready").call(wait)).await.expect_err("the gate never opens");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    // The handler had started and was stopped by the cancel.
    let _ = within("the handler to start", lab.started.acquire()).await.expect("started");
    let _ = within("the handler to be stopped", lab.stopped.acquire()).await.expect("stopped");
}

/// A client-side concurrency limit with load shedding refuses a call while
/// the limit is taken, at once and without sending it.
#[tokio::test]
async fn tower_client_concurrency_limit_sheds_the_call_over_the_limit() {
    let lab = LabImpl::default();
    let (_server, client) = pair(LabDispatcher::new(lab.clone())).await;
    let svc = ServiceBuilder::new().load_shed().concurrency_limit(1).service(ClientService::new(client_of(&client)));
    let first = tokio::spawn(svc.clone().oneshot(TypedCall::new(|c: LabClient| async move { c.wait().await })));
    let _ = within("the first call to start", lab.started.acquire()).await.expect("started");
    let err =
        within("the second call", svc.clone().oneshot(TypedCall::new(|c: LabClient| async move { c.wait().await })))
            .await
            .expect_err("over the limit");
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    assert_eq!(client.root.caller.stats().calls_in_flight, 1, "only the first call went out");
    lab.gate.add_permits(1);
    assert_eq!(within("the first call", first).await.expect("join").expect("answer"), 7);
}

/// Server side: a concurrency limit with load shedding answers `Rejected`
/// (nothing ran: the client may try elsewhere), a timeout answers
/// `DeadlineExceeded` and stops the handler.
// Paused time: the deadline passes only once everything else is idle,
// so the handler has surely started, however loaded the machine.
#[tokio::test(start_paused = true)]
async fn tower_server_layers_answer_rejected_and_deadline_exceeded() {
    let lab = LabImpl::default();
    let stack = ServiceBuilder::new().load_shed().concurrency_limit(1).timeout(Duration::from_millis(200));
    let handler = TowerHandler::layered(LabDispatcher::new(lab.clone()), stack);
    let (_server, client) = pair(handler).await;
    let calc = client_of(&client);
    let first = tokio::spawn({
        let calc = calc.clone();
        async move { calc.wait().await }
    });
    let _ = within("the first call to start", lab.started.acquire()).await.expect("started");
    let err = within("the second call", calc.add(1, 2)).await.expect_err("over the limit");
    assert!(matches!(&err, CallError::Rejected(r) if r.contains("overloaded")), "{err:?}");
    // The first one runs into the server's timeout.
    assert_eq!(within("the first call", first).await.expect("join"), Err(CallError::DeadlineExceeded));
    let _ = within("the handler to be stopped", lab.stopped.acquire()).await.expect("stopped");
    // With the limit free again, calls go through.
    assert_eq!(within("add", calc.add(1, 2)).await, Ok(3));
}

/// The adapter keeps what a handler does: user errors, channels both ways,
/// and the method policies of the dispatcher it wraps.
#[tokio::test]
async fn tower_handler_keeps_errors_channels_and_policies() {
    let handler = TowerHandler::layered(LabDispatcher::new(LabImpl::default()), tower::layer::util::Identity::new());
    assert!(handler.policy(MethodId::from_names("Lab", "add")).idem);
    assert!(!handler.policy(MethodId::from_names("Lab", "wait")).idem);
    let plain = TowerHandler::new(HandlerService::new(LabDispatcher::new(LabImpl::default())));
    assert!(!plain.policy(MethodId::from_names("Lab", "add")).idem, "no table given: the default policy");
    assert!(plain.with_methods(LabClient::METHODS).policy(MethodId::from_names("Lab", "add")).idem);

    let (_server, client) = pair(handler).await;
    let calc = client_of(&client);
    assert_eq!(within("refuse", calc.refuse()).await, Err(ServiceError::User("no".to_string())));
    let (tx, mut rx) = channel::<u32>();
    let collect = async move {
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await.expect("recv") {
            got.push(n);
        }
        got
    };
    let (done, got) = within("countdown", async { tokio::join!(calc.countdown(3, tx), collect) }).await;
    done.expect("countdown");
    assert_eq!(got, vec![3, 2, 1, 0]);
    let (mut tx, rx) = channel::<i64>();
    let feed = async move {
        for n in 1..=4 {
            tx.send(&n).await.expect("send");
        }
        tx.close().await.expect("close");
    };
    let (total, ()) = within("sum", async { tokio::join!(calc.sum(rx), feed) }).await;
    assert_eq!(total, Ok(10));
}

/// tower's own balancer applies to callers: p2c over two sessions, with
/// the pending-requests load, answers every call.
#[tokio::test]
async fn tower_balance_p2c_applies_to_callers() {
    let (_s1, c1) = pair(LabDispatcher::new(LabImpl::default())).await;
    let (_s2, c2) = pair(LabDispatcher::new(LabImpl::default())).await;
    let load = |c: &Session| {
        tower::load::PendingRequests::new(c.root.caller.clone(), tower::load::CompleteOnResponse::default())
    };
    let list = tower::discover::ServiceList::new(vec![load(&c1), load(&c2)]);
    let mut balance = tower::balance::p2c::Balance::new(list);
    for i in 0..20i64 {
        let req = RawRequest::encode(MethodId::from_names("Lab", "add"), &(i, 1i64)).expect("encode");
        let resp = within("call", balance.ready().await.expect("ready").call(req)).await.expect("answer");
        assert_eq!(vox_core::wire::decode::<i64>("sum", &resp.ret).expect("decode"), i + 1);
    }
    // A layer of the tower ecosystem is a `Layer` over our services too.
    let _timeout = tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(c1.root.caller.clone());
}
