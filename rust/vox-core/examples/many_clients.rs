//! A server serving many clients at once, and its graceful shutdown.
//!
//! `cargo run -p vox-core --example many_clients [clients]` starts a
//! `Server` on loopback, connects 100 clients (or as many as asked), each
//! making calls concurrently, then shuts the server down while every client
//! still has a call in flight: those calls complete, calls made after the
//! shutdown began are refused (`Rejected`: they never ran), and the process
//! exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vox_core::driver::CallError;
use vox_core::service::{Server, ServiceRouter};

/// The work the server does.
#[vox_core::service]
pub trait Work {
    /// Answers at once.
    #[vox(idem)]
    async fn square(&self, n: u64) -> u64;
    /// Takes `ms` milliseconds.
    async fn slow(&self, ms: u64) -> u64;
}

#[derive(Clone)]
struct Worker {
    started: Arc<AtomicUsize>,
}

impl Work for Worker {
    async fn square(&self, n: u64) -> u64 {
        n * n
    }

    async fn slow(&self, ms: u64) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clients: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let started = Arc::new(AtomicUsize::new(0));
    let router = ServiceRouter::new().serve(WorkDispatcher::new(Worker { started: started.clone() }));
    let server = Server::new(router).grace_period(Duration::from_secs(10)).bind("127.0.0.1:0").await?;
    let addr = server.local_addr();
    println!("server on {addr}");

    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        handles.push(WorkClient::connect(addr).await?);
    }
    println!("{clients} clients connected in {:?}", t.elapsed());

    // Every client makes 50 quick calls, all clients at once.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in handles.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..50u64 {
                let n = i as u64 * 100 + k;
                assert_eq!(c.square(n).await?, n * n);
            }
            Ok::<_, CallError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("{} calls in {:?}; sessions open: {}", clients * 50, t.elapsed(), server.sessions());

    // Each client starts a 300 ms call; then the server shuts down.
    let mut in_flight = Vec::new();
    for c in &handles {
        let c = c.clone();
        in_flight.push(tokio::spawn(async move { c.slow(300).await }));
    }
    while started.load(Ordering::SeqCst) < clients {
        tokio::task::yield_now().await;
    }
    let shutdown = tokio::spawn(server.shutdown());
    // Calls made now are refused, or find the session already gone.
    let mut refused = 0;
    for c in &handles {
        loop {
            match c.square(2).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(CallError::Rejected(_)) => {
                    refused += 1;
                    break;
                }
                Err(e) => return Err(format!("unexpected error after the shutdown began: {e}").into()),
            }
        }
    }
    let mut completed = 0;
    for call in in_flight {
        assert_eq!(call.await??, 300);
        completed += 1;
    }
    let report = shutdown.await?;
    println!(
        "shutdown: {completed} in-flight calls completed, {refused} new calls refused, {} sessions drained, {} served in all",
        report.drained, report.sessions_served
    );
    assert_eq!(completed, clients);
    assert_eq!(refused, clients);
    Ok(())
}
