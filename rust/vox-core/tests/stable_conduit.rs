//! The stable conduit (PROTOCOL.md section 4) across link breaks: every
//! message delivered exactly once and in order, replay buffer bounded,
//! unknown keys refused.

use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vox_core::conduit::ConduitError;
use vox_core::conduit::stable::{self, StableAccepted, StableConfig, StableEnd, StableRegistry, StableRx, StableTx};
use vox_core::link::{self, Backoff, Link, LinkConfig, LinkError, LinkSource};
use vox_core::transport::{self, AcceptModes};
use vox_core::wire::{ConduitMode, ConduitMsg, ConnectionId, Message, Payload};

fn ping(n: u64) -> ConduitMsg {
    ConduitMsg::Message(Message { connection_id: ConnectionId(0), payload: Payload::Ping { nonce: n } })
}

fn nonce(m: &ConduitMsg) -> u64 {
    match m {
        ConduitMsg::Message(Message { payload: Payload::Ping { nonce }, .. }) => *nonce,
        other => panic!("unexpected {other:?}"),
    }
}

fn config(replay_limit: usize) -> StableConfig {
    StableConfig {
        replay_limit,
        recovery_timeout: Duration::from_secs(60),
        backoff: Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(5), factor: 2 },
        hello_timeout: Duration::from_secs(30),
        ..StableConfig::default()
    }
}

/// A network where each new link is cut after the next planned number of
/// messages; the server side runs the prologue and the registry.
struct Net {
    cuts: Mutex<VecDeque<u64>>,
    registry: Mutex<StableRegistry>,
    config: StableConfig,
    new_conduits: tokio::sync::mpsc::Sender<(StableTx, StableRx)>,
    dials: std::sync::atomic::AtomicU64,
    /// Every link dialled, in order.
    links: Mutex<Vec<link::FaultHandle>>,
}

impl Net {
    async fn dial(net: Arc<Self>) -> Result<Link, LinkError> {
        net.dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = net.cuts.lock().unwrap().pop_front();
        let (client, mut server, fault) = link::faulty_pair(LinkConfig::default(), cut);
        net.links.lock().unwrap().push(fault);
        let serve = net.clone();
        tokio::spawn(async move {
            let modes = AcceptModes { bare: false, stable: true };
            if !matches!(transport::accept(&mut server, modes).await, Ok(ConduitMode::Stable)) {
                return;
            }
            let registry = serve.registry.lock().unwrap().clone();
            if let Ok(StableAccepted::New(tx, rx)) = registry.accept(server, serve.config.clone()).await {
                let _ = serve.new_conduits.send((tx, rx)).await;
            }
        });
        Ok(client)
    }
}

async fn pair(cuts: Vec<u64>, cfg: StableConfig) -> ((StableTx, StableRx), (StableTx, StableRx), Arc<Net>) {
    let (new_tx, mut new_rx) = tokio::sync::mpsc::channel(1);
    let net = Arc::new(Net {
        cuts: Mutex::new(cuts.into()),
        registry: Mutex::new(StableRegistry::new()),
        config: cfg.clone(),
        new_conduits: new_tx,
        dials: Default::default(),
        links: Mutex::default(),
    });
    let n = net.clone();
    let source: Arc<dyn LinkSource> = Arc::new(move || Net::dial(n.clone()));
    let client = stable::connect(source, cfg).await.expect("connect");
    let server = new_rx.recv().await.expect("server conduit");
    (client, server, net)
}

async fn pump(tx: StableTx, count: u64) -> StableTx {
    for i in 0..count {
        tx.send(&ping(i)).await.expect("send");
    }
    tx
}

async fn drain(mut rx: StableRx, count: u64) -> StableRx {
    for i in 0..count {
        let m = rx.recv().await.expect("recv").expect("message, not end");
        assert_eq!(nonce(&m), i, "delivered out of order or twice");
    }
    rx
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// rule: stable.seq, stable.ack, stable.replay-buffer — across random
    /// link breaks each message arrives exactly once, in order, both ways.
    #[test]
    fn stable_exactly_once_in_order_across_random_breaks(
        cuts in proptest::collection::vec(1u64..40, 0..8),
        up in 0u64..200,
        down in 0u64..200,
        limit in 16usize..2048,
    ) {
        run(async move { tokio::time::timeout(Duration::from_secs(600), async move {
            let planned = cuts.len() as u64;
            // The first link must survive its own setup (prologue and hello,
            // four messages); later cuts may land anywhere, setup included.
            let mut cuts = cuts;
            if let Some(first) = cuts.first_mut() {
                *first += 4;
            }
            let ((ctx, crx), (stx, srx), net) = pair(cuts, config(limit)).await;
            let (ctx, stx, crx, srx) = tokio::join!(pump(ctx, up), pump(stx, down), drain(crx, down), drain(srx, up));
            // Let a cut that came with the last acks be redialled too.
            tokio::time::sleep(Duration::from_secs(1)).await;
            {
                // Each cut forced exactly one redial, and nothing else did:
                // every link but the last was cut, the last is alive, and
                // only planned cuts cut links.
                let links = net.links.lock().unwrap();
                let dials = net.dials.load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(dials, links.len() as u64);
                let cut = links.iter().filter(|l| l.is_cut()).count() as u64;
                assert!(links.iter().rev().skip(1).all(|l| l.is_cut()), "a redial without a cut");
                assert!(!links.last().expect("a link").is_cut(), "the last cut was never redialled");
                assert_eq!(dials, cut + 1, "one redial per cut");
                assert!(cut <= planned, "{cut} cuts, {planned} planned");
            }
            let (a, b) = tokio::join!(ctx.close(), stx.close());
            a.expect("client close");
            b.expect("server close");
            drop((crx, srx));
        }).await.expect("stable conduit transfer hung") });
    }
}

// rule: stable.replay-buffer.bounded
#[test]
fn stable_replay_buffer_bounded_sender_waits() {
    run(async {
        let ((ctx, _crx), (_stx, srx), _net) = pair(vec![], config(64)).await;
        // The server never reads, so nothing is acknowledged: after the
        // buffer is full, the next send waits.
        let mut sent = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ctx.send(&ping(sent))).await {
                Ok(r) => {
                    r.expect("send");
                    sent += 1;
                }
                Err(_) => break,
            }
            assert!(sent < 1000, "replay buffer never filled up");
        }
        // Full, from both sides: within the limit, and the waiting item does
        // not fit next to what is held.
        let waiting = vox_core::wire::encode("ConduitMsg", &ping(sent)).expect("encode").len();
        let held = ctx.replay_bytes();
        assert!(held <= 64, "replay buffer grew to {held} bytes");
        assert!(held + waiting > 64, "a {waiting}-byte item waits although {held} of 64 bytes are held");
        drop(srx);
    });
}

// rule: stable.resume-key
#[test]
fn stable_resume_key_unknown_rejected() {
    run(async {
        let registry = StableRegistry::new();
        let (mut client, mut server) = link::memory_pair(LinkConfig::default());
        let reg = registry.clone();
        let srv = tokio::spawn(async move {
            transport::accept(&mut server, AcceptModes { bare: false, stable: true }).await.unwrap();
            reg.accept(server, config(1024)).await
        });
        transport::initiate(&mut client, ConduitMode::Stable).await.unwrap();
        let hello = vox_core::wire::ClientHello {
            resume_key: Some(vox_core::wire::ResumeKey(vox_core::wire::Blob::new(bytes::Bytes::from_static(&[7; 32])))),
            last_received: None,
        };
        client.tx.send(vox_core::wire::encode("ClientHello", &hello).unwrap().into()).await.unwrap();
        let reply = client.rx.recv().await.unwrap().unwrap();
        let reply: vox_core::wire::StableHelloReply = vox_core::wire::decode("reply", &reply).unwrap();
        assert!(matches!(reply, vox_core::wire::StableHelloReply::UnknownKey { .. }));
        assert!(client.rx.recv().await.unwrap().is_none(), "link must close after the refusal");
        assert!(srv.await.unwrap().is_err());
    });
}

// rule: stable.resume-key — a client whose server forgot the session reports loss.
#[test]
fn stable_resume_after_server_restart_reports_session_loss() {
    run(async {
        let ((ctx, mut crx), _server, net) = pair(vec![], config(1024)).await;
        // The server "restarts": it no longer knows the conduit's key.
        *net.registry.lock().unwrap() = StableRegistry::new();
        ctx.break_link();
        let err = crx.recv().await.expect_err("session loss");
        assert!(matches!(err, ConduitError::Stable(StableEnd::UnknownKey(_))), "expected UnknownKey, got {err:?}");
    });
}

// rule: stable.resume-key — keys are at least 16 bytes and differ per conduit.
#[test]
fn stable_resume_key_fresh_and_long() {
    run(async {
        let mut keys = std::collections::HashSet::new();
        for _ in 0..8 {
            let registry = StableRegistry::new();
            let (mut client, mut server) = link::memory_pair(LinkConfig::default());
            let reg = registry.clone();
            tokio::spawn(async move {
                transport::accept(&mut server, AcceptModes { bare: false, stable: true }).await.unwrap();
                let _keep = reg.accept(server, config(1024)).await;
                std::future::pending::<()>().await;
            });
            transport::initiate(&mut client, ConduitMode::Stable).await.unwrap();
            let hello = vox_core::wire::ClientHello { resume_key: None, last_received: None };
            client.tx.send(vox_core::wire::encode("ClientHello", &hello).unwrap().into()).await.unwrap();
            let reply = client.rx.recv().await.unwrap().unwrap();
            match vox_core::wire::decode::<vox_core::wire::StableHelloReply>("reply", &reply).unwrap() {
                vox_core::wire::StableHelloReply::Welcome(sh) => {
                    assert!(sh.resume_key.0.len() >= 16);
                    assert!(keys.insert(sh.resume_key.0.bytes().to_vec()), "resume key repeated");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

// rule: stable.resume-key — a client that gives up on a link the server
// still sees as alive resumes on a new one; the server swaps links.
#[test]
fn stable_resume_while_server_sees_old_link_alive() {
    run(async {
        let ((ctx, crx), (stx, srx), net) = pair(vec![], config(4096)).await;
        let (ctx, stx, crx, srx) = tokio::join!(pump(ctx, 20), pump(stx, 20), drain(crx, 20), drain(srx, 20));
        // Only the client declares the link dead; it stays up physically.
        let dials_before = net.dials.load(std::sync::atomic::Ordering::Relaxed);
        ctx.break_link();
        let mut crx = crx;
        let mut srx = srx;
        for i in 20..40 {
            ctx.send(&ping(i)).await.unwrap();
            stx.send(&ping(i)).await.unwrap();
            assert_eq!(nonce(&srx.recv().await.unwrap().unwrap()), i);
            assert_eq!(nonce(&crx.recv().await.unwrap().unwrap()), i);
        }
        // The client's frames could only flow on a new link.
        assert!(net.dials.load(std::sync::atomic::Ordering::Relaxed) > dials_before, "no redial happened");
        let (a, b) = tokio::join!(ctx.close(), stx.close());
        a.unwrap();
        b.unwrap();
    });
}
