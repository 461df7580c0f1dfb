//! The connection's flush task: it sends what code that cannot wait made
//! due (grants, channel closes and resets, cancels of dropped calls), and
//! the graceful teardown drains it before the connection is marked lost.

use super::ConnectionCore;
use crate::driver::channel::LossCause;
use crate::wire::{Message, Payload};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Where the connection's flush task is in its life. The session's graceful
/// teardown asks it to finish (`Draining`) and waits for `Done`, so nothing
/// made due before the end (a channel close, a cancel) is dropped by the
/// connection loss that follows.
#[derive(Debug, Default)]
pub(super) enum FlushPhase {
    /// Sends what becomes due, until the connection is lost.
    #[default]
    Running,
    /// Sends what is due, then stops; `waiter` is the teardown.
    Draining { waiter: Option<Waker> },
    /// The flush task has returned: nothing more will be sent by it.
    Done,
}

impl ConnectionCore {
    /// Collects the channel control messages that non-async code made due
    /// (grants, channel closes and resets) into `out`; cancels stay in
    /// `cancels_due` (see [`ConnectionCore::send_due_cancels`]).
    /// `Ready(true)` when there is work, `Ready(false)` once the connection
    /// has ended or a drain found nothing left.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>, out: &mut Vec<Payload>) -> Poll<bool> {
        let (cancels, draining) = {
            let mut st = self.state.lock();
            if st.lost.is_lost() {
                return Poll::Ready(false);
            }
            st.flush_waker = Some(cx.waker().clone());
            (!st.cancels_due.is_empty(), matches!(st.flush, FlushPhase::Draining { .. }))
        };
        let _ = self.registry.poll_outbound(cx, out);
        if cancels || !out.is_empty() {
            Poll::Ready(true)
        } else if draining {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Queues the due cancels, each popped only once a place is held, so no
    /// request can be queued between the pop and the cancel.
    async fn send_due_cancels(&self) -> Result<(), LossCause> {
        loop {
            if self.state.lock().cancels_due.is_empty() {
                return Ok(());
            }
            let permit = self.reserve().await?;
            let mut st = self.state.lock();
            st.lost.admit()?;
            let Some(id) = st.cancels_due.pop_front() else { return Ok(()) };
            permit.send(Message { connection_id: self.id, payload: Payload::CancelRequest { id } });
        }
    }

    /// The connection's flush task: the only sender of messages made due by
    /// drops and by consumption (grants), besides cancels that a later
    /// request queues ahead of itself.
    pub(crate) async fn run_flush(self: Arc<Self>) {
        // Tells a waiting teardown on every way out, including a panic or
        // the runtime dropping the task.
        let _done = FlushDone(&self);
        let mut out = Vec::new();
        loop {
            out.clear();
            let alive = std::future::poll_fn(|cx| self.poll_flush(cx, &mut out)).await;
            if !alive {
                return;
            }
            if self.send_due_cancels().await.is_err() {
                return;
            }
            for payload in out.drain(..) {
                if self.send(payload).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Graceful end: asks the flush task to queue everything already due
    /// (channel closes, resets, grants, cancels) and resolves once it has
    /// stopped. Call it before [`ConnectionCore::on_lost`], which discards
    /// whatever is still due. Cancel-safe; bound it with a timeout, since it
    /// waits for outbound room.
    pub(crate) async fn drain_flush(&self) {
        std::future::poll_fn(|cx| {
            let flush_waker = {
                let mut st = self.state.lock();
                match &mut st.flush {
                    FlushPhase::Done => return Poll::Ready(()),
                    FlushPhase::Running | FlushPhase::Draining { .. } => {
                        st.flush = FlushPhase::Draining { waiter: Some(cx.waker().clone()) };
                    }
                }
                st.flush_waker.take()
            };
            if let Some(w) = flush_waker {
                w.wake();
            }
            Poll::Pending
        })
        .await
    }
}

/// Marks the flush task finished when it returns, waking a draining teardown.
struct FlushDone<'a>(&'a ConnectionCore);

impl Drop for FlushDone<'_> {
    fn drop(&mut self) {
        let waiter = {
            let mut st = self.0.state.lock();
            match std::mem::replace(&mut st.flush, FlushPhase::Done) {
                FlushPhase::Draining { waiter } => waiter,
                FlushPhase::Running | FlushPhase::Done => None,
            }
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}
