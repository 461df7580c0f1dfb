//! The bound on unfinished setups of a listener (rule
//! `session.setup.limits`): a new link is never made to wait, so room is
//! made by cutting the oldest setup short instead.

use std::sync::Arc;
use tokio::sync::watch;

/// The setups in progress on a listener, oldest first (rule
/// `session.setup.limits`).
pub(super) struct PendingSetups {
    state: parking_lot::Mutex<PendingState>,
    /// How many are in progress (mirrors `state.tasks.len()`), for
    /// [`Listener::pending_setups`] and for waiting on it.
    pub(super) count: watch::Sender<usize>,
    /// Unfinished setups closed to make room for newer ones.
    pub(super) evicted: std::sync::atomic::AtomicU64,
}

struct PendingState {
    /// Ids grow with acceptance order, so the first entry is the oldest.
    next_id: u64,
    /// Each setup's cancel signal: dropping it cuts the setup short.
    tasks: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl PendingSetups {
    pub(super) fn new() -> PendingSetups {
        PendingSetups {
            state: parking_lot::Mutex::new(PendingState { next_id: 0, tasks: Default::default() }),
            count: watch::channel(0).0,
            evicted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers a new setup. If `max` are already in progress, the oldest
    /// ones are closed first (cut short: a link still in its prologue is
    /// dropped at once, a conduit is aborted within the protocol-error
    /// deadline): a new link is never made to wait for room. The setup's
    /// task ends when the returned signal completes.
    pub(super) fn admit(self: &Arc<Self>, max: usize) -> (SetupGuard, impl std::future::Future<Output = ()> + use<>) {
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        let (id, evicted) = {
            let mut state = self.state.lock();
            let mut evicted = Vec::new();
            while state.tasks.len() >= max.max(1) {
                match state.tasks.pop_first() {
                    Some((_, task)) => evicted.push(task),
                    None => break,
                }
            }
            let id = state.next_id;
            state.next_id += 1;
            state.tasks.insert(id, cancel_tx);
            self.count.send_replace(state.tasks.len());
            (id, evicted)
        };
        for cancel in evicted {
            self.evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(max, "closing the oldest unfinished setup to make room for a new link");
            drop(cancel);
        }
        let cancelled = async move {
            // Completes when the sender is dropped (evicted) or used.
            let _ = cancel_rx.await;
        };
        (SetupGuard { pending: self.clone(), id }, cancelled)
    }

    fn finished(&self, id: u64) {
        let mut state = self.state.lock();
        if state.tasks.remove(&id).is_some() {
            self.count.send_replace(state.tasks.len());
        }
    }
}

/// Held by a setup's task: dropping it (the setup finished, failed or was
/// aborted) removes the setup from [`PendingSetups`].
pub(super) struct SetupGuard {
    pending: Arc<PendingSetups>,
    id: u64,
}

impl Drop for SetupGuard {
    fn drop(&mut self) {
        self.pending.finished(self.id);
    }
}
