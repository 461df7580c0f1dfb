//! Virtual connections: open, accept, reject, parity, close.

use crate::error::CaseResult;
use crate::peer::{Peer, ok_value, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use vox_core::wire::{ConnectionSettings, Metadata, Parity, Payload};

fn open(parity: Parity) -> Payload {
    Payload::OpenConnection {
        parity,
        settings: ConnectionSettings::default(),
        metadata: Metadata::new().with_str("who", "spec-tests", 0),
    }
}

fn close_conn() -> Payload {
    Payload::CloseConnection { metadata: Metadata::new() }
}

/// Opens `conn` with request/channel parity `parity` and waits for the accept.
async fn open_accepted(peer: &mut Peer, conn: u64, parity: Parity) -> CaseResult {
    peer.send(conn, open(parity)).await?;
    let m = peer.expect("AcceptConnection").await?;
    match m.payload {
        Payload::AcceptConnection { settings, .. } if m.connection_id.0 == conn => {
            ensure!(
                settings.max_concurrent_requests > 0,
                "session.connection-settings: accept advertises {settings:?}"
            );
            Ok(())
        }
        other => fail!("connection.open: expected AcceptConnection on {conn}, got {other:?} on {}", m.connection_id),
    }
}

pub async fn connection_open_accept_and_call(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    // The opener picks the connection's parity; choose the one opposite to
    // our session parity to show it need not match.
    let parity = peer.parity().opposite();
    open_accepted(&mut peer, conn, parity).await?;
    let id = parity.first();
    peer.send(conn, request(id, "echo", "virtual", vec![])).await?;
    let s: String = ok_value(&peer.response(conn, id).await?)?;
    ensure!(s == "virtual", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

pub async fn connection_open_wrong_parity_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.subject_parity.first();
    peer.send(conn, open(peer.parity())).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_open_id_in_use_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    let p = peer.parity();
    open_accepted(&mut peer, conn, p).await?;
    peer.send(conn, open(peer.parity())).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_message_before_open_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(3);
    peer.send(conn, request(peer.parity().first(), "echo", "nobody", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_unknown_id_below_high_water_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (low, gap, high) = (peer.own_id(0), peer.own_id(1), peer.own_id(2));
    let p = peer.parity();
    open_accepted(&mut peer, low, p).await?;
    open_accepted(&mut peer, high, p).await?;
    // `gap` is below the highest connection id opened but was never opened:
    // not a late message for a released connection, an unknown one.
    peer.send(gap, request(p.first(), "echo", "never opened", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_open_rejection_over_limit(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let mut rejected = None;
    for n in 0..256 {
        let conn = peer.own_id(n);
        peer.send(conn, open(peer.parity())).await?;
        let m = peer.expect("AcceptConnection or RejectConnection").await?;
        match m.payload {
            Payload::AcceptConnection { .. } if m.connection_id.0 == conn => {}
            Payload::RejectConnection { .. } if m.connection_id.0 == conn => {
                rejected = Some(conn);
                break;
            }
            other => fail!("connection.open.rejection: open {conn} answered with {other:?}"),
        }
    }
    ensure!(rejected.is_some(), "connection.open.rejection: 256 connections accepted; no local limit");
    let id = peer.own_id(0);
    peer.send(0, request(id, "echo", "root", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "root", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

pub async fn connection_parity_request_id_follows_opener(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    open_accepted(&mut peer, conn, Parity::Odd).await?;
    // Connection parity Odd: an even request id is the acceptor's.
    peer.send(conn, request(2, "echo", "wrong", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_root_close_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    peer.send(0, close_conn()).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_close_then_message_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    let p = peer.parity();
    open_accepted(&mut peer, conn, p).await?;
    peer.send(conn, close_conn()).await?;
    peer.send(conn, request(peer.parity().first(), "echo", "after close", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn connection_close_cancels_in_flight_handlers(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let conn = peer.own_id(0);
    let p = peer.parity();
    open_accepted(&mut peer, conn, p).await?;
    let id = peer.parity().first();
    peer.send(conn, request(id, "sleep_ms", &600_000u64, vec![])).await?;
    peer.send(conn, close_conn()).await?;
    for m in peer.barrier().await? {
        ensure!(
            m.connection_id.0 != conn || matches!(m.payload, Payload::CloseConnection { .. }),
            "connection.close: after our CloseConnection the subject sent {:?} on {conn}",
            m.payload
        );
    }
    // The session and the root are unaffected.
    let rid = peer.own_id(0);
    peer.send(0, request(rid, "echo", "root", vec![])).await?;
    let s: String = ok_value(&peer.response(0, rid).await?)?;
    ensure!(s == "root", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}
