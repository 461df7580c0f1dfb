//! The writer task: the one task that writes to a conduit's links, so
//! frames leave in seq order even while links are swapped, and the closing
//! sequences (`Bye`, or an abort after a violation) are written last.

use super::shared::{Closing, Phase, StableShared};
use super::{ConduitError, StableEnd};
use crate::link::LinkTx;
use crate::wire::{self, StableMsg};
use bytes::Bytes;
use std::sync::Arc;

fn encode(msg: &StableMsg) -> Result<Bytes, ConduitError> {
    Ok(Bytes::from(wire::encode("StableMsg", msg)?))
}

enum Work {
    Wait,
    Send(u64, StableMsg),
    Bye,
    /// Everything held was written after a violation: close the link, end.
    Abort(StableEnd),
}

/// `fut`, unless the conduit is closed first (then `None`): a write to a
/// peer that stopped reading must not outlive the conduit.
async fn unless_shut<T>(shared: &StableShared, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = shared.shutdown.notified() => None,
    }
}

/// The one task that writes to the conduit's links.
pub(super) async fn writer(shared: Arc<StableShared>) {
    let mut link: Option<(u64, LinkTx)> = None;
    loop {
        let notified = shared.writer_wake.notified();
        let work = {
            let mut core = shared.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                break;
            }
            if link.as_ref().map(|l| l.0) != Some(core.epoch) {
                link = core.tx_slot.take().map(|tx| (core.epoch, tx));
            }
            if matches!(core.phase, Phase::Broken(_)) {
                // The link is dead: release its write half now, not when a
                // new link or the end comes (a peer must not keep the socket).
                if let Some((_, tx)) = link.take() {
                    tx.abort();
                }
            }
            let epoch = core.epoch;
            let attached = link.is_some() && matches!(core.phase, Phase::Attached(_));
            let core = &mut *core;
            // Closed was handled above.
            let Some(closing) = core.phase.closing() else { break };
            match closing {
                // No link to carry the ProtocolError: end now rather than
                // wait for the violator to come back.
                Closing::Abort { end } if !attached => Work::Abort(end.clone()),
                Closing::Abort { end } => match core.sm.next_to_send() {
                    Some(frame) => Work::Send(epoch, StableMsg::Frame(frame)),
                    None => Work::Abort(end.clone()),
                },
                _ if !attached => Work::Wait,
                closing => {
                    if let Some(frame) = core.sm.next_to_send() {
                        Work::Send(epoch, StableMsg::Frame(frame))
                    } else if let Some(ack) = core.sm.take_owed_ack() {
                        Work::Send(epoch, StableMsg::Ack { ack })
                    } else if *closing == Closing::Graceful && core.sm.replay_len() == 0 {
                        // Everything was acknowledged: nothing can be lost by ending now.
                        Work::Bye
                    } else {
                        Work::Wait
                    }
                }
            }
        };
        match work {
            Work::Wait => notified.await,
            Work::Send(epoch, msg) => {
                let Some((_, tx)) = link.as_ref() else { continue };
                let sent = match encode(&msg) {
                    Ok(bytes) => match unless_shut(&shared, tx.send(bytes)).await {
                        Some(r) => r.map_err(|e| e.to_string()),
                        // Closed meanwhile: the loop sees it next.
                        None => continue,
                    },
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = sent {
                    tracing::debug!(epoch, error = %e, "stable conduit send failed");
                    if let Some((_, tx)) = link.take() {
                        tx.abort();
                    }
                    shared.on_broken(epoch);
                }
            }
            Work::Bye => {
                if let Some((_, tx)) = link.take() {
                    if let Ok(bytes) = encode(&StableMsg::Bye) {
                        let _ = unless_shut(&shared, tx.send(bytes)).await;
                    }
                    close_link(&shared, tx).await;
                }
                shared.finish(StableEnd::LocalClose);
                break;
            }
            Work::Abort(end) => {
                if let Some((_, tx)) = link.take() {
                    close_link(&shared, tx).await;
                }
                shared.finish(end);
                break;
            }
        }
    }
    if let Some((_, tx)) = link.take() {
        tx.abort();
    }
}

/// Flushes and closes a link's sending half, unless the conduit is closed
/// first (a peer that stopped reading): then the half is aborted.
async fn close_link(shared: &StableShared, tx: LinkTx) {
    // `close` consumes the half; keep a way to abort it if we give up.
    let abort = tx.abort_handle();
    if unless_shut(shared, tx.close()).await.is_none() {
        abort.abort();
    }
}
