//! Stream links over TLS 1.3/1.2 with rustls (rule `transport.tls`).
//!
//! The crypto provider is *ring*: it builds with a C compiler alone, while
//! aws-lc-rs (rustls' default) needs cmake and takes much longer to build.
//! Every config made here names the provider explicitly, so another crate
//! in the same program that enables aws-lc-rs changes nothing.
//!
//! - A client verifies the server's certificate against its roots and the
//!   expected server name ([`client_config`], [`connect_tls`],
//!   [`TlsSource`]); it may present a certificate of its own (mutual TLS).
//! - A server presents its certificate chain and, with a client-certificate
//!   verifier ([`client_verifier`]), requires and verifies the client's
//!   ([`server_config`], [`accept_tls`]).
//! - The verified certificate of the peer is recorded on the link
//!   ([`LinkRx::peer_identity`](super::LinkRx::peer_identity)) and reaches
//!   handlers in their `CallContext`.
//!
//! A failed verification is a link error that names the cause (rustls'
//! own words: "invalid peer certificate: UnknownIssuer", "certificate
//! expired", "certificate not valid for name", "peer sent no
//! certificates"); there is no fallback to plaintext.

use super::source::DialFuture;
use super::{Link, LinkConfig, LinkError, LinkSource, PeerIdentity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub use rustls;
pub use tokio_rustls;

/// The crypto provider every config here uses (*ring*).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that trusts `roots` and, if given, presents
/// `client_cert` (a certificate chain and its private key) for mutual TLS.
pub fn client_config(
    roots: RootCertStore,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config presenting `chain` (end-entity certificate first) with
/// its `key`. With `client_verifier`, every client must present a
/// certificate that it accepts (mutual TLS, see [`client_verifier`]).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

/// A verifier that requires a client certificate issued by one of `roots`.
pub fn client_verifier(roots: RootCertStore) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))
}

/// The identity in a TLS session's verified peer certificates (the
/// end-entity certificate comes first).
fn identity(certs: Option<&[CertificateDer<'static>]>) -> Option<PeerIdentity> {
    certs.and_then(|c| c.first()).map(|c| PeerIdentity::from_der(c.as_ref().to_vec()))
}

fn handshake_error(context: &'static str, peer: &str, e: std::io::Error) -> LinkError {
    // rustls' error (the cause) is inside; name the peer too.
    LinkError::Io { context, source: std::io::Error::new(e.kind(), format!("{peer}: {e}")) }
}

/// Runs the client side of a TLS handshake over `stream` and makes a link
/// on it, recording the server's verified certificate.
///
/// # Cancel safety
/// Dropping the future abandons the handshake and drops `stream`.
///
/// # Errors
/// [`LinkError::Io`] if the TLS handshake fails, e.g. the server's certificate
/// does not verify for `server_name` (rustls' reason is inside), or the stream
/// fails.
pub async fn client_link<S>(
    stream: S,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    config: LinkConfig,
) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = server_name.to_str().into_owned();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, stream)
        .await
        .map_err(|e| handshake_error("TLS handshake (verifying the server)", &peer, e))?;
    let identity = identity(tls.get_ref().1.peer_certificates());
    let (r, w) = tokio::io::split(tls);
    let mut link = super::stream(r, w, config);
    if let Some(identity) = identity {
        link.rx.set_peer_identity(identity);
    }
    Ok(link)
}

/// Runs the server side of a TLS handshake over `stream` and makes a link
/// on it, recording the client's verified certificate (mutual TLS).
///
/// # Cancel safety
/// Dropping the future abandons the handshake and drops `stream`.
///
/// # Errors
/// [`LinkError::Io`] if the TLS handshake fails, e.g. a client certificate the
/// server config requires is missing or does not verify (rustls' reason is
/// inside), or the stream fails.
pub async fn server_link<S>(stream: S, tls: Arc<ServerConfig>, config: LinkConfig) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let tls = tokio_rustls::TlsAcceptor::from(tls)
        .accept(stream)
        .await
        .map_err(|e| handshake_error("TLS handshake (verifying the client)", "client", e))?;
    let identity = identity(tls.get_ref().1.peer_certificates());
    let (r, w) = tokio::io::split(tls);
    let mut link = super::stream(r, w, config);
    if let Some(identity) = identity {
        link.rx.set_peer_identity(identity);
    }
    Ok(link)
}

/// Accepts TLS on an accepted TCP connection (Nagle off, the peer's address
/// recorded).
///
/// # Cancel safety
/// Dropping the future abandons the handshake and drops the connection.
///
/// # Errors
/// As [`server_link`]: [`LinkError::Io`] if the TLS handshake fails.
pub async fn accept_tls(
    tcp: tokio::net::TcpStream,
    tls: Arc<ServerConfig>,
    config: LinkConfig,
) -> Result<Link, LinkError> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let mut link = server_link(tcp, tls, config).await?;
    if let Some(peer) = peer {
        link.rx.set_peer_addr(peer);
    }
    Ok(link)
}

/// Connects to `addr` over TCP, runs the TLS handshake verifying
/// `server_name`, and makes a link.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt or the handshake and
/// drops the connection.
///
/// # Errors
/// [`LinkError::Io`] if the TCP connection to `addr` cannot be made or the TLS
/// handshake fails (as [`client_link`]).
pub async fn connect_tls(
    addr: &str,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    config: LinkConfig,
) -> Result<Link, LinkError> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| LinkError::Io {
        context: "connecting over TCP",
        source: std::io::Error::new(e.kind(), format!("{addr}: {e}")),
    })?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let mut link = client_link(tcp, server_name, tls, config).await?;
    if let Some(peer) = peer {
        link.rx.set_peer_addr(peer);
    }
    Ok(link)
}

/// Dials a TLS server: every link (the first, a stable conduit's redials,
/// a resumed session's) is verified with the same config and server name.
#[derive(Clone)]
pub struct TlsSource {
    /// Where to connect (resolved on every dial).
    pub addr: String,
    /// The name the server's certificate must be valid for.
    pub server_name: ServerName<'static>,
    /// Roots, and the client certificate if any.
    pub tls: Arc<ClientConfig>,
    /// Settings of the links it makes.
    pub config: LinkConfig,
}

impl TlsSource {
    /// A source for `addr`, verifying `server_name` (a DNS name or an IP
    /// address).
    pub fn new(
        addr: impl Into<String>,
        server_name: &str,
        tls: Arc<ClientConfig>,
        config: LinkConfig,
    ) -> Result<TlsSource, LinkError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| LinkError::Io {
            context: "parsing the TLS server name",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{server_name:?}: {e}")),
        })?;
        Ok(TlsSource { addr: addr.into(), server_name, tls, config })
    }
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource").field("addr", &self.addr).field("server_name", &self.server_name).finish()
    }
}

impl LinkSource for TlsSource {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(connect_tls(&self.addr, self.server_name.clone(), self.tls.clone(), self.config.clone()))
    }
}
