//! Issue 18: generated clients retry on their own where that is safe
//! (rules `retry.op-id`, `retry.layers.no-silent-retry`, `session.resume`):
//! an idem call survives a session resume with no code of the user's; a
//! non-idem call whose delivery became ambiguous fails with `Indeterminate`
//! and never runs twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::CallError;
use vox_core::link::{self, Backoff, FaultHandle, Link, LinkConfig, LinkError, LinkSource};
use vox_core::session::{Accepted, RetryPolicy, Session, SessionBuilder};

/// A counter whose calls wait at a gate the test opens.
#[vox_core::service]
pub trait Counter {
    /// Reads without changing anything: safe to run again.
    #[vox(idem)]
    async fn read(&self) -> u32;
    /// Adds one: must never run twice for one call.
    async fn bump(&self) -> u32;
}

#[derive(Clone)]
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    runs: Arc<AtomicU32>,
    done: Arc<AtomicU32>,
    value: Arc<AtomicU32>,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            runs: Arc::default(),
            done: Arc::default(),
            value: Arc::default(),
        }
    }
}

impl Counter for Gated {
    async fn read(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.acquire().await;
        self.done.fetch_add(1, Ordering::SeqCst);
        self.value.load(Ordering::SeqCst)
    }

    async fn bump(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.acquire().await;
        let v = self.value.fetch_add(1, Ordering::SeqCst) + 1;
        self.done.fetch_add(1, Ordering::SeqCst);
        v
    }
}

/// Fault-injecting links; a dial after the first waits for `dials` permits,
/// so the test decides when the session may resume.
struct Net {
    server: SessionBuilder,
    faults: Mutex<Vec<FaultHandle>>,
    dials: tokio::sync::Semaphore,
    first: std::sync::atomic::AtomicBool,
    sessions: tokio::sync::mpsc::Sender<Session>,
}

impl Net {
    async fn dial(net: Arc<Net>) -> Result<Link, LinkError> {
        if !net.first.swap(false, Ordering::SeqCst) {
            net.dials.acquire().await.expect("dial gate").forget();
        }
        let (client, server, fault) = link::faulty_pair(LinkConfig::default(), None);
        net.faults.lock().unwrap().push(fault);
        let (builder, sessions) = (net.server.clone(), net.sessions.clone());
        tokio::spawn(async move {
            if let Ok(Accepted::New(s)) = builder.establish_acceptor_any(server).await {
                let _ = sessions.send(s).await;
            }
        });
        Ok(client)
    }

    fn cut(&self) {
        if let Some(f) = self.faults.lock().unwrap().last() {
            f.cut();
        }
    }
}

async fn pair(service: &Gated) -> (Session, Session, Arc<Net>) {
    pair_with(SessionBuilder::new().handler(CounterDispatcher::new(service.clone()))).await
}

async fn pair_with(server: SessionBuilder) -> (Session, Session, Arc<Net>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let net = Arc::new(Net {
        server,
        faults: Mutex::new(Vec::new()),
        dials: tokio::sync::Semaphore::new(0),
        first: std::sync::atomic::AtomicBool::new(true),
        sessions: tx,
    });
    let mut client = SessionBuilder::new();
    let c = &mut client.config_mut().session_resume;
    c.request = true;
    c.recovery_timeout = Duration::from_secs(20);
    c.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(20), factor: 2 };
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = client.establish_resumable(source, None).await.expect("client session");
    let server = rx.recv().await.expect("server session");
    (server, client, net)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_generated_client_idem_call_survives_a_session_resume() {
    let service = Gated::default();
    service.value.store(41, Ordering::SeqCst);
    let (server, client, net) = pair(&service).await;
    let counter = CounterClient::new(client.root.caller.clone());
    let call = tokio::spawn(async move { counter.read().await });
    until("the first execution", || service.runs.load(Ordering::SeqCst) == 1).await;
    net.cut();
    net.dials.add_permits(1);
    // The client retried by itself: a second execution (idem) after the resume.
    until("the retry", || service.runs.load(Ordering::SeqCst) == 2).await;
    service.gate.add_permits(2);
    let got = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answer").expect("join");
    assert_eq!(got, Ok(41));
    assert_eq!(client.handle.generation(), 2);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_generated_client_non_idem_call_with_ambiguous_delivery_is_indeterminate_and_runs_once() {
    let service = Gated::default();
    let (_server, client, net) = pair(&service).await;
    let counter = CounterClient::new(client.root.caller.clone());
    let call = tokio::spawn(async move { counter.bump().await });
    until("the first execution", || service.runs.load(Ordering::SeqCst) == 1).await;
    net.cut();
    // The execution finishes while the session is detached: its outcome
    // could not be delivered, and a volatile method keeps none.
    service.gate.add_permits(8);
    until("the execution to finish", || service.done.load(Ordering::SeqCst) == 1).await;
    net.dials.add_permits(1);
    let got = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answer").expect("join");
    assert_eq!(got, Err(CallError::Indeterminate));
    assert_eq!(service.runs.load(Ordering::SeqCst), 1, "never a second execution");
    assert_eq!(service.value.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_generated_client_with_retries_off_reports_the_attempt_s_error() {
    let service = Gated::default();
    let (_server, client, net) = pair(&service).await;
    let counter = CounterClient::new(client.root.caller.with_retry(RetryPolicy::NEVER));
    let call = tokio::spawn(async move { counter.read().await });
    until("the first execution", || service.runs.load(Ordering::SeqCst) == 1).await;
    net.cut();
    let got = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answer").expect("join");
    assert!(got.as_ref().is_err_and(|e| e.is_retryable()), "{got:?}");
    net.dials.add_permits(1);
    assert_eq!(service.runs.load(Ordering::SeqCst), 1);
}

/// Holds the schema queries (`vox.schema.describe`) at a gate, counting
/// them; other calls go straight to the counter.
#[derive(Clone)]
struct GatedQueries {
    inner: CounterDispatcher<Gated>,
    gate: Arc<tokio::sync::Semaphore>,
    queries: Arc<AtomicU32>,
}

impl vox_core::driver::Handler for GatedQueries {
    fn handle(&self, call: vox_core::driver::Call) -> vox_core::driver::BoxFuture {
        if call.method_id != vox_core::schema::schema_method_id() {
            return self.inner.handle(call);
        }
        self.queries.fetch_add(1, Ordering::SeqCst);
        let (inner, gate) = (self.inner.clone(), self.gate.clone());
        Box::pin(async move {
            let _open = gate.acquire().await;
            inner.handle(call).await
        })
    }

    fn policy(&self, method: vox_core::wire::MethodId) -> vox_core::driver::MethodPolicy {
        vox_core::driver::Handler::policy(&self.inner, method)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_generated_client_schema_query_survives_a_session_resume() {
    // rule: schema.identity — the query before a method's first call is
    // retried across a resume like the call itself (it changes nothing).
    let service = Gated::default();
    service.value.store(7, Ordering::SeqCst);
    let queries = GatedQueries {
        inner: CounterDispatcher::new(service.clone()),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        queries: Arc::default(),
    };
    let (server, client, net) = pair_with(SessionBuilder::new().handler(queries.clone())).await;
    let counter = CounterClient::new(client.root.caller.clone());
    let call = tokio::spawn(async move { counter.read().await });
    until("the first query", || queries.queries.load(Ordering::SeqCst) == 1).await;
    net.cut();
    net.dials.add_permits(1);
    until("the query again after the resume", || queries.queries.load(Ordering::SeqCst) == 2).await;
    queries.gate.add_permits(8);
    service.gate.add_permits(8);
    let got = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answer").expect("join");
    assert_eq!(got, Ok(7));
    assert_eq!(service.runs.load(Ordering::SeqCst), 1, "the call itself ran once, after the query");
    drop(server);
}

/// Two versions of one service: v2's `Point` is reordered, with an added
/// optional field, so a v2 argument decoded as v1 without translation
/// would be wrong.
mod points {
    use serde::{Deserialize, Serialize};

    pub mod v1 {
        use super::*;
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
        pub struct Point {
            pub x: u32,
            pub y: u32,
        }
        #[vox_core::service]
        pub trait Plot {
            #[vox(idem)]
            async fn sum(&self, p: Point) -> u32;
        }
        pub struct Impl;
        impl Plot for Impl {
            async fn sum(&self, p: Point) -> u32 {
                p.x * 1000 + p.y
            }
        }
    }

    // Only v2's client is used here; its server trait has no implementation.
    #[allow(dead_code)]
    pub mod v2 {
        use super::*;
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
        pub struct Point {
            pub label: Option<String>,
            pub y: u32,
            pub x: u32,
        }
        #[vox_core::service]
        pub trait Plot {
            #[vox(idem)]
            async fn sum(&self, p: Point) -> u32;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_evolution_handler_side_plans_survive_a_session_resume() {
    // rule: schema.evolution — the handler side translates the caller's
    // arguments with the plan of the connection's exchange; the root
    // connection survives a resume, and so must its plans (the caller
    // does not ask again).
    let (server, client, net) =
        pair_with(SessionBuilder::new().handler(points::v1::PlotDispatcher::new(points::v1::Impl))).await;
    let plot = points::v2::PlotClient::new(client.root.caller.clone());
    let p = |x, y| points::v2::Point { label: Some("p".into()), y, x };
    assert_eq!(plot.sum(p(1, 2)).await, Ok(1002));
    net.cut();
    net.dials.add_permits(1);
    // The idem call retries across the resume by itself.
    assert_eq!(plot.sum(p(3, 4)).await, Ok(3004));
    assert_eq!(plot.sum(p(5, 6)).await, Ok(5006));
    drop(server);
}
