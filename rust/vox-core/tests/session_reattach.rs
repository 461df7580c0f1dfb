//! A session outlives its conduit: a replacement conduit is bound to it by
//! its resume key, the generation moves on, what was in flight on the lost
//! attachment fails, and retries of the same operation id are answered by
//! the operation table (rules `session.resume`, `retry.*`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::{Call, CallError, Handler, channel_with_credit};
use vox_core::link::{self, Backoff, FaultHandle, Link, LinkConfig, LinkError, LinkSource};
use vox_core::session::{Accepted, CloseReason, Session, SessionBuilder, SessionError};
use vox_core::test_util::operations::{MethodPolicy, OpId, write_op_id};
use vox_core::wire::{Metadata, MethodId};

fn mid(name: &str) -> MethodId {
    MethodId::from_names("Retry", name)
}

/// `echo(String)`, `gated(u32)` (waits for the test to open its gate, then
/// returns its argument), `gen_idem(n, Tx<i32>)` / `gen_non_idem(n, Tx<i32>)`
/// (stream 0..n). Counts executions per method.
#[derive(Clone)]
struct Service {
    gate: Arc<tokio::sync::Semaphore>,
    gated_runs: Arc<AtomicU32>,
    gen_runs: Arc<AtomicU32>,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            gated_runs: Default::default(),
            gen_runs: Default::default(),
        }
    }
}

impl Handler for Service {
    fn handle(&self, mut call: Call) -> vox_core::driver::BoxFuture {
        let this = self.clone();
        Box::pin(async move {
            let m = call.method_id;
            if m == mid("echo") {
                match call.decode_args::<String>() {
                    Ok(s) => call.reply.ok(&s),
                    Err(e) => call.reply.invalid_payload(e),
                }
            } else if m == mid("gated") {
                this.gated_runs.fetch_add(1, Ordering::SeqCst);
                let v: u32 = call.decode_args().unwrap_or(0);
                let _permit = this.gate.acquire().await;
                call.reply.ok(&v);
            } else if m == mid("gen_idem") || m == mid("gen_non_idem") {
                this.gen_runs.fetch_add(1, Ordering::SeqCst);
                let n: u32 = call.decode_args().unwrap_or(0);
                let Ok(mut tx) = call.channels.tx::<i32>(0) else { return call.reply.invalid_payload("no Tx") };
                for i in 0..n {
                    if tx.send(&(i as i32)).await.is_err() {
                        // The channel died with its attachment.
                        return;
                    }
                }
                let _ = tx.close().await;
                call.reply.ok(&());
            } else {
                call.reply.unknown_method();
            }
        })
    }

    fn policy(&self, method: MethodId) -> MethodPolicy {
        MethodPolicy { idem: method == mid("gen_idem"), persist: method == mid("gated") }
    }
}

/// Hands out fault-injecting bare links; the server end of each is accepted
/// by a clone of the current server builder, so a resuming `Hello` finds its
/// session (or, after `restart`, does not).
struct Net {
    server: Mutex<SessionBuilder>,
    faults: Mutex<Vec<FaultHandle>>,
    /// Dial results to hand out first (`false` = refuse the dial).
    plan: Mutex<VecDeque<bool>>,
    sessions: tokio::sync::mpsc::Sender<Session>,
}

impl Net {
    async fn dial(net: Arc<Net>) -> Result<Link, LinkError> {
        if net.plan.lock().unwrap().pop_front() == Some(false) {
            let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            return Err(LinkError::Io { context: "dialing (planned refusal)", source });
        }
        let (client, server, fault) = link::faulty_pair(LinkConfig::default(), None);
        net.faults.lock().unwrap().push(fault);
        let builder = net.server.lock().unwrap().clone();
        let sessions = net.sessions.clone();
        tokio::spawn(async move {
            if let Ok(Accepted::New(s)) = builder.establish_acceptor_any(server).await {
                let _ = sessions.send(s).await;
            }
        });
        Ok(client)
    }

    fn cut_current(&self) {
        if let Some(f) = self.faults.lock().unwrap().last() {
            f.cut();
        }
    }
}

fn server_builder(service: &Service, recovery: Duration) -> SessionBuilder {
    let mut b = SessionBuilder::new().handler(service.clone());
    b.config_mut().session_resume.recovery_timeout = recovery;
    b
}

fn client_builder(recovery: Duration) -> SessionBuilder {
    let mut b = SessionBuilder::new();
    let c = &mut b.config_mut().session_resume;
    c.request = true;
    c.recovery_timeout = recovery;
    c.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(20), factor: 2 };
    b
}

struct Pair {
    server: Session,
    client: Session,
    net: Arc<Net>,
    service: Service,
    more_sessions: tokio::sync::mpsc::Receiver<Session>,
}

async fn pair(recovery: Duration) -> Pair {
    let service = Service::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let net = Arc::new(Net {
        server: Mutex::new(server_builder(&service, recovery)),
        faults: Mutex::new(Vec::new()),
        plan: Mutex::new(VecDeque::new()),
        sessions: tx,
    });
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = client_builder(recovery).establish_resumable(source, None).await.expect("client session");
    let server = rx.recv().await.expect("server session");
    Pair { server, client, net, service, more_sessions: rx }
}

fn with_op(op: OpId) -> Metadata {
    let mut md = Metadata::new();
    write_op_id(&mut md, op);
    md
}

async fn echo(s: &Session, text: &str) -> Result<String, CallError> {
    s.root.caller.call(mid("echo"), &text.to_string(), vec![]).await
}

// rule: session.resume — the bare link breaks; the client redials, the
// acceptor binds the new conduit to the same session (generation 2), and
// the very same root caller works on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_binds_replacement_conduit_to_the_same_session() {
    let p = pair(Duration::from_secs(10)).await;
    assert!(p.client.negotiated.resume_key.is_some(), "the client asked for a resume key");
    assert_eq!(echo(&p.client, "before").await.unwrap(), "before");
    assert_eq!(p.client.handle.generation(), 1);
    p.net.cut_current();
    assert_eq!(p.client.handle.attached_after(1).await.unwrap(), 2);
    assert_eq!(p.server.handle.attached_after(1).await.unwrap(), 2);
    assert_eq!(echo(&p.client, "after").await.unwrap(), "after");
    assert!(p.client.handle.close_reason().is_none() && p.server.handle.close_reason().is_none());
    assert_eq!(p.net.faults.lock().unwrap().len(), 2, "exactly one redial");
}

// rule: retry.duplicate.live — a call in flight when the conduit is lost
// fails retryably; the retry with the same operation id attaches to the
// still-running execution: one execution, the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_duplicate_live_attaches_across_a_resume() {
    let p = pair(Duration::from_secs(10)).await;
    let caller = p.client.root.caller.clone();
    let op = p.client.handle.next_op_id();
    let args = bytes::Bytes::from(vox_core::wire::encode("args", &7u32).unwrap());
    let first = {
        let (caller, args) = (caller.clone(), args.clone());
        tokio::spawn(async move { caller.call_raw(mid("gated"), args, vec![], with_op(op)).await })
    };
    while p.service.gated_runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    p.net.cut_current();
    let err = first.await.unwrap().expect_err("the attempt's attachment died");
    assert!(err.is_retryable(), "{err:?}");
    p.client.handle.attached_after(1).await.unwrap();
    let retry = tokio::spawn(async move { caller.call_raw(mid("gated"), args, vec![], with_op(op)).await });
    p.service.gate.add_permits(1);
    let got = retry.await.unwrap().expect("attached to the live execution");
    assert_eq!(vox_core::wire::decode::<u32>("ret", &got.ret).unwrap(), 7);
    assert_eq!(p.service.gated_runs.load(Ordering::SeqCst), 1, "never a second execution");
}

async fn stream_attempt(
    s: &Session,
    method: &str,
    op: OpId,
    n: u32,
) -> (Result<vox_core::session::RawResponse, CallError>, Vec<i32>, Option<String>) {
    let (tx, mut rx) = channel_with_credit::<i32>(16);
    let args = bytes::Bytes::from(vox_core::wire::encode("args", &n).unwrap());
    let call = s.root.caller.call_raw(mid(method), args, vec![tx.into_arg().unwrap()], with_op(op));
    let drain = async move {
        let mut got = Vec::new();
        loop {
            match rx.recv().await {
                Ok(Some(v)) => got.push(v),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e.to_string())),
            }
        }
    };
    let (res, (got, err)) = tokio::join!(call, drain);
    (res, got, err)
}

async fn break_mid_stream(p: &Pair, method: &str, op: OpId) {
    let (tx, mut rx) = channel_with_credit::<i32>(2);
    let args = bytes::Bytes::from(vox_core::wire::encode("args", &10u32).unwrap());
    let caller = p.client.root.caller.clone();
    let arg = tx.into_arg().unwrap();
    let method = method.to_string();
    let call = tokio::spawn(async move { caller.call_raw(mid(&method), args, vec![arg], with_op(op)).await });
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(rx.recv().await.unwrap().unwrap());
    }
    p.net.cut_current();
    // rule: retry.channel.disconnect.closes — the old handles report the
    // break (items that were already in flight may still come first, in
    // order; a clean end would be a lie).
    loop {
        match rx.recv().await {
            Ok(Some(v)) => got.push(v),
            Ok(None) => panic!("old channel ended cleanly across a break after {got:?}"),
            Err(_) => break,
        }
    }
    assert!(got.len() < 10 && got == (0..got.len() as i32).collect::<Vec<_>>(), "{got:?}");
    let err = call.await.unwrap().expect_err("the attempt's attachment died");
    assert!(err.is_retryable(), "{err:?}");
    p.client.handle.attached_after(1).await.unwrap();
}

// rule: retry.channel.recovery.non-idem — a non-idem call with channels that
// was cut mid-stream is failed closed on retry: Indeterminate, nothing re-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_retry_non_idem_fails_closed_after_resume() {
    let p = pair(Duration::from_secs(10)).await;
    let op = p.client.handle.next_op_id();
    break_mid_stream(&p, "gen_non_idem", op).await;
    let (res, got, _) = stream_attempt(&p.client, "gen_non_idem", op, 10).await;
    assert_eq!(res.unwrap_err(), CallError::Indeterminate);
    assert!(got.is_empty(), "nothing may run again: {got:?}");
    assert_eq!(p.service.gen_runs.load(Ordering::SeqCst), 1);
}

// rule: retry.channel.volatile.rebinding — an idem call with channels runs
// again after the resume with its fresh channel, from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_retry_idem_reruns_with_fresh_channels_after_resume() {
    let p = pair(Duration::from_secs(10)).await;
    let op = p.client.handle.next_op_id();
    break_mid_stream(&p, "gen_idem", op).await;
    let (res, got, err) = stream_attempt(&p.client, "gen_idem", op, 10).await;
    res.expect("re-executed");
    assert_eq!(err, None);
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "fresh channel, from position 0");
    assert_eq!(p.service.gen_runs.load(Ordering::SeqCst), 2);
}

// rule: retry.op-id — same id, different args: rejected as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_op_id_conflict_is_rejected_by_the_driver() {
    let p = pair(Duration::from_secs(10)).await;
    let op = p.client.handle.next_op_id();
    p.service.gate.add_permits(10);
    let call = |v: u32| {
        let caller = p.client.root.caller.clone();
        async move {
            let args = bytes::Bytes::from(vox_core::wire::encode("args", &v).unwrap());
            caller.call_raw(mid("gated"), args, vec![], with_op(op)).await
        }
    };
    call(1).await.expect("first");
    // rule: retry.duplicate.sealed — `gated` is persist: replayed, not re-run.
    call(1).await.expect("replayed");
    assert_eq!(p.service.gated_runs.load(Ordering::SeqCst), 1);
    match call(2).await {
        Err(CallError::Rejected(reason)) => assert!(reason.contains("conflict"), "{reason}"),
        other => panic!("expected a conflict rejection, got {other:?}"),
    }
}

// rule: session.resume — a server that lost the session (restart) refuses
// the key; the client never takes the new server session as its old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_unknown_key_ends_the_session() {
    let mut p = pair(Duration::from_secs(10)).await;
    *p.net.server.lock().unwrap() = server_builder(&p.service, Duration::from_secs(10));
    p.net.cut_current();
    match p.client.handle.closed().await {
        CloseReason::ResumeFailed(e) => assert!(e.contains("unknown session"), "{e}"),
        other => panic!("expected ResumeFailed, got {other:?}"),
    }
    assert!(p.more_sessions.try_recv().is_err(), "no new server session was made");
    assert_eq!(echo(&p.client, "x").await.unwrap_err(), CallError::ConnectionClosed);
}

// rule: session.resume — no replacement within the recovery timeout: both
// sides end, the client reporting the last dial error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_gives_up_after_the_recovery_timeout() {
    let p = pair(Duration::from_millis(300)).await;
    p.net.plan.lock().unwrap().extend(std::iter::repeat_n(false, 10_000));
    p.net.cut_current();
    assert!(matches!(p.client.handle.closed().await, CloseReason::ResumeFailed(_)));
    assert!(matches!(p.server.handle.closed().await, CloseReason::ResumeFailed(_)));
    let err = p.client.handle.open_connection(Default::default(), Metadata::new()).await.unwrap_err();
    assert!(matches!(err, SessionError::Closed(CloseReason::ResumeFailed(_))), "{err:?}");
}

// rule: session.resume, session.initial-connect-waiting — a refused dial
// while resuming is transient: the client keeps redialing with backoff and
// resumes once the peer is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_retries_refused_dials() {
    let p = pair(Duration::from_secs(10)).await;
    p.net.plan.lock().unwrap().extend([false, false, false]);
    p.net.cut_current();
    assert_eq!(p.client.handle.attached_after(1).await.unwrap(), 2);
    assert!(p.net.plan.lock().unwrap().is_empty(), "the refused dials were tried first");
    assert_eq!(echo(&p.client, "back").await.unwrap(), "back");
}
