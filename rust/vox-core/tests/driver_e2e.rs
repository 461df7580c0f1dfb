//! End-to-end calls and channels over the memory link and TCP.

mod common {
    pub mod testbed;
}
use common::testbed::*;
use vox_core::driver::{CallError, channel, channel_with_credit};
use vox_core::session::{Session, SessionBuilder};

async fn exercise(client: &Session, items: u32) {
    let caller = &client.root.caller;
    let echoed: String = caller.call(mid("echo"), &"hello".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "hello");

    // sum: client to server stream, more items than the credit.
    let (mut tx, rx) = channel::<i32>();
    let call = caller.call::<_, i64>(mid("sum"), &(), vec![rx.into_arg().unwrap()]);
    let feed = async move {
        for i in 0..items {
            tx.send(&(i as i32)).await.unwrap();
        }
        tx.close().await.unwrap();
    };
    let (total, ()) = tokio::join!(call, feed);
    assert_eq!(total.unwrap(), (0..items as i64).sum::<i64>());

    // generate: server to client stream.
    let (tx, mut rx) = channel::<i32>();
    let call = caller.call::<_, ()>(mid("generate"), &items, vec![tx.into_arg().unwrap()]);
    let drain = async move {
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await.unwrap() {
            got.push(v);
        }
        got
    };
    let (r, got) = tokio::join!(call, drain);
    r.unwrap();
    assert_eq!(got, (0..items as i32).collect::<Vec<_>>());

    // transform: both directions.
    let (mut in_tx, in_rx) = channel::<String>();
    let (out_tx, mut out_rx) = channel_with_credit::<String>(4);
    let call = caller.call::<_, ()>(mid("transform"), &(), vec![in_rx.into_arg().unwrap(), out_tx.into_arg().unwrap()]);
    let feed = async move {
        for i in 0..items {
            in_tx.send(&format!("item{i}")).await.unwrap();
        }
        in_tx.close().await.unwrap();
    };
    let drain = async move {
        let mut n = 0;
        while let Some(s) = out_rx.recv().await.unwrap() {
            assert_eq!(s, format!("ITEM{n}"));
            n += 1;
        }
        n
    };
    let (r, (), n) = tokio::join!(call, feed, drain);
    r.unwrap();
    assert_eq!(n, items);

    let err = caller.call::<_, i64>(mid("divide"), &(1i64, 0i64), vec![]).await.unwrap_err();
    assert!(matches!(err, CallError::User(_)), "{err:?}");
}

#[tokio::test]
async fn echo_sum_generate_transform_over_memory() {
    let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
    exercise(&client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sum_generate_transform_over_tcp() {
    let (_server, client) = tcp_sessions(server_builder(), SessionBuilder::new()).await;
    exercise(&client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_connection_carries_calls() {
    let (_server, client) = tcp_sessions(server_builder(), SessionBuilder::new()).await;
    let conn = client.handle.open_connection(Default::default(), vox_core::wire::Metadata::new()).await.unwrap();
    assert!(!conn.id.is_root());
    let echoed: String = conn.caller.call(mid("echo"), &"virtual".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "virtual");
    exercise(&Session { handle: client.handle.clone(), root: conn, negotiated: client.negotiated.clone() }, 50).await;
}
