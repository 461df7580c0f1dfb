//! The transport every link of a run goes over: `SPEC_TRANSPORT=tcp|tls|ws`
//! (default `tcp`), honoured by the harness and passed on to the subject.
//!
//! - `tcp`: plain TCP stream links (length-prefixed frames).
//! - `tls`: TLS over TCP. The harness makes one self-signed certificate for
//!   `localhost` when the run starts, writes it and its key as PEM files to
//!   a temporary directory and gives their paths to the subject
//!   (`SPEC_TLS_CERT`, `SPEC_TLS_KEY`). Whichever side is the TLS server
//!   presents that pair; the TLS client trusts that certificate as its only
//!   root and verifies the name `localhost`.
//! - `ws`: WebSocket. The listening side accepts an upgrade (any path); the
//!   dialer connects to `ws://127.0.0.1:<port>/`. One link message is one
//!   binary WebSocket message.
//!
//! The harness speaks TLS and WebSocket with rustls and tungstenite
//! directly, not through vox-core's own `tls`/`websocket` link modules, so
//! its view of the wire does not share the subject's implementation (and
//! vox-core's features stay the subject's business, see
//! `tests/raw_only.rs`). Its TLS links are vox-core stream links over the
//! TLS stream; its WebSocket links are in-process links bridged to the
//! WebSocket by a task, one binary message per link message.

use crate::error::{CaseError, CaseResult};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use vox_core::link::{self, Link, LinkConfig};

/// The name the TLS certificate is issued for and the client verifies.
pub const TLS_SERVER_NAME: &str = "localhost";

/// Which transport a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over TCP.
    Ws,
}

impl Kind {
    /// Every transport, in the order CI runs them.
    pub const ALL: [Kind; 3] = [Kind::Tcp, Kind::Tls, Kind::Ws];

    /// The `SPEC_TRANSPORT` value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Ws => "ws",
        }
    }

    /// Parses a `SPEC_TRANSPORT` value.
    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| format!("SPEC_TRANSPORT={s:?} (tcp, tls or ws)"))
    }

    /// The rule of `docs/spec/protocol.md` that is this transport's own
    /// (covered only by cases that run on it); `None` for TCP, whose rules
    /// are the rest.
    pub fn own_rule(self) -> Option<&'static str> {
        match self {
            Kind::Tcp => None,
            Kind::Tls => Some("transport.tls"),
            Kind::Ws => Some("transport.websocket"),
        }
    }
}

/// The run's certificate and the TLS configs made from it.
pub struct TlsMaterial {
    dir: PathBuf,
    /// Path of the certificate (PEM).
    pub cert_path: PathBuf,
    /// Path of its private key (PEM, PKCS#8).
    pub key_path: PathBuf,
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Client config trusting only the certificate.
    pub client: Arc<ClientConfig>,
    /// Like `client`, presenting the same certificate as the client's
    /// (mutual TLS).
    pub client_auth: Arc<ClientConfig>,
    /// Server config presenting the certificate.
    pub server: Arc<ServerConfig>,
}

/// The ring provider (the harness names it; no process default is set).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh self-signed certificate for `names` (DER and PEM), and its key.
pub fn self_signed(names: &[&str]) -> Result<(CertificateDer<'static>, String, rcgen::KeyPair), String> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let params = rcgen::CertificateParams::new(names).map_err(|e| format!("certificate parameters: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("self-signing: {e}"))?;
    Ok((cert.der().clone(), cert.pem(), key))
}

/// A client config whose only root is `root`, presenting `cert` with its
/// key (mutual TLS) if given.
pub fn client_config(
    root: CertificateDer<'static>,
    cert: Option<(CertificateDer<'static>, &rcgen::KeyPair)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(root).map_err(|e| format!("adding the root: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => {
            let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
            builder.with_client_auth_cert(vec![cert], key).map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config presenting `cert` with `key`.
pub fn server_config(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> Result<Arc<ServerConfig>, String> {
    let key: PrivateKeyDer<'static> = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("server certificate: {e}"))?;
    Ok(Arc::new(config))
}

impl TlsMaterial {
    fn generate() -> Result<TlsMaterial, String> {
        let (cert, cert_pem, key) = self_signed(&[TLS_SERVER_NAME])?;
        let dir = std::env::temp_dir().join(format!("vox-spec-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert_pem).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(|e| format!("{}: {e}", key_path.display()))?;
        Ok(TlsMaterial {
            dir,
            cert_path,
            key_path,
            client: client_config(cert.clone(), None)?,
            client_auth: client_config(cert.clone(), Some((cert.clone(), &key)))?,
            server: server_config(cert.clone(), &key)?,
            cert,
        })
    }
}

/// The run's transport.
pub struct Transport {
    /// Which one.
    pub kind: Kind,
    /// For `tls`: the certificate and configs.
    pub tls: Option<TlsMaterial>,
}

static CURRENT: OnceLock<Transport> = OnceLock::new();

/// Reads `SPEC_TRANSPORT` and, for `tls`, makes the run's certificate.
/// Call once at start; later calls return the same transport.
pub fn init() -> Result<&'static Transport, String> {
    if let Some(t) = CURRENT.get() {
        return Ok(t);
    }
    let kind = match std::env::var("SPEC_TRANSPORT") {
        Ok(v) if !v.trim().is_empty() => Kind::parse(&v)?,
        _ => Kind::Tcp,
    };
    let tls = if kind == Kind::Tls { Some(TlsMaterial::generate()?) } else { None };
    Ok(CURRENT.get_or_init(|| Transport { kind, tls }))
}

/// The run's transport ([`init`] must have succeeded; without it, TCP).
pub fn current() -> &'static Transport {
    CURRENT.get_or_init(|| Transport { kind: Kind::Tcp, tls: None })
}

/// Removes the run's certificate files.
pub fn cleanup() {
    if let Some(tls) = CURRENT.get().and_then(|t| t.tls.as_ref()) {
        let _ = std::fs::remove_dir_all(&tls.dir);
    }
}

/// The WebSocket settings of the harness: messages up to 64 MiB (above any
/// link maximum, so that the subject's own limit is what a case sees).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20))
}

fn io_err(what: &str, e: impl std::fmt::Display) -> CaseError {
    CaseError::Io(std::io::Error::other(format!("{what}: {e}")))
}

impl Transport {
    /// The environment the subject needs for this transport.
    pub fn subject_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("SPEC_TRANSPORT", self.kind.name().to_string())];
        if let Some(tls) = &self.tls {
            env.push(("SPEC_TLS_CERT", tls.cert_path.display().to_string()));
            env.push(("SPEC_TLS_KEY", tls.key_path.display().to_string()));
        }
        env
    }

    fn material(&self) -> CaseResult<&TlsMaterial> {
        self.tls.as_ref().ok_or_else(|| CaseError::Failed("internal: no TLS material (SPEC_TRANSPORT=tls?)".into()))
    }

    /// Connects a link to a listening subject at `addr`.
    pub async fn dial(&self, addr: SocketAddr) -> CaseResult<Link> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match self.kind {
            Kind::Tcp => Ok(link::tcp(tcp, LinkConfig::default())),
            Kind::Tls => {
                let tls = tls_connect(tcp, self.material()?.client.clone()).await?;
                let (r, w) = tokio::io::split(tls);
                Ok(link::stream(r, w, LinkConfig::default()))
            }
            Kind::Ws => Ok(ws_link(ws_connect(tcp, addr).await?)),
        }
    }

    /// Makes a link on a connection the harness accepted from the subject.
    pub async fn accept(&self, tcp: TcpStream) -> CaseResult<Link> {
        tcp.set_nodelay(true)?;
        match self.kind {
            Kind::Tcp => Ok(link::tcp(tcp, LinkConfig::default())),
            Kind::Tls => {
                let tls = tokio_rustls::TlsAcceptor::from(self.material()?.server.clone())
                    .accept(tcp)
                    .await
                    .map_err(|e| io_err("TLS handshake (harness as server)", e))?;
                let (r, w) = tokio::io::split(tls);
                Ok(link::stream(r, w, LinkConfig::default()))
            }
            Kind::Ws => {
                let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config()))
                    .await
                    .map_err(|e| io_err("WebSocket upgrade (harness as server)", e))?;
                Ok(ws_link(ws))
            }
        }
    }

    /// Fails unless the run is on TCP: for helpers that hand a case the
    /// raw TCP stream (bytes that are not whole link messages). A case
    /// using them must be marked tcp-only in [`crate::cases::RESTRICTED`].
    pub fn require_tcp(&self, what: &str) -> CaseResult {
        if self.kind != Kind::Tcp {
            return Err(CaseError::Failed(format!(
                "internal: {what} needs raw TCP, but the run is over {}; mark the case tcp-only in cases::RESTRICTED",
                self.kind.name()
            )));
        }
        Ok(())
    }
}

/// The client side of TLS over `tcp`, verifying [`TLS_SERVER_NAME`] with
/// `config`.
pub async fn tls_connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
) -> CaseResult<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(TLS_SERVER_NAME).map_err(|e| io_err("server name", e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| io_err("TLS handshake (harness as client)", e))
}

/// The client side of a WebSocket upgrade to `ws://<addr>/` over `tcp`.
pub async fn ws_connect(tcp: TcpStream, addr: SocketAddr) -> CaseResult<WebSocketStream<TcpStream>> {
    let url = format!("ws://{addr}/");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(ws_config()))
        .await
        .map_err(|e| io_err("WebSocket upgrade (harness as client)", e))?;
    Ok(ws)
}

/// A link over a WebSocket: each link message one binary WebSocket
/// message. A bridge task moves messages between an in-process link and
/// the WebSocket; a text message from the subject, a close or an error
/// ends the link's receiving side; the end of the harness's sending side
/// closes the WebSocket (a Close frame).
pub fn ws_link<S>(ws: WebSocketStream<S>) -> Link
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (ours, theirs) = link::memory_pair(LinkConfig::default());
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let Link { tx, mut rx } = theirs;
        let up = async move {
            while let Ok(Some(m)) = rx.recv().await {
                if sink.send(Message::Binary(m)).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        };
        let down = async move {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) => {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                    // A vox peer never sends text; the link ends.
                    Message::Text(_) | Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            drop(tx);
        };
        tokio::join!(up, down);
    });
    ours
}
