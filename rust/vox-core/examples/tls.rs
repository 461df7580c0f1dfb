//! A TLS server and client over loopback, with a self-signed certificate
//! generated at start (rcgen): the client trusts exactly that certificate
//! and verifies the server's name against it (rule `transport.tls`).
//!
//! Run with `cargo run -p vox-core --features tls --example tls`.

use std::time::Duration;
use vox_core::driver::CallContext;
use vox_core::link::tls::{self, rustls::RootCertStore, rustls::pki_types::PrivatePkcs8KeyDer};
use vox_core::session::SessionBuilder;

/// A greeting service that says who the TLS layer says its caller is.
#[vox_core::service]
pub trait Hello {
    /// Greets `name`, naming the verified peer if there is one.
    async fn hello(&self, name: String) -> String;
}

struct HelloServer;

impl Hello for HelloServer {
    async fn hello(&self, name: String) -> String {
        let peer = CallContext::current().and_then(|c| c.peer_addr).map(|a| a.to_string()).unwrap_or_default();
        format!("hello {name} (from {peer}, over TLS)")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A self-signed certificate for "localhost".
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let server_config =
        tls::server_config(vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into(), None)?;

    let listener = SessionBuilder::new()
        .handler(HelloDispatcher::new(HelloServer))
        .listen_tls("127.0.0.1:0", server_config)
        .await?;
    let addr = listener.local_addr()?;
    println!("server: listening with TLS on {addr}");
    tokio::spawn(async move {
        let mut sessions = Vec::new();
        while let Ok(session) = listener.accept().await {
            println!("server: a new TLS session (protocol version {})", session.negotiated.protocol_version);
            sessions.push(session);
        }
    });

    // The client trusts the server's certificate alone.
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client_config = tls::client_config(roots, None)?;
    let session = SessionBuilder::new().connect_tls(addr, "localhost", client_config.clone()).await?;
    let client = HelloClient::new(session.root.caller.clone());
    println!("client: {}", client.hello("vox".into()).await?);

    // A client that expects another name is refused, and told why.
    match SessionBuilder::new().connect_tls(addr, "elsewhere.example", client_config).await {
        Ok(_) => println!("client: unexpectedly connected"),
        Err(e) => println!("client: the wrong name is refused: {e}"),
    }
    // A client that trusts nothing is refused too.
    let empty = tls::client_config(RootCertStore::empty(), None)?;
    match SessionBuilder::new().handshake_timeout(Duration::from_secs(5)).connect_tls(addr, "localhost", empty).await {
        Ok(_) => println!("client: unexpectedly connected"),
        Err(e) => println!("client: an untrusted certificate is refused: {e}"),
    }
    session.handle.shutdown()?;
    Ok(())
}
