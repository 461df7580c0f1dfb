//! TLS links (rule `transport.tls`): calls over TLS, mutual TLS with the
//! client's verified identity in the handler's context, setup failures that
//! name their cause, no plaintext fallback, and redials that verify again.
//! Certificates are generated at test time (rcgen); no key is committed.

mod common {
    pub mod certs;
}
use common::certs::{Ca, Chain};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vox_core::driver::CallContext;
use vox_core::link::tls::rustls::RootCertStore;
use vox_core::link::tls::{self, TlsSource};
use vox_core::session::{Listener, SessionBuilder};
use vox_core::wire::ConduitMode;

/// What the handler knows of its caller.
#[vox_core::service]
pub trait Who {
    /// The names in the caller's verified certificate, as the handler sees them.
    async fn who(&self) -> Option<Vec<String>>;
    /// Echoes.
    async fn echo(&self, s: String) -> String;
}

#[derive(Clone)]
struct WhoImpl;

impl Who for WhoImpl {
    async fn who(&self) -> Option<Vec<String>> {
        let id = CallContext::current()?.peer_identity?;
        assert!(!id.certificate().is_empty());
        Some(id.dns_names().iter().chain(id.uris()).cloned().collect())
    }
    async fn echo(&self, s: String) -> String {
        s
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("{what} timed out"))
}

/// A TLS listener serving `Who`, with a server certificate for localhost
/// from `ca`, requiring client certificates from `clients` if given.
async fn server(ca: &Ca, clients: Option<&Ca>, expired: bool) -> Listener {
    let (chain, key) = ca.leaf_with(&["localhost"], None, expired);
    let verifier = clients.map(|c| tls::client_verifier(c.roots()).expect("verifier"));
    let config = tls::server_config(chain, key, verifier).expect("server config");
    SessionBuilder::new().handler(WhoDispatcher::new(WhoImpl)).listen_tls("127.0.0.1:0", config).await.expect("listen")
}

fn addr(l: &Listener) -> String {
    l.local_addr().expect("addr").to_string()
}

/// Connects a client and expects the setup to fail; returns the error text.
async fn refused(l: &Listener, name: &str, roots: RootCertStore, cert: Option<Chain>) -> String {
    let config = tls::client_config(roots, cert).expect("client config");
    let Err(err) = within("connect", SessionBuilder::new().connect_tls(addr(l), name, config)).await else {
        panic!("the setup must fail");
    };
    err.to_string()
}

// rule: transport.tls
#[tokio::test]
async fn tls_call_over_tls_and_no_identity_without_client_certificate() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, false).await;
    let config = tls::client_config(ca.roots(), None).expect("client config");
    let (server, client) =
        tokio::join!(listener.accept(), SessionBuilder::new().connect_tls(addr(&listener), "localhost", config));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("over tls".into())).await.expect("echo"), "over tls");
    assert_eq!(within("who", who.who()).await.expect("who"), None, "no client certificate, no identity");
}

// rule: transport.tls — mutual TLS: the handler sees the client's verified names.
#[tokio::test]
async fn tls_mutual_tls_handler_sees_the_client_certificate() {
    let ca = Ca::new("test ca");
    let client_ca = Ca::new("client ca");
    let listener = server(&ca, Some(&client_ca), false).await;
    let cert = client_ca.leaf_with(&["client.vox.test"], Some("spiffe://vox.test/client"), false);
    let config = tls::client_config(ca.roots(), Some(cert)).expect("client config");
    let (server, client) =
        tokio::join!(listener.accept(), SessionBuilder::new().connect_tls(addr(&listener), "localhost", config));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(
        within("who", who.who()).await.expect("who"),
        Some(vec!["client.vox.test".to_string(), "spiffe://vox.test/client".to_string()])
    );
}

// rule: transport.tls — an untrusted server certificate is a setup error naming the cause.
#[tokio::test]
async fn tls_untrusted_server_certificate_fails_naming_the_cause() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, false).await;
    let err = refused(&listener, "localhost", Ca::new("another ca").roots(), None).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
}

// rule: transport.tls
#[tokio::test]
async fn tls_wrong_server_name_fails_naming_the_cause() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, false).await;
    let err = refused(&listener, "not-the-server.example", ca.roots(), None).await;
    assert!(err.contains("not valid for name"), "{err}");
}

// rule: transport.tls
#[tokio::test]
async fn tls_expired_server_certificate_fails_naming_the_cause() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, true).await;
    let err = refused(&listener, "localhost", ca.roots(), None).await;
    assert!(err.contains("expired"), "{err}");
}

// rule: transport.tls — under mutual TLS, a client without a certificate never becomes a session.
#[tokio::test]
async fn tls_server_requiring_client_certificates_rejects_a_client_without_one() {
    let ca = Ca::new("test ca");
    let client_ca = Ca::new("client ca");
    let listener = server(&ca, Some(&client_ca), false).await;
    let err = refused(&listener, "localhost", ca.roots(), None).await;
    assert!(err.contains("CertificateRequired"), "the client learns why: {err}");
    let Err(server_err) = within("server outcome", listener.accept_attempt()).await else {
        panic!("no session");
    };
    let server_err = server_err.to_string();
    assert!(server_err.contains("no certificates"), "{server_err}");
    // A certificate from a CA the server does not trust is refused too.
    let err =
        refused(&listener, "localhost", ca.roots(), Some(Ca::new("rogue ca").leaf_with(&["c"], None, false))).await;
    assert!(err.contains("UnknownCA") || err.contains("BadCertificate") || err.contains("alert"), "{err}");
}

// rule: transport.tls — no silent fallback to plaintext, either way.
#[tokio::test]
async fn tls_no_plaintext_fallback() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, false).await;
    let plain = within(
        "plain connect",
        SessionBuilder::new().handshake_timeout(Duration::from_secs(5)).connect(addr(&listener)),
    )
    .await;
    assert!(plain.is_err(), "a plaintext client must not get a session from a TLS listener");
    let plain_listener = SessionBuilder::new().listen("127.0.0.1:0").await.expect("listen");
    let err = refused(&plain_listener, "localhost", ca.roots(), None).await;
    assert!(!err.is_empty());
}

/// A TCP proxy whose connections can all be cut at once; counts them.
struct Proxy {
    addr: String,
    links: Arc<AtomicUsize>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr").to_string();
        let links = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, t) = (links.clone(), tasks.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = tcp.accept().await {
                l.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                t.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy { addr, links, tasks }
    }

    /// Cuts every connection through the proxy (both sides see a reset/EOF).
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

// rule: transport.tls, conduit.stable — a stable conduit redials over TLS
// after a break, verifying the server again, and the session carries on.
#[tokio::test]
async fn tls_stable_conduit_redials_over_tls_after_a_break() {
    let ca = Ca::new("test ca");
    let client_ca = Ca::new("client ca");
    let listener = server(&ca, Some(&client_ca), false).await;
    let proxy = Proxy::start(addr(&listener)).await;
    let cert = client_ca.leaf_with(&["client.vox.test"], None, false);
    let config = tls::client_config(ca.roots(), Some(cert)).expect("client config");
    let source = TlsSource::new(proxy.addr.clone(), "localhost", config, Default::default()).expect("source");
    let mut builder = SessionBuilder::new();
    builder.config_mut().conduit = ConduitMode::Stable;
    let (server, client) = tokio::join!(listener.accept(), builder.connect_with(source));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("before".into())).await.expect("echo"), "before");
    proxy.cut();
    assert_eq!(within("echo after the cut", who.echo("after".into())).await.expect("echo after the cut"), "after");
    assert!(proxy.links.load(Ordering::SeqCst) >= 2, "the client redialed (a new TLS handshake)");
    assert_eq!(
        within("who", who.who()).await.expect("who"),
        Some(vec!["client.vox.test".to_string()]),
        "the identity of the first verified link stays the session's"
    );
    assert!(client.handle.close_reason().is_none());
}

// rule: transport.tls, session.resume — a resumable session redials over TLS
// (a new conduit, verified again) after its link breaks.
#[tokio::test]
async fn tls_resumed_session_redials_over_tls() {
    let ca = Ca::new("test ca");
    let listener = server(&ca, None, false).await;
    let proxy = Proxy::start(addr(&listener)).await;
    let config = tls::client_config(ca.roots(), None).expect("client config");
    let source = TlsSource::new(proxy.addr.clone(), "localhost", config, Default::default()).expect("source");
    let mut builder = SessionBuilder::new();
    builder.config_mut().session_resume.request = true;
    let (server, client) = tokio::join!(listener.accept(), builder.connect_with(source));
    let (_server, client) = (server.expect("server"), client.expect("client"));
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("before".into())).await.expect("echo"), "before");
    assert_eq!(client.handle.generation(), 1);
    proxy.cut();
    let mut generation = client.handle.generation();
    within("resume", async {
        while generation < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            generation = client.handle.generation();
        }
    })
    .await;
    assert_eq!(within("echo after resume", who.echo("after".into())).await.expect("echo after resume"), "after");
    assert!(proxy.links.load(Ordering::SeqCst) >= 2, "the client redialed over TLS");
}

// rule: transport.tls — `Server` serves over TLS too, with its graceful
// shutdown.
#[tokio::test]
async fn tls_server_serves_over_tls_and_shuts_down() {
    let ca = Ca::new("test ca");
    let (chain, key) = ca.leaf_with(&["localhost"], None, false);
    let config = tls::server_config(chain, key, None).expect("server config");
    let serving = vox_core::service::Server::with_builder(SessionBuilder::new().handler(WhoDispatcher::new(WhoImpl)))
        .bind_tls("127.0.0.1:0", config)
        .await
        .expect("bind");
    let client_config = tls::client_config(ca.roots(), None).expect("client config");
    let client = within(
        "connect",
        SessionBuilder::new().connect_tls(serving.local_addr().to_string(), "localhost", client_config),
    )
    .await
    .expect("client");
    let who = WhoClient::new(client.root.caller.clone());
    assert_eq!(within("echo", who.echo("served".into())).await.expect("echo"), "served");
    let report = within("shutdown", serving.shutdown()).await;
    assert_eq!(report.sessions_served, 1);
    within("the client to end", client.handle.closed()).await;
}
