//! Links over QUIC with quinn (feature `quic`, ADR 0006).
//!
//! One QUIC connection carries one link, on one bidirectional stream that
//! the client opens: the stream is framed exactly like a TCP stream link
//! (4-byte length prefix, [`LinkConfig::max_message_size`] checked from the
//! prefix before anything is allocated, [`LinkConfig::frame_timeout`] for a
//! frame that started and stalled). Virtual connections stay multiplexed
//! on that stream; ADR 0006 says why and what mapping them onto QUIC
//! streams would take.
//!
//! QUIC's TLS 1.3 is rustls, so the configs are the TLS link's
//! ([`super::tls::client_config`], [`super::tls::server_config`], *ring*
//! provider) with vox's ALPN protocol set on a copy ([`client_config`],
//! [`server_config`]): the same roots, server-name check, client
//! certificates and verifier, and the verified peer certificate recorded as
//! the link's [`PeerIdentity`], as over TLS.
//!
//! Bounds ([`transport_config`]): the server lets a client open one
//! bidirectional stream and no unidirectional one; the client lets the
//! server open none. QUIC's own flow control bounds what is buffered per
//! stream and connection (quinn's defaults), and an idle connection is
//! kept alive by QUIC pings and dies after [`IDLE_TIMEOUT`] without any
//! packet from the peer.
//!
//! Entry points: [`connect_quic`] and [`QuicSource`] (every dial, a stable
//! conduit's redials and a resumed session's included, on a fresh UDP
//! socket and verified again), [`client_link`] and [`server_link`] on an
//! established `quinn::Connection`, and `SessionBuilder::listen_quic` /
//! `connect_quic`.

use super::source::DialFuture;
use super::{Link, LinkConfig, LinkError, LinkSource, PeerIdentity};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use quinn;

/// The ALPN protocol name vox's QUIC links negotiate (QUIC requires one);
/// a peer offering another is refused in the TLS handshake.
pub const ALPN: &[u8] = b"vox/1";

/// A QUIC connection with no packet from the peer for this long is dead
/// (QUIC's idle timeout; pings every [`KEEP_ALIVE`] keep a live one open).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an otherwise idle QUIC connection sends a ping, so that it
/// outlives [`IDLE_TIMEOUT`] while the peer is there, with or without vox's
/// own keepalive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The QUIC transport settings of vox links: streams the peer may open
/// (one bidirectional one for a server, `accept_stream`, none for a client;
/// no unidirectional ones), the idle timeout and the keep-alive.
pub fn transport_config(accept_stream: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(u32::from(accept_stream).into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s is a valid QUIC idle timeout")));
    t
}

fn invalid(context: &'static str, what: impl std::fmt::Display) -> LinkError {
    LinkError::Io { context, source: io::Error::new(io::ErrorKind::InvalidInput, what.to_string()) }
}

/// A quinn client config from a rustls one (see
/// [`super::tls::client_config`]): the same roots and client certificate,
/// with [`ALPN`] set and vox's [`transport_config`].
///
/// # Errors
/// [`LinkError::Io`] (`InvalidInput`) if `tls` cannot run QUIC: its crypto
/// provider lacks TLS 1.3's AES-128-GCM suite, which QUIC's initial
/// packets need.
pub fn client_config(tls: &rustls::ClientConfig) -> Result<quinn::ClientConfig, LinkError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| invalid("making the QUIC client config", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(false)));
    Ok(config)
}

/// A quinn server config from a rustls one (see
/// [`super::tls::server_config`]): the same certificate and
/// client-certificate verifier, with [`ALPN`] set and vox's
/// [`transport_config`].
///
/// # Errors
/// As [`client_config`].
pub fn server_config(tls: &rustls::ServerConfig) -> Result<quinn::ServerConfig, LinkError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // rustls refuses early data for QUIC unless it is u32::MAX or 0; vox
    // sends none, so 0.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| invalid("making the QUIC server config", e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(true)));
    Ok(config)
}

/// The verified end-entity certificate of the connection's peer, if it
/// presented one.
fn identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| PeerIdentity::from_der(c.as_ref().to_vec()))
}

fn connection_error(context: &'static str, peer: impl std::fmt::Display, e: quinn::ConnectionError) -> LinkError {
    let kind = match e {
        quinn::ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        quinn::ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        quinn::ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionAborted,
    };
    LinkError::Io { context, source: io::Error::new(kind, format!("{peer}: {e}")) }
}

/// A link on one bidirectional stream of `conn`, the peer's address and
/// verified certificate recorded.
fn link_on(conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream, config: LinkConfig) -> Link {
    let peer = conn.remote_address();
    let identity = identity(&conn);
    let mut link = super::stream(Reader(recv), Writer::new(send), config);
    link.rx.set_peer_addr(peer);
    if let Some(identity) = identity {
        link.rx.set_peer_identity(identity);
    }
    link
}

/// Opens the link's stream on an established client connection.
///
/// The server sees the stream once the first bytes are sent on it (the
/// transport prologue, which the initiator sends first).
///
/// # Cancel safety
/// Dropping the future opens nothing.
///
/// # Errors
/// [`LinkError::Io`] if the connection is lost before the stream is open.
pub async fn client_link(conn: quinn::Connection, config: LinkConfig) -> Result<Link, LinkError> {
    let (send, recv) =
        conn.open_bi().await.map_err(|e| connection_error("opening the QUIC stream", conn.remote_address(), e))?;
    Ok(link_on(conn, send, recv, config))
}

/// Waits for the client's stream on an accepted connection and makes the
/// link on it.
///
/// # Cancel safety
/// Dropping the future takes no stream; the connection stays as it was.
///
/// # Errors
/// [`LinkError::Io`] if the connection is lost before the client opens its
/// stream.
pub async fn server_link(conn: quinn::Connection, config: LinkConfig) -> Result<Link, LinkError> {
    let (send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| connection_error("waiting for the client's QUIC stream", conn.remote_address(), e))?;
    Ok(link_on(conn, send, recv, config))
}

/// Completes the QUIC handshake of an incoming connection (verifying the
/// client's certificate when `quic` requires one) and makes the link.
///
/// # Cancel safety
/// Dropping the future abandons the handshake; the connection is closed.
///
/// # Errors
/// [`LinkError::Io`] if the handshake fails (rustls' reason is inside) or
/// the connection is lost before the client opens its stream.
pub async fn accept_quic(incoming: quinn::Incoming, config: LinkConfig) -> Result<Link, LinkError> {
    let peer = incoming.remote_address();
    let conn = incoming
        .accept()
        .map_err(|e| connection_error("accepting a QUIC connection", peer, e))?
        .await
        .map_err(|e| connection_error("QUIC handshake (verifying the client)", peer, e))?;
    server_link(conn, config).await
}

/// Resolves `addr` (`host:port`) to its first address.
async fn resolve(addr: &str) -> Result<SocketAddr, LinkError> {
    let io = |e: io::Error| LinkError::Io {
        context: "resolving a QUIC address",
        source: io::Error::new(e.kind(), format!("{addr}: {e}")),
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(io)?
        .next()
        .ok_or_else(|| io(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// Connects to `addr` from a fresh UDP socket, runs the QUIC handshake
/// verifying `server_name` under `quic`'s roots (see [`client_config`]), and
/// opens the link's stream.
///
/// # Cancel safety
/// Dropping the future abandons the attempt; its socket is closed.
///
/// # Errors
/// [`LinkError::Io`] if `addr` does not resolve, no UDP socket can be bound,
/// `server_name` is not a valid name, or the handshake fails, e.g. the
/// server's certificate does not verify for `server_name` (rustls' reason
/// is inside) or nothing answers within [`IDLE_TIMEOUT`].
pub async fn connect_quic(
    addr: &str,
    server_name: &str,
    quic: quinn::ClientConfig,
    config: LinkConfig,
) -> Result<Link, LinkError> {
    let remote = resolve(addr).await?;
    let local: SocketAddr = if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| LinkError::Io {
        context: "binding a UDP socket for QUIC",
        source: io::Error::new(e.kind(), format!("{local}: {e}")),
    })?;
    let connecting = endpoint
        .connect_with(quic, remote, server_name)
        .map_err(|e| invalid("starting a QUIC connection", format_args!("{addr} ({server_name}): {e}")))?;
    let conn = connecting.await.map_err(|e| {
        connection_error("QUIC handshake (verifying the server)", format_args!("{addr} ({server_name})"), e)
    })?;
    client_link(conn, config).await
}

/// Dials a QUIC server: every link (the first, a stable conduit's redials,
/// a resumed session's) comes from a new connection, verified with the same
/// config and server name.
#[derive(Clone)]
pub struct QuicSource {
    /// Where to connect (resolved on every dial).
    pub addr: String,
    /// The name the server's certificate must be valid for.
    pub server_name: String,
    /// Roots, client certificate and transport settings.
    pub quic: quinn::ClientConfig,
    /// Settings of the links it makes.
    pub config: LinkConfig,
}

impl QuicSource {
    /// A source for `addr`, verifying `server_name` under `tls` (a config
    /// from [`super::tls::client_config`]; [`client_config`] adapts it).
    ///
    /// # Errors
    /// As [`client_config`].
    pub fn new(
        addr: impl Into<String>,
        server_name: &str,
        tls: &rustls::ClientConfig,
        config: LinkConfig,
    ) -> Result<QuicSource, LinkError> {
        Ok(QuicSource { addr: addr.into(), server_name: server_name.to_owned(), quic: client_config(tls)?, config })
    }
}

impl std::fmt::Debug for QuicSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSource").field("addr", &self.addr).field("server_name", &self.server_name).finish()
    }
}

impl LinkSource for QuicSource {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(connect_quic(&self.addr, &self.server_name, self.quic.clone(), self.config.clone()))
    }
}

/// Why a stream operation failed, with the connection's own error inside
/// when the connection was lost (quinn's `io::Error` conversion says only
/// "connection lost"; the close frame's code and reason, such as the TLS
/// alert that refused a client certificate, tell the cause).
fn stream_error(what: &str, lost: Option<&quinn::ConnectionError>, e: &dyn std::fmt::Display) -> io::Error {
    match lost {
        Some(lost) => {
            let kind = match lost {
                quinn::ConnectionError::TimedOut => io::ErrorKind::TimedOut,
                quinn::ConnectionError::Reset => io::ErrorKind::ConnectionReset,
                _ => io::ErrorKind::ConnectionAborted,
            };
            io::Error::new(kind, format!("QUIC connection lost while {what}: {lost}"))
        }
        None => io::Error::new(io::ErrorKind::ConnectionAborted, format!("QUIC stream failed while {what}: {e}")),
    }
}

/// The link's receiving stream, its errors with their cause (see
/// [`stream_error`]).
struct Reader(quinn::RecvStream);

impl tokio::io::AsyncRead for Reader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.poll_read_buf(cx, buf).map_err(|e| match &e {
            quinn::ReadError::ConnectionLost(lost) => stream_error("reading", Some(lost), &e),
            _ => stream_error("reading", None, &e),
        })
    }
}

/// The link's sending stream. Shutting it down finishes the stream and
/// then waits until the peer has acknowledged everything sent (or stopped
/// the stream, or the connection is lost): QUIC closes a connection as soon
/// as nothing holds it, which would discard data still in flight, such as
/// a last `Goodbye`. The wait is bounded by the connection's idle timeout.
struct Writer {
    send: quinn::SendStream,
    acked: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl Writer {
    fn new(send: quinn::SendStream) -> Self {
        Writer { send, acked: None }
    }
}

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.send).poll_write(cx, buf).map_err(|e| match &e {
            quinn::WriteError::ConnectionLost(lost) => stream_error("writing", Some(lost), &e),
            _ => stream_error("writing", None, &e),
        })
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.acked.is_none() {
            std::task::ready!(tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx))?;
            let stopped = self.send.stopped();
            // Whatever the outcome, the stream is done with: only the wait matters.
            self.acked = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        let acked = self.acked.as_mut().expect("set above");
        acked.as_mut().poll(cx).map(Ok)
    }
}
