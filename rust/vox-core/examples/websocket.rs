//! A vox server reachable over WebSocket, and a client calling it
//! (rule `transport.websocket`): each link message is one binary WebSocket
//! message, so browsers and HTTP proxies can carry vox.
//!
//! Run with `cargo run -p vox-core --features websocket --example websocket`.

use vox_core::driver::{Rx, channel};
use vox_core::session::SessionBuilder;

/// A small service: a call and a stream.
#[vox_core::service]
pub trait Calc {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Sums a stream.
    async fn sum(&self, numbers: Rx<i64>) -> i64;
}

struct CalcServer;

impl Calc for CalcServer {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
        let mut total = 0;
        while let Ok(Some(n)) = numbers.recv().await {
            total += n;
        }
        total
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = SessionBuilder::new().handler(CalcDispatcher::new(CalcServer)).listen_ws("127.0.0.1:0").await?;
    let url = format!("ws://{}/vox", listener.local_addr()?);
    println!("server: WebSocket on {url}");
    tokio::spawn(async move {
        let mut sessions = Vec::new();
        while let Ok(session) = listener.accept().await {
            println!("server: a new session over WebSocket");
            sessions.push(session);
        }
    });

    let session = SessionBuilder::new().connect_ws(&url).await?;
    let calc = CalcClient::new(session.root.caller.clone());
    println!("client: 2 + 3 = {}", calc.add(2, 3).await?);
    let (mut tx, rx) = channel::<i64>();
    let feed = async move {
        for n in 1..=10 {
            tx.send(&n).await?;
        }
        tx.close().await
    };
    let (total, fed) = tokio::join!(calc.sum(rx), feed);
    fed?;
    println!("client: 1 + .. + 10 = {}", total?);
    session.handle.shutdown()?;
    Ok(())
}
