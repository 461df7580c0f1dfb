//! The request tasks: how a handler that did not answer at once runs to its
//! one response, racing the caller's cancel, the deadline and the
//! connection's end; with the operation table's bookkeeping when it tracks
//! the execution.

use super::admission::OpRun;
use super::contained::Contained;
use super::incoming::Attempt;
use crate::plumbing::operations::{OpId, WaiterId};
use crate::plumbing::ops::SessionOps;
use crate::wire::{Metadata, ResponseBody};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Resolves at `deadline`; never without one.
async fn deadline_passes(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one inbound request the operation table tracks, whose handler was
/// created and polled once on the receive loop without answering
/// ([`ConnectionCore::start_tracked`](super::ConnectionCore)): spawns the
/// handler, waits for its one reply or a cancel, and sends exactly one
/// response (rule: rpc.response.one-per-request).
///
/// The outcome also goes to the table (and to the attempts attached to this
/// execution). If the attachment dies meanwhile, an execution without
/// channels keeps running so a retry can attach to it or get its outcome
/// (`retry.duplicate.live`, `retry.duplicate.sealed`); one with channels is
/// stopped and marked indeterminate, since its channels died with the
/// attachment (`retry.channel.disconnect.closes`).
pub(super) async fn run_tracked(
    mut attempt: Attempt,
    running: Contained,
    mut reply_rx: oneshot::Receiver<(ResponseBody, Metadata)>,
    op: OpRun,
) {
    // An execution the operation table tracks runs as its own task: it may
    // have to outlive this attempt (below) or be stopped by a later attempt
    // that supersedes it (`SessionOps::admit`).
    let task = tokio::spawn(tracing::Instrument::in_current_span(running));
    op.ops.started(op.ticket, task.abort_handle());
    let (ret, md) = tokio::select! {
        r = &mut reply_rx => reply_or_failure(r.ok()),
        s = &mut attempt.stop => {
            if s.is_err() && !op.has_channels {
                // The attachment died, the execution did not: its outcome
                // is owed to the operation, not to this dead attempt.
                let (ret, _) = reply_or_failure(reply_rx.await.ok());
                let _ = op.ops.complete(op.ticket, ret);
                return;
            }
            task.abort();
            op.ops.interrupt(op.ticket);
            if s.is_err() {
                // The connection ended; nothing can be sent.
                return;
            }
            // rule: rpc.cancel
            (ResponseBody::Cancelled, Metadata::new())
        }
        () = deadline_passes(attempt.deadline) => {
            // rule: rpc.deadline — the handler is stopped.
            task.abort();
            op.ops.interrupt(op.ticket);
            (ResponseBody::DeadlineExceeded, Metadata::new())
        }
    };
    // A superseded execution's completion is refused: its attempt's outcome
    // is unknown to the caller's logical call.
    let ret = if matches!(ret, ResponseBody::Cancelled | ResponseBody::DeadlineExceeded) {
        ret
    } else {
        op.ops.complete(op.ticket, ret).unwrap_or(ResponseBody::Indeterminate)
    };
    attempt.answer_with(ret, md).await
}

/// Runs a plain call's handler inside the request's own task: one spawn and
/// one cross-task wake-up less per call than a task of its own. Cancelling
/// or losing the connection drops the handler future, which is what aborting
/// its task did; a panic is contained by [`Contained`]. A handler that goes
/// on working after it replied is driven to its end after the response left.
pub(super) async fn run_inline(
    mut attempt: Attempt,
    mut handler: Contained,
    mut reply_rx: oneshot::Receiver<(ResponseBody, Metadata)>,
) {
    let (ret, md) = loop {
        tokio::select! {
            biased;
            r = &mut reply_rx => break reply_or_failure(r.ok()),
            s = &mut attempt.stop => {
                handler.stop();
                if s.is_err() {
                    // The connection ended; nothing can be sent.
                    return;
                }
                // rule: rpc.cancel
                break (ResponseBody::Cancelled, Metadata::new());
            }
            () = deadline_passes(attempt.deadline) => {
                // rule: rpc.deadline — the handler is stopped.
                handler.stop();
                break (ResponseBody::DeadlineExceeded, Metadata::new());
            }
            // Finished or panicked: its sink is gone, so `reply_rx` is ready.
            () = &mut handler, if handler.is_running() => {}
        }
    };
    attempt.answer_with(ret, md).await;
    handler.await;
}

/// The handler's reply, or `HandlerFailed` if its sink went unanswered.
pub(super) fn reply_or_failure(r: Option<(ResponseBody, Metadata)>) -> (ResponseBody, Metadata) {
    match r {
        Some(v) => v,
        None => {
            // The sink was dropped: by the handler itself, or while
            // unwinding from a panic. Either way this is the one reply.
            let reason = "handler ended without replying (it panicked or dropped its reply sink)".to_string();
            (ResponseBody::HandlerFailed { reason }, Metadata::new())
        }
    }
}

/// An attempt attached to a live execution of its operation (rule
/// `retry.duplicate.live`): answered with that execution's outcome.
pub(super) async fn run_attached(
    mut attempt: Attempt,
    ops: Arc<SessionOps>,
    op: OpId,
    waiter: WaiterId,
    outcome: oneshot::Receiver<ResponseBody>,
) {
    let body = tokio::select! {
        // The sender is only dropped unanswered if the table went away
        // with its session; the outcome is then unknown.
        r = outcome => r.unwrap_or(ResponseBody::Indeterminate),
        s = &mut attempt.stop => {
            ops.detach(op, waiter);
            if s.is_err() {
                return;
            }
            ResponseBody::Cancelled
        }
    };
    attempt.answer(body).await
}
