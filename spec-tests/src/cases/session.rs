//! Session-level messages: keepalive, connection ids, protocol errors.

use crate::error::CaseResult;
use crate::peer::{ok_value, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use vox_core::wire::{ConduitMsg, ConnectionSettings, HandshakeMsg, Metadata, Parity, Payload};

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
