//! A chat room: what request/response frameworks cannot do.
//!
//! `cargo run -p vox-core --example chat` runs a server and three clients
//! in one process over TCP loopback:
//! - the server calls back into each client (every client serves the
//!   `Member` service on its side of the session, and the room calls
//!   `Member::deliver` on every member for each message);
//! - streams go both ways: a client uploads lines to the room through an
//!   `Rx` (client to server), and reads the room's history through a `Tx`
//!   (server to client).

use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::{Rx, Tx, channel};
use vox_core::session::SessionBuilder;

/// The room, served by the server on every session's root connection.
#[vox_core::service]
pub trait Room {
    /// Says one line to everyone.
    async fn say(&self, from: String, text: String) -> u32;
    /// Says every line of a stream; returns how many.
    async fn upload(&self, from: String, lines: Rx<String>) -> u32;
    /// Streams the history to the caller.
    async fn history(&self, out: Tx<String>) -> u32;
}

/// A member, served by each client on its side of the session: the room
/// calls it.
#[vox_core::service]
pub trait Member {
    /// A line said in the room.
    async fn deliver(&self, line: String);
}

#[derive(Clone, Default)]
struct Chat {
    members: Arc<Mutex<Vec<MemberClient>>>,
    history: Arc<Mutex<Vec<String>>>,
}

impl Chat {
    async fn broadcast(&self, line: String) {
        self.history.lock().unwrap().push(line.clone());
        let members: Vec<MemberClient> = self.members.lock().unwrap().clone();
        for m in members {
            // A member that left is skipped.
            let _ = m.deliver(line.clone()).await;
        }
    }
}

impl Room for Chat {
    async fn say(&self, from: String, text: String) -> u32 {
        self.broadcast(format!("{from}: {text}")).await;
        self.history.lock().unwrap().len() as u32
    }

    async fn upload(&self, from: String, mut lines: Rx<String>) -> u32 {
        let mut n = 0;
        while let Ok(Some(text)) = lines.recv().await {
            self.broadcast(format!("{from}: {text}")).await;
            n += 1;
        }
        n
    }

    async fn history(&self, mut out: Tx<String>) -> u32 {
        let lines: Vec<String> = self.history.lock().unwrap().clone();
        for line in &lines {
            if out.send(line).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
        lines.len() as u32
    }
}

#[derive(Clone)]
struct Inbox {
    name: &'static str,
    got: Arc<Mutex<Vec<String>>>,
}

impl Member for Inbox {
    async fn deliver(&self, line: String) {
        println!("  [{}] {line}", self.name);
        self.got.lock().unwrap().push(line);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let chat = Chat::default();
    let listener = SessionBuilder::new().handler(RoomDispatcher::new(chat.clone())).listen("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The server keeps a `Member` client of every session: the way back.
    let members = chat.members.clone();
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            members.lock().unwrap().push(MemberClient::new(session.root.caller.clone()));
        }
    });

    let mut clients = Vec::new();
    let mut inboxes = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let inbox = Inbox { name, got: Arc::default() };
        inboxes.push(inbox.clone());
        let session = SessionBuilder::new().handler(MemberDispatcher::new(inbox)).connect(addr).await?;
        clients.push((name, RoomClient::new(session.root.caller.clone())));
    }
    while chat.members.lock().unwrap().len() < clients.len() {
        tokio::task::yield_now().await;
    }

    println!("ann says hello; the room calls every member back:");
    clients[0].1.say("ann".into(), "hello".into()).await?;

    println!("bob uploads three lines through a stream (client to server):");
    let (mut tx, rx) = channel::<String>();
    let upload = tokio::spawn({
        let room = clients[1].1.clone();
        async move { room.upload("bob".into(), rx).await }
    });
    for text in ["one", "two", "three"] {
        tx.send(&text.to_string()).await?;
    }
    tx.close().await?;
    assert_eq!(upload.await??, 3);

    println!("cy reads the history through a stream (server to client):");
    let (tx, mut rx) = channel::<String>();
    let history = tokio::spawn({
        let room = clients[2].1.clone();
        async move { room.history(tx).await }
    });
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await? {
        println!("  history: {line}");
        lines.push(line);
    }
    assert_eq!(history.await??, 4);
    assert_eq!(lines, ["ann: hello", "bob: one", "bob: two", "bob: three"]);
    for inbox in &inboxes {
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let n = inbox.got.lock().unwrap().len();
                if n == 4 {
                    return n;
                }
                tokio::task::yield_now().await;
            }
        })
        .await?;
        assert_eq!(got, 4, "{} got every line", inbox.name);
    }
    println!("every member got every line");
    Ok(())
}
