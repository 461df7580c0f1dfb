//! Hostile peers: limits on unauthenticated setups (`session.setup.limits`),
//! bounded decoding (`session.decode.bounded`) and per-session budgets on
//! legal but costly behaviour (`session.abuse-budget`).

use crate::error::{CaseError, CaseResult};
use crate::peer::{HelloAnswer, PATIENCE, Peer, blob, decl, hello_msg, mid, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use vox_core::wire::{
    self, ChannelDirection, ChannelId, ConduitMode, ConduitMsg, ConnectionId, ConnectionSettings, Message, Metadata,
    MetadataValue, Parity, Payload, RequestId, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello,
};

/// How soon the subject must close a link it has no reason to keep: a
/// generous bound, far below the 10 s it would take to wait out a full
/// handshake timeout.
const PROMPT: Duration = Duration::from_secs(3);

/// The setup-phase message limit (64 KiB by default, rule
/// `session.setup.limits`).
const SETUP_LIMIT: usize = 64 * 1024;

/// Reads from a raw stream until the subject closes it (end of stream or a
/// reset) or `within` passes; returns whether it closed.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, drain).await.is_ok()
}

fn bare_prologue() -> TransportHello {
    TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode: ConduitMode::Bare }
}

// ------------------------------------------------------------ setup limits

pub async fn session_setup_limits_oversized_first_message_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let mut stream = subject::dial_raw(addr).await?;
        let (mut rd, mut wr) = stream.split();
        // A first message of 15 MiB (under the session's 16 MiB maximum,
        // far over the setup limit) announced before any prologue, of which
        // only 128 KiB ever comes: the subject must close from the length
        // prefix, neither waiting for the rest nor allocating it.
        let write = async {
            let _ = wr.write_all(&(15u32 << 20).to_le_bytes()).await;
            let chunk = vec![0u8; 16 * 1024];
            for _ in 0..8 {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        let closed = tokio::select! {
            () = write => false,
            c = closed_within(&mut rd, PROMPT) => c,
        };
        ensure!(
            closed,
            "session.setup.limits: a first message announcing 15 MiB (setup limit {SETUP_LIMIT} bytes) kept the link open for {PROMPT:?}"
        );
        Ok(())
    }
    .await;
    running.conclude_stopped(result).await
}

pub async fn session_setup_limits_oversized_hello_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let mut peer = Peer::new(subject::dial(addr).await?);
        peer.initiate_prologue(bare_prologue()).await?;
        // One feature of 80 KiB: few enough features, too many bytes.
        let mut hello = hello_msg(Parity::Odd, &[], None);
        hello.features = vec!["x".repeat(SETUP_LIMIT + 16 * 1024)];
        match tokio::time::timeout(PROMPT, peer.hello(hello)).await {
            Err(_) => {
                fail!("session.setup.limits: an 80 KiB Hello was neither refused nor the link closed within {PROMPT:?}")
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(HelloAnswer::Yourself(_))) => {
                fail!(
                    "session.setup.limits: an 80 KiB Hello (setup limit {SETUP_LIMIT} bytes) was answered HelloYourself"
                )
            }
            Ok(Ok(HelloAnswer::Sorry(_))) => peer.expect_closed("the link to close after Sorry").await?,
            Ok(Ok(HelloAnswer::Closed)) => {}
        }
        Ok(())
    }
    .await;
    running.conclude_stopped(result).await
}

pub async fn session_setup_limits_silent_link_closed_after_prologue_deadline(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        // Over the run's transport (a TLS handshake or WebSocket upgrade
        // is part of the link's setup, under the same deadline), then say
        // nothing at all: the prologue deadline (2 s by default) must close
        // the link; 6 s is a generous bound, and well below the 10 s
        // handshake timeout.
        let mut link = subject::dial(addr).await?;
        let bound = Duration::from_secs(6);
        let started = Instant::now();
        let drain = async { while let Ok(Some(_)) = link.rx.recv().await {} };
        ensure!(
            tokio::time::timeout(bound, drain).await.is_ok(),
            "session.setup.limits: a link that never sent its prologue was still open after {bound:?}"
        );
        let took = started.elapsed();
        ensure!(
            took >= Duration::from_millis(500),
            "session.setup.limits: a silent link was closed after {took:?}, before any reasonable prologue deadline"
        );
        Ok(())
    }
    .await;
    running.conclude_stopped(result).await
}

// ------------------------------------------------------- bounded decoding

pub async fn session_decode_bounded_hello_features_refused(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let mut peer = Peer::new(subject::dial(addr).await?);
        peer.initiate_prologue(bare_prologue()).await?;
        // 33 short features: a small message, one more feature than the
        // default limit of 32.
        let mut hello = hello_msg(Parity::Odd, &[], None);
        hello.features = (0..33).map(|i| format!("spec-tests.feature-{i}")).collect();
        match tokio::time::timeout(PROMPT, peer.hello(hello)).await {
            Err(_) => fail!(
                "session.decode.bounded: a Hello with 33 features was neither refused nor closed within {PROMPT:?}"
            ),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(HelloAnswer::Yourself(_))) => {
                fail!("session.decode.bounded: a Hello with 33 features (limit 32) was answered HelloYourself")
            }
            Ok(Ok(HelloAnswer::Sorry(_))) => peer.expect_closed("the link to close after Sorry").await?,
            Ok(Ok(HelloAnswer::Closed)) => {}
        }
        Ok(())
    }
    .await;
    running.conclude_stopped(result).await
}

/// `n` metadata entries.
fn metadata(n: usize) -> Metadata {
    let mut md = Metadata::new();
    for i in 0..n {
        md.push(format!("k{i}"), MetadataValue::U64(i as u64), 0);
    }
    md
}

pub async fn session_decode_bounded_request_metadata_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // At the default limit (128 entries): served.
    let id = peer.own_id(0);
    let at_limit = Payload::Request {
        id: RequestId(id),
        method_id: mid("echo"),
        args: blob("at the limit"),
        channels: vec![],
        metadata: metadata(128),
    };
    peer.send(0, at_limit).await?;
    let s: String = crate::peer::ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "at the limit", "echo returned {s:?}");
    // One more: a violation.
    let id = peer.own_id(1);
    let over = Payload::Request {
        id: RequestId(id),
        method_id: mid("echo"),
        args: blob("over the limit"),
        channels: vec![],
        metadata: metadata(129),
    };
    peer.send(0, over).await?;
    match peer.expect_protocol_error().await {
        // The subject served it and echoed the entries back, more than the
        // harness itself decodes.
        Err(CaseError::Codec(e)) => {
            fail!("session.decode.bounded: the subject served a request with 129 metadata entries (its answer: {e})")
        }
        other => other?,
    };
    running.finish().await
}

pub async fn session_decode_bounded_request_channels_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let to_handler = ChannelDirection::CallerToHandler;
    // At the default limit (128 declarations): served.
    let id = peer.own_id(0);
    let decls = (0..128).map(|n| decl(peer.own_id(n), to_handler, 0)).collect();
    peer.send(0, request(id, "sleep_ms", &0u64, decls)).await?;
    let () = crate::peer::ok_value(&peer.response(0, id).await?)?;
    // One more: a violation.
    let id = peer.own_id(1);
    let decls = (128..257).map(|n| decl(peer.own_id(n), to_handler, 0)).collect();
    peer.send(0, request(id, "sleep_ms", &0u64, decls)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

// ------------------------------------------------------------ abuse budgets

/// The nonce of the Ping that follows a flood (a round trip: the subject
/// has read the whole flood once it answers).
const SYNC_NONCE: u64 = 0x5f10_0d5f_100d;

/// The longest a flood goes on sending.
const FLOOD_TIME: Duration = Duration::from_secs(12);

/// What a flood saw.
#[derive(Debug, Default)]
struct Flood {
    /// Batches sent.
    sent: u64,
    /// Messages from the subject that answer the flood.
    answers: u64,
    /// The first few other messages (the subject's keepalive pings are
    /// answered and not listed).
    other: Vec<Payload>,
    /// The `ProtocolError`'s description.
    error: Option<String>,
}

/// Sends `batch(0)`, `batch(1)`, ... (each a list of messages) as fast as
/// the link takes them, at most `cap` batches or for [`FLOOD_TIME`], while
/// reading everything the subject sends, so that its outbound queue never
/// fills and blocks its reading. With `window`, at most that many batches
/// wait for an answer at once (requests within `max_concurrent_requests`).
/// Stops sending at the subject's `ProtocolError`, which must be followed
/// by the end of the link within [`PROMPT`]. Without one, a Ping after the
/// flood and two seconds of quiet after its Pong end the flood.
async fn flood<B, A>(peer: &mut Peer, cap: u64, window: Option<usize>, mut batch: B, is_answer: A) -> CaseResult<Flood>
where
    B: FnMut(u64) -> Vec<(u64, Payload)> + Send,
    A: Fn(&Message) -> bool + Send,
{
    let stop = AtomicBool::new(false);
    let credit = Semaphore::new(window.unwrap_or(Semaphore::MAX_PERMITS));
    let tx = &peer.tx;
    let rx = &mut peer.rx;
    let encode = |connection_id: u64, payload: Payload| -> CaseResult<Bytes> {
        let m = ConduitMsg::Message(Message { connection_id: ConnectionId(connection_id), payload });
        Ok(Bytes::from(wire::encode("ConduitMsg", &m)?))
    };
    let send = async {
        let started = Instant::now();
        let mut sent = 0u64;
        'flood: while sent < cap && started.elapsed() < FLOOD_TIME && !stop.load(Ordering::Relaxed) {
            if window.is_some() {
                match credit.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
            }
            for (conn, payload) in batch(sent) {
                if tx.send(encode(conn, payload)?).await.is_err() {
                    break 'flood;
                }
            }
            sent += 1;
        }
        let _ = tx.send(encode(0, Payload::Ping { nonce: SYNC_NONCE })?).await;
        Ok::<u64, CaseError>(sent)
    };
    let read = async {
        let mut out = Flood::default();
        let mut error_at: Option<Instant> = None;
        let mut synced = false;
        let result = loop {
            let wait = match error_at {
                Some(at) => tokio::time::timeout_at(at + PROMPT, rx.recv()).await,
                None if synced => tokio::time::timeout(Duration::from_secs(2), rx.recv()).await,
                None => tokio::time::timeout(PATIENCE, rx.recv()).await,
            };
            let bytes = match wait {
                Err(_) if error_at.is_some() => {
                    break Err(CaseError::Failed(format!(
                        "session.protocol-error: the subject sent ProtocolError({:?}) but kept the link open for {PROMPT:?}",
                        out.error.as_deref().unwrap_or_default()
                    )));
                }
                Err(_) if synced => break Ok(()),
                Err(_) => break Err(CaseError::Timeout("the subject's answers to the flood".into())),
                Ok(Ok(Some(b))) => b,
                Ok(Ok(None)) | Ok(Err(_)) => break Ok(()),
            };
            let m = match wire::decode::<ConduitMsg>("ConduitMsg", &bytes) {
                Ok(ConduitMsg::Message(m)) => m,
                Ok(ConduitMsg::Handshake(h)) => {
                    break Err(CaseError::Failed(format!("session.message: handshake message {h:?} during the flood")));
                }
                Err(e) => break Err(e.into()),
            };
            match &m.payload {
                Payload::ProtocolError { description } => {
                    if !m.connection_id.is_root() {
                        break Err(CaseError::Failed(format!(
                            "session.message.connection-id: ProtocolError on connection {}",
                            m.connection_id
                        )));
                    }
                    out.error = Some(description.clone());
                    error_at = Some(Instant::now());
                    stop.store(true, Ordering::Relaxed);
                    credit.close();
                }
                Payload::Pong { nonce } if *nonce == SYNC_NONCE => synced = true,
                Payload::Ping { nonce } if m.connection_id.is_root() => {
                    let _ = tx.send(encode(0, Payload::Pong { nonce: *nonce })?).await;
                }
                _ if is_answer(&m) => {
                    out.answers += 1;
                    if window.is_some() {
                        credit.add_permits(1);
                    }
                }
                _ => {
                    if out.other.len() < 3 {
                        out.other.push(m.payload.clone());
                    }
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        credit.close();
        result.map(|()| out)
    };
    let (sent, read) = tokio::join!(send, read);
    let mut out = read?;
    out.sent = sent?;
    Ok(out)
}

/// Checks a flood against budget `budget` of burst `burst`: the subject
/// answered the flood, then sent a `ProtocolError` naming the budget (and
/// closed, checked by [`flood`]), and sent nothing unexpected.
fn check_flood(f: &Flood, budget: &str, burst: u64, what: &str) -> CaseResult {
    ensure!(f.other.is_empty(), "session.abuse-budget: during the flood of {what} the subject sent {:?}", f.other);
    let Some(d) = &f.error else {
        fail!(
            "session.abuse-budget: {} {what} sent as fast as possible ({} answered) and no ProtocolError for the budget `{budget}`",
            f.sent,
            f.answers
        )
    };
    ensure!(
        d.contains(&format!("`{budget}`")),
        "session.abuse-budget: the ProtocolError does not name the budget `{budget}`: {d:?}"
    );
    // The budget is generous: at least its burst is served. (Half of it
    // here: answers still queued when the teardown starts may be dropped.)
    ensure!(
        f.answers >= burst / 2,
        "session.abuse-budget: the budget `{budget}` (burst {burst}) ran out after {} answered {what}",
        f.answers
    );
    Ok(())
}

pub async fn session_abuse_budget_pings(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // Default budget: burst 1,000, 100 per second.
    let f = flood(
        &mut peer,
        20_000,
        None,
        |i| vec![(0, Payload::Ping { nonce: i })],
        |m| matches!(m.payload, Payload::Pong { .. }),
    )
    .await?;
    check_flood(&f, "pings", 1_000, "Pings")?;
    drop(peer);
    running.finish().await
}

pub async fn session_abuse_budget_rejected_opens(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // The subject rejects an open that names a service it does not serve.
    // Default budget: burst 1,000, 100 per second.
    let parity = peer.parity();
    let first = parity.first();
    let md = Metadata::new().with_str("vox-service", "SpecTestsNoSuchService", 0);
    let f = flood(
        &mut peer,
        20_000,
        None,
        move |i| {
            let open =
                Payload::OpenConnection { parity, settings: ConnectionSettings::default(), metadata: md.clone() };
            vec![(first + 2 * i, open)]
        },
        |m| matches!(m.payload, Payload::RejectConnection { .. }),
    )
    .await?;
    check_flood(&f, "rejected-opens", 1_000, "rejected OpenConnections")?;
    drop(peer);
    running.finish().await
}

pub async fn session_abuse_budget_cancelled_requests(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // Each request's handler sleeps, so each cancel hits a request in
    // flight; at most max_concurrent_requests wait for their Cancelled
    // response at once. Default budget: burst 10,000, 1,000 per second.
    let window = usize::try_from(peer.subject_root.max_concurrent_requests).unwrap_or(1).max(1);
    let first = peer.parity().first();
    let f = flood(
        &mut peer,
        200_000,
        Some(window),
        move |i| {
            let id = first + 2 * i;
            vec![(0, request(id, "sleep_ms", &600_000u64, vec![])), (0, Payload::CancelRequest { id: RequestId(id) })]
        },
        |m| matches!(m.payload, Payload::Response { .. }),
    )
    .await?;
    check_flood(&f, "cancelled-requests", 10_000, "cancelled requests")?;
    drop(peer);
    running.finish().await
}

pub async fn session_abuse_budget_late_messages(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    // A channel the subject sends on, run to its end: closed by the
    // subject, the call answered. Grants for it are late from then on
    // (rule rpc.channel.crossing: tolerated, counted).
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &2u32, vec![decl(ch, ChannelDirection::HandlerToCaller, 16)])).await?;
    let (mut closed, mut answered) = (false, false);
    while !(closed && answered) {
        let m = peer.expect("generate(2): its items, close and response").await?;
        match m.payload {
            Payload::ChannelItem { id, .. } if id.0 == ch => {}
            Payload::CloseChannel { id, .. } if id.0 == ch => closed = true,
            Payload::Response { id, .. } if id.0 == req => answered = true,
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(peer.barrier().await?.is_empty(), "messages after generate(2) ended");
    // Default budget: burst 10,000, 1,000 per second.
    let f = flood(
        &mut peer,
        500_000,
        None,
        move |_| vec![(0, Payload::GrantCredit { id: ChannelId(ch), additional: 1 })],
        |_| false,
    )
    .await?;
    // Late messages get no answer, so the burst is not counted here.
    check_flood(&f, "late-messages", 0, "late GrantCredits")?;
    drop(peer);
    running.finish().await
}
