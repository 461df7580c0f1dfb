//! The liveness gate, alone and inside the real [`ConnectionCore`]: once a
//! connection has ended (and the session then queues its `CloseConnection`),
//! nothing of that connection reaches the outbound path, whatever was
//! already waiting for room there (rule `connection.close`); what arrives
//! for it afterwards is discarded, not judged (rule
//! `connection.close.crossing`).

use super::Liveness;
use crate::driver::CallError;
use crate::driver::ConnectionCore;
use crate::driver::channel::{ChannelLimits, LossCause};
use crate::driver::core::Inbound;
use crate::driver::handler::Call;
use crate::plumbing::loss::Fault;
use crate::plumbing::outbound::{self, Outbound};
use crate::wire::{
    Blob, ChannelDirection, ConnectionId, ConnectionSettings, Message, Metadata, MethodId, Parity, Payload, RequestId,
    ResponseBody,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn liveness_admits_until_the_end_then_reports_its_first_cause() {
    let mut gate = Liveness::default();
    assert_eq!(gate.admit(), Ok(()));
    assert!(!gate.is_lost());
    assert_eq!(gate.cause(), None);
    assert!(
        gate.end(LossCause::ProtocolError { fault: Fault::Peer, description: "first".into() }),
        "the first end makes the transition"
    );
    assert!(!gate.end(LossCause::SessionShutdown), "a second end is a no-op");
    assert_eq!(gate.admit(), Err(LossCause::ProtocolError { fault: Fault::Peer, description: "first".into() }));
    assert!(gate.is_lost());
    assert_eq!(gate.cause(), Some(&LossCause::ProtocolError { fault: Fault::Peer, description: "first".into() }));
}

const CONN: ConnectionId = ConnectionId(3);

fn core(out: &Outbound, handler: Option<Arc<dyn crate::driver::Handler>>) -> Arc<ConnectionCore> {
    let settings = ConnectionSettings::default();
    ConnectionCore::new(
        CONN,
        Parity::Odd,
        settings.clone(),
        settings,
        out.clone(),
        handler,
        ChannelLimits { max_channels: 4, max_receive_window: 16 },
        None,
    )
}

/// An outbound path of one place, already taken by a message of another
/// connection: whatever this connection sends next waits for room.
fn full_outbound() -> (Outbound, outbound::Detached) {
    let (out, rx) = outbound::detached(1);
    out.try_reserve()
        .expect("room")
        .send(Message { connection_id: ConnectionId(0), payload: Payload::Ping { nonce: 1 } });
    (out, rx)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime")
}

async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Waits at most 5 s (of paused time, so at once when nothing else can
/// happen): a mutant that hangs fails here instead of timing out.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f).await.unwrap_or_else(|_| panic!("{what} hangs"))
}

/// What the session does when it ends a connection: end the core, then queue
/// its `CloseConnection`. Returns everything queued, the filler first.
async fn close_and_collect(core: &ConnectionCore, out: &Outbound, rx: &mut outbound::Detached) -> Vec<Message> {
    core.on_lost(LossCause::ConnectionClosed);
    let mut queued = vec![within("the filler", rx.recv()).await.expect("the filler")];
    // Whatever took the freed place after the end.
    settle().await;
    while let Ok(m) = rx.try_recv() {
        queued.push(m);
    }
    let close = Message { connection_id: CONN, payload: Payload::CloseConnection { metadata: Metadata::new() } };
    within("room for the close", out.send(close)).await.expect("outbound open");
    settle().await;
    while let Ok(m) = rx.try_recv() {
        queued.push(m);
    }
    queued
}

fn kinds(queued: &[Message]) -> Vec<&'static str> {
    queued.iter().filter(|m| m.connection_id == CONN).map(|m| m.payload.kind()).collect()
}

// rule: connection.close — a call waiting for outbound room when its
// connection ends fails with the loss, and its request never leaves.
#[test]
fn connection_close_request_waiting_for_room_fails_with_the_loss_and_is_never_queued() {
    runtime().block_on(async {
        let (out, mut rx) = full_outbound();
        let core = core(&out, None);
        let caller = {
            let core = core.clone();
            tokio::spawn(async move { core.call(MethodId(1), Blob::default(), &[], Metadata::new()).await })
        };
        settle().await;
        let queued = close_and_collect(&core, &out, &mut rx).await;
        let result = within("the call", caller).await.expect("join");
        assert_eq!(result, Err(CallError::ConnectionClosed));
        assert_eq!(kinds(&queued), ["CloseConnection"], "nothing of the connection but its close: {queued:?}");
        assert_eq!(core.stats().calls_in_flight, 0, "no call left registered on the ended core");
    });
}

// rule: connection.close — a channel close the flush task took out just
// before the end, and is waiting for room to send, is dropped with it.
#[test]
fn connection_close_flush_waiting_for_room_sends_nothing_after_the_end() {
    runtime().block_on(async {
        let (out, mut rx) = full_outbound();
        let core = core(&out, None);
        let id = core.registry_for_models().create_outgoing(ChannelDirection::CallerToHandler, 1).expect("channel").id;
        core.registry_for_models().sender_dropped(id);
        let flush = tokio::spawn(core.clone().run_flush());
        settle().await;
        let queued = close_and_collect(&core, &out, &mut rx).await;
        within("the flush task", flush).await.expect("join");
        assert_eq!(kinds(&queued), ["CloseConnection"], "the owed CloseChannel must not follow: {queued:?}");
    });
}

// rule: connection.close — the flush task of an ended connection returns
// (it holds the core; a task that waited forever would leak it).
#[test]
fn connection_close_flush_task_ends_with_the_connection() {
    runtime().block_on(async {
        let (out, _rx) = outbound::detached(4);
        let core = core(&out, None);
        let flush = tokio::spawn(core.clone().run_flush());
        settle().await;
        assert!(!flush.is_finished(), "an idle live connection keeps its flush task");
        core.on_lost(LossCause::ConnectionClosed);
        within("the flush task", flush).await.expect("join");
        assert_eq!(core.lost(), Some(LossCause::ConnectionClosed));
    });
}

// rule: connection.close.crossing — what the peer sent before it saw the
// end (a response, a request) is discarded: no violation, nothing runs,
// nothing is answered.
#[test]
fn connection_close_crossing_traffic_after_the_end_is_discarded() {
    runtime().block_on(async {
        let (out, mut rx) = outbound::detached(4);
        let runs = Arc::new(AtomicUsize::new(0));
        let handler: Arc<dyn crate::driver::Handler> = {
            let runs = runs.clone();
            Arc::new(move |call: Call| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move { call.reply.reply(ResponseBody::Ok(Blob::default()), Metadata::new()) }
            })
        };
        let core = core(&out, Some(handler));
        core.on_lost(LossCause::ConnectionClosed);
        let response =
            Payload::Response { id: RequestId(1), ret: ResponseBody::Ok(Blob::default()), metadata: Metadata::new() };
        assert_eq!(core.on_payload(response), Ok(Inbound::Handled), "a response crossing the end is no violation");
        let request = Payload::Request {
            id: RequestId(2),
            method_id: MethodId(1),
            args: Blob::default(),
            channels: vec![],
            metadata: Metadata::new(),
        };
        assert_eq!(core.on_payload(request), Ok(Inbound::Handled));
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler runs on an ended connection");
        assert!(rx.try_recv().is_err(), "nothing is answered on an ended connection");
        assert_eq!(core.stats().handlers_in_flight, 0);
    });
}
