//! The server-side session operation table (PROTOCOL.md section 10).
//!
//! Every logical call that carries an operation id (metadata key
//! [`OP_ID_KEY`]) gets one record here, keyed by that id, for as long as the
//! session lives (the table is session-scoped and survives a resume, rule
//! `session.resume`). A record moves
//! `Absent -> Live -> Sealed(outcome) | Released | Indeterminate`, and each
//! attempt of the call is admitted against it with [`OperationTable::admit`],
//! which returns an explicit [`Admission`] (run, attach, replay, re-run, fail
//! closed) or a typed [`Rejection`].
//!
//! The table is sans-IO: no tasks, no locks, no clock of its own. The driver
//! owns it (one task), passes the current time in, and maps the opaque
//! [`Ticket`]s and [`WaiterId`]s it hands out to handler tasks and reply
//! sinks.
//!
//! ```
//! use std::time::Instant;
//! use vox_core::test_util::operations::{Admission, ArgsDigest, MethodPolicy, OpId, OperationConfig, OperationTable};
//! use vox_core::wire::{MethodId, ResponseBody};
//!
//! let mut table = OperationTable::new(OperationConfig::default());
//! let (op, method, args) = (OpId(7), MethodId(1), ArgsDigest::of(b"args"));
//! let persist = MethodPolicy { idem: false, persist: true };
//! let now = Instant::now();
//!
//! // First attempt: run the handler.
//! let Ok(Admission::Execute(ticket)) = table.admit(op, method, args, persist, false, now) else { panic!() };
//! // A duplicate while it runs attaches to it: no second execution.
//! let Ok(Admission::Attach(waiter)) = table.admit(op, method, args, persist, false, now) else { panic!() };
//! // Completion names the waiters to answer with the same outcome.
//! let done = table.complete(ticket, ResponseBody::Ok(Default::default()), now).unwrap();
//! assert_eq!(done.waiters, vec![waiter]);
//! // A later duplicate gets the sealed outcome replayed.
//! assert!(matches!(table.admit(op, method, args, persist, false, now), Ok(Admission::Replay(ResponseBody::Ok(_)))));
//! ```

//! The table's vocabulary is split from its logic so each can be read alone:
//! `op_id` (the id and its metadata key), `policy` (what an attempt is judged
//! by, and the table's limits), `answers` (what the table hands back) and
//! `table` (the records and their transitions).

mod answers;
mod op_id;
mod policy;
mod records;
mod table;

pub use answers::{
    Admission, Completion, ConflictKind, OpState, OperationStats, Rejection, Ticket, TicketError, WaiterId,
};
pub use op_id::{OP_ID_KEY, OpId, OpIdError, read_op_id, write_op_id};
pub use policy::{ArgsDigest, MethodPolicy, OperationConfig};
pub use table::OperationTable;

// The table's own edge cases (watermark, waiter limit, clock); the protocol
// rules are in tests/operation_table.rs.
#[cfg(test)]
mod tests;
