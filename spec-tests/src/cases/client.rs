//! The subject calls: it runs a client scenario and the harness plays the
//! Testbed server with raw messages (and misbehaves on purpose in the
//! violation cases).

use crate::error::CaseResult;
use crate::peer::{Peer, blob, mid};
use crate::subject::{self, Running, SubjectCmd};
use crate::{ensure, fail};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ConnectionSettings, Message, Metadata, MethodId, Parity, Payload,
    RequestId, ResponseBody,
};

#[derive(Serialize, Deserialize)]
enum MathError {
    DivisionByZero,
}

#[derive(Serialize, Deserialize)]
struct Person {
    id: u32,
    name: String,
    age: u8,
}

#[derive(Serialize, Deserialize)]
enum LookupError {
    NotFound(u32),
}

fn ok<T: Serialize + ?Sized>(v: &T) -> ResponseBody {
    ResponseBody::Ok(blob(v))
}

/// The harness's Testbed for plain (channel-free) methods.
fn answer(method: MethodId, args: &Blob) -> CaseResult<ResponseBody> {
    let a = args.bytes();
    Ok(if method == mid("echo") {
        ok(&wire::decode::<String>("args", a)?)
    } else if method == mid("reverse") {
        ok(&wire::decode::<String>("args", a)?.chars().rev().collect::<String>())
    } else if method == mid("divide") {
        match wire::decode::<(i64, i64)>("args", a)? {
            (_, 0) => ResponseBody::User(blob(&MathError::DivisionByZero)),
            (x, y) => ok(&(x / y)),
        }
    } else if method == mid("lookup") {
        match wire::decode::<u32>("args", a)? {
            1 => ok(&Person { id: 1, name: "Ada".into(), age: 36 }),
            id => ResponseBody::User(blob(&LookupError::NotFound(id))),
        }
    } else {
        ResponseBody::UnknownMethod
    })
}

fn respond(id: RequestId, ret: ResponseBody) -> Payload {
    Payload::Response { id, ret, metadata: Metadata::new() }
}

/// Checks a request id the subject chose on `conn`.
fn check_request_id(
    peer: &Peer,
    in_flight: &mut HashSet<(u64, u64)>,
    conn: u64,
    id: u64,
    parity: Parity,
) -> CaseResult {
    ensure!(
        Parity::of(id) == parity,
        "rpc.request.id: the subject used request id {id} on connection {conn}; its parity there is {parity:?}"
    );
    ensure!(in_flight.insert((conn, id)), "rpc.request.id: the subject reused request id {id} while in flight");
    let _ = peer;
    Ok(())
}

/// Serves plain calls on the root until the subject closes the link.
async fn serve_plain_until_eof(peer: &mut Peer) -> CaseResult {
    let mut in_flight = HashSet::new();
    while let Some(m) = peer.recv("requests from the subject").await? {
        match m.payload {
            Payload::Request { id, method_id, args, channels, .. } => {
                check_request_id(peer, &mut in_flight, m.connection_id.0, id.0, peer.subject_parity)?;
                ensure!(channels.is_empty(), "rpc.request: unexpected channels {channels:?}");
                let ret = answer(method_id, &args)?;
                in_flight.remove(&(m.connection_id.0, id.0));
                peer.send(m.connection_id.0, respond(id, ret)).await?;
            }
            Payload::ProtocolError { description } => fail!("the subject sent ProtocolError({description:?})"),
            other => fail!("unexpected {other:?} from the subject"),
        }
    }
    Ok(())
}

async fn client(cmd: &SubjectCmd, scenario: &str) -> CaseResult<(Running, Peer)> {
    subject::client(cmd, scenario, ConnectionSettings::default()).await
}

pub async fn client_basic_calls(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "basic_calls").await?;
    let r = client_basic_calls_body(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn client_basic_calls_body(peer: &mut Peer) -> CaseResult {
    serve_plain_until_eof(peer).await?;
    Ok(())
}

/// Waits for a request for `method`, checks it, returns (id, args, channels).
async fn expect_request(peer: &mut Peer, method: &str) -> CaseResult<(RequestId, Blob, Vec<ChannelDecl>)> {
    let m = peer.expect(&format!("a {method} request")).await?;
    match m.payload {
        Payload::Request { id, method_id, args, channels, .. }
            if method_id == mid(method) && m.connection_id.is_root() =>
        {
            ensure!(
                Parity::of(id.0) == peer.subject_parity,
                "rpc.request.id: request id {} has the wrong parity",
                id.0
            );
            for c in &channels {
                ensure!(
                    Parity::of(c.id.0) == peer.subject_parity,
                    "rpc.channel.allocation: channel id {} is not of the caller's parity",
                    c.id.0
                );
            }
            Ok((id, args, channels))
        }
        other => fail!("expected a {method} request, got {other:?}"),
    }
}

pub async fn client_sum_channel_respects_credit(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "sum_channel").await?;
    let r = client_sum_channel_respects_credit_body(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn client_sum_channel_respects_credit_body(peer: &mut Peer) -> CaseResult {
    let (id, _, channels) = expect_request(peer, "sum").await?;
    let [c] = channels.as_slice() else { fail!("rpc.request: sum announced {channels:?}, expected one channel") };
    ensure!(c.direction == ChannelDirection::CallerToHandler, "rpc.channel: sum's channel direction {:?}", c.direction);
    let ch = c.id;
    // Answer first: the channel outlives its request.
    peer.send(0, respond(id, ok(&5050i64))).await?;
    let mut credit = c.initial_credit;
    let mut got = Vec::new();
    loop {
        if credit == 0 {
            let (before, ended) = peer.try_barrier().await?;
            let mut closed = false;
            for m in before {
                match m.payload {
                    Payload::ChannelItem { .. } => {
                        fail!("rpc.flow-control.credit: the subject sent an item with no credit left")
                    }
                    Payload::CloseChannel { id, .. } if id == ch => closed = true,
                    other => fail!("unexpected {other:?}"),
                }
            }
            if closed {
                break;
            }
            if ended && got.len() == 100 {
                // All items arrived but the close did not: the loss of a
                // queued close at session end is what
                // client_channel_close_survives_root_release checks.
                return Ok(());
            }
            ensure!(
                !ended,
                "rpc.channel.lifecycle: the subject ended after {} of 100 items without CloseChannel",
                got.len()
            );
            peer.send(0, Payload::GrantCredit { id: ch, additional: 7 }).await?;
            credit += 7;
        }
        let Some(m) = peer.recv("sum items").await? else {
            fail!(
                "rpc.channel.lifecycle: the subject ended its session after {} of 100 items and no CloseChannel; the channel must outlive the response",
                got.len()
            );
        };
        match m.payload {
            Payload::ChannelItem { id, item } if id == ch => {
                credit -= 1;
                got.push(wire::decode::<i32>("item", item.bytes())?);
            }
            Payload::CloseChannel { id, .. } if id == ch => break,
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(got == (1..=100).collect::<Vec<i32>>(), "rpc.channel.lifecycle: items {got:?}");
    peer.expect_closed("the subject to finish").await?;
    Ok(())
}

pub async fn client_generate_channel(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "generate_channel").await?;
    let r = client_generate_channel_body(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn client_generate_channel_body(peer: &mut Peer) -> CaseResult {
    let (id, args, channels) = expect_request(peer, "generate").await?;
    let n: u32 = wire::decode("args", args.bytes())?;
    let [c] = channels.as_slice() else { fail!("rpc.request: generate announced {channels:?}") };
    ensure!(c.direction == ChannelDirection::HandlerToCaller, "rpc.channel: direction {:?}", c.direction);
    let mut credit = c.initial_credit;
    let mut next = 0u32;
    while next < n {
        while credit == 0 {
            match peer.expect("GrantCredit from the subject").await?.payload {
                Payload::GrantCredit { id, additional } if id == c.id => credit += additional,
                other => fail!("unexpected {other:?}"),
            }
        }
        peer.send(0, Payload::ChannelItem { id: c.id, item: blob(&(next as i32)) }).await?;
        credit -= 1;
        next += 1;
    }
    peer.send(0, Payload::CloseChannel { id: c.id, metadata: Metadata::new() }).await?;
    peer.send(0, respond(id, ok(&()))).await?;
    // Grants may still come; then the subject ends.
    while let Some(m) = peer.recv("the end of the scenario").await? {
        ensure!(matches!(m.payload, Payload::GrantCredit { .. }), "unexpected {:?}", m.payload);
    }
    Ok(())
}

pub async fn client_respects_max_concurrent_requests(cmd: SubjectCmd) -> CaseResult {
    let settings = ConnectionSettings { max_concurrent_requests: 1, ..ConnectionSettings::default() };
    let (running, mut peer) = subject::client(&cmd, "concurrent_echo", settings).await?;
    let r = one_at_a_time(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn one_at_a_time(peer: &mut Peer) -> CaseResult {
    for n in 0..8 {
        let m = peer.expect(&format!("echo request {n}")).await?;
        let Payload::Request { id, method_id, args, .. } = m.payload else { fail!("unexpected {:?}", m.payload) };
        if let Some(other) = peer.barrier().await?.first() {
            fail!(
                "rpc.flow-control.max-concurrent-requests: we advertised 1, but the subject sent {} while request {} was in flight",
                other.payload.kind(),
                id.0
            );
        }
        peer.send(0, respond(id, answer(method_id, &args)?)).await?;
    }
    peer.expect_closed("the subject to finish").await
}

pub async fn client_virtual_connection_close_crossing(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "virtual_connection").await?;
    let r = virtual_connection(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn virtual_connection(peer: &mut Peer) -> CaseResult {
    let m = peer.expect("OpenConnection").await?;
    let conn = m.connection_id.0;
    let Payload::OpenConnection { parity, .. } = m.payload else {
        fail!("connection.open: expected OpenConnection, got {:?}", m.payload)
    };
    ensure!(
        Parity::of(conn) == peer.subject_parity && conn != 0,
        "connection.open: the subject opened id {conn}, not of its session parity {:?}",
        peer.subject_parity
    );
    if let Some(early) = peer.barrier().await?.first() {
        fail!("connection.open: the subject sent {:?} before AcceptConnection", early.payload.kind());
    }
    peer.send(conn, Payload::AcceptConnection { settings: ConnectionSettings::default(), metadata: Metadata::new() })
        .await?;
    let m = peer.expect("a request on the virtual connection").await?;
    let Payload::Request { id, method_id, args, .. } = m.payload else { fail!("unexpected {:?}", m.payload) };
    ensure!(m.connection_id.0 == conn, "the request came on {}", m.connection_id);
    ensure!(Parity::of(id.0) == parity, "connection.parity: request id {} on a {parity:?} connection", id.0);
    peer.send(conn, respond(id, answer(method_id, &args)?)).await?;
    // Dropping its last caller closes the connection (asynchronously: root
    // calls may come first).
    let mut closed = false;
    while let Some(m) = peer.recv("CloseConnection and root calls").await? {
        match m.payload {
            Payload::CloseConnection { .. } if m.connection_id.0 == conn => {
                ensure!(!closed, "connection.close: CloseConnection twice");
                closed = true;
                // Our own close crosses theirs: both sides closing is fine.
                peer.send(conn, Payload::CloseConnection { metadata: Metadata::new() }).await?;
            }
            Payload::Request { id, method_id, args, .. } if m.connection_id.is_root() => {
                peer.send(0, respond(id, answer(method_id, &args)?)).await?;
            }
            other => fail!("unexpected {other:?} on connection {}", m.connection_id),
        }
    }
    ensure!(
        closed,
        "rpc.caller.liveness: the virtual connection's last caller was dropped but no CloseConnection came"
    );
    Ok(())
}

pub async fn client_cancel_late_response_ignored(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "cancel").await?;
    let r = cancel(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn cancel(peer: &mut Peer) -> CaseResult {
    let (sleeping, _, _) = expect_request(peer, "sleep_ms").await?;
    let mut cancelled = false;
    while let Some(m) = peer.recv("CancelRequest and further calls").await? {
        match m.payload {
            Payload::CancelRequest { id } if id == sleeping => {
                cancelled = true;
                // Our answer crosses the cancel: the subject must ignore it.
                peer.send(0, respond(id, ok(&()))).await?;
            }
            Payload::Request { id, method_id, args, .. } => {
                peer.send(0, respond(id, answer(method_id, &args)?)).await?;
            }
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(cancelled, "rpc.cancel: the subject abandoned a call without sending CancelRequest");
    Ok(())
}

pub async fn client_open_rejected(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "open_rejected").await?;
    let r = async {
        let m = peer.expect("OpenConnection").await?;
        ensure!(matches!(m.payload, Payload::OpenConnection { .. }), "expected OpenConnection, got {:?}", m.payload);
        peer.send(
            m.connection_id.0,
            Payload::RejectConnection { metadata: Metadata::new().with_str("reason", "full", 0) },
        )
        .await?;
        serve_plain_until_eof(&mut peer).await
    }
    .await;
    drop(peer);
    running.conclude(r).await
}

enum Misbehave {
    DuplicateResponse,
    UnknownResponse,
    ItemWithoutCredit,
}

/// The `await_protocol_error` scenario: the subject calls generate (never
/// reading) and echo; `misbehave` answers wrongly; the subject must send
/// `ProtocolError`, close, and report a local protocol error.
async fn subject_must_object(cmd: SubjectCmd, misbehave: Misbehave) -> CaseResult {
    let (running, mut peer) = client(&cmd, "await_protocol_error").await?;
    let r = misbehave_on(&mut peer, misbehave).await;
    drop(peer);
    running.conclude(r).await
}

async fn misbehave_on(peer: &mut Peer, misbehave: Misbehave) -> CaseResult {
    let mut generate: Option<ChannelDecl> = None;
    let mut echo: Option<RequestId> = None;
    while generate.is_none() || echo.is_none() {
        let m: Message = peer.expect("the generate and echo requests").await?;
        match m.payload {
            Payload::Request { method_id, channels, .. } if method_id == mid("generate") => {
                let [c] = channels.as_slice() else { fail!("generate announced {channels:?}") };
                generate = Some(*c);
            }
            Payload::Request { id, method_id, .. } if method_id == mid("echo") => echo = Some(id),
            other => fail!("unexpected {other:?}"),
        }
    }
    let (Some(ch), Some(echo)) = (generate, echo) else { fail!("internal: requests missing") };
    match misbehave {
        Misbehave::DuplicateResponse => {
            peer.send(0, respond(echo, ok("x"))).await?;
            peer.send(0, respond(echo, ok("x"))).await?;
        }
        Misbehave::UnknownResponse => {
            peer.send(0, respond(RequestId(echo.0 + 1000), ok("x"))).await?;
        }
        Misbehave::ItemWithoutCredit => {
            // The subject never reads, so it never grants: one item beyond
            // the initial credit is a violation.
            for i in 0..=ch.initial_credit {
                peer.send(0, Payload::ChannelItem { id: ch.id, item: blob(&(i as i32)) }).await?;
            }
        }
    }
    peer.expect_protocol_error().await.map(|_| ())
}

pub async fn client_duplicate_response_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    subject_must_object(cmd, Misbehave::DuplicateResponse).await
}

pub async fn client_response_never_requested_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    subject_must_object(cmd, Misbehave::UnknownResponse).await
}

pub async fn client_item_without_credit_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    subject_must_object(cmd, Misbehave::ItemWithoutCredit).await
}

pub async fn client_drop_root_ends_session(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "drop_root").await?;
    let r = async {
        let (id, args, _) = expect_request(&mut peer, "echo").await?;
        peer.send(0, respond(id, answer(mid("echo"), &args)?)).await?;
        if let Some(m) = peer.recv("the end of the session").await? {
            ensure!(
                !matches!(m.payload, Payload::CloseConnection { .. }),
                "rpc.caller.liveness: the subject sent CloseConnection for connection {} (never for the root)",
                m.connection_id
            );
            fail!("unexpected {:?} after the root caller was dropped", m.payload);
        }
        Ok(())
    }
    .await;
    drop(peer);
    running.conclude(r).await
}

pub async fn client_channel_close_survives_root_release(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "release_after_close").await?;
    let r = async {
        let (id, _, channels) = expect_request(&mut peer, "sum").await?;
        let [c] = channels.as_slice() else { fail!("rpc.request: sum announced {channels:?}") };
        peer.send(0, respond(id, ok(&3i64))).await?;
        let mut got = Vec::new();
        let mut closed = false;
        while let Some(m) = peer.recv("items, close and the end of the session").await? {
            match m.payload {
                Payload::ChannelItem { id, item } if id == c.id => got.push(wire::decode::<i32>("item", item.bytes())?),
                Payload::CloseChannel { id, .. } if id == c.id => closed = true,
                other => fail!("unexpected {other:?}"),
            }
        }
        ensure!(got == [1, 2], "rpc.channel.lifecycle: items {got:?} before the session ended, expected [1, 2]");
        ensure!(
            closed,
            "rpc.channel.close: the subject's close() succeeded, then releasing the root ended the session without CloseChannel on the wire"
        );
        Ok(())
    }
    .await;
    drop(peer);
    running.conclude(r).await
}
