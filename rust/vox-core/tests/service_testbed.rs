//! Wire compatibility of generated code with the hand-written `Testbed`
//! dispatcher of `tests/common/testbed.rs`: a `#[service]` trait with the
//! same names and signatures produces the same method ids and payloads, so
//! the generated client talks to the hand-written handler, and a hand-written
//! caller talks to the generated dispatcher. (The conformance subject's
//! `Testbed` can switch to the macro on this basis.)

mod common {
    pub mod testbed;
}
use common::testbed::{memory_sessions, mid, server_builder};
use vox_core::driver::{CallError, ChannelError, Rx, Tx, channel};
use vox_core::service::ServiceError;
use vox_core::session::SessionBuilder;

/// The test service, as a trait.
#[vox_core::service]
pub trait Testbed {
    /// Echoes.
    async fn echo(&self, s: String) -> String;
    /// Sums a stream.
    async fn sum(&self, items: Rx<i32>) -> i64;
    /// Streams `0..n`.
    async fn generate(&self, n: u32, out: Tx<i32>);
    /// Upper-cases a stream.
    async fn transform(&self, input: Rx<String>, output: Tx<String>);
    /// Divides.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, String>;
    /// Sleeps.
    async fn sleep_ms(&self, ms: u64);
}

struct Impl;

impl Testbed for Impl {
    async fn echo(&self, s: String) -> String {
        s
    }
    async fn sum(&self, mut items: Rx<i32>) -> i64 {
        let mut total = 0;
        while let Ok(Some(v)) = items.recv().await {
            total += i64::from(v);
        }
        total
    }
    async fn generate(&self, n: u32, mut out: Tx<i32>) {
        for i in 0..n {
            if out.send(&(i as i32)).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
    }
    async fn transform(&self, mut input: Rx<String>, mut output: Tx<String>) {
        while let Ok(Some(s)) = input.recv().await {
            if output.send(&s.to_uppercase()).await.is_err() {
                break;
            }
        }
        let _ = output.close().await;
    }
    async fn divide(&self, a: i64, b: i64) -> Result<i64, String> {
        if b == 0 { Err("division by zero".to_string()) } else { Ok(a / b) }
    }
    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn exercise(client: &TestbedClient) {
    assert_eq!(client.echo("hi".into()).await, Ok("hi".to_string()));
    assert_eq!(client.divide(9, 3).await, Ok(3));
    assert_eq!(client.divide(9, 0).await, Err(ServiceError::User("division by zero".to_string())));
    assert_eq!(client.sleep_ms(1).await, Ok(()));

    let (mut tx, rx) = channel::<i32>();
    let feed = async move {
        for i in 0..50 {
            tx.send(&i).await?;
        }
        tx.close().await
    };
    let (total, fed) = tokio::join!(client.sum(rx), feed);
    fed.expect("feed");
    assert_eq!(total, Ok((0..50).sum::<i64>()));

    let (tx, mut rx) = channel::<i32>();
    let collect = async move {
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await? {
            got.push(v);
        }
        Ok::<_, ChannelError>(got)
    };
    let (done, got) = tokio::join!(client.generate(20, tx), collect);
    assert_eq!(done, Ok(()));
    assert_eq!(got.expect("items"), (0..20).collect::<Vec<_>>());

    let (mut in_tx, in_rx) = channel::<String>();
    let (out_tx, mut out_rx) = channel::<String>();
    let drive = async move {
        in_tx.send(&"abc".to_string()).await?;
        let first = out_rx.recv().await?;
        in_tx.close().await?;
        let end = out_rx.recv().await?;
        Ok::<_, ChannelError>((first, end))
    };
    let (done, got) = tokio::join!(client.transform(in_rx, out_tx), drive);
    assert_eq!(done, Ok(()));
    assert_eq!(got.expect("drive"), (Some("ABC".to_string()), None));
}

#[tokio::test]
async fn generated_client_talks_to_the_hand_written_dispatcher() {
    let (_s, c) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    for m in TestbedClient::METHODS {
        assert_eq!(m.id(), mid(m.name));
    }
    exercise(&TestbedClient::new(c.root.caller.clone())).await;
}

#[tokio::test]
async fn generated_dispatcher_serves_hand_written_calls() {
    let server = SessionBuilder::new().handler(TestbedDispatcher::new(Impl));
    let (_s, c) = memory_sessions(server, SessionBuilder::new()).await;
    let caller = &c.root.caller;
    assert_eq!(caller.call::<_, String>(mid("echo"), &"raw".to_string(), vec![]).await, Ok("raw".to_string()));
    assert_eq!(caller.call::<_, i64>(mid("divide"), &(8i64, 2i64), vec![]).await, Ok(4));
    assert!(matches!(caller.call::<_, i64>(mid("divide"), &(8i64, 0i64), vec![]).await, Err(CallError::User(_))));
    let r = caller.call::<_, ()>(mid("panic"), &(), vec![]).await;
    // A raw call names the method id it called.
    assert_eq!(r, Err(CallError::UnknownMethod { method: mid("panic").to_string() }));
    exercise(&TestbedClient::new(caller.clone())).await;
}
