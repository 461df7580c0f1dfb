//! The vox-core demonstration: a server and a client over TCP loopback.
//!
//! Run with `cargo run -p vox-core --example demo`. It shows the handshake,
//! plain calls, a user error, streaming in both directions, a virtual
//! connection, a cancelled call, and a clean shutdown.

use std::sync::Arc;
use std::time::Duration;
use vox_core::driver::{Call, CallError, channel};
use vox_core::session::{AcceptDecision, ConnectionRequest, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata, MethodId};

fn method(name: &str) -> MethodId {
    MethodId::from_names("Demo", name)
}

/// The server's one handler: dispatches on the method id.
async fn serve(mut call: Call) {
    let m = call.method_id;
    if m == method("greet") {
        match call.decode_args::<String>() {
            Ok(name) => call.reply.ok(&format!("hello, {name}")),
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == method("divide") {
        match call.decode_args::<(i64, i64)>() {
            Ok((_, 0)) => call.reply.user_error(&"cannot divide by zero".to_string()),
            Ok((a, b)) => call.reply.ok(&(a / b)),
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == method("sum") {
        let Ok(mut numbers) = call.channels.rx::<i64>(0) else { return call.reply.invalid_payload("expected Rx<i64>") };
        let mut total = 0i64;
        while let Ok(Some(n)) = numbers.recv().await {
            total += n;
        }
        call.reply.ok(&total);
    } else if m == method("countdown") {
        let Ok(from) = call.decode_args::<u32>() else { return call.reply.invalid_payload("expected u32") };
        let Ok(mut out) = call.channels.tx::<u32>(0) else { return call.reply.invalid_payload("expected Tx<u32>") };
        for i in (0..=from).rev() {
            if out.send(&i).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
        call.reply.ok(&());
    } else if m == method("slow") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        call.reply.ok(&());
    } else {
        call.reply.unknown_method();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ---- server
    let server = SessionBuilder::new().handler(serve).acceptor(|req: &ConnectionRequest| {
        println!("server: peer opens virtual connection {} with metadata {:?}", req.id, req.metadata);
        AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(Arc::new(serve)),
        }
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
    let root = client.root.caller.clone();

    let greeting: String = root.call(method("greet"), &"vox".to_string(), vec![]).await?;
    println!("client: greet(\"vox\") -> {greeting:?}");

    let q: i64 = root.call(method("divide"), &(84i64, 2i64), vec![]).await?;
    println!("client: divide(84, 2) -> {q}");
    match root.call::<_, i64>(method("divide"), &(1i64, 0i64), vec![]).await {
        Err(CallError::User(blob)) => {
            let msg: String = vox_core::wire::decode("user error", blob.bytes())?;
            println!("client: divide(1, 0) -> user error {msg:?}");
        }
        other => println!("client: divide(1, 0) -> unexpected {other:?}"),
    }

    // Client-to-server stream: more items than the default credit of 16.
    let (mut tx, rx) = channel::<i64>();
    let sum = root.call::<_, i64>(method("sum"), &(), vec![rx.into_arg().ok_or("fresh channel")?]);
    let feed = async move {
        for n in 1..=100 {
            tx.send(&n).await?;
        }
        tx.close().await
    };
    let (total, fed) = tokio::join!(sum, feed);
    fed?;
    println!("client: sum(1..=100 streamed) -> {}", total?);

    // Server-to-client stream.
    let (tx, mut rx) = channel::<u32>();
    let countdown = root.call::<_, ()>(method("countdown"), &5u32, vec![tx.into_arg().ok_or("fresh channel")?]);
    let collect = async move {
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await? {
            got.push(n);
        }
        Ok::<_, vox_core::driver::ChannelError>(got)
    };
    let (done, got) = tokio::join!(countdown, collect);
    done?;
    println!("client: countdown(5) streamed {:?}", got?);

    // A virtual connection.
    let conn = client
        .handle
        .open_connection(ConnectionSettings::default(), Metadata::new().with_str("purpose", "demo", 0))
        .await?;
    let hi: String = conn.caller.call(method("greet"), &"virtual connection".to_string(), vec![]).await?;
    println!("client: on connection {}: greet -> {hi:?}", conn.id);
    client.handle.close_connection(conn.id, Metadata::new()).await?;
    println!("client: closed connection {}", conn.id);

    // A cancelled call: dropping the future sends CancelRequest.
    let slow = root.call::<_, ()>(method("slow"), &(), vec![]);
    match tokio::time::timeout(Duration::from_millis(100), slow).await {
        Err(_) => println!("client: slow() cancelled after 100 ms (CancelRequest sent)"),
        Ok(r) => println!("client: slow() unexpectedly finished: {r:?}"),
    }
    let still: String = root.call(method("greet"), &"after cancel".to_string(), vec![]).await?;
    println!("client: connection still fine: {still:?}");

    // Clean shutdown.
    client.handle.shutdown()?;
    let reason = client.handle.closed().await;
    println!("client: session ended: {reason}");
    server_task.await??;
    println!("demo finished");
    Ok(())
}
