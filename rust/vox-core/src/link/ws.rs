//! Links over WebSocket (rule `transport.websocket`), with tokio-tungstenite.
//!
//! One link message is one binary WebSocket message, with no prefix of its
//! own. A text message is a link error (the link is dead after it). Ping,
//! pong and close are the WebSocket layer's: tungstenite answers pings
//! itself, and a close is the end of the link's stream.
//!
//! Limits are enforced before allocation, from the frame headers: a
//! scanner under tungstenite (`scan`) reads each header as its bytes
//! arrive and refuses a data message longer than the link's limit in force
//! (the smaller setup-phase maximum while the peer is unauthenticated, rule
//! `session.setup.limits`, [`LinkRx::restrict`](super::LinkRx::restrict);
//! [`LinkConfig::max_message_size`] after the handshake) before
//! tungstenite reserves room for it; tungstenite's own `max_frame_size`
//! and `max_message_size` are the link's maximum as a second check. The
//! same scanner fails a link whose message started and did not finish
//! within [`LinkConfig::frame_timeout`] of its first byte (as stream links
//! do with a frame); between messages nothing is timed.
//!
//! Entry points: [`connect_ws`] (`ws://`, and `wss://` with the `tls`
//! feature: `connect_wss`), [`accept_ws`] for a server on a TCP port
//! (`SessionBuilder::listen_ws`; over TLS `accept_wss`,
//! `SessionBuilder::listen_wss`), and [`accept_upgraded`], which turns a
//! connection that an HTTP server (hyper, axum) has already upgraded into a
//! link, so that vox can share a port with a web application. ([`websocket`]
//! takes a `WebSocketStream` built elsewhere; it has tungstenite's checks
//! only, not the scanner's.)

mod scan;

use super::source::DialFuture;
use super::{Link, LinkConfig, LinkError, LinkSource};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use scan::Scanned;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub use tokio_tungstenite;

/// The WebSocket settings for links with `config`: frames and messages up
/// to the link's maximum, refused above it before allocation.
pub fn ws_config(config: &LinkConfig) -> WebSocketConfig {
    let max = config.max_message_size.min(u32::MAX as usize);
    WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
}

/// Makes a link on an established WebSocket (client or server side). Only
/// tungstenite's limits apply (the link's maximum, from `ws_config`):
/// for an HTTP server's upgraded connection, [`accept_upgraded`] also
/// holds the setup maximum from frame headers and times out a stalled
/// message.
///
/// Spawns tasks, so it must be called inside a tokio runtime.
pub fn websocket<S>(ws: WebSocketStream<S>, config: LinkConfig) -> Link
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The stream link machinery frames with length prefixes; this adapter
    // turns each binary message into one such frame and back, so the
    // WebSocket carries the messages alone.
    let (r, w) = tokio::io::split(WsBytes::new(ws));
    super::stream(r, w, config)
}

/// `stream` under a scanner (see the module docs) that starts with the
/// link's maximum, and the limit it shares with the link's `LinkRx`.
fn scanned<S>(stream: S, http: bool, config: &LinkConfig) -> (Scanned<S>, Arc<AtomicUsize>) {
    let limit = Arc::new(AtomicUsize::new(config.max_message_size));
    (Scanned::new(stream, http, limit.clone(), config.frame_timeout), limit)
}

/// A link on a WebSocket over a scanned stream, the scanner following the
/// link's limit.
fn scanned_link<S>(ws: WebSocketStream<Scanned<S>>, limit: Arc<AtomicUsize>, config: LinkConfig) -> Link
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut link = websocket(ws, config);
    link.rx.share_limit(limit);
    link
}

/// Makes a link on a connection that an HTTP server has already upgraded
/// to a WebSocket (the server side; hyper's or axum's upgraded I/O), with
/// every limit of [`accept_ws`]: the size limits checked from frame
/// headers, the setup maximum while restricted, the stall timeout.
///
/// # Cancel safety
/// Dropping the future drops `io`; nothing else is left behind.
///
/// # Errors
/// Never fails today (the upgrade already happened); the `Result` leaves
/// room for a check of the upgraded stream.
pub async fn accept_upgraded<S>(io: S, config: LinkConfig) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (io, limit) = scanned(io, false, &config);
    let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
    let ws = WebSocketStream::from_raw_socket(io, role, Some(ws_config(&config))).await;
    Ok(scanned_link(ws, limit, config))
}

/// Upgrades an accepted connection (a TCP stream, or TLS over one) to a
/// WebSocket (any path) and makes a link on it.
///
/// # Cancel safety
/// Dropping the future abandons the upgrade and drops `stream`.
///
/// # Errors
/// [`LinkError::Io`] if the WebSocket upgrade fails: the peer sent no valid
/// upgrade request, or the stream failed.
pub async fn accept_ws<S>(stream: S, config: LinkConfig) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stream, limit) = scanned(stream, true, &config);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(&config)))
        .await
        .map_err(|e| ws_error("accepting a WebSocket upgrade", e))?;
    Ok(scanned_link(ws, limit, config))
}

/// Runs the server side of a TLS handshake on an accepted TCP connection
/// (see [`super::tls::server_link`]), then the WebSocket upgrade
/// (`wss://`), recording the peer's address and, under mutual TLS, its
/// verified certificate.
///
/// # Cancel safety
/// Dropping the future abandons the handshake or the upgrade and drops the
/// connection.
///
/// # Errors
/// [`LinkError::Io`] if the TLS handshake fails (a client certificate the
/// config requires is missing or does not verify; rustls' reason is
/// inside) or the upgrade fails (as [`accept_ws`]).
#[cfg(feature = "tls")]
pub async fn accept_wss(
    tcp: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    config: LinkConfig,
) -> Result<Link, LinkError> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let stream = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await.map_err(|e| LinkError::Io {
        context: "TLS handshake (verifying the client)",
        source: io::Error::new(e.kind(), format!("client: {e}")),
    })?;
    let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
    let mut link = accept_ws(stream, config).await?;
    if let Some(peer) = peer {
        link.rx.set_peer_addr(peer);
    }
    if let Some(der) = identity {
        link.rx.set_peer_identity(super::PeerIdentity::from_der(der));
    }
    Ok(link)
}

/// Runs the client upgrade for `url` over `stream` and makes a link.
///
/// # Cancel safety
/// Dropping the future abandons the upgrade and drops `stream`.
///
/// # Errors
/// [`LinkError::Io`] if the WebSocket upgrade fails: `url` is not a valid
/// WebSocket URL, the server refused the upgrade, or the stream failed.
pub async fn client_ws<S>(url: &str, stream: S, config: LinkConfig) -> Result<Link, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stream, limit) = scanned(stream, true, &config);
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(&config)))
        .await
        .map_err(|e| ws_error("the WebSocket upgrade", e))?;
    Ok(scanned_link(ws, limit, config))
}

/// The host and port of a `ws://` or `wss://` URL, and whether it is `wss`.
fn authority(url: &str) -> Result<(String, String, bool), LinkError> {
    let bad = |why: &str| LinkError::Io {
        context: "parsing the WebSocket URL",
        source: io::Error::new(io::ErrorKind::InvalidInput, format!("{url:?}: {why}")),
    };
    let (rest, secure) = if let Some(r) = url.strip_prefix("ws://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (r, true)
    } else {
        return Err(bad("expected ws:// or wss://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    // A port is what follows the last colon outside an IPv6 literal's brackets.
    let (host, addr) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (authority[..i].to_owned(), authority.to_owned()),
        _ => (authority.to_owned(), format!("{authority}:{}", if secure { 443 } else { 80 })),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, addr, secure))
}

async fn tcp(addr: &str) -> Result<tokio::net::TcpStream, LinkError> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| LinkError::Io {
        context: "connecting over TCP",
        source: io::Error::new(e.kind(), format!("{addr}: {e}")),
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects to a `ws://` URL and makes a link on the WebSocket.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt or the upgrade and drops
/// the connection.
///
/// # Errors
/// [`LinkError::Io`] if `url` is not a `ws://` URL with a host (a `wss://` URL
/// needs `connect_wss`), the TCP connection cannot be made, or the upgrade
/// fails (as [`client_ws`]).
pub async fn connect_ws(url: &str, config: LinkConfig) -> Result<Link, LinkError> {
    let (_, addr, secure) = authority(url)?;
    if secure {
        return Err(LinkError::Io {
            context: "connecting over WebSocket",
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: wss:// needs a TLS config (connect_wss)"),
            ),
        });
    }
    let tcp = tcp(&addr).await?;
    let peer = tcp.peer_addr().ok();
    let mut link = client_ws(url, tcp, config).await?;
    if let Some(peer) = peer {
        link.rx.set_peer_addr(peer);
    }
    Ok(link)
}

/// Connects to a `wss://` URL: TLS verified by `tls` against the URL's
/// host (see [`super::tls`]), then the WebSocket upgrade.
///
/// # Cancel safety
/// Dropping the future abandons the connection attempt, the TLS handshake or
/// the upgrade and drops the connection.
///
/// # Errors
/// [`LinkError::Io`] if `url` has no valid host, the TCP connection cannot be
/// made, the TLS handshake fails (the server's certificate does not verify for
/// the URL's host), or the upgrade fails (as [`client_ws`]).
#[cfg(feature = "tls")]
pub async fn connect_wss(
    url: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    config: LinkConfig,
) -> Result<Link, LinkError> {
    let (host, addr, _) = authority(url)?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| LinkError::Io {
        context: "parsing the TLS server name",
        source: io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")),
    })?;
    let tcp = tcp(&addr).await?;
    let peer = tcp.peer_addr().ok();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await.map_err(|e| LinkError::Io {
        context: "TLS handshake (verifying the server)",
        source: io::Error::new(e.kind(), format!("{host}: {e}")),
    })?;
    let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
    let mut link = client_ws(url, stream, config).await?;
    if let Some(peer) = peer {
        link.rx.set_peer_addr(peer);
    }
    if let Some(der) = identity {
        link.rx.set_peer_identity(super::PeerIdentity::from_der(der));
    }
    Ok(link)
}

/// Dials a WebSocket URL (`ws://`, or `wss://` with a TLS config): every
/// link, redials included, goes the same way.
#[derive(Clone)]
pub struct WsSource {
    /// The URL.
    pub url: String,
    /// For `wss://`: roots and client certificate.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Settings of the links it makes.
    pub config: LinkConfig,
}

impl WsSource {
    /// A source for `url` (checked now).
    pub fn new(url: &str, config: LinkConfig) -> Result<WsSource, LinkError> {
        authority(url)?;
        Ok(WsSource {
            url: url.to_owned(),
            #[cfg(feature = "tls")]
            tls: None,
            config,
        })
    }
}

impl std::fmt::Debug for WsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSource").field("url", &self.url).finish()
    }
}

impl LinkSource for WsSource {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            #[cfg(feature = "tls")]
            if let Some(tls) = &self.tls {
                return connect_wss(&self.url, tls.clone(), self.config.clone()).await;
            }
            connect_ws(&self.url, self.config.clone()).await
        })
    }
}

fn ws_error(context: &'static str, e: WsError) -> LinkError {
    LinkError::Io { context, source: to_io(e) }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(format!("websocket: {other}")),
    }
}

/// A WebSocket seen as the byte stream of a stream link: each binary
/// message reads as its 4-byte little-endian length and its bytes, and the
/// frames written are sent as one binary message each.
struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The frame being read out: its prefix, then its body.
    read_prefix: [u8; 4],
    read_prefix_at: usize,
    read_body: Bytes,
    /// The frame being written: its prefix so far, its body so far.
    write_prefix: [u8; 4],
    write_prefix_len: usize,
    write_need: usize,
    write_body: BytesMut,
    /// A whole message waiting for room in the WebSocket.
    ready: Option<Bytes>,
    /// The read side saw the end (close or end of stream).
    eof: bool,
}

impl<S> WsBytes<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        WsBytes {
            ws,
            read_prefix: [0; 4],
            read_prefix_at: 4,
            read_body: Bytes::new(),
            write_prefix: [0; 4],
            write_prefix_len: 0,
            write_need: 0,
            write_body: BytesMut::new(),
            ready: None,
            eof: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<S> {
    /// Hands the waiting message to the WebSocket once it has room.
    fn poll_send_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ready.is_some() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let msg = self.ready.take().expect("checked above");
            Pin::new(&mut self.ws).start_send(Message::Binary(msg)).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            if this.read_prefix_at < 4 {
                let n = (4 - this.read_prefix_at).min(buf.remaining());
                buf.put_slice(&this.read_prefix[this.read_prefix_at..this.read_prefix_at + n]);
                this.read_prefix_at += n;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if !this.read_body.is_empty() {
                let n = this.read_body.len().min(buf.remaining());
                buf.put_slice(&this.read_body.split_to(n));
                return Poll::Ready(Ok(()));
            }
            // Bytes handed out (an empty message's prefix) are never held
            // back behind a wait for the next message.
            if this.eof || buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            let msg = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(msg)) => msg,
            };
            match msg {
                // rule: transport.websocket — one binary message, one link message.
                Message::Binary(body) => {
                    // Within u32: tungstenite refused anything above the link
                    // maximum, which is capped at u32::MAX.
                    this.read_prefix = (body.len() as u32).to_le_bytes();
                    this.read_prefix_at = 0;
                    this.read_body = body;
                }
                // rule: transport.websocket — a text message is a link error.
                Message::Text(text) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "websocket: a text message ({} bytes) arrived; vox links carry binary messages only (rule transport.websocket)",
                            text.len()
                        ),
                    )));
                }
                // The WebSocket layer's own (tungstenite queues the pong).
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut taken = 0;
        loop {
            // A finished message goes out before more bytes are taken.
            match this.poll_send_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if taken > 0 => return Poll::Ready(Ok(taken)),
                Poll::Pending => return Poll::Pending,
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(taken));
            }
            if this.write_prefix_len < 4 {
                let n = (4 - this.write_prefix_len).min(buf.len());
                this.write_prefix[this.write_prefix_len..this.write_prefix_len + n].copy_from_slice(&buf[..n]);
                this.write_prefix_len += n;
                buf = &buf[n..];
                taken += n;
                if this.write_prefix_len == 4 {
                    this.write_need = u32::from_le_bytes(this.write_prefix) as usize;
                    this.write_body = BytesMut::with_capacity(this.write_need);
                }
            } else {
                let n = (this.write_need - this.write_body.len()).min(buf.len());
                this.write_body.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                taken += n;
            }
            if this.write_prefix_len == 4 && this.write_body.len() == this.write_need {
                this.ready = Some(std::mem::take(&mut this.write_body).freeze());
                this.write_prefix_len = 0;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_ready(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_ready(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
