//! WebSocket links (rule `transport.websocket`): calls and streaming over
//! `ws://` and `wss://`, one link message per binary WebSocket message, a
//! text message is a link error, an oversized message is refused from its
//! frame header (the setup maximum too, before the handshake), a message
//! that starts and stalls fails the link after `LinkConfig::frame_timeout`.

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
    assert!(text.contains("over the link's limit of 1024 bytes"), "{text}");
    // And the sending side refuses one too.
    assert!(matches!(link.tx.send(vec![0u8; 2048].into()).await, Err(LinkError::TooLarge { .. })));
}

/// A masked binary frame header announcing `len` bytes (64-bit length), as
/// a client sends it, with no payload.
fn binary_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[9, 9, 9, 9]);
    h
}

/// Writes raw bytes under a tungstenite client (after its upgrade).
async fn write_raw(
    raw: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    bytes: &[u8],
) {
    use tokio::io::AsyncWriteExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = raw.get_mut() else { panic!("a ws:// client") };
    tcp.write_all(bytes).await.expect("raw write");
}

// rule: session.setup.limits, transport.websocket — before the handshake, a
// message above the setup maximum (64 KiB) is refused from its frame header:
// the server fails the setup naming the limit although the message never
// arrived whole.
#[tokio::test]
async fn websocket_setup_limit_refuses_a_large_first_message_from_its_header() {
    let listener = SessionBuilder::new().listen_ws("127.0.0.1:0").await.expect("listen");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let (mut raw, _) = within("connect", tokio_tungstenite::connect_async(url)).await.expect("connect");
    // 1 MiB announced (under the 16 MiB link maximum), 100 bytes sent.
    let mut bytes = binary_header(1 << 20);
    bytes.extend([0u8; 100]);
    write_raw(&mut raw, &bytes).await;
    let Err(err) = within("the server's outcome", listener.accept_attempt()).await else {
        panic!("no session from an oversized first message");
    };
    let text = err.to_string();
    assert!(text.contains("1048576 bytes announced"), "{text}");
    assert!(text.contains("limit of 65536 bytes"), "{text}");
}

// rule: session.keepalive, transport.websocket — a message that starts
// arriving and stops fails the link once `frame_timeout` has passed since
// its first byte, as a stalled frame does on a stream link.
#[tokio::test]
async fn websocket_stalled_message_fails_the_link_after_frame_timeout() {
    let config = LinkConfig { frame_timeout: Some(Duration::from_millis(200)), ..LinkConfig::default() };
    let (mut link, mut raw) = raw_pair(config).await;
    raw.send(Message::Binary(vec![5u8; 3].into())).await.expect("a whole message");
    assert_eq!(within("recv", link.rx.recv()).await.expect("recv").expect("a message").as_ref(), &[5u8; 3]);
    let mut bytes = binary_header(100);
    bytes.extend([0u8; 10]);
    write_raw(&mut raw, &bytes).await;
    let err = within("recv", link.rx.recv()).await.expect_err("a stalled message must fail the link");
    let text = err.to_string();
    assert!(text.contains("stalled"), "{text}");
    assert!(text.contains("frame_timeout"), "{text}");
}

/// Does the server side of a WebSocket upgrade by hand on `tcp`, as an
/// HTTP server (hyper, axum) would before handing over the connection.
async fn upgrade_by_hand(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.expect("the upgrade request");
        request.push(byte[0]);
    }
    let request = String::from_utf8(request).expect("text");
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").or_else(|| l.strip_prefix("sec-websocket-key: ")))
        .expect("a key")
        .trim();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(response.as_bytes()).await.expect("the upgrade response");
}

// rule: transport.websocket, session.setup.limits — a connection upgraded
// by another HTTP server becomes a link through `accept_upgraded`, with the
// limits of `accept_ws`: messages pass, and once restricted (as the setup
// does) a larger one is refused from its header.
#[tokio::test]
async fn websocket_accept_upgraded_makes_a_link_with_the_same_limits() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let accept = async {
        let (mut stream, _) = tcp.accept().await.expect("accept");
        upgrade_by_hand(&mut stream).await;
        ws::accept_upgraded(stream, LinkConfig::default()).await.expect("link")
    };
    let connect = async { tokio_tungstenite::connect_async(format!("ws://{addr}/app/vox")).await.expect("connect").0 };
    let (mut link, mut raw) = within("upgrade", async { tokio::join!(accept, connect) }).await;
    raw.send(Message::Binary(vec![1u8; 100].into())).await.expect("send");
    assert_eq!(within("recv", link.rx.recv()).await.expect("recv").expect("a message").len(), 100);
    link.tx.send(bytes::Bytes::from_static(b"back")).await.expect("send back");
    match within("raw recv", raw.next()).await.expect("a message").expect("ok") {
        Message::Binary(b) => assert_eq!(b.as_ref(), b"back"),
        other => panic!("unexpected {other:?}"),
    }
    link.rx.restrict(64);
    let mut bytes = binary_header(65);
    bytes.extend([0u8; 10]);
    write_raw(&mut raw, &bytes).await;
    let err = within("recv", link.rx.recv()).await.expect_err("over the restricted limit");
    assert!(err.to_string().contains("limit of 64 bytes"), "{err}");
}

#[cfg(feature = "tls")]
mod wss {
    use super::*;
    use vox_core::link::tls::{self, rustls::RootCertStore, rustls::pki_types::PrivatePkcs8KeyDer};

    /// A `wss://` listener with a self-signed certificate for localhost, and
    /// the roots that trust it.
    async fn wss_server() -> (vox_core::session::Listener, RootCertStore) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let config =
            tls::server_config(vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into(), None)
                .expect("server config");
        let listener = SessionBuilder::new()
            .handler(StreamsDispatcher::new(Impl))
            .listen_wss("127.0.0.1:0", config)
            .await
            .expect("listen");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        (listener, roots)
    }

    // rule: transport.websocket, transport.tls — `listen_wss` serves
    // WebSocket over TLS.
    #[tokio::test]
    async fn websocket_wss_calls_over_tls() {
        let (listener, roots) = wss_server().await;
        let url = format!("wss://localhost:{}/vox", listener.local_addr().expect("addr").port());
        let config = tls::client_config(roots, None).expect("client config");
        let (server, client) = tokio::join!(listener.accept(), SessionBuilder::new().connect_wss(&url, config));
        let (_server, client) = (server.expect("server"), client.expect("client"));
        let svc = StreamsClient::new(client.root.caller.clone());
        assert_eq!(within("echo", svc.echo("over wss".into())).await.expect("echo"), "over wss");
    }

    // rule: transport.tls — a `wss://` client that does not trust the
    // server's certificate fails, naming the cause; the server never sees a
    // WebSocket.
    #[tokio::test]
    async fn websocket_wss_untrusted_certificate_fails_naming_the_cause() {
        let (listener, _) = wss_server().await;
        let url = format!("wss://localhost:{}/vox", listener.local_addr().expect("addr").port());
        let other = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&other)
            .expect("cert");
        let mut roots = RootCertStore::empty();
        roots.add(other.der().clone()).expect("root");
        let config = tls::client_config(roots, None).expect("client config");
        let Err(err) = within("connect", SessionBuilder::new().connect_wss(&url, config)).await else {
            panic!("the setup must fail");
        };
        let text = err.to_string();
        assert!(text.contains("invalid peer certificate"), "{text}");
    }
}
