//! What the table hands back: an attempt's [`Admission`] or [`Rejection`],
//! the [`Ticket`] and [`WaiterId`]s the driver maps to tasks and reply sinks,
//! and the records' state and counters as seen from outside.

use super::OpId;
use crate::wire::{MethodId, ResponseBody};

/// An attempt attached to a live execution; the driver maps it to the
/// attempt's reply sink and answers it when the execution completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// The right to report the outcome of one execution of an operation.
///
/// It names the execution, not just the operation: after the operation was
/// re-executed, a ticket of the earlier execution is stale and
/// [`OperationTable::complete`](super::OperationTable::complete) /
/// [`OperationTable::interrupt`](super::OperationTable::interrupt) refuse it,
/// so a late event from an old attachment never acts on the new execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub(super) op: OpId,
    pub(super) execution: u64,
}

impl Ticket {
    /// The operation this ticket belongs to.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// The execution number (unique within the table, increasing).
    pub fn execution(&self) -> u64 {
        self.execution
    }
}

/// What to do with an admitted attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New id: run the handler, then report with the ticket.
    Execute(Ticket),
    /// A duplicate of a live execution (rule `retry.duplicate.live`): do not
    /// run anything; answer this attempt when the execution completes.
    Attach(WaiterId),
    /// A duplicate of a sealed operation (rule `retry.duplicate.sealed`):
    /// answer with this outcome, which may be a user error.
    Replay(ResponseBody),
    /// An idem operation whose earlier outcome is gone (Released) or unknown
    /// (Indeterminate): run the handler again.
    ReExecute(Ticket),
    /// An idem, channel-bearing duplicate of a live execution: the live
    /// execution's channels belong to a dead attachment, so run again with the
    /// new attempt's fresh channels (rule `retry.channel.volatile.rebinding`).
    /// `stale` is the superseded execution: the driver cancels it and answers
    /// its attempt with `Indeterminate`; its ticket is refused from now on.
    /// Attempts attached to it are carried over to the new execution.
    Supersede {
        /// The new execution.
        ticket: Ticket,
        /// The superseded execution.
        stale: Ticket,
    },
    /// A non-idem operation whose outcome is gone or unknown, or whose live
    /// execution's channels are dead (rule `retry.channel.recovery.non-idem`):
    /// answer `Indeterminate`; nothing runs.
    FailIndeterminate,
}

/// Why a recorded id does not match an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// The attempt calls another method.
    Method {
        /// The method of the record.
        recorded: MethodId,
        /// The method of the attempt.
        attempted: MethodId,
    },
    /// Same method, different args.
    Args,
}

/// An attempt the table refuses; the driver answers it with an error
/// response and nothing runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The id is recorded for another method or other args (rule `retry.op-id`).
    #[error("operation id {op} conflicts with its record: {kind:?}")]
    Conflict {
        /// The id.
        op: OpId,
        /// What differs.
        kind: ConflictKind,
    },
    /// The id's record expired; it is not taken as new.
    #[error("operation id {op} has expired")]
    Expired {
        /// The id.
        op: OpId,
    },
    /// Every record is Live and the table is at capacity.
    #[error("operation table full ({capacity} live operations)")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The live execution already has the maximum number of attached attempts.
    #[error("operation {op} has {limit} attached attempts already")]
    TooManyWaiters {
        /// The id.
        op: OpId,
        /// The configured limit.
        limit: usize,
    },
}

/// A ticket the table refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// No record for the ticket's id (never issued here, or finished and
    /// expired since).
    #[error("no record for operation {op}")]
    Unknown {
        /// The id.
        op: OpId,
    },
    /// The operation was re-executed since this ticket was issued.
    #[error("stale ticket for operation {op}: execution {execution}, current {current}")]
    Stale {
        /// The id.
        op: OpId,
        /// The ticket's execution.
        execution: u64,
        /// The record's current execution.
        current: u64,
    },
    /// This execution already completed or was interrupted.
    #[error("execution {execution} of operation {op} has already finished")]
    Finished {
        /// The id.
        op: OpId,
        /// The execution.
        execution: u64,
    },
}

/// The result of [`OperationTable::complete`](super::OperationTable::complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The outcome, handed back for the executing attempt's own reply.
    pub outcome: ResponseBody,
    /// Attached attempts to answer with the same outcome.
    pub waiters: Vec<WaiterId>,
}

/// The state of a record, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpState {
    /// Executing.
    Live,
    /// Finished; the outcome is kept (persist methods).
    Sealed,
    /// Finished; the outcome was delivered and dropped (volatile methods).
    Released,
    /// The execution's outcome is unknown.
    Indeterminate,
}

/// Counters of an [`OperationTable`](super::OperationTable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Finished records removed because their TTL passed.
    pub expired: u64,
    /// Finished records removed before their TTL because the table was full.
    pub evicted_early: u64,
}
