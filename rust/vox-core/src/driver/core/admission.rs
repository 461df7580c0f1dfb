//! Admission of a request against the session's operation table (section
//! 10): whether it runs, attaches to a live execution of the same operation,
//! or is answered at once. Kept apart from running handlers because the
//! decision is the table's, and is made before anything is spawned.

use super::ConnectionCore;
use crate::plumbing::operations::{ArgsDigest, OpId, Ticket, WaiterId, read_op_id};
use crate::plumbing::ops::{Decision, SessionOps};
use crate::wire::{Blob, Metadata, MethodId, ResponseBody};
use std::sync::Arc;
use tokio::sync::oneshot;

impl ConnectionCore {
    /// Section 10: a request that carries an operation id, on a connection
    /// whose session keeps an operation table and serves calls, is admitted
    /// against the table; anything else is a plain call.
    pub(super) fn admit(&self, method_id: MethodId, args: &Blob, metadata: &Metadata, has_channels: bool) -> Work {
        let (Some(ops), Some(handler)) = (&self.ops, &self.handler) else { return Work::Handle(None) };
        let op = match read_op_id(metadata) {
            Ok(Some(op)) => op,
            Ok(None) => return Work::Handle(None),
            Err(e) => return Work::Answer(ResponseBody::InvalidPayload { reason: e.to_string() }),
        };
        // The args never embed channel ids (those travel in the request's
        // channel list), so every attempt of one call digests the same.
        let digest = ArgsDigest::of(args.bytes());
        match ops.admit(op, method_id, digest, handler.policy(method_id), has_channels) {
            Decision::Run(ticket) => Work::Handle(Some(OpRun { ops: ops.clone(), ticket, has_channels })),
            Decision::Attach { op, waiter, outcome } => Work::Attach { ops: ops.clone(), op, waiter, outcome },
            Decision::Answer(body) => Work::Answer(body),
        }
    }
}

/// What an admitted request does (see [`ConnectionCore::admit`]).
pub(super) enum Work {
    /// Run the handler; with an operation ticket if the table tracks it.
    Handle(Option<OpRun>),
    /// Wait for the live execution of the same operation.
    Attach { ops: Arc<SessionOps>, op: OpId, waiter: WaiterId, outcome: oneshot::Receiver<ResponseBody> },
    /// Answer without running anything.
    Answer(ResponseBody),
}

/// The operation-table side of one execution.
pub(super) struct OpRun {
    pub(super) ops: Arc<SessionOps>,
    pub(super) ticket: Ticket,
    pub(super) has_channels: bool,
}
