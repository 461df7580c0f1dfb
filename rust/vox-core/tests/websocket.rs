//! WebSocket links (rule `transport.websocket`): calls and streaming over
//! `ws://`, one link message per binary WebSocket message, a text message
//! is a link error, an oversized message is refused from its frame header.

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use vox_core::driver::{ChannelError, Rx, Tx, channel};
use vox_core::link::ws::tokio_tungstenite::tungstenite::Message;
use vox_core::link::ws::{self, tokio_tungstenite};
use vox_core::link::{LinkConfig, LinkError};
use vox_core::session::SessionBuilder;

/// A small service with streams both ways.
#[vox_core::service]
pub trait Streams {
    /// Echoes.
    async fn echo(&self, s: String) -> String;
    /// Sums what the caller streams.
    async fn sum(&self, numbers: Rx<i32>) -> i64;
    /// Streams `count` numbers back.
    async fn generate(&self, count: u32, out: Tx<u32>) -> u32;
}

#[derive(Clone)]
struct Impl;

impl Streams for Impl {
    async fn echo(&self, s: String) -> String {
        s
    }
    async fn sum(&self, mut numbers: Rx<i32>) -> i64 {
        let mut total = 0i64;
        while let Ok(Some(n)) = numbers.recv().await {
            total += i64::from(n);
        }
        total
    }
    async fn generate(&self, count: u32, mut out: Tx<u32>) -> u32 {
        for i in 0..count {
            if out.send(&i).await.is_err() {
                break;
            }
        }
        let _ = out.close().await;
        count
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("{what} timed out"))
}

// rule: transport.websocket
#[tokio::test]
async fn websocket_calls_and_streams_over_ws() {
    let listener =
        SessionBuilder::new().handler(StreamsDispatcher::new(Impl)).listen_ws("127.0.0.1:0").await.expect("listen");
    let url = format!("ws://{}/vox", listener.local_addr().expect("addr"));
    let (server, client) = tokio::join!(listener.accept(), SessionBuilder::new().connect_ws(&url));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let svc = StreamsClient::new(client.root.caller.clone());
    assert_eq!(within("echo", svc.echo("over ws".into())).await.expect("echo"), "over ws");
    let big = "x".repeat(200_000);
    assert_eq!(within("big echo", svc.echo(big.clone())).await.expect("echo"), big);

    let (mut tx, rx) = channel::<i32>();
    let feed = async move {
        for i in 1..=100 {
            tx.send(&i).await?;
        }
        tx.close().await
    };
    let (total, fed) = within("sum", async { tokio::join!(svc.sum(rx), feed) }).await;
    fed.expect("feed");
    assert_eq!(total, Ok(5050));

    let (tx, mut rx) = channel::<u32>();
    let collect = async move {
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await? {
            got.push(n);
        }
        Ok::<_, ChannelError>(got)
    };
    let (ret, got) = within("generate", async { tokio::join!(svc.generate(50, tx), collect) }).await;
    assert_eq!(ret, Ok(50));
    assert_eq!(got.expect("items"), (0..50).collect::<Vec<_>>());
}

/// A server-side link over a WebSocket accepted on a fresh port, and a raw
/// tungstenite client connected to it.
async fn raw_pair(
    config: LinkConfig,
) -> (vox_core::link::Link, tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>)
{
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let accept = async {
        let (stream, _) = tcp.accept().await.expect("accept");
        ws::accept_ws(stream, config).await.expect("upgrade")
    };
    let connect = async {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.expect("connect");
        ws
    };
    tokio::join!(accept, connect)
}

// rule: transport.websocket — one binary message is one link message, both
// ways, with no prefix; pings stay in the WebSocket layer.
#[tokio::test]
async fn websocket_one_binary_message_is_one_link_message() {
    let (mut link, mut raw) = raw_pair(LinkConfig::default()).await;
    raw.send(Message::Ping(vec![1, 2, 3].into())).await.expect("ping");
    raw.send(Message::Binary(vec![7u8; 10].into())).await.expect("send");
    raw.send(Message::Binary(Vec::new().into())).await.expect("send empty");
    assert_eq!(within("recv", link.rx.recv()).await.expect("recv").expect("a message").as_ref(), &[7u8; 10]);
    assert_eq!(within("recv", link.rx.recv()).await.expect("recv").expect("an empty message").len(), 0);
    link.tx.send(bytes::Bytes::from_static(b"hello")).await.expect("send");
    link.tx.send(bytes::Bytes::from_static(b"world")).await.expect("send");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match within("raw recv", raw.next()).await.expect("a message").expect("ok") {
            Message::Binary(b) => seen.push(b.to_vec()),
            Message::Pong(p) => assert_eq!(p.as_ref(), &[1, 2, 3], "the pong answers the ping"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![b"hello".to_vec(), b"world".to_vec()]);
    // A close is the end of the link's stream.
    raw.close(None).await.expect("close");
    assert!(within("eof", link.rx.recv()).await.expect("eof").is_none());
}

// rule: transport.websocket — a text message is a link error.
#[tokio::test]
async fn websocket_text_message_is_a_link_error() {
    let (mut link, mut raw) = raw_pair(LinkConfig::default()).await;
    raw.send(Message::Text("hello".into())).await.expect("send text");
    let err = within("recv", link.rx.recv()).await.expect_err("a text message must fail the link");
    assert!(err.to_string().contains("text message"), "{err}");
    assert!(matches!(within("recv", link.rx.recv()).await, Err(LinkError::Dead)), "the link is dead after it");
}

// rule: transport.websocket, link.tx.max-size — a message above the link
// maximum is refused from its frame header, before it is buffered.
#[tokio::test]
async fn websocket_oversized_message_is_refused() {
    let config = LinkConfig { max_message_size: 1024, ..LinkConfig::default() };
    let (mut link, mut raw) = raw_pair(config).await;
    raw.send(Message::Binary(vec![0u8; 1024].into())).await.expect("at the limit");
    assert_eq!(within("recv", link.rx.recv()).await.expect("recv").expect("a message").len(), 1024);
    // 1 MiB announced: refused from the header, well before it arrives.
    let _ = raw.send(Message::Binary(vec![0u8; 1 << 20].into())).await;
    let err = within("recv", link.rx.recv()).await.expect_err("an oversized message must fail the link");
    let text = err.to_string();
    assert!(text.contains("too long") || text.contains("too big") || text.contains("Space limit"), "{text}");
    // And the sending side refuses one too.
    assert!(matches!(link.tx.send(vec![0u8; 2048].into()).await, Err(LinkError::TooLarge { .. })));
}
