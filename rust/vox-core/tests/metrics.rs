//! Issue 22, metrics (feature `metrics`): calls by method and outcome with
//! their latency, channel items and credit stalls, violations by kind,
//! sessions and resumes, as a recorder installed by the program sees them.
//!
//! The recorder is this file's own: it keeps every counter, gauge and
//! histogram by name and labels. It is global (the `metrics` facade has one
//! per process), so the tests take turns through `SERIAL` and assert
//! differences.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}

use common::raw_peer::{PATIENCE, raw_initiator};
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use vox_core::driver::metrics as m;
use vox_core::driver::{CallError, Rx, channel_with_credit};
use vox_core::link::{self, Backoff, FaultHandle, Link, LinkConfig, LinkError, LinkSource};
use vox_core::service::ServiceError;
use vox_core::session::{Accepted, Session, SessionBuilder};
use vox_core::wire::{Blob, Parity, Payload, RequestId, ResponseBody};

#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, f64>>,
    samples: Mutex<HashMap<String, Vec<f64>>>,
    changed: tokio::sync::Notify,
}

/// One registered metric: writes land in the store under its key.
struct Cell {
    key: String,
    store: Arc<Store>,
}

impl Cell {
    fn update(&self, f: impl FnOnce(&mut f64)) {
        f(self.store.values.lock().unwrap().entry(self.key.clone()).or_default());
        self.store.changed.notify_waiters();
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.update(|v| *v += value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|v| *v = value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.store.samples.lock().unwrap().entry(self.key.clone()).or_default().push(value);
        self.store.changed.notify_waiters();
    }
}

struct Recorder(Arc<Store>);

/// `name{a=1,b=2}`, labels sorted.
fn key_text(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell { key: key_text(key), store: self.0.clone() }))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Cell { key: key_text(key), store: self.0.clone() }))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Cell { key: key_text(key), store: self.0.clone() }))
    }
}

fn store() -> &'static Arc<Store> {
    static STORE: OnceLock<Arc<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = Arc::new(Store::default());
        metrics::set_global_recorder(Recorder(store.clone())).expect("the only recorder");
        store
    })
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn value(key: &str) -> f64 {
    store().values.lock().unwrap().get(key).copied().unwrap_or(0.0)
}

fn samples(key: &str) -> Vec<f64> {
    store().samples.lock().unwrap().get(key).cloned().unwrap_or_default()
}

/// Waits (bounded) until `key`'s value satisfies `pred`: the session
/// metrics are written by a task of their own.
async fn until(key: &str, pred: impl Fn(f64) -> bool) {
    let wait = async {
        loop {
            let changed = store().changed.notified();
            if pred(value(key)) {
                return;
            }
            changed.await;
        }
    };
    if tokio::time::timeout(PATIENCE, wait).await.is_err() {
        panic!("{key} stayed at {}", value(key));
    }
}

/// A service to measure.
#[vox_core::service]
pub trait Meter {
    /// Adds.
    #[vox(idem)]
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Always fails with a user error.
    async fn refuse(&self) -> Result<(), String>;
    /// Never answers.
    async fn hang(&self);
    /// Sums a stream.
    async fn sum(&self, numbers: Rx<i64>) -> i64;
}

#[derive(Clone)]
struct MeterImpl;

impl Meter for MeterImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn refuse(&self) -> Result<(), String> {
        Err("no".into())
    }
    async fn hang(&self) {
        std::future::pending::<()>().await
    }
    async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
        let mut total = 0;
        while let Ok(Some(n)) = numbers.recv().await {
            total += n;
        }
        total
    }
}

async fn pair() -> (Session, Session) {
    let (a, b) = link::memory_pair(Default::default());
    let server = SessionBuilder::new().handler(MeterDispatcher::new(MeterImpl));
    let (s, c) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (s.expect("server"), c.expect("client"))
}

fn finished(method: &str, outcome: &str) -> String {
    format!("{}{{method={method},outcome={outcome}}}", m::CALLS_FINISHED)
}

#[tokio::test]
async fn metrics_calls_by_method_and_outcome_with_latency() {
    let _turn = SERIAL.lock().await;
    store();
    let started = format!("{}{{method=Meter.add}}", m::CALLS_STARTED);
    let (add_ok, refused) = (finished("Meter.add", "ok"), finished("Meter.refuse", "user_error"));
    let (deadline, dropped) = (finished("Meter.hang", "deadline_exceeded"), finished("Meter.hang", "dropped"));
    let latency = format!("{}{{method=Meter.add,outcome=ok}}", m::CALL_DURATION);
    let received = format!("{}{{method=Meter.add}}", m::REQUESTS_RECEIVED);
    let (answered_ok, answered_user) =
        (format!("{}{{outcome=ok}}", m::REQUESTS_ANSWERED), format!("{}{{outcome=user_error}}", m::REQUESTS_ANSWERED));
    // The schema exchange (rule schema.identity) is a request of its own,
    // answered `ok`, before the first call of each method on a connection.
    let queries = format!("{}{{method={}}}", m::REQUESTS_RECEIVED, vox_core::schema::schema_method_id());
    let server_before = [value(&received), value(&answered_ok), value(&answered_user), value(&queries)];
    let before = [value(&started), value(&add_ok), value(&refused), value(&deadline), value(&dropped)];
    let samples_before = samples(&latency).len();

    let (_server, client) = pair().await;
    let meter = MeterClient::new(client.root.caller.clone());
    for i in 0..3 {
        assert_eq!(meter.add(i, 1).await, Ok(i + 1));
    }
    assert_eq!(meter.refuse().await, Err(ServiceError::User("no".to_string())));
    let quick = MeterClient::new(client.root.caller.with_timeout(Duration::from_millis(20)));
    assert_eq!(quick.hang().await, Err(CallError::DeadlineExceeded));
    // A call whose future is dropped still finishes in the metrics.
    let hung = tokio::spawn({
        let meter = meter.clone();
        async move { meter.hang().await }
    });
    until(&format!("{}{{method=Meter.hang}}", m::CALLS_STARTED), |v| v >= 2.0).await;
    hung.abort();
    let _ = hung.await;

    assert_eq!(value(&started) - before[0], 3.0);
    assert_eq!(value(&add_ok) - before[1], 3.0);
    assert_eq!(value(&refused) - before[2], 1.0);
    assert_eq!(value(&deadline) - before[3], 1.0);
    assert_eq!(value(&dropped) - before[4], 1.0);
    // The server side counted the same calls as requests and answers.
    assert_eq!(value(&received) - server_before[0], 3.0);
    let schema_queries = value(&queries) - server_before[3];
    assert_eq!(schema_queries, 3.0, "one per method used: add, refuse, hang");
    assert_eq!(value(&answered_ok) - server_before[1], 3.0 + schema_queries);
    assert_eq!(value(&answered_user) - server_before[2], 1.0);
    let lat = samples(&latency);
    assert_eq!(lat.len() - samples_before, 3, "one latency sample per call");
    assert!(lat.iter().all(|s| *s >= 0.0 && *s < PATIENCE.as_secs_f64()), "{lat:?}");
}

#[tokio::test]
async fn metrics_channel_items_and_credit_stalls() {
    let _turn = SERIAL.lock().await;
    store();
    let sent = format!("{}{{direction=sent}}", m::CHANNEL_ITEMS);
    let received = format!("{}{{direction=received}}", m::CHANNEL_ITEMS);
    let stalls = format!("{}{{}}", m::CREDIT_STALLS);
    let stall_time = format!("{}{{}}", m::CREDIT_STALL_DURATION);
    let before = [value(&sent), value(&received), value(&stalls)];
    let stall_samples = samples(&stall_time).len();

    let (_server, client) = pair().await;
    let meter = MeterClient::new(client.root.caller.clone());
    // One credit: every item after the first waits for a grant.
    let (mut tx, rx) = channel_with_credit::<i64>(1);
    let feed = async move {
        for n in 1..=5 {
            tx.send(&n).await.expect("send");
        }
        tx.close().await.expect("close");
    };
    let (total, ()) = tokio::time::timeout(PATIENCE, async { tokio::join!(meter.sum(rx), feed) }).await.expect("sum");
    assert_eq!(total, Ok(15));

    assert_eq!(value(&sent) - before[0], 5.0);
    assert_eq!(value(&received) - before[1], 5.0);
    let stalled = value(&stalls) - before[2];
    assert!(stalled >= 1.0, "one credit for five items must stall");
    assert_eq!((samples(&stall_time).len() - stall_samples) as f64, stalled, "a duration per stall");
}

#[tokio::test]
async fn metrics_violations_by_kind() {
    let _turn = SERIAL.lock().await;
    store();
    let key = format!("{}{{kind=rpc.response.one-per-request}}", m::VIOLATIONS);
    let before = value(&key);
    let (_session, mut raw) = raw_initiator(SessionBuilder::new(), Parity::Odd).await;
    // A response to a request never made.
    raw.send(
        0,
        Payload::Response { id: RequestId(77), ret: ResponseBody::Ok(Blob::default()), metadata: Default::default() },
    )
    .await;
    raw.expect_protocol_error().await;
    assert_eq!(value(&key) - before, 1.0);
}

/// Fault-injecting links for a resumable session pair.
struct Net {
    server: SessionBuilder,
    faults: Mutex<Vec<FaultHandle>>,
    sessions: tokio::sync::mpsc::Sender<Session>,
}

impl Net {
    async fn dial(net: Arc<Net>) -> Result<Link, LinkError> {
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
}

#[tokio::test]
async fn metrics_sessions_and_resumes() {
    let _turn = SERIAL.lock().await;
    store();
    let started = format!("{}{{}}", m::SESSIONS_STARTED);
    let active = format!("{}{{}}", m::SESSIONS_ACTIVE);
    let resumes = format!("{}{{}}", m::SESSION_RESUMES);
    let ended = format!("{}{{reason=Shutdown}}", m::SESSIONS_ENDED);
    let before = [value(&started), value(&active), value(&resumes), value(&ended)];

    let recovery = Duration::from_secs(10);
    let mut server = SessionBuilder::new().handler(MeterDispatcher::new(MeterImpl));
    server.config_mut().session_resume.recovery_timeout = recovery;
    let mut client = SessionBuilder::new();
    let c = &mut client.config_mut().session_resume;
    c.request = true;
    c.recovery_timeout = recovery;
    c.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(20), factor: 2 };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let net = Arc::new(Net { server, faults: Mutex::new(Vec::new()), sessions: tx });
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = client.establish_resumable(source, None).await.expect("client session");
    let server = tokio::time::timeout(PATIENCE, rx.recv()).await.expect("server session").expect("server session");
    assert_eq!(value(&started) - before[0], 2.0, "both sides count their session");
    until(&active, |v| v - before[1] >= 2.0).await;

    // Cut the link: both sides bind a replacement conduit (generation 2).
    net.faults.lock().unwrap().last().expect("a link").cut();
    tokio::time::timeout(PATIENCE, client.handle.attached_after(1)).await.expect("resume").expect("resume");
    tokio::time::timeout(PATIENCE, server.handle.attached_after(1)).await.expect("resume").expect("resume");
    until(&resumes, |v| v - before[2] >= 2.0).await;
    assert_eq!(value(&resumes) - before[2], 2.0, "one resume on each side");

    // Both sides end it (a resumable server would otherwise wait out its
    // recovery time for the client to come back).
    client.handle.shutdown().expect("shutdown");
    let _ = server.handle.shutdown();
    tokio::time::timeout(PATIENCE, server.handle.closed()).await.expect("server ends");
    until(&ended, |v| v - before[3] >= 1.0).await;
    until(&active, |v| v - before[1] <= 0.0).await;
}
