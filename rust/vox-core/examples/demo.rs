//! The vox-core demonstration: a server and a client over TCP loopback.
//!
//! Run with `cargo run -p vox-core --example demo`. It shows the handshake,
//! plain calls, a user error, streaming in both directions, a virtual
//! connection opened by service name (and one refused), a cancelled call,
//! and a clean shutdown. The service is a `#[vox_core::service]` trait: the
//! client and the server-side dispatcher are generated from it.

use std::time::Duration;
use vox_core::driver::{ChannelError, Rx, Tx, channel};
use vox_core::service::{OpenClient, ServiceError, ServiceRouter, reject_reason};
use vox_core::session::{Acceptor as _, ConnectionRequest, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata};

/// The demonstration service.
#[vox_core::service]
pub trait Demo {
    /// Greets `name`.
    #[vox(idem)]
    async fn greet(&self, name: String) -> String;
    /// Integer division; dividing by zero is the service's own error.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, String>;
    /// Adds up the numbers the client streams.
    async fn sum(&self, numbers: Rx<i64>) -> i64;
    /// Streams `from, from - 1, .., 0` back to the client.
    async fn countdown(&self, from: u32, out: Tx<u32>);
    /// Takes an hour (to be cancelled).
    async fn slow(&self);
}

/// A service the server does not offer (to show a refused connection).
#[vox_core::service]
pub trait Admin {
    /// Stops the server.
    async fn halt(&self);
}

struct DemoServer;

impl Demo for DemoServer {
    async fn greet(&self, name: String) -> String {
        format!("hello, {name}")
    }

    async fn divide(&self, a: i64, b: i64) -> Result<i64, String> {
        if b == 0 { Err("cannot divide by zero".to_string()) } else { Ok(a / b) }
    }

    async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
        let mut total = 0;
        while let Ok(Some(n)) = numbers.recv().await {
            total += n;
        }
        total
    }

    async fn countdown(&self, from: u32, mut out: Tx<u32>) {
        for i in (0..=from).rev() {
            if out.send(&i).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
    }

    async fn slow(&self) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ---- server: the Demo service on the root connection, and on any
    // virtual connection that asks for it by name.
    let router = ServiceRouter::new().serve(DemoDispatcher::new(DemoServer));
    let server =
        SessionBuilder::new().handler(DemoDispatcher::new(DemoServer)).acceptor(move |req: &ConnectionRequest| {
            println!("server: peer opens virtual connection {} with metadata {:?}", req.id, req.metadata);
            router.decide(req)
        });
    let listener = server.listen("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server: listening on {addr}");
    let server_task = tokio::spawn(async move {
        let session = listener.accept().await?;
        println!("server: session established, local parity {:?}", session.negotiated.local_parity);
        let reason = session.handle.closed().await;
        println!("server: session ended: {reason}");
        Ok::<_, vox_core::session::SessionError>(())
    });

    // ---- client
    let client = SessionBuilder::new().connect(addr).await?;
    println!(
        "client: connected; parity {:?}, server allows {} concurrent requests",
        client.negotiated.local_parity, client.negotiated.peer_root.max_concurrent_requests
    );
    let demo = DemoClient::new(client.root.caller.clone());

    let greeting = demo.greet("vox".to_string()).await?;
    println!("client: greet(\"vox\") -> {greeting:?}");

    let q = demo.divide(84, 2).await?;
    println!("client: divide(84, 2) -> {q}");
    match demo.divide(1, 0).await {
        Err(ServiceError::User(msg)) => println!("client: divide(1, 0) -> user error {msg:?}"),
        other => println!("client: divide(1, 0) -> unexpected {other:?}"),
    }

    // Client-to-server stream: more items than the default credit of 16.
    let (mut tx, rx) = channel::<i64>();
    let feed = async move {
        for n in 1..=100 {
            tx.send(&n).await?;
        }
        tx.close().await
    };
    let (total, fed) = tokio::join!(demo.sum(rx), feed);
    fed?;
    println!("client: sum(1..=100 streamed) -> {}", total?);

    // Server-to-client stream.
    let (tx, mut rx) = channel::<u32>();
    let collect = async move {
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await? {
            got.push(n);
        }
        Ok::<_, ChannelError>(got)
    };
    let (done, got) = tokio::join!(demo.countdown(5, tx), collect);
    done?;
    println!("client: countdown(5) streamed {:?}", got?);

    // A virtual connection for the Demo service, opened by name.
    let purpose = Metadata::new().with_str("purpose", "demo", 0);
    let on_conn = client.handle.open_with::<DemoClient>(ConnectionSettings::default(), purpose).await?;
    let conn_id = on_conn.caller().connection_id();
    let hi = on_conn.greet("virtual connection".to_string()).await?;
    println!("client: on connection {conn_id}: greet -> {hi:?}");
    client.handle.close_connection(conn_id, Metadata::new()).await?;
    println!("client: closed connection {conn_id}");

    // A service the server does not offer: the connection is refused.
    match client.handle.open::<AdminClient>(ConnectionSettings::default()).await {
        Err(e) => println!("client: open Admin refused: {}", reject_reason(&e).unwrap_or("no reason given")),
        Ok(_) => println!("client: open Admin unexpectedly accepted"),
    }

    // A cancelled call: dropping the future sends CancelRequest.
    match tokio::time::timeout(Duration::from_millis(100), demo.slow()).await {
        Err(_) => println!("client: slow() cancelled after 100 ms (CancelRequest sent)"),
        Ok(r) => println!("client: slow() unexpectedly finished: {r:?}"),
    }
    let still = demo.greet("after cancel".to_string()).await?;
    println!("client: connection still fine: {still:?}");

    // Clean shutdown.
    client.handle.shutdown()?;
    let reason = client.handle.closed().await;
    println!("client: session ended: {reason}");
    server_task.await??;
    println!("demo finished");
    Ok(())
}
