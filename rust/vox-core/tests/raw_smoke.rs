//! Smoke tests of the raw protocol peer against the runtime.
mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::*;
use common::testbed::*;
use vox_core::wire::{Parity, Payload};

#[tokio::test]
async fn session_keepalive_ping_gets_pong_with_same_nonce() {
    let (_s, mut raw) = raw_initiator(server_builder(), Parity::Odd).await;
    raw.send(0, Payload::Ping { nonce: 77 }).await;
    let m = raw.recv_until(|m| matches!(m.payload, Payload::Pong { .. })).await;
    assert_eq!(m.payload, Payload::Pong { nonce: 77 });
}

#[tokio::test]
async fn connection_root_close_is_protocol_error() {
    let (s, mut raw) = raw_initiator(server_builder(), Parity::Even).await;
    raw.send(0, Payload::CloseConnection { metadata: Default::default() }).await;
    let d = raw.expect_protocol_error().await;
    assert!(d.contains("connection.root"), "{d}");
    let reason = s.handle.closed().await;
    assert!(matches!(reason, vox_core::session::CloseReason::LocalProtocolError(_)), "{reason:?}");
}
