//! The driver side of the session's operation table (PROTOCOL.md section
//! 10): turns the sans-IO [`OperationTable`]'s decisions into handler runs,
//! attached attempts and answers.
//!
//! One [`SessionOps`] per session, shared by every connection of every
//! attachment: the table is session-scoped and survives a resume (rule
//! `session.resume`). Everything attachment-scoped stays in the connection
//! cores; what crosses attachments here is only what the rules require: a
//! live execution keeps running after its attachment died (unless its
//! channels died with it), and a retry on the new attachment attaches to it,
//! gets its sealed outcome, or is failed closed.

use crate::plumbing::operations::{
    Admission, ArgsDigest, MethodPolicy, OpId, OperationConfig, OperationTable, Ticket, WaiterId,
};
use crate::sync::Mutex;
use crate::wire::{IdMap, id_map};
use crate::wire::{MethodId, ResponseBody};
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// What the driver does with one attempt that carries an operation id.
pub(crate) enum Decision {
    /// Run the handler (a first execution, a re-execution, or one that
    /// supersedes an execution whose channels died); report with the ticket.
    Run(Ticket),
    /// Wait for the live execution's outcome.
    Attach { op: OpId, waiter: WaiterId, outcome: oneshot::Receiver<ResponseBody> },
    /// Answer at once: a replayed sealed outcome, `Indeterminate` (fail
    /// closed), or `Rejected`.
    Answer(ResponseBody),
}

/// The session's operation table with the handles the driver needs to act
/// on its decisions.
pub(crate) struct SessionOps {
    inner: Mutex<Inner>,
}

struct Inner {
    table: OperationTable,
    /// Attached attempts, answered when their execution finishes. Bounded
    /// by the table (`max_records` x `max_waiters_per_op`).
    waiters: IdMap<WaiterId, oneshot::Sender<ResponseBody>>,
    /// The handler task of each live execution, to stop a superseded one.
    running: IdMap<OpId, (Ticket, AbortHandle)>,
}

impl std::fmt::Debug for SessionOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOps").finish_non_exhaustive()
    }
}

impl SessionOps {
    pub(crate) fn new(config: OperationConfig) -> SessionOps {
        SessionOps {
            inner: Mutex::new(Inner { table: OperationTable::new(config), waiters: id_map(), running: id_map() }),
        }
    }

    /// Admits one attempt.
    pub(crate) fn admit(
        &self,
        op: OpId,
        method: MethodId,
        args: ArgsDigest,
        policy: MethodPolicy,
        has_channels: bool,
    ) -> Decision {
        let mut inner = self.inner.lock();
        match inner.table.admit(op, method, args, policy, has_channels, Instant::now()) {
            Ok(Admission::Execute(t)) | Ok(Admission::ReExecute(t)) => Decision::Run(t),
            Ok(Admission::Supersede { ticket, stale }) => {
                // The stale execution's channels belong to a dead attachment:
                // stop it; its late completion is refused by the table.
                if let Some((t, abort)) = inner.running.remove(&op) {
                    if t == stale {
                        abort.abort();
                    } else {
                        inner.running.insert(op, (t, abort));
                    }
                }
                Decision::Run(ticket)
            }
            Ok(Admission::Attach(waiter)) => {
                let (tx, rx) = oneshot::channel();
                inner.waiters.insert(waiter, tx);
                Decision::Attach { op, waiter, outcome: rx }
            }
            Ok(Admission::Replay(outcome)) => Decision::Answer(outcome),
            Ok(Admission::FailIndeterminate) => Decision::Answer(ResponseBody::Indeterminate),
            Err(rejection) => Decision::Answer(ResponseBody::Rejected { reason: rejection.to_string() }),
        }
    }

    /// The handler task of `ticket`'s execution started.
    pub(crate) fn started(&self, ticket: Ticket, abort: AbortHandle) {
        self.inner.lock().running.insert(ticket.op(), (ticket, abort));
    }

    /// The execution finished with `outcome`: attached attempts get it too,
    /// and it is handed back for the executing attempt's own reply (taken by
    /// value so that only a sealed record or a waiter costs a copy). `None`
    /// when the ticket is no longer the live execution (superseded): then
    /// its own attempt must be answered `Indeterminate`.
    pub(crate) fn complete(&self, ticket: Ticket, outcome: ResponseBody) -> Option<ResponseBody> {
        let mut inner = self.inner.lock();
        forget_running(&mut inner, ticket);
        match inner.table.complete(ticket, outcome, Instant::now()) {
            Ok(done) => {
                for w in done.waiters {
                    if let Some(tx) = inner.waiters.remove(&w) {
                        let _ = tx.send(done.outcome.clone());
                    }
                }
                Some(done.outcome)
            }
            Err(e) => {
                tracing::debug!(error = %e, "completion of a superseded execution ignored");
                None
            }
        }
    }

    /// The execution was stopped before it finished (cancelled, or its
    /// channels died with their attachment): its outcome is unknown.
    pub(crate) fn interrupt(&self, ticket: Ticket) {
        let mut inner = self.inner.lock();
        forget_running(&mut inner, ticket);
        match inner.table.interrupt(ticket, Instant::now()) {
            Ok(waiters) => {
                for w in waiters {
                    if let Some(tx) = inner.waiters.remove(&w) {
                        let _ = tx.send(ResponseBody::Indeterminate);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "interrupt of a superseded execution ignored"),
        }
    }

    /// An attached attempt went away (cancelled, or its attachment died).
    pub(crate) fn detach(&self, op: OpId, waiter: WaiterId) {
        let mut inner = self.inner.lock();
        inner.table.detach(op, waiter);
        inner.waiters.remove(&waiter);
    }
}

fn forget_running(inner: &mut Inner, ticket: Ticket) {
    if matches!(inner.running.get(&ticket.op()), Some((t, _)) if *t == ticket) {
        inner.running.remove(&ticket.op());
    }
}

// The driver side of the table: waiters answered, stale executions stopped,
// nothing left behind (issue 23).
#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
