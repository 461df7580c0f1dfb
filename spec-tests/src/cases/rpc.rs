//! Requests and responses.

use crate::error::CaseResult;
use crate::peer::{Peer, blob, mid, ok_value, request, user_value};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use vox_core::wire::{
    Metadata, MetadataEntry, MetadataValue, MethodId, NO_PROPAGATE, Payload, RequestId, ResponseBody, SENSITIVE,
};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum MathError {
    DivisionByZero,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Person {
    id: u32,
    name: String,
    age: u8,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum LookupError {
    NotFound(u32),
}

async fn echo_ok(peer: &mut Peer, conn: u64, id: u64, s: &str) -> CaseResult {
    peer.send(conn, request(id, "echo", s, vec![])).await?;
    let got: String = ok_value(&peer.response(conn, id).await?)?;
    ensure!(got == s, "echo returned {got:?}, expected {s:?}");
    Ok(())
}

pub async fn rpc_request_testbed_calls(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (a, b, c, d) = (peer.own_id(0), peer.own_id(1), peer.own_id(2), peer.own_id(3));
    echo_ok(&mut peer, 0, a, "hello").await?;
    peer.send(0, request(b, "reverse", "hello", vec![])).await?;
    let r: String = ok_value(&peer.response(0, b).await?)?;
    ensure!(r == "olleh", "reverse returned {r:?}");
    peer.send(0, request(c, "divide", &(9i64, 3i64), vec![])).await?;
    let q: i64 = ok_value(&peer.response(0, c).await?)?;
    ensure!(q == 3, "divide(9, 3) returned {q}");
    peer.send(0, request(d, "lookup", &2u32, vec![])).await?;
    let p: Person = ok_value(&peer.response(0, d).await?)?;
    ensure!(p.id == 2, "lookup(2) returned {p:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_echo_bytes_size_sweep(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let sizes = [0usize, 1, 127, 128, 255, 256, 4095, 4096, 65535, 65536, 1 << 20];
    for (n, size) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*size).map(|i| (i * 31 + 7) as u8).collect();
        let id = peer.own_id(n as u64);
        peer.send(0, request(id, "echo_bytes", &data, vec![])).await?;
        let back: Vec<u8> = match ok_value(&peer.response(0, id).await?) {
            Ok(v) => v,
            Err(e) => fail!("echo_bytes({size} bytes): {e}"),
        };
        ensure!(back == data, "echo_bytes({size} bytes) returned {} different bytes", back.len());
    }
    drop(peer);
    running.finish().await
}

pub async fn rpc_error_scope_user_errors(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let ids: Vec<u64> = (0..4).map(|n| peer.own_id(n)).collect();
    peer.send(0, request(ids[0], "divide", &(1i64, 0i64), vec![])).await?;
    peer.send(0, request(ids[1], "lookup", &77u32, vec![])).await?;
    peer.send(0, request(ids[2], "divide", &(8i64, 2i64), vec![])).await?;
    peer.send(0, request(ids[3], "lookup", &1u32, vec![])).await?;
    let e: MathError = user_value(&peer.response(0, ids[0]).await?)?;
    ensure!(e == MathError::DivisionByZero, "divide(1, 0) error {e:?}");
    let e: LookupError = user_value(&peer.response(0, ids[1]).await?)?;
    ensure!(e == LookupError::NotFound(77), "lookup(77) error {e:?}");
    let q: i64 = ok_value(&peer.response(0, ids[2]).await?)?;
    ensure!(q == 4, "divide(8, 2) returned {q}");
    let p: Person = ok_value(&peer.response(0, ids[3]).await?)?;
    ensure!(p.id == 1, "lookup(1) returned {p:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_unknown_method_keeps_connection(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (a, b) = (peer.own_id(0), peer.own_id(1));
    peer.send(
        0,
        Payload::Request {
            id: RequestId(a),
            method_id: MethodId::from_names("Testbed", "no_such_method"),
            args: blob(&()),
            channels: vec![],
            metadata: Metadata::new(),
        },
    )
    .await?;
    let body = peer.response(0, a).await?;
    ensure!(body == ResponseBody::UnknownMethod, "rpc.unknown-method: got {body:?}");
    echo_ok(&mut peer, 0, b, "still here").await?;
    drop(peer);
    running.finish().await
}

pub async fn rpc_invalid_payload_keeps_connection(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (a, b) = (peer.own_id(0), peer.own_id(1));
    // A string length prefix far beyond the bytes that follow.
    peer.send(
        0,
        Payload::Request {
            id: RequestId(a),
            method_id: mid("echo"),
            args: vox_core::wire::Blob::new(bytes::Bytes::from_static(&[0xff, 0x7f, 1])),
            channels: vec![],
            metadata: Metadata::new(),
        },
    )
    .await?;
    let body = peer.response(0, a).await?;
    ensure!(matches!(body, ResponseBody::InvalidPayload { .. }), "rpc.invalid-payload: got {body:?}");
    echo_ok(&mut peer, 0, b, "still here").await?;
    drop(peer);
    running.finish().await
}

pub async fn rpc_pipelining_slow_handler_does_not_block(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let slow = peer.own_id(0);
    peer.send(0, request(slow, "sleep_ms", &600_000u64, vec![])).await?;
    for n in 1..=10 {
        let id = peer.own_id(n);
        peer.send(0, request(id, "echo", &format!("m{n}"), vec![])).await?;
    }
    // Responses may come in any order; all must come while `slow` runs.
    for n in 1..=10 {
        let id = peer.own_id(n);
        let s: String = ok_value(&peer.response(0, id).await?)?;
        ensure!(s == format!("m{n}"), "echo {n} returned {s:?}");
    }
    ensure!(!peer.has_stashed(0, slow), "rpc.pipelining: the slow call answered early");
    peer.send(0, Payload::CancelRequest { id: RequestId(slow) }).await?;
    let body = peer.response(0, slow).await?;
    ensure!(body == ResponseBody::Cancelled, "rpc.cancel: got {body:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_cancel_gets_cancelled_response(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let id = peer.own_id(0);
    peer.send(0, request(id, "sleep_ms", &600_000u64, vec![])).await?;
    peer.send(0, Payload::CancelRequest { id: RequestId(id) }).await?;
    let body = peer.response(0, id).await?;
    ensure!(body == ResponseBody::Cancelled, "rpc.cancel: expected Cancelled, got {body:?}");
    let extra = peer.barrier().await?;
    ensure!(extra.is_empty(), "rpc.response.one-per-request: more after the Cancelled response: {extra:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_cancel_crossing_after_response_is_ignored(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (a, b) = (peer.own_id(0), peer.own_id(1));
    echo_ok(&mut peer, 0, a, "done").await?;
    peer.send(0, Payload::CancelRequest { id: RequestId(a) }).await?;
    let extra = peer.barrier().await?;
    ensure!(extra.is_empty(), "rpc.cancel.crossing: a cancel for an answered request produced {extra:?}");
    echo_ok(&mut peer, 0, b, "after").await?;
    drop(peer);
    running.finish().await
}

pub async fn rpc_request_id_wrong_parity_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let wrong = peer.subject_parity.first();
    peer.send(0, request(wrong, "echo", "x", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_request_id_in_flight_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let id = peer.own_id(0);
    peer.send(0, request(id, "sleep_ms", &600_000u64, vec![])).await?;
    peer.send(0, request(id, "echo", "again", vec![])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_response_one_per_request_pipelined(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for n in 0..32 {
        let id = peer.own_id(n);
        seen.insert(id, 0);
        peer.send(0, request(id, "echo", &format!("{n}"), vec![])).await?;
    }
    let mut answered = 0;
    while answered < 32 {
        let m = peer.expect("32 responses").await?;
        if let Payload::Response { id, .. } = m.payload {
            let Some(count) = seen.get_mut(&id.0) else {
                fail!("rpc.response.one-per-request: response to unknown id {}", id.0)
            };
            *count += 1;
            ensure!(*count == 1, "rpc.response.one-per-request: second response for id {}", id.0);
            answered += 1;
        }
    }
    let extra = peer.barrier().await?;
    ensure!(extra.is_empty(), "rpc.response.one-per-request: extra messages {extra:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_response_never_requested_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let id = peer.subject_parity.first() + 1000;
    peer.send(0, Payload::Response { id: RequestId(id), ret: ResponseBody::Ok(blob(&())), metadata: Metadata::new() })
        .await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_metadata_order_duplicates_and_flags(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let id = peer.own_id(0);
    let unknown_flag = 1u64 << 40;
    let sent = Metadata(vec![
        MetadataEntry { key: "k".into(), value: MetadataValue::String("one".into()), flags: 0 },
        MetadataEntry { key: "hidden".into(), value: MetadataValue::U64(1), flags: NO_PROPAGATE },
        MetadataEntry { key: "k".into(), value: MetadataValue::U64(2), flags: unknown_flag },
        MetadataEntry { key: "secret".into(), value: MetadataValue::Bytes(vec![1, 2, 3].into()), flags: SENSITIVE },
        MetadataEntry { key: "x-unknown-key".into(), value: MetadataValue::String("ignored".into()), flags: 0 },
    ]);
    peer.send(
        0,
        Payload::Request {
            id: RequestId(id),
            method_id: mid("echo"),
            args: blob("meta"),
            channels: vec![],
            metadata: sent.clone(),
        },
    )
    .await?;
    let m = peer
        .expect_where("the echo response", |m| matches!(&m.payload, Payload::Response { id: r, .. } if r.0 == id))
        .await?;
    let Payload::Response { ret, metadata, .. } = m.payload else { fail!("internal") };
    let s: String = ok_value(&ret)?;
    ensure!(s == "meta", "echo returned {s:?}");
    let expected: Vec<MetadataEntry> = sent.0.iter().filter(|e| e.flags & NO_PROPAGATE == 0).cloned().collect();
    ensure!(
        metadata.0 == expected,
        "rpc.metadata: echo forwarded {:?}, expected {:?} (order and duplicates kept, unknown flags preserved, NO_PROPAGATE stripped)",
        metadata.0.iter().map(|e| &e.key).collect::<Vec<_>>(),
        expected.iter().map(|e| &e.key).collect::<Vec<_>>()
    );
    drop(peer);
    running.finish().await
}

pub async fn rpc_max_concurrent_requests_exceeded_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let limit = u64::from(peer.subject_root.max_concurrent_requests);
    ensure!(limit <= 4096, "the subject advertises max_concurrent_requests = {limit}; too many to test");
    for n in 0..=limit {
        let id = peer.own_id(n);
        peer.send(0, request(id, "sleep_ms", &600_000u64, vec![])).await?;
    }
    peer.expect_protocol_error().await?;
    running.finish().await
}

/// rule: rpc.deadline — a request carrying 300 ms of remaining time to a
/// handler that would sleep ten minutes: the subject stops it and answers
/// `DeadlineExceeded` around the deadline (the harness never cancels).
pub async fn rpc_deadline_exceeded_stops_the_handler(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let id = peer.own_id(0);
    let mut req = request(id, "sleep_ms", &600_000u64, vec![]);
    if let Payload::Request { metadata, .. } = &mut req {
        *metadata = vox_core::wire::Metadata::new().with_u64(
            // The key of docs/spec/wire.md section 6 (the harness speaks
            // the wire, not the runtime's API).
            "vox-deadline-us",
            300_000,
            vox_core::wire::NO_PROPAGATE,
        );
    }
    let sent = std::time::Instant::now();
    peer.send(0, req).await?;
    let body = peer.response(0, id).await?;
    let took = sent.elapsed();
    ensure!(body == ResponseBody::DeadlineExceeded, "rpc.deadline: expected DeadlineExceeded, got {body:?}");
    ensure!(
        took >= std::time::Duration::from_millis(250) && took < std::time::Duration::from_secs(5),
        "rpc.deadline: answered after {took:?} for a 300 ms deadline"
    );
    // The handler is gone: the connection serves the next call at once.
    let next = peer.own_id(1);
    echo_ok(&mut peer, 0, next, "after the deadline").await?;
    drop(peer);
    running.finish().await
}
