//! A QUIC server and client over loopback (one QUIC stream carries the
//! session, ADR 0006), with mutual TLS: a certificate authority, a server
//! certificate and a client certificate are generated at start (rcgen).
//! The handler sees the client's verified name; a client without a
//! certificate is refused, and told why.
//!
//! Run with `cargo run -p vox-core --features quic --example quic`.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use vox_core::driver::CallContext;
use vox_core::link::tls;
use vox_core::link::tls::rustls::RootCertStore;
use vox_core::link::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use vox_core::session::SessionBuilder;

/// A greeting service that says who the QUIC handshake says its caller is.
#[vox_core::service]
pub trait Hello {
    /// Greets `name`, naming the verified peer.
    async fn hello(&self, name: String) -> String;
}

struct HelloServer;

impl Hello for HelloServer {
    async fn hello(&self, name: String) -> String {
        let ctx = CallContext::current();
        let peer = ctx.as_ref().and_then(|c| c.peer_addr).map(|a| a.to_string()).unwrap_or_default();
        let who = ctx.and_then(|c| c.peer_identity).map(|id| id.dns_names().join(",")).unwrap_or_default();
        format!("hello {name} (certificate for {who}, from {peer}, over QUIC)")
    }
}

type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn leaf(name: &str, ca: &Issuer<'_, KeyPair>) -> Result<Chain, rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, ca)?;
    Ok((vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One authority issues both certificates; both sides trust it alone.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = Issuer::new(ca_params, ca_key);
    let roots = || {
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).map(|()| roots)
    };

    let (chain, key) = leaf("localhost", &ca)?;
    let server_config = tls::server_config(chain, key, Some(tls::client_verifier(roots()?)?))?;
    let listener = SessionBuilder::new()
        .handler(HelloDispatcher::new(HelloServer))
        .listen_quic("127.0.0.1:0", server_config)
        .await?;
    let addr = listener.local_addr()?;
    println!("server: listening with QUIC on udp {addr}");
    tokio::spawn(async move {
        let mut sessions = Vec::new();
        while let Ok(session) = listener.accept().await {
            println!("server: a new QUIC session (protocol version {})", session.negotiated.protocol_version);
            sessions.push(session);
        }
    });

    let client_config = tls::client_config(roots()?, Some(leaf("client.example", &ca)?))?;
    let session = SessionBuilder::new().connect_quic(addr, "localhost", client_config).await?;
    let client = HelloClient::new(session.root.caller.clone());
    println!("client: {}", client.hello("vox".into()).await?);

    // Without a client certificate, the server refuses the handshake.
    let anonymous = tls::client_config(roots()?, None)?;
    match SessionBuilder::new().connect_quic(addr, "localhost", anonymous).await {
        Ok(_) => println!("client: unexpectedly connected"),
        Err(e) => println!("client: refused without a client certificate: {e}"),
    }
    session.handle.shutdown()?;
    Ok(())
}
