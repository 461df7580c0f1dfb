//! tower layers on both sides of a vox connection (feature `tower`).
//!
//! `cargo run -p vox-core --features tower --example tower_stack` starts a
//! server whose handler is a tower stack (a timeout, load shedding and a
//! concurrency limit over the generated dispatcher) and a client whose typed
//! calls go through a stack of their own (a timeout and a concurrency
//! limit). It shows:
//!
//! 1. quick calls through both stacks;
//! 2. the client's timeout cancelling a slow call (the server stops it);
//! 3. the server's limit: over it, calls are answered `Rejected` at once
//!    (nothing ran, so a client may try elsewhere).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};
use vox_core::driver::CallError;
use vox_core::service::Server;
use vox_core::service::tower::{ClientService, TowerHandler, TypedCall};
use vox_core::session::SessionBuilder;

/// The work the server does.
#[vox_core::service]
pub trait Work {
    /// Answers at once.
    #[vox(idem)]
    async fn square(&self, n: u64) -> u64;
    /// Takes `ms` milliseconds.
    async fn slow(&self, ms: u64) -> u64;
    /// Waits until the example opens the gate.
    async fn held(&self) -> u64;
}

#[derive(Clone)]
struct Worker {
    stopped: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

/// Counts a `slow` call stopped before it finished.
struct Stopped(Option<Arc<AtomicUsize>>);
impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Work for Worker {
    async fn square(&self, n: u64) -> u64 {
        n * n
    }

    async fn slow(&self, ms: u64) -> u64 {
        let mut stopped = Stopped(Some(self.stopped.clone()));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        stopped.0 = None;
        ms
    }

    async fn held(&self) -> u64 {
        let _pass = self.gate.acquire().await;
        1
    }
}

/// Calls the server may run at once.
const SERVER_LIMIT: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker { stopped: Arc::default(), gate: Arc::new(tokio::sync::Semaphore::new(0)) };
    // Server: timeout, then shed what is over the limit (instead of queueing).
    let stack = ServiceBuilder::new().timeout(Duration::from_secs(5)).load_shed().concurrency_limit(SERVER_LIMIT);
    let handler = TowerHandler::layered(WorkDispatcher::new(worker.clone()), stack);
    let server = Server::with_builder(SessionBuilder::new().handler(handler)).bind("127.0.0.1:0").await?;
    println!("server on {} (limit {SERVER_LIMIT}, load shedding)", server.local_addr());

    let work = WorkClient::connect(server.local_addr()).await?;
    // Client: every typed call under a 300 ms timeout, at most 8 at once.
    let client = ServiceBuilder::new()
        .timeout(Duration::from_millis(300))
        .concurrency_limit(8)
        .service(ClientService::<_, u64, CallError>::new(work.clone()));

    // 1. Quick calls through both stacks (at most 8 in flight on our side,
    // at most 4 running on the server's: `square` answers at once).
    let mut squares = tokio::task::JoinSet::new();
    for n in 0..SERVER_LIMIT as u64 {
        let call = TypedCall::new(move |c: WorkClient| async move { c.square(n).await });
        squares.spawn(client.clone().oneshot(call));
    }
    let mut total = 0;
    while let Some(r) = squares.join_next().await {
        total += r?.map_err(|e| format!("square: {e}"))?;
    }
    println!("1. squares of 0..{SERVER_LIMIT} sum to {total}");
    assert_eq!(total, 14);

    // 2. A call slower than the client's timeout: the future is dropped,
    // which cancels the call, and the server stops the handler.
    let mut svc = client.clone();
    let slow = TypedCall::new(|c: WorkClient| async move { c.slow(5_000).await });
    let err =
        svc.ready().await.map_err(|e| format!("ready: {e}"))?.call(slow).await.expect_err("slower than the timeout");
    assert!(err.is::<tower::timeout::error::Elapsed>());
    println!("2. slow(5000) under a 300 ms timeout: {err}");
    for _ in 0..1000 {
        if worker.stopped.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(worker.stopped.load(Ordering::SeqCst), 1, "the cancel reached the server");
    println!("   the server stopped the handler");

    // 3. Twice the server's limit at once, held until the gate opens: the
    // limit's worth run, the rest are shed at once and answered `Rejected`
    // (they never ran); then the gate opens and the held ones finish.
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..2 * SERVER_LIMIT {
        let work = work.clone();
        held.spawn(async move { work.held().await });
    }
    let (mut ran, mut rejected) = (0, 0);
    while let Some(r) = held.join_next().await {
        match r? {
            Ok(_) => ran += 1,
            Err(CallError::Rejected(_)) => rejected += 1,
            Err(e) => return Err(format!("held: {e}").into()),
        }
        if rejected == SERVER_LIMIT && ran == 0 {
            worker.gate.add_permits(SERVER_LIMIT);
        }
    }
    println!("3. {} calls at once: {ran} ran, {rejected} were rejected by the server's limit", 2 * SERVER_LIMIT);
    assert_eq!((ran, rejected), (SERVER_LIMIT, SERVER_LIMIT));

    let report = server.shutdown().await;
    println!("server shut down after {} session(s)", report.sessions_served);
    Ok(())
}
