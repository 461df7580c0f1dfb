//! Section 10 rules that hold below the operation table: lower layers never
//! re-execute a call, and channels never outlive the link that carried them.

mod common {
    pub mod testbed;
}
use common::testbed::*;
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::driver::{Call, CallError, channel};
use vox_core::link::{self, Backoff, Link, LinkConfig, LinkError, LinkSource};
use vox_core::session::{Accepted, Session, SessionBuilder};
use vox_core::test_util::operations::write_op_id;
use vox_core::wire::{ConduitMode, Metadata, MethodId};

fn count_id() -> MethodId {
    MethodId::from_names("Counter", "execute")
}

/// A non-idempotent method: records every execution of each argument.
fn counting_server(executions: Arc<Mutex<HashMap<u32, u32>>>) -> SessionBuilder {
    SessionBuilder::new().handler(move |call: Call| {
        let executions = executions.clone();
        async move {
            match call.decode_args::<u32>() {
                Ok(n) => {
                    *executions.lock().unwrap().entry(n).or_default() += 1;
                    call.reply.ok(&n);
                }
                Err(e) => call.reply.invalid_payload(e),
            }
        }
    })
}

struct Net {
    dials: std::sync::atomic::AtomicU32,
    cuts: Mutex<VecDeque<u64>>,
    server: SessionBuilder,
    sessions: tokio::sync::mpsc::Sender<Session>,
}

async fn dial(net: Arc<Net>) -> Result<Link, LinkError> {
    net.dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cut = net.cuts.lock().unwrap().pop_front();
    let (client, server, _fault) = link::faulty_pair(LinkConfig::default(), cut);
    let builder = net.server.clone();
    let sessions = net.sessions.clone();
    tokio::spawn(async move {
        if let Ok(Accepted::New(s)) = builder.establish_acceptor_any(server).await {
            let _ = sessions.send(s).await;
        }
    });
    Ok(client)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    /// rule: retry.layers.no-silent-retry — across random link breaks the
    /// stable conduit retransmits frames, never calls: every non-idem call
    /// executes exactly once and ends in its result.
    #[test]
    fn retry_layers_no_silent_retry_across_random_breaks(
        cuts in proptest::collection::vec(1u64..60, 1..5),
        calls in 1u32..24,
        concurrent in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let executions = Arc::new(Mutex::new(HashMap::new()));
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            // The first link must get through its setup (prologue, hello and
            // handshake frames); the cut points after that are random.
            let mut cuts = cuts;
            cuts[0] += 8;
            // With this much traffic the first cut is certainly reached.
            let must_redial = cuts[0] <= 16 && calls >= 10;
            let net = Arc::new(Net { dials: Default::default(), cuts: Mutex::new(cuts.into()), server: counting_server(executions.clone()), sessions: tx });
            let n = net.clone();
            let source: Arc<dyn LinkSource> = Arc::new(move || dial(n.clone()));
            let mut client = SessionBuilder::new();
            client.config_mut().conduit = ConduitMode::Stable;
            client.config_mut().stable.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(8), factor: 2 };
            let client = client.establish_stable(source, None).await.expect("client session");
            let _server = rx.recv().await.expect("server session");
            let caller = client.root.caller.clone();
            let results: Vec<Result<u32, _>> = if concurrent {
                let futs = (0..calls).map(|i| { let c = caller.clone(); async move { c.call::<_, u32>(count_id(), &i, vec![]).await } });
                futures_join_all(futs.collect()).await
            } else {
                let mut v = Vec::new();
                for i in 0..calls {
                    v.push(caller.call::<_, u32>(count_id(), &i, vec![]).await);
                }
                v
            };
            for (i, r) in results.into_iter().enumerate() {
                assert_eq!(r.expect("call ends in its result"), i as u32);
            }
            if must_redial {
                assert!(net.dials.load(std::sync::atomic::Ordering::Relaxed) >= 2, "the planned cut was never reached");
            }
            let executions = executions.lock().unwrap();
            for i in 0..calls {
                assert_eq!(executions.get(&i).copied(), Some(1), "call {i} executed {:?} times", executions.get(&i));
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    /// rules: retry.op-id, retry.duplicate.live, retry.layers.no-silent-retry,
    /// session.resume — a bare conduit is cut at random points, so whole
    /// conduits are lost and calls in flight become ambiguous; the session
    /// resumes on new conduits and the client retries every retryable
    /// failure with the call's operation id. A non-idem call never executes
    /// twice, and every call ends in its result or `Indeterminate` (the
    /// execution finished and its outcome was not kept), never hangs.
    #[test]
    fn retry_op_ids_across_session_resumes_never_execute_twice(
        cuts in proptest::collection::vec(1u64..40, 1..6),
        calls in 1u32..24,
        concurrent in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let executions = Arc::new(Mutex::new(HashMap::new()));
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let mut cuts = cuts;
            // The first conduit must get through its handshake.
            cuts[0] += 6;
            // With this much traffic the first cut is certainly reached.
            let must_redial = cuts[0] <= 12 && calls >= 10;
            let net = Arc::new(Net { dials: Default::default(), cuts: Mutex::new(cuts.into()), server: counting_server(executions.clone()), sessions: tx });
            let n = net.clone();
            let source: Arc<dyn LinkSource> = Arc::new(move || dial(n.clone()));
            let mut client = SessionBuilder::new();
            let resume = &mut client.config_mut().session_resume;
            resume.request = true;
            resume.backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(8), factor: 2 };
            let client = client.establish_resumable(source, None).await.expect("client session");
            let _server = rx.recv().await.expect("server session");
            let client = &client;
            let results: Vec<Result<u32, CallError>> = if concurrent {
                futures_join_all((0..calls).map(|i| call_retrying(client, i)).collect()).await
            } else {
                let mut v = Vec::new();
                for i in 0..calls {
                    v.push(call_retrying(client, i).await);
                }
                v
            };
            if must_redial {
                assert!(net.dials.load(std::sync::atomic::Ordering::Relaxed) >= 2, "the planned cut was never reached");
            }
            let executions = executions.lock().unwrap();
            for (i, r) in results.into_iter().enumerate() {
                let runs = executions.get(&(i as u32)).copied().unwrap_or(0);
                assert!(runs <= 1, "call {i} executed {runs} times");
                match r {
                    Ok(v) => {
                        assert_eq!(v, i as u32);
                        assert_eq!(runs, 1, "call {i} answered without executing");
                    }
                    Err(CallError::Indeterminate) => assert_eq!(runs, 1, "Indeterminate only after an execution"),
                    Err(e) => panic!("call {i} ended in {e:?}"),
                }
            }
        });
    }
}

/// One logical call: the same operation id on every attempt; a retryable
/// failure waits for the next attachment and tries again.
async fn call_retrying(session: &Session, i: u32) -> Result<u32, CallError> {
    let mut md = Metadata::new();
    write_op_id(&mut md, session.handle.next_op_id());
    let args = bytes::Bytes::from(vox_core::wire::encode("args", &i).expect("encode"));
    loop {
        let seen = session.handle.generation();
        match session.root.caller.call_raw(count_id(), args.clone(), vec![], md.clone()).await {
            Ok(r) => return Ok(vox_core::wire::decode::<u32>("ret", &r.ret).expect("decode")),
            Err(e) if e.is_retryable() => {
                if session.handle.attached_after(seen).await.is_err() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs futures concurrently on the current task (no extra dependency).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

// rule: retry.channel.disconnect.closes — on a bare conduit a link break
// ends the session; the channel handles of the calls in flight report the
// failure on their next use instead of waiting forever or being rebound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_channel_disconnect_closes_handles_report_failure() {
    let (client_link, server_link, fault) = link::faulty_pair(LinkConfig::default(), None);
    let (server, client) = tokio::join!(
        server_builder().establish_acceptor(server_link),
        SessionBuilder::new().establish_initiator(client_link)
    );
    let (_server, client) = (server.unwrap(), client.unwrap());
    let caller = client.root.caller.clone();
    // A stream the client receives, and one it sends.
    let (gen_tx, mut gen_rx) = channel::<i32>();
    let gen_call = tokio::spawn({
        let c = caller.clone();
        async move { c.call::<_, ()>(mid("generate"), &1_000_000u32, vec![gen_tx.into_arg().unwrap()]).await }
    });
    let (mut sum_tx, sum_rx) = channel::<i32>();
    let sum_call = tokio::spawn({
        let c = caller.clone();
        async move { c.call::<_, i64>(mid("sum"), &(), vec![sum_rx.into_arg().unwrap()]).await }
    });
    gen_rx.recv().await.expect("first item").expect("stream open");
    sum_tx.send(&1).await.expect("first send");
    fault.cut();
    // The receiver drains what arrived, then reports the break.
    let recv_end = loop {
        match gen_rx.recv().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(recv_end.is_err(), "receiver must report the break, got {recv_end:?}");
    let send_end = loop {
        match sum_tx.send(&1).await {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    let _ = send_end;
    assert!(gen_call.await.unwrap().is_err());
    assert!(sum_call.await.unwrap().is_err());
}
