//! Fault injection: an in-process link pair that can be cut or held, for
//! tests of everything that must survive a bad network.
//!
//! The pair is two memory links joined by a relay task. Cutting stops the
//! relay: messages already handed to the far side are still delivered,
//! those still in the relay are lost, and both ends then see end of stream,
//! as with a dropped TCP connection. Holding pauses the relay without
//! closing anything, as a partition does.

use super::{Link, LinkConfig, memory_pair};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Controls a [`faulty_pair`].
#[derive(Clone, Debug)]
pub struct FaultHandle {
    state: watch::Sender<Relay>,
    forwarded: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    Flowing,
    Held,
    Cut,
}

impl FaultHandle {
    /// Cuts the link now (both directions).
    pub fn cut(&self) {
        self.state.send_replace(Relay::Cut);
    }

    /// Stops forwarding without closing: a partition.
    pub fn hold(&self) {
        self.state.send_if_modified(|s| {
            let changed = *s == Relay::Flowing;
            if changed {
                *s = Relay::Held;
            }
            changed
        });
    }

    /// Resumes forwarding after [`hold`](Self::hold).
    pub fn release(&self) {
        self.state.send_if_modified(|s| {
            let changed = *s == Relay::Held;
            if changed {
                *s = Relay::Flowing;
            }
            changed
        });
    }

    /// Messages forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Whether the link was cut.
    pub fn is_cut(&self) -> bool {
        *self.state.borrow() == Relay::Cut
    }
}

/// Two connected links; the relay between them cuts itself after forwarding
/// `cut_after` messages (both directions counted together), if given.
pub fn faulty_pair(config: LinkConfig, cut_after: Option<u64>) -> (Link, Link, FaultHandle) {
    let (a, relay_a) = memory_pair(config.clone());
    let (b, relay_b) = memory_pair(config);
    let (state, _) = watch::channel(Relay::Flowing);
    let handle = FaultHandle { state, forwarded: Arc::new(AtomicU64::new(0)) };
    let (a_tx, a_rx) = relay_a.split();
    let (b_tx, b_rx) = relay_b.split();
    tokio::spawn(forward(a_rx, b_tx, handle.clone(), cut_after));
    tokio::spawn(forward(b_rx, a_tx, handle.clone(), cut_after));
    (a, b, handle)
}

async fn forward(mut from: super::LinkRx, to: super::LinkTx, handle: FaultHandle, cut_after: Option<u64>) {
    let mut state = handle.state.subscribe();
    loop {
        // Wait while held; stop when cut.
        let Ok(now) = state.wait_for(|s| *s != Relay::Held).await.map(|s| *s) else { return };
        if now == Relay::Cut {
            return;
        }
        let msg = tokio::select! {
            m = from.recv() => m,
            _ = state.changed() => continue,
        };
        let Ok(Some(msg)) = msg else {
            handle.cut();
            return;
        };
        let n = handle.forwarded.fetch_add(1, Ordering::Relaxed) + 1;
        if cut_after.is_some_and(|k| n > k) || handle.is_cut() {
            handle.cut();
            return;
        }
        if to.send(msg).await.is_err() {
            handle.cut();
            return;
        }
    }
}
