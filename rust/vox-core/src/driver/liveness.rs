//! The liveness gate of one connection, sans IO.
//!
//! Every message a connection queues on the session's outbound path asks the
//! gate first ([`Liveness::admit`]), and closing the connection flips it once
//! ([`Liveness::end`]); [`super::ConnectionCore`] keeps the gate under the same
//! lock as its queueing, so once the session has ended a connection (and then
//! queued its `CloseConnection`) nothing of that connection can follow. The
//! gate is a plain value with one transition per event so that the loom model
//! `close_connection_vs_inbound_traffic` can drive exactly this code.

use super::channel::LossCause;

/// Whether a connection may still queue messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// Open: messages are admitted.
    #[default]
    Live,
    /// Ended: nothing more is admitted, and every outcome reports the cause.
    Lost(LossCause),
}

impl Liveness {
    /// Event "queue a message": admitted only while live; otherwise the
    /// typed cause the sender reports.
    pub fn admit(&self) -> Result<(), LossCause> {
        match self {
            Liveness::Live => Ok(()),
            Liveness::Lost(cause) => Err(cause.clone()),
        }
    }

    /// Event "the connection ended": `true` for the one call that makes the
    /// transition (it owns failing what was in flight), `false` afterwards,
    /// so teardown paths racing each other act once.
    pub fn end(&mut self, cause: LossCause) -> bool {
        match self {
            Liveness::Live => {
                *self = Liveness::Lost(cause);
                true
            }
            Liveness::Lost(_) => false,
        }
    }

    /// Whether the connection has ended.
    pub fn is_lost(&self) -> bool {
        matches!(self, Liveness::Lost(_))
    }

    /// Why the connection ended, if it has.
    pub fn cause(&self) -> Option<&LossCause> {
        match self {
            Liveness::Live => None,
            Liveness::Lost(cause) => Some(cause),
        }
    }
}

// The gate alone, and the real `ConnectionCore` around it: nothing of a
// connection is queued after it ended (issue 23).
#[cfg(test)]
#[path = "liveness_tests.rs"]
mod tests;

// loom model 6: the real `ConnectionCore`'s locking (in-crate, since the
// core is crate-private; `.ci/proofs` runs it with `--cfg loom`).
#[cfg(all(test, loom))]
#[path = "liveness_loom.rs"]
mod loom_core;
