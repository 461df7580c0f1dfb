//! The transports' own rules: `transport.tls` (run only with
//! `SPEC_TRANSPORT=tls`) and `transport.websocket` (only with
//! `SPEC_TRANSPORT=ws`); see `cases::RESTRICTED`. Each case speaks its
//! transport explicitly (rustls, tungstenite), so over any other transport
//! it fails.

use crate::error::{CaseError, CaseResult};
use crate::peer::{HelloAnswer, PATIENCE, Peer, hello_msg, ok_value, request};
use crate::subject::{self, SubjectCmd};
use crate::transport::{self, Kind, TlsMaterial};
use crate::{ensure, fail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use vox_core::link::{self, Link, LinkConfig};
use vox_core::wire::{
    self, ConduitMode, ConduitMsg, ConnectionId, HandshakeMsg, Message, PROTOCOL_VERSION, Parity, Payload,
    ResponseBody, SESSION_RESUME_FEATURE, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

/// The run's TLS material; fails unless the run is over TLS.
fn tls() -> CaseResult<&'static TlsMaterial> {
    let t = transport::current();
    match (&t.tls, t.kind) {
        (Some(m), Kind::Tls) => Ok(m),
        _ => fail!("transport.tls: this case needs SPEC_TRANSPORT=tls (the run is over {})", t.kind.name()),
    }
}

/// A TLS link to `addr`, verifying the subject's certificate for
/// `localhost` against `config`'s roots.
async fn tls_dial(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> CaseResult<Link> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = transport::tls_connect(tcp, config).await?;
    let (r, w) = tokio::io::split(tls);
    Ok(link::stream(r, w, LinkConfig::default()))
}

/// A new resumable session over `link`; returns the peer and the key.
async fn resumable(link: Link) -> CaseResult<(Peer, wire::ResumeKey)> {
    let mut peer = Peer::new(link);
    let key = match peer.bare_hello(hello_msg(Parity::Odd, &[SESSION_RESUME_FEATURE], None)).await? {
        HelloAnswer::Yourself(hy) => match hy.resume_key {
            Some(k) => k,
            None => fail!("session.resume: a Hello listing {SESSION_RESUME_FEATURE} over TLS got no resume key"),
        },
        other => fail!("session.handshake: a new session over TLS was answered with {other:?}"),
    };
    peer.lets_go().await?;
    Ok((peer, key))
}

async fn echo(peer: &mut Peer, id: u64, text: &str) -> CaseResult {
    peer.send(0, request(id, "echo", text, vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == text, "echo({text:?}) returned {s:?}");
    Ok(())
}

/// The subject listens over TLS with the run's certificate: the harness,
/// trusting only that certificate and verifying `localhost`, establishes a
/// session and calls; resumes it on a second verified TLS link; a
/// plaintext link to the same port is never answered in plaintext (no
/// fallback) and leaves the session alone.
pub async fn transport_tls_session_over_verified_tls(cmd: SubjectCmd) -> CaseResult {
    let material = tls()?;
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let (mut peer, key) = resumable(tls_dial(addr, material.client.clone()).await?).await?;
        echo(&mut peer, 1, "over tls").await?;
        // Break the link; resume on a new TLS link, verified the same way.
        drop(peer);
        let mut peer = Peer::new(tls_dial(addr, material.client.clone()).await?);
        match peer.bare_hello(hello_msg(Parity::Odd, &[SESSION_RESUME_FEATURE], Some(key.clone()))).await? {
            HelloAnswer::Yourself(hy) => ensure!(
                hy.resume_key.as_ref() == Some(&key),
                "session.resume: resuming over TLS was answered with key {:?}",
                hy.resume_key
            ),
            other => fail!("session.resume: resuming over TLS was answered with {other:?}"),
        }
        peer.lets_go().await?;
        echo(&mut peer, 3, "resumed over tls").await?;
        // A plaintext prologue on the TLS port: never a plaintext answer.
        let mut plain = TcpStream::connect(addr).await?;
        let body = wire::encode(
            "TransportMsg",
            &TransportMsg::Hello(TransportHello {
                magic: TRANSPORT_MAGIC,
                version: TRANSPORT_VERSION,
                mode: ConduitMode::Bare,
            }),
        )?;
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        plain.write_all(&frame).await?;
        let mut got = Vec::new();
        let read = tokio::time::timeout(PATIENCE, async {
            let mut buf = [0u8; 1024];
            loop {
                match plain.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        ensure!(read.is_ok(), "transport.tls: a plaintext link to the TLS port was kept open for {PATIENCE:?}");
        if got.len() > 4 {
            let n = u32::from_le_bytes([got[0], got[1], got[2], got[3]]) as usize;
            if let Some(b) = got.get(4..4 + n) {
                ensure!(
                    wire::decode_slice::<TransportMsg>("TransportMsg", b).is_err(),
                    "transport.tls: a plaintext prologue on the TLS port was answered in plaintext (fallback)"
                );
            }
        }
        // The refused link did not disturb the session.
        echo(&mut peer, 5, "still over tls").await?;
        Ok(())
    }
    .await;
    // A resumable session outlives its link: the subject is stopped.
    running.conclude_alive(result).await
}

/// The subject listens over TLS requiring a client certificate verified
/// against the run's certificate (`SPEC_TLS_CLIENT_AUTH=1`): a harness
/// presenting the run's pair gets a session whose handler sees the verified
/// identity (Testbed `peer_names` answers the certificate's DNS names); a
/// second link without a client certificate never gets a transport accept
/// and leaves the session alone.
pub async fn transport_tls_mutual_identity_reaches_handler(cmd: SubjectCmd) -> CaseResult {
    let material = tls()?;
    let (running, addr) = subject::listen_with(&cmd, &[("SPEC_TLS_CLIENT_AUTH", "1")]).await?;
    let result = async {
        let mut peer = Peer::new(tls_dial(addr, material.client_auth.clone()).await?);
        peer.initiate_session(Parity::Odd).await?;
        peer.send(0, request(1, "peer_names", &(), vec![])).await?;
        let names: Option<Vec<String>> = ok_value(&peer.response(0, 1).await?)?;
        ensure!(
            names.as_deref() == Some(&[transport::TLS_SERVER_NAME.to_string()][..]),
            "transport.tls: the handler saw the peer identity {names:?}, expected the client certificate's names [{:?}]",
            transport::TLS_SERVER_NAME
        );
        // No client certificate: TLS 1.3 may finish the client's side of
        // the handshake before the server refuses, so the refusal shows on
        // the first exchange at the latest.
        let refused = match tls_dial(addr, material.client.clone()).await {
            Err(_) => true,
            Ok(link) => {
                let mut anon = Peer::new(link);
                let hello = TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode: ConduitMode::Bare };
                anon.initiate_prologue(hello).await.is_err()
            }
        };
        ensure!(refused, "transport.tls: a client without a certificate got a transport accept under mutual TLS");
        echo(&mut peer, 3, "still mutual").await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

/// The subject dials the harness over TLS and trusts only the run's
/// certificate; the harness presents another self-signed certificate for
/// `localhost`. The subject must refuse the server (no session, no
/// plaintext), and say why: its setup error names the certificate.
pub async fn transport_tls_subject_rejects_unverified_server(cmd: SubjectCmd) -> CaseResult {
    tls()?;
    let (other, _, other_key) = transport::self_signed(&[transport::TLS_SERVER_NAME]).map_err(CaseError::Failed)?;
    let server = transport::server_config(other, &other_key).map_err(CaseError::Failed)?;
    let (running, stream) = subject::connect_stream(&cmd, "client", "establish_fails", &[]).await?;
    let accepted = tokio::time::timeout(PATIENCE, tokio_rustls::TlsAcceptor::from(server).accept(stream)).await;
    match accepted {
        Err(_) => fail!("transport.tls: the subject neither finished nor aborted the TLS handshake"),
        Ok(Ok(mut tls)) => {
            // A client that accepted the unknown certificate: whatever it
            // says next, the case has failed.
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await;
            fail!(
                "transport.tls: the subject completed a TLS handshake with a server certificate it does not trust ({n:?})"
            )
        }
        Ok(Err(e)) => {
            // The subject aborted the handshake (it sent a ClientHello: no
            // plaintext prologue came first, or the handshake could not
            // have started).
            let why = e.to_string();
            ensure!(
                !why.contains("corrupt message") && !why.contains("InvalidContentType"),
                "transport.tls: the subject did not speak TLS ({why})"
            );
        }
    }
    let err = running.finish_stderr().await?;
    let lower = err.to_lowercase();
    ensure!(
        lower.contains("certificate") || lower.contains("unknownissuer"),
        "transport.tls: the subject's setup error does not name the cause (the certificate): {err:?}"
    );
    Ok(())
}

// ------------------------------------------------------------ WebSocket

type Ws = WebSocketStream<TcpStream>;

/// A raw WebSocket to a subject listening over WebSocket.
async fn ws_dial(addr: SocketAddr) -> CaseResult<Ws> {
    let t = transport::current();
    ensure!(
        t.kind == Kind::Ws,
        "transport.websocket: this case needs SPEC_TRANSPORT=ws (the run is over {})",
        t.kind.name()
    );
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    transport::ws_connect(tcp, addr).await
}

async fn ws_send<T: serde::Serialize>(ws: &mut Ws, what: &'static str, value: &T) -> CaseResult {
    let body = wire::encode(what, value)?;
    ws.send(WsMessage::Binary(Bytes::from(body)))
        .await
        .map_err(|e| CaseError::Failed(format!("sending a WebSocket message: {e}")))
}

/// The next WebSocket message, `None` at the end (close, end of stream or
/// an error).
async fn ws_next(ws: &mut Ws, what: &str) -> CaseResult<Option<WsMessage>> {
    match tokio::time::timeout(PATIENCE, ws.next()).await {
        Err(_) => Err(CaseError::Timeout(what.to_string())),
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => Ok(None),
        Ok(Some(Ok(m))) => Ok(Some(m)),
    }
}

/// The next link message: one binary WebSocket message, decoded as a whole
/// (no length prefix inside). WebSocket pongs are counted in `pongs`.
async fn ws_recv<T: serde::de::DeserializeOwned>(
    ws: &mut Ws,
    what: &'static str,
    pongs: &mut u32,
) -> CaseResult<(Bytes, T)> {
    loop {
        match ws_next(ws, what).await? {
            None => fail!("transport.websocket: the subject closed the WebSocket while the harness waited for {what}"),
            Some(WsMessage::Binary(b)) => {
                let v = wire::decode::<T>(what, &b).map_err(|e| {
                    CaseError::Failed(format!(
                        "transport.websocket: a binary message is not exactly one {what} ({e}); {} bytes: {:02x?}",
                        b.len(),
                        &b[..b.len().min(16)]
                    ))
                })?;
                return Ok((b, v));
            }
            Some(WsMessage::Pong(_)) => *pongs += 1,
            Some(WsMessage::Ping(_)) => {}
            Some(other) => fail!("transport.websocket: the subject sent {other:?}, not a binary message"),
        }
    }
}

/// Prologue and handshake over a raw WebSocket, every message one binary
/// WebSocket message; returns the WebSocket and the pongs seen.
async fn ws_session(addr: SocketAddr) -> CaseResult<(Ws, u32)> {
    let mut ws = ws_dial(addr).await?;
    let mut pongs = 0;
    let hello = TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode: ConduitMode::Bare };
    ws_send(&mut ws, "TransportMsg", &TransportMsg::Hello(hello)).await?;
    let (bytes, accept) = ws_recv::<TransportMsg>(&mut ws, "TransportMsg", &mut pongs).await?;
    ensure!(
        matches!(accept, TransportMsg::Accept { mode: ConduitMode::Bare }),
        "transport.prologue: expected Accept {{ Bare }} over WebSocket, got {accept:?}"
    );
    let expected = wire::encode("TransportMsg", &TransportMsg::Accept { mode: ConduitMode::Bare })?;
    ensure!(
        bytes.as_ref() == expected.as_slice(),
        "transport.websocket: TransportAccept came as {bytes:02x?}, not exactly its {} encoded bytes (a prefix?)",
        expected.len()
    );
    let hello = hello_msg(Parity::Odd, &[], None);
    ws_send(&mut ws, "ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
    match ws_recv::<ConduitMsg>(&mut ws, "ConduitMsg", &mut pongs).await?.1 {
        ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy)) => ensure!(
            hy.protocol_version == PROTOCOL_VERSION,
            "session.handshake: HelloYourself version {}",
            hy.protocol_version
        ),
        other => fail!("session.handshake: expected HelloYourself over WebSocket, got {other:?}"),
    }
    ws_send(&mut ws, "ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await?;
    Ok((ws, pongs))
}

/// `echo(text)` as request `id` over the raw WebSocket.
async fn ws_echo(ws: &mut Ws, id: u64, text: &str, pongs: &mut u32) -> CaseResult {
    let msg =
        ConduitMsg::Message(Message { connection_id: ConnectionId(0), payload: request(id, "echo", text, vec![]) });
    ws_send(ws, "ConduitMsg", &msg).await?;
    loop {
        match ws_recv::<ConduitMsg>(ws, "ConduitMsg", pongs).await?.1 {
            ConduitMsg::Message(Message { payload: Payload::Response { id: r, ret, .. }, .. }) if r.0 == id => {
                let s: String = match &ret {
                    ResponseBody::Ok(_) => ok_value(&ret)?,
                    other => fail!("echo over WebSocket answered {other:?}"),
                };
                ensure!(s == text, "echo({text:?}) over WebSocket returned {s:?}");
                return Ok(());
            }
            ConduitMsg::Message(Message { payload: Payload::ProtocolError { description }, .. }) => {
                fail!("the subject sent ProtocolError({description:?}) over WebSocket")
            }
            _ => {}
        }
    }
}

/// Over a raw WebSocket: every link message, both ways, is exactly one
/// binary WebSocket message with no prefix; a WebSocket ping is answered
/// by the WebSocket layer (a pong) and never reaches the session.
pub async fn transport_websocket_binary_messages(cmd: SubjectCmd) -> CaseResult {
    // No keepalive: every binary message the subject sends is an answer.
    let (running, addr) = subject::listen_with(&cmd, &[("SUBJECT_KEEPALIVE", "off")]).await?;
    let result = async {
        let (mut ws, mut pongs) = ws_session(addr).await?;
        ws_echo(&mut ws, 1, "over websocket", &mut pongs).await?;
        // The WebSocket layer's own ping: a pong comes back, the session
        // sees nothing (the next echo is answered, no ProtocolError).
        ws.send(WsMessage::Ping(Bytes::from_static(b"vox-spec")))
            .await
            .map_err(|e| CaseError::Failed(e.to_string()))?;
        ws_echo(&mut ws, 3, "after a websocket ping", &mut pongs).await?;
        ensure!(pongs == 1, "transport.websocket: {pongs} WebSocket pongs for one WebSocket ping");
        // A large message is one binary message too (no fragmenting into
        // several link messages, no prefix).
        let big = "x".repeat(256 * 1024);
        ws_echo(&mut ws, 5, &big, &mut pongs).await?;
        ws.close(None).await.map_err(|e| CaseError::Failed(format!("closing the WebSocket: {e}")))?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

/// Over a raw WebSocket with a session up: a text message is a link error,
/// so the subject ends the link (and, the session having no other link,
/// the session) instead of answering anything after it.
pub async fn transport_websocket_text_message_is_link_error(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen_with(&cmd, &[("SUBJECT_KEEPALIVE", "off")]).await?;
    let result = async {
        let (mut ws, mut pongs) = ws_session(addr).await?;
        ws_echo(&mut ws, 1, "before text", &mut pongs).await?;
        ws.send(WsMessage::Text("hello, vox".into())).await.map_err(|e| CaseError::Failed(e.to_string()))?;
        // A request after it must not be answered: the link is dead.
        let msg =
            ConduitMsg::Message(Message { connection_id: ConnectionId(0), payload: request(3, "echo", "x", vec![]) });
        let _ = ws_send(&mut ws, "ConduitMsg", &msg).await;
        loop {
            match ws_next(&mut ws, "the subject to end the link after a text message").await {
                Err(CaseError::Timeout(_)) => {
                    fail!("transport.websocket: the link stayed open for {PATIENCE:?} after a text message")
                }
                Err(e) => return Err(e),
                Ok(None) => return Ok(()),
                Ok(Some(WsMessage::Binary(b))) => {
                    if let Ok(ConduitMsg::Message(Message { payload: Payload::Response { id, .. }, .. })) =
                        wire::decode::<ConduitMsg>("ConduitMsg", &b)
                    {
                        fail!("transport.websocket: request {id} after a text message was answered")
                    }
                }
                Ok(Some(_)) => {}
            }
        }
    }
    .await;
    running.conclude(result).await
}
