//! A debug snapshot on a signal: `cargo run -p vox-core --example snapshot`
//! starts a server and a client over TCP loopback, leaves calls and a
//! virtual connection in flight, and prints the server session's
//! `SessionHandle::snapshot()` each time the process gets `SIGUSR1`
//! (`kill -USR1 <pid>`). To run unattended (as CI does) it sends itself the
//! signal once, prints the snapshot as text and in full (`Debug`; the
//! type is also serde, for tools), and exits.

use std::time::Duration;
use vox_core::driver::Call;
use vox_core::session::{AcceptDecision, ConnectionRequest, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata, MethodId};

fn slow() -> MethodId {
    MethodId::from_names("Example", "slow")
}

#[cfg(unix)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{SignalKind, signal};

    // Every call waits until the process ends: they stay in flight.
    let handler = |call: Call| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        call.reply.ok(&());
    };
    let listener = SessionBuilder::new()
        .handler(handler)
        .acceptor(move |_: &ConnectionRequest| AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(std::sync::Arc::new(handler)),
        })
        .listen("127.0.0.1:0")
        .await?;
    let addr = listener.local_addr()?;
    let (server, client) = tokio::join!(listener.accept(), SessionBuilder::new().connect(addr));
    let (server, client) = (server?, client?);

    for _ in 0..3 {
        let caller = client.root.caller.clone();
        tokio::spawn(async move { caller.call::<_, ()>(slow(), &(), vec![]).await });
    }
    let _conn = client.handle.open_connection(ConnectionSettings::default(), Metadata::new()).await?;

    let mut usr1 = signal(SignalKind::user_defined1())?;
    let pid = std::process::id();
    println!("pid {pid}: send SIGUSR1 for a snapshot of the server session");
    // Unattended: wait until the three calls reached the server, then
    // signal ourselves once.
    loop {
        let s = server.handle.snapshot().await?;
        if s.connections[0].calls.as_ref().is_some_and(|c| c.handlers_in_flight == 3) {
            break;
        }
        tokio::task::yield_now().await;
    }
    std::process::Command::new("kill").args(["-USR1", &pid.to_string()]).status()?;
    usr1.recv().await;
    let snapshot = server.handle.snapshot().await?;
    println!("{snapshot}");
    println!("{snapshot:#?}");
    assert_eq!(snapshot.connections.len(), 2, "the root and the virtual connection");
    client.handle.shutdown()?;
    Ok(())
}

#[cfg(not(unix))]
fn main() {
    println!("this example uses SIGUSR1 and runs on Unix only");
}
