//! QUIC links (feature `quic`, ADR 0006): calls over one QUIC stream, the
//! client's verified certificate in the handler's context, a setup failure
//! that names its cause, the frame bound checked before allocation, and a
//! stable conduit and a resumed session that redial over a new QUIC
//! connection when the path dies. Certificates
//! are generated at test time (rcgen); no key is committed.

mod common {
    pub mod certs;
}
use common::certs::Ca;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use vox_core::driver::CallContext;
use vox_core::link::quic::{self, QuicSource, quinn};
use vox_core::link::{LinkConfig, LinkError, tls};
use vox_core::session::{Listener, SessionBuilder};

/// What the handler knows of its caller.
#[vox_core::service]
pub trait Who {
    /// The DNS names in the caller's verified certificate.
    async fn who(&self) -> Option<Vec<String>>;
    /// Echoes.
    async fn echo(&self, s: String) -> String;
}

#[derive(Clone)]
struct WhoImpl;

impl Who for WhoImpl {
    async fn who(&self) -> Option<Vec<String>> {
        Some(CallContext::current()?.peer_identity?.dns_names().to_vec())
    }
    async fn echo(&self, s: String) -> String {
        s
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("{what} timed out"))
}

/// A QUIC listener serving `Who` with a certificate for localhost from
/// `ca`, requiring client certificates from `clients` if given.
async fn server(ca: &Ca, clients: Option<&Ca>) -> Listener {
    let (chain, key) = ca.leaf(&["localhost"]);
    let verifier = clients.map(|c| tls::client_verifier(c.roots()).expect("verifier"));
    let config = tls::server_config(chain, key, verifier).expect("server config");
    SessionBuilder::new().handler(WhoDispatcher::new(WhoImpl)).listen_quic("127.0.0.1:0", config).await.expect("listen")
}

fn addr(l: &Listener) -> String {
    l.local_addr().expect("addr").to_string()
}

// The session runs over one QUIC stream; under mutual TLS the handler sees
// the client's verified names, as over TLS.
#[tokio::test]
async fn quic_calls_over_quic_and_the_handler_sees_the_client_certificate() {
    let ca = Ca::new("test ca");
    let client_ca = Ca::new("client ca");
    let listener = server(&ca, Some(&client_ca)).await;
    let config = tls::client_config(ca.roots(), Some(client_ca.leaf(&["client.vox.test"]))).expect("client config");
    let (server, client) =
        tokio::join!(listener.accept(), SessionBuilder::new().connect_quic(addr(&listener), "localhost", config));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("over quic".into())).await.expect("echo"), "over quic");
    // Larger than QUIC's initial stream window: the frame crosses many packets.
    let big = "q".repeat(3_000_000);
    assert_eq!(within("big echo", who.echo(big.clone())).await.expect("big echo"), big);
    assert_eq!(within("who", who.who()).await.expect("who"), Some(vec!["client.vox.test".to_string()]));
}

// The client refuses a server whose certificate it cannot verify, and the
// error says why.
#[tokio::test]
async fn quic_untrusted_server_certificate_fails_naming_the_cause() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None).await;
    let config = tls::client_config(Ca::new("another ca").roots(), None).expect("client config");
    let Err(err) = within("connect", SessionBuilder::new().connect_quic(addr(&listener), "localhost", config)).await
    else {
        panic!("the setup must fail");
    };
    let err = err.to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("QUIC handshake"), "{err}");
}

// Under mutual TLS, a client without a certificate never becomes a session,
// and the server's outcome says why.
#[tokio::test]
async fn quic_server_requiring_client_certificates_rejects_a_client_without_one() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, Some(&Ca::new("client ca"))).await;
    let config = tls::client_config(ca.roots(), None).expect("client config");
    let Err(err) = within("connect", SessionBuilder::new().connect_quic(addr(&listener), "localhost", config)).await
    else {
        panic!("no session without a client certificate");
    };
    let err = err.to_string();
    assert!(err.contains("no certificates"), "the client learns why: {err}");
    let Err(server_err) = within("server outcome", listener.accept_attempt()).await else {
        panic!("no session");
    };
    let server_err = server_err.to_string();
    assert!(server_err.contains("no certificates"), "{server_err}");
}

// rule: link.tx.max-size — a length prefix above the link maximum is refused
// from the prefix alone, over QUIC as over TCP.
#[tokio::test]
async fn quic_oversized_frame_is_refused_from_its_prefix() {
    let ca = Ca::new("test ca");
    let (chain, key) = ca.leaf(&["localhost"]);
    let server_tls = tls::server_config(chain, key, None).expect("server config");
    let endpoint = quinn::Endpoint::server(quic::server_config(&server_tls).expect("quic"), ([127, 0, 0, 1], 0).into())
        .expect("endpoint");
    let target = endpoint.local_addr().expect("addr").to_string();
    let config = LinkConfig { max_message_size: 1024, ..LinkConfig::default() };
    let client_tls = tls::client_config(ca.roots(), None).expect("client config");
    let raw = async {
        let (mut send, recv, conn) = raw_stream(&target, &client_tls).await;
        // 1 GiB announced, 3 bytes sent.
        send.write_all(&(1u32 << 30).to_le_bytes()).await.expect("write prefix");
        send.write_all(b"abc").await.expect("write");
        (send, recv, conn)
    };
    let accept = async {
        let incoming = endpoint.accept().await.expect("incoming");
        quic::accept_quic(incoming, config).await.expect("server link")
    };
    let (_raw, mut link) = within("raw stream and accept", async { tokio::join!(raw, accept) }).await;
    match within("recv", link.rx.recv()).await {
        Err(LinkError::TooLarge { size, max }) => assert_eq!((size, max), (1 << 30, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// A raw QUIC stream to `target` (no vox framing).
async fn raw_stream(
    target: &str,
    tls: &tls::rustls::ClientConfig,
) -> (quinn::SendStream, quinn::RecvStream, quinn::Connection) {
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client endpoint");
    let conn = endpoint
        .connect_with(quic::client_config(tls).expect("quic"), target.parse().expect("addr"), "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (send, recv) = conn.open_bi().await.expect("stream");
    (send, recv, conn)
}

/// A UDP relay between clients and one server. `cut` black-holes every
/// flow it has seen (a path that died: no packet passes either way, nothing
/// is closed); flows from new client addresses pass.
struct Relay {
    addr: String,
    flows: Arc<AtomicUsize>,
    dead: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let addr = front.local_addr().expect("addr").to_string();
        let flows = Arc::new(AtomicUsize::new(0));
        let dead: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (f, d) = (flows.clone(), dead.clone());
        tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, (Arc<UdpSocket>, Arc<AtomicBool>)> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                let (up, cut) = match upstreams.get(&client) {
                    Some(flow) => flow.clone(),
                    None => {
                        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream"));
                        up.connect(target).await.expect("connect upstream");
                        let cut = Arc::new(AtomicBool::new(false));
                        f.fetch_add(1, Ordering::SeqCst);
                        d.lock().unwrap().push(cut.clone());
                        let (back, front, c) = (up.clone(), front.clone(), cut.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                if !c.load(Ordering::SeqCst) {
                                    let _ = front.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        upstreams.insert(client, (up.clone(), cut.clone()));
                        (up, cut)
                    }
                };
                if !cut.load(Ordering::SeqCst) {
                    let _ = up.send(&buf[..n]).await;
                }
            }
        });
        Relay { addr, flows, dead }
    }

    fn cut(&self) {
        for flow in self.dead.lock().unwrap().iter() {
            flow.store(true, Ordering::SeqCst);
        }
    }
}

/// A `QuicSource` through `relay` whose QUIC connections notice a dead
/// path quickly (a short QUIC idle timeout).
fn fast_failing_source(relay: &Relay, ca: &Ca) -> QuicSource {
    let config = tls::client_config(ca.roots(), None).expect("client config");
    let mut source = QuicSource::new(relay.addr.clone(), "localhost", &config, LinkConfig::default()).expect("source");
    let mut transport = quic::transport_config(false);
    transport
        .max_idle_timeout(Some(Duration::from_millis(500).try_into().expect("idle")))
        .keep_alive_interval(Some(Duration::from_millis(100)));
    source.quic.transport_config(Arc::new(transport));
    source
}

// rule: conduit.stable — when the QUIC path dies, the stable conduit redials
// through its `QuicSource` (a new QUIC connection, verified again) and the
// session carries on without noticing.
#[tokio::test]
async fn quic_stable_conduit_redials_over_a_new_quic_connection() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None).await;
    let relay = Relay::start(listener.local_addr().expect("addr")).await;
    let mut builder = SessionBuilder::new();
    builder.config_mut().conduit = vox_core::wire::ConduitMode::Stable;
    let (server, client) = tokio::join!(listener.accept(), builder.connect_with(fast_failing_source(&relay, &ca)));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("before".into())).await.expect("echo"), "before");
    relay.cut();
    assert_eq!(within("echo after the cut", who.echo("after".into())).await.expect("echo after the cut"), "after");
    assert!(relay.flows.load(Ordering::SeqCst) >= 2, "the client redialed from a new UDP socket");
    assert!(client.handle.close_reason().is_none());
}

// rule: session.resume — when the QUIC path dies, the client's QUIC
// connection times out, and the resumable session redials through its
// `QuicSource`: a new QUIC connection from a new UDP socket, verified
// again, that resumes the same session.
#[tokio::test]
async fn quic_resumed_session_redials_over_a_new_quic_connection() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None).await;
    let relay = Relay::start(listener.local_addr().expect("addr")).await;
    // The path's death is noticed by QUIC's idle timeout: short here.
    let source = fast_failing_source(&relay, &ca);
    let mut builder = SessionBuilder::new();
    builder.config_mut().session_resume.request = true;
    let (server, client) = tokio::join!(listener.accept(), builder.connect_with(source));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("before".into())).await.expect("echo"), "before");
    let generation = client.handle.generation();
    relay.cut();
    let resumed = within("resume", client.handle.attached_after(generation)).await.expect("resumed");
    assert!(resumed > generation);
    assert_eq!(within("echo after resume", who.echo("after".into())).await.expect("echo after resume"), "after");
    assert!(relay.flows.load(Ordering::SeqCst) >= 2, "the client redialed from a new UDP socket");
    assert!(client.handle.close_reason().is_none());
}
