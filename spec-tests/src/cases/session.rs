//! Session-level messages: keepalive, connection ids, protocol errors.

use crate::error::{CaseError, CaseResult};
use crate::peer::{Peer, ok_value, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use vox_core::wire::{self, ConduitMsg, ConnectionSettings, HandshakeMsg, Message, Metadata, Parity, Payload};

/// The subject's keepalive in the cases that need it fast: a ping every
/// 200 ms, torn down when a pong is 500 ms late.
const FAST_KEEPALIVE: (&str, &str) = ("SUBJECT_KEEPALIVE", "200/500");

/// A generous bound on how soon after the keepalive timeout (500 ms) the
/// subject has closed the link.
const PROMPT: Duration = Duration::from_secs(3);

/// The subject's next session message before `deadline`, read raw (its
/// Pings are not answered); `None` at end of stream.
async fn next_before(peer: &mut Peer, deadline: Instant, what: &str) -> CaseResult<Option<Message>> {
    match tokio::time::timeout_at(deadline, peer.rx.recv()).await {
        Err(_) => Err(CaseError::Timeout(what.to_string())),
        Ok(Ok(Some(b))) => match wire::decode::<ConduitMsg>("ConduitMsg", &b)? {
            ConduitMsg::Message(m) => Ok(Some(m)),
            ConduitMsg::Handshake(h) => fail!("session.message: handshake message {h:?} after the handshake"),
        },
        Ok(Ok(None)) | Ok(Err(_)) => Ok(None),
    }
}

/// Waits for the subject's next Ping (on connection 0) before `deadline`,
/// skipping nothing else; returns its nonce.
async fn subject_ping(peer: &mut Peer, deadline: Instant, within: Duration) -> CaseResult<u64> {
    match next_before(peer, deadline, "a Ping from the subject").await {
        Err(CaseError::Timeout(_)) => fail!("session.keepalive: no Ping from the subject within {within:?}"),
        Err(e) => Err(e),
        Ok(None) => fail!("session.keepalive: the subject closed the link instead of pinging"),
        Ok(Some(Message { connection_id, payload: Payload::Ping { nonce } })) => {
            ensure!(connection_id.is_root(), "session.message.connection-id: the subject pinged on {connection_id}");
            Ok(nonce)
        }
        Ok(Some(m)) => fail!("session.keepalive: the idle subject sent {:?} instead of a Ping", m.payload),
    }
}

pub async fn session_keepalive_on_by_default(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // vox-core's default keepalive pings every 10 s: an idle harness must
    // see a Ping within that (and a little more).
    let within = Duration::from_secs(13);
    let nonce = subject_ping(&mut peer, Instant::now() + within, within).await?;
    peer.send(0, Payload::Pong { nonce }).await?;
    let id = peer.own_id(0);
    peer.send(0, request(id, "echo", "pinged", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "pinged", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

pub async fn session_keepalive_unanswered_ping_closes_link(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server_with(&cmd, &[FAST_KEEPALIVE]).await?;
    let within = Duration::from_secs(3);
    subject_ping(&mut peer, Instant::now() + within, within).await?;
    let pinged = Instant::now();
    // Never answer: the link must close once the pong is 500 ms late, not
    // before, and not long after.
    loop {
        match next_before(&mut peer, pinged + PROMPT, "the link to close").await {
            Err(CaseError::Timeout(_)) => {
                fail!("session.keepalive: the link was still open {PROMPT:?} after an unanswered Ping (timeout 500 ms)")
            }
            Err(e) => return Err(e),
            Ok(None) => break,
            Ok(Some(_)) => continue,
        }
    }
    let took = pinged.elapsed();
    ensure!(
        took >= Duration::from_millis(250),
        "session.keepalive: the link closed {took:?} after the unanswered Ping, before the 500 ms timeout"
    );
    running.finish().await
}

pub async fn session_keepalive_answered_pings_keep_session(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server_with(&cmd, &[FAST_KEEPALIVE]).await?;
    // Four keepalive timeouts long, answering every Ping (Peer::recv does).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        peer.barrier().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        peer.pings_answered >= 3,
        "session.keepalive: {} Pings from the subject in 2 s at a 200 ms interval",
        peer.pings_answered
    );
    let id = peer.own_id(0);
    peer.send(0, request(id, "echo", "still here", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "still here", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

pub async fn session_keepalive_half_sent_frame_closes_link(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer, mut raw) = subject::server_raw(&cmd, &[FAST_KEEPALIVE]).await?;
    peer.barrier().await?;
    // From now on nothing goes through the link: a second round trip makes
    // sure everything it had queued (Pongs included) is written.
    peer.answer_pings = false;
    peer.barrier().await?;
    // rule: session.keepalive — a frame announced as 100 bytes of which 10
    // arrive, then one more byte every 100 ms (never the whole frame, and
    // it holds back every Pong).
    raw.write_all(&100u32.to_le_bytes()).await?;
    raw.write_all(&[0u8; 10]).await?;
    let started = Instant::now();
    let mut trickle = tokio::time::interval(Duration::from_millis(100));
    let closed = loop {
        tokio::select! {
            r = peer.rx.recv() => match r {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break true,
            },
            _ = trickle.tick() => {
                if started.elapsed() > PROMPT {
                    break false;
                }
                let _ = raw.write_all(&[0u8]).await;
            }
        }
    };
    ensure!(closed, "session.keepalive: a half-sent frame held the session for {PROMPT:?} (timeout 500 ms)");
    drop(raw);
    drop(peer);
    running.finish().await
}

pub async fn session_keepalive_ping_pong(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    for nonce in [0u64, 7, u64::MAX] {
        peer.send(0, Payload::Ping { nonce }).await?;
        let m = peer.expect("a Pong").await?;
        match m.payload {
            Payload::Pong { nonce: n } if n == nonce && m.connection_id.is_root() => {}
            other => {
                fail!("session.keepalive: Ping({nonce}) answered with {other:?} on connection {}", m.connection_id)
            }
        }
    }
    drop(peer);
    running.finish().await
}

pub async fn session_message_ping_on_virtual_connection_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    peer.send(
        conn,
        Payload::OpenConnection {
            parity: peer.parity(),
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
        },
    )
    .await?;
    peer.expect_where("AcceptConnection", |m| matches!(m.payload, Payload::AcceptConnection { .. })).await?;
    peer.send(conn, Payload::Ping { nonce: 1 }).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn session_message_undecodable_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    peer.send_raw(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn session_message_handshake_after_established_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn session_protocol_error_from_peer_ends_session(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    peer.send(0, Payload::ProtocolError { description: "spec-tests: deliberate".into() }).await?;
    peer.expect_closed("the subject to end the session after the peer's ProtocolError").await?;
    running.finish().await
}

pub async fn link_rx_eof_ends_session_cleanly(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    ensure!(peer.subject_parity == Parity::Odd || peer.subject_parity == Parity::Even, "parity");
    // Our request ids use the harness parity, the opposite of the subject's.
    let id = peer.own_id(0);
    peer.send(0, request(id, "reverse", "abc", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "cba", "reverse returned {s:?}");
    // Closing our side must end the subject's session and process cleanly.
    drop(peer);
    running.finish().await
}
