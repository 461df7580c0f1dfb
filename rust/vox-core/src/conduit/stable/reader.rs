//! The reader task: reads the current link, applies acks at once, drops
//! duplicates and queues delivered items for [`StableRx`](super::StableRx);
//! it switches to a newer link as soon as one is attached.

use super::shared::{Phase, ReceiveLimit, StableShared};
use super::state::Inbound;
use super::{ConduitError, StableEnd};
use crate::link::{LinkError, LinkRx};
use crate::wire::{self, StableMsg};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

enum Got {
    Link(Result<Option<Bytes>, LinkError>),
    NewLink,
}

/// Capacity of the queue between the reader task and
/// [`StableRx`](super::StableRx). When it
/// is full the reader stops reading the link (backpressure to the peer,
/// whose replay buffer then fills up).
pub(super) const DELIVERY_QUEUE: usize = 32;

/// Reads the current link: applies acks at once (so a sender's replay
/// buffer drains even while nobody consumes messages here), drops
/// duplicates, and queues delivered messages for
/// [`StableRx`](super::StableRx). Messages that
/// arrive after the receiving half was dropped are acknowledged and
/// discarded, so closing never waits on a reader that is gone.
pub(super) async fn reader(shared: Arc<StableShared>, out: mpsc::Sender<Result<Bytes, ConduitError>>) {
    let mut link: Option<(u64, LinkRx)> = None;
    // While the session handshake runs, an item is read only once the
    // consumer asked for one with nothing queued: a message the peer sends
    // right after its last handshake message must be judged by the limit
    // in force after the handshake, not read ahead under the setup limit.
    let mut delivered_in_setup: Option<u64> = None;
    loop {
        let notified = shared.reader_wake.notified();
        tokio::pin!(notified);
        let setup;
        {
            let mut core = shared.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                return;
            }
            if link.as_ref().map(|l| l.0) != Some(core.epoch) {
                if let Some(rx) = core.rx_slot.take() {
                    link = Some((core.epoch, rx));
                }
            }
            if let Some((_, rx)) = link.as_mut() {
                // rule: session.setup.limits — every link, also one
                // attached later, carries what the session's phase allows.
                match core.receive_limit {
                    ReceiveLimit::AsLink => {}
                    ReceiveLimit::Setup(max) => rx.restrict(max),
                    ReceiveLimit::Full => rx.unrestrict(),
                }
            }
            setup = matches!(core.receive_limit, ReceiveLimit::Setup(_));
        }
        let Some((epoch, rx)) = link.as_mut() else {
            notified.await;
            continue;
        };
        if let (true, Some(seen)) = (setup, delivered_in_setup) {
            // Only a request made after that delivery counts.
            let demand = shared.demand.notified();
            if shared.demands.load(std::sync::atomic::Ordering::SeqCst) <= seen {
                tokio::select! {
                    _ = demand => {}
                    _ = &mut notified => {}
                }
                continue;
            }
            delivered_in_setup = None;
        }
        let epoch = *epoch;
        let got = tokio::select! {
            r = rx.recv() => Got::Link(r),
            _ = &mut notified => Got::NewLink,
        };
        let bytes = match got {
            Got::NewLink => continue,
            Got::Link(Ok(Some(bytes))) => bytes,
            Got::Link(Ok(None) | Err(_)) => {
                link = None;
                shared.core.lock().drained_epoch = Some(epoch);
                shared.reader_drained.notify_one();
                shared.on_broken(epoch);
                continue;
            }
        };
        match on_link_message(&shared, &bytes) {
            Ok(None) => {}
            Ok(Some(item)) => {
                delivered_in_setup = setup.then(|| shared.demands.load(std::sync::atomic::Ordering::SeqCst));
                // A dropped receiving half is not an error: see above.
                let _ = out.send(Ok(item)).await;
            }
            Err(end) => {
                // rule: session.protocol-error — the session answers with a
                // ProtocolError; nothing more the violator sends is read,
                // and the conduit closes once that is written (or at the
                // violation deadline).
                shared.violated(end.clone());
                let _ = out.send(Err(ConduitError::Stable(end))).await;
                return;
            }
        }
    }
}

/// One link message: applies its ack, and returns the item to deliver (if
/// any), or how the peer broke the rules.
fn on_link_message(shared: &StableShared, bytes: &Bytes) -> Result<Option<Bytes>, StableEnd> {
    let msg = match wire::decode::<StableMsg>("StableMsg", bytes) {
        Ok(m) => m,
        Err(e) => return Err(StableEnd::Undecodable(e.to_string())),
    };
    let inbound = {
        let mut core = shared.core.lock();
        match msg {
            StableMsg::Frame(frame) => core.sm.on_frame(frame).map(Some),
            StableMsg::Ack { ack } => core.sm.on_ack(ack).map(|_| None),
            StableMsg::Bye => {
                drop(core);
                shared.finish(StableEnd::PeerBye);
                return Ok(None);
            }
        }
    };
    // An ack may have freed replay room, and a delivered frame owes one.
    shared.room.notify_one();
    shared.writer_wake.notify_one();
    match inbound {
        Ok(Some(Inbound::Deliver(item))) => Ok(Some(item.into_bytes())),
        Ok(Some(Inbound::Duplicate) | None) => Ok(None),
        Err(v) => Err(StableEnd::Violation(v)),
    }
}
