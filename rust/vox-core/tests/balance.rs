//! Issue 22, client-side load balancing (feature `tower`): a `Pool` of
//! sessions over several servers spreads calls, learns an endpoint's loss
//! from its session's end, and makes an idempotent call again on another
//! server, so that killing a server mid-run loses no idem call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use vox_core::driver::CallError;
use vox_core::service::balance::{Pool, PoolConfig};
use vox_core::service::{Server, ServiceRouter};
use vox_core::session::SessionBuilder;

/// A store every server answers the same way for a key.
#[vox_core::service]
pub trait Store {
    /// Reads a key: safe to run twice.
    #[vox(idem)]
    async fn get(&self, key: u64) -> u64;
    /// Appends: not safe to run twice.
    async fn append(&self, key: u64) -> u64;
    /// Blocks the server's runtime thread until thawed: a hung process
    /// whose sockets stay open.
    async fn freeze(&self);
}

#[derive(Clone)]
struct Shard {
    served: Arc<AtomicU64>,
    /// The keys `get` answered, in order.
    keys: Arc<std::sync::Mutex<Vec<u64>>>,
    /// Once set, `get` never answers (the server hangs with calls in it).
    hang: Arc<AtomicBool>,
    /// A permit per `get` that hangs.
    hanging: Arc<Semaphore>,
    /// A permit per `get` answered.
    answered: Arc<Semaphore>,
    /// While true, `freeze` blocks its thread.
    frozen: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Shard {
    fn thaw(&self) {
        let (lock, cv) = &*self.frozen;
        *lock.lock().unwrap() = false;
        cv.notify_all();
    }
}

impl Store for Shard {
    async fn get(&self, key: u64) -> u64 {
        if self.hang.load(Ordering::SeqCst) {
            self.hanging.add_permits(1);
            std::future::pending::<()>().await;
        }
        self.served.fetch_add(1, Ordering::SeqCst);
        self.keys.lock().unwrap().push(key);
        self.answered.add_permits(1);
        key * 10
    }
    async fn append(&self, key: u64) -> u64 {
        key
    }
    async fn freeze(&self) {
        let (lock, cv) = &*self.frozen;
        let mut frozen = lock.lock().unwrap();
        *frozen = true;
        // Deliberately blocking (ADR 0004 says never do this): the whole
        // server stops, pongs included.
        while *frozen {
            frozen = cv.wait(frozen).unwrap();
        }
    }
}

/// A server on a thread and runtime of its own: `kill` drops the runtime,
/// and with it every socket and task, as a crashed process would.
struct TestServer {
    addr: std::net::SocketAddr,
    shard: Shard,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start() -> TestServer {
        let shard = Shard {
            served: Arc::default(),
            keys: Arc::default(),
            hang: Arc::default(),
            hanging: Arc::new(Semaphore::new(0)),
            answered: Arc::new(Semaphore::new(0)),
            frozen: Arc::default(),
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let served = shard.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let router = ServiceRouter::new().serve(StoreDispatcher::new(served));
                let serving = Server::new(router).bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(serving.local_addr()).expect("addr");
                let _ = killed.await;
                // `serving` and every session task die with the runtime.
                drop(serving);
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().expect("server address");
        TestServer { addr, shard, kill: Some(kill), thread: Some(thread) }
    }

    fn kill(&mut self) {
        self.shard.thaw();
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn pool_of(servers: &[TestServer]) -> Pool {
    Pool::connect(SessionBuilder::new(), servers.iter().map(|s| s.addr), PoolConfig::default())
}

/// The test: three servers, calls running from several tasks, one
/// server killed while it holds calls in flight; every idem call answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_no_idem_call_is_lost_when_a_server_dies_mid_run() {
    let mut servers = vec![TestServer::start(), TestServer::start(), TestServer::start()];
    let pool = pool_of(&servers);
    within("all three endpoints up", pool.until(|h| h.iter().all(|e| e.up))).await;

    const WORKERS: u64 = 8;
    const CALLS: u64 = 40;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let pool = pool.clone();
        workers.spawn(async move {
            let mut answers = Vec::new();
            for i in 0..CALLS {
                let key = w * 1000 + i;
                let got = pool.call_idem(|c: StoreClient| async move { c.get(key).await }).await;
                answers.push((key, got));
            }
            answers
        });
    }
    // Mid-run: once the victim has answered some calls, it stops answering
    // and, with calls hanging in it, is killed.
    let victim = &servers[1].shard;
    let _ = within("the victim to serve", victim.answered.acquire_many(5)).await.expect("answered");
    victim.hang.store(true, Ordering::SeqCst);
    let _ = within("a call to hang in the victim", victim.hanging.acquire()).await.expect("hanging");
    servers[1].kill();

    let mut lost = Vec::new();
    let mut answered = 0;
    while let Some(r) = within("the workers", workers.join_next()).await {
        for (key, got) in r.expect("worker") {
            match got {
                Ok(v) if v == key * 10 => answered += 1,
                other => lost.push((key, other)),
            }
        }
    }
    assert!(lost.is_empty(), "idem calls lost: {lost:?}");
    assert_eq!(answered, WORKERS * CALLS);
    let stats = pool.stats();
    assert!(stats.retries >= 1, "the calls hanging in the victim were made again elsewhere: {stats:?}");
    // Health: the dead endpoint is known to be down (its redials fail).
    within("the victim to be marked down", pool.until(|h| !h[1].up)).await;
    let health = pool.health();
    assert!(health[0].up && health[2].up, "{health:?}");
    let served: Vec<u64> = servers.iter().map(|s| s.shard.served.load(Ordering::SeqCst)).collect();
    // An idem call may run twice, but only one the victim ran and whose
    // answer died with it (still queued for its writer when it was killed),
    // made again on a survivor: no server ran a key twice, and no two
    // survivors ran the same key.
    let keys: Vec<Vec<u64>> = servers.iter().map(|s| s.shard.keys.lock().unwrap().clone()).collect();
    for (i, k) in keys.iter().enumerate() {
        let distinct: std::collections::HashSet<_> = k.iter().collect();
        assert_eq!(distinct.len(), k.len(), "server {i} ran a key twice");
    }
    let on_both: Vec<&u64> = keys[0].iter().filter(|k| keys[2].contains(k)).collect();
    assert!(on_both.is_empty(), "both survivors ran {on_both:?}");
    let excess = served.iter().sum::<u64>().checked_sub(WORKERS * CALLS).expect("an answer no server ran");
    assert!(excess <= stats.retries, "calls run twice: {excess}, more than the retries: {stats:?}");
    assert!(served[0] > 0 && served[2] > 0, "the survivors shared the load: {served:?}");
}

/// A call to a method that is not idempotent is made once: its loss is
/// reported, not hidden by running it on another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_a_non_idem_call_is_not_made_again_elsewhere() {
    let mut servers = vec![TestServer::start(), TestServer::start()];
    let pool = pool_of(&servers);
    within("both endpoints up", pool.until(|h| h.iter().all(|e| e.up))).await;
    // Both servers hang `get`; a once-call is in one of them.
    for s in &servers {
        s.shard.hang.store(true, Ordering::SeqCst);
    }
    let call = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_once(|c: StoreClient| async move { c.get(1).await }).await }
    });
    let which = within("the call to hang somewhere", async {
        tokio::select! {
            _ = servers[0].shard.hanging.acquire() => 0,
            _ = servers[1].shard.hanging.acquire() => 1,
        }
    })
    .await;
    servers[which].kill();
    let got = within("the call", call).await.expect("join");
    assert_eq!(got, Err(CallError::ConnectionClosed));
    assert_eq!(pool.stats().retries, 0);
    // Appends on the survivor still work.
    let other = 1 - which;
    within("the dead one to be down", pool.until(|h| !h[which].up && h[other].up)).await;
    assert_eq!(within("append", pool.call_once(|c: StoreClient| async move { c.append(7).await })).await, Ok(7));
}

/// An endpoint that comes up late is dialed again until it answers, and a
/// call waits for some endpoint to be up (bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_calls_wait_for_an_endpoint_and_fail_when_none_comes() {
    // Nothing listens on this address: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let config = PoolConfig { wait_for_endpoint: Duration::from_millis(200), ..PoolConfig::default() };
    let pool = Pool::connect(SessionBuilder::new(), [dead], config);
    within("the endpoint to be marked down", pool.until(|h| h[0].down_because.is_some())).await;
    let got = within("the call", pool.call_idem(|c: StoreClient| async move { c.get(1).await })).await;
    assert_eq!(got, Err(CallError::ConnectionClosed));
}

/// Health through keepalive: a server that hangs with its sockets open is
/// found out by the keepalive timeout, marked down, and calls go elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_keepalive_marks_a_hung_server_down() {
    let servers = [TestServer::start(), TestServer::start()];
    let builder = SessionBuilder::new().keepalive(Duration::from_millis(20), Duration::from_millis(200));
    let pool = Pool::connect(builder, servers.iter().map(|s| s.addr), PoolConfig::default());
    within("both endpoints up", pool.until(|h| h.iter().all(|e| e.up))).await;
    // Hang server 0 through a session of its own.
    let freezer = StoreClient::connect(servers[0].addr).await.expect("connect");
    let frozen = tokio::spawn(async move { freezer.freeze().await });
    let by_keepalive = |h: &[vox_core::service::balance::EndpointHealth]| {
        !h[0].up && h[1].up && h[0].last_loss.as_deref().is_some_and(|w| w.contains("keepalive"))
    };
    within("the keepalive to find the hung server", pool.until(by_keepalive)).await;
    for key in 0..10 {
        let got = within("a call", pool.call_idem(|c: StoreClient| async move { c.get(key).await })).await;
        assert_eq!(got, Ok(key * 10));
    }
    assert_eq!(servers[1].shard.served.load(Ordering::SeqCst), 10, "the live server answered them all");
    frozen.abort();
}

/// The pool is a tower service too: layers stack over it, and an idem
/// service's calls are retried on another endpoint underneath them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_pool_is_a_tower_service() {
    use tower::{ServiceBuilder, ServiceExt};
    use vox_core::service::tower::TypedCall;
    let servers = [TestServer::start(), TestServer::start()];
    let pool = pool_of(&servers);
    within("both endpoints up", pool.until(|h| h.iter().all(|e| e.up))).await;
    let svc = ServiceBuilder::new()
        .timeout(PATIENCE)
        .concurrency_limit(4)
        .service(pool.idem_service::<StoreClient, u64, CallError>());
    for key in 0..10u64 {
        let get = TypedCall::new(move |c: StoreClient| async move { c.get(key).await });
        assert_eq!(svc.clone().oneshot(get).await.expect("answer"), key * 10);
    }
    let once = pool.once_service::<StoreClient, u64, CallError>();
    let append = TypedCall::new(|c: StoreClient| async move { c.append(5).await });
    assert_eq!(once.oneshot(append).await, Ok(5));
    assert_eq!(pool.stats().calls, 11);
}
