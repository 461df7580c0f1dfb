//! A debug snapshot of a live session (`SessionHandle::snapshot`): what it
//! holds at one moment, for people (`Display`) and for tools (serde).
//! Taken by the run loop between two events, so every figure in it is of
//! the same moment.

use crate::driver::{ChannelStats, ChannelView, CoreStats, InFlight};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a live session is doing.
///
/// ```
/// # async fn demo(session: vox_core::session::SessionHandle) -> Result<(), vox_core::session::SessionError> {
/// let snapshot = session.snapshot().await?;
/// println!("{snapshot}");
/// assert_eq!(snapshot.connections[0].id, 0, "the root comes first");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// `established`, `resuming`, `closing` or `closed`.
    pub phase: String,
    /// The current attachment's generation (while resuming: the lost one).
    pub generation: u64,
    /// Every live connection, the root first, then by id.
    pub connections: Vec<ConnectionSnapshot>,
    /// Places taken in the outbound queue on the current attachment: one
    /// per message, and one per channel whose items wait for the writer
    /// (however many items that channel's credit let it queue).
    pub outbound_queued: usize,
    /// The outbound queue's capacity (`SessionConfig::outbound_capacity`).
    pub outbound_capacity: usize,
    /// Messages the session itself owes the peer and has not queued yet
    /// (pongs, opens, accepts, closes).
    pub owed: usize,
    /// Requests from handles waiting in the control mailbox.
    pub mailbox_queued: usize,
    /// A graceful shutdown is in progress.
    pub draining: bool,
    /// The application dropped its last root caller.
    pub root_released: bool,
}

/// One connection in a [`SessionSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSnapshot {
    /// The connection id (0 is the root).
    pub id: u64,
    /// `open`, or `opening` (we sent `OpenConnection`, no answer yet).
    pub state: String,
    /// The driver's counters: calls and handlers in flight (absent while
    /// opening: there is no driver yet).
    pub calls: Option<CoreStats>,
    /// The channel registry's counters (absent while opening).
    pub channels: Option<ChannelStats>,
    /// This side's calls awaiting their response, oldest first.
    pub outgoing: Vec<InFlight>,
    /// The peer's requests being handled here, oldest first.
    pub incoming: Vec<InFlight>,
    /// Every channel of the connection still in its registry, by id.
    pub channel_list: Vec<ChannelView>,
}

impl fmt::Display for SessionSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session {} (generation {})", self.phase, self.generation)?;
        if self.draining {
            write!(f, ", draining")?;
        }
        if self.root_released {
            write!(f, ", root released")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  outbound {}/{} queued, {} owed by the session, {} requests in the mailbox",
            self.outbound_queued, self.outbound_capacity, self.owed, self.mailbox_queued
        )?;
        for c in &self.connections {
            write!(f, "  connection {} ({})", c.id, c.state)?;
            if let Some(calls) = &c.calls {
                write!(f, ": {} calls, {} handlers in flight", calls.calls_in_flight, calls.handlers_in_flight)?;
            }
            if let Some(ch) = &c.channels {
                write!(
                    f,
                    "; channels {} open, {} pending, {} closing, {} closed, deepest queue {}",
                    ch.open, ch.pending, ch.closing, ch.closed, ch.max_queue_depth
                )?;
            }
            writeln!(f)?;
            for (dir, list) in [("call", &c.outgoing), ("handling", &c.incoming)] {
                for r in list {
                    writeln!(f, "    {dir} {} method {} for {} ms ({})", r.request_id, r.method, r.age_ms, r.state)?;
                }
            }
            for ch in &c.channel_list {
                let credit = ch.credit.map_or_else(|| "no".to_string(), |c| c.to_string());
                writeln!(f, "    channel {} ({}, {}): credit {credit}, {} queued", ch.id, ch.end, ch.state, ch.queued)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_snapshot_display_names_every_figure() {
        let snapshot = SessionSnapshot {
            phase: "established".into(),
            generation: 2,
            connections: vec![
                ConnectionSnapshot {
                    id: 0,
                    state: "open".into(),
                    calls: Some(CoreStats { calls_in_flight: 3, handlers_in_flight: 1, ..CoreStats::default() }),
                    channels: Some(ChannelStats { open: 2, max_queue_depth: 5, ..ChannelStats::default() }),
                    outgoing: vec![InFlight {
                        request_id: 7,
                        method: crate::wire::MethodId(9),
                        age_ms: 12,
                        state: "waiting".into(),
                    }],
                    incoming: vec![InFlight {
                        request_id: 4,
                        method: crate::wire::MethodId(10),
                        age_ms: 3,
                        state: "stopping".into(),
                    }],
                    channel_list: vec![ChannelView {
                        id: 2,
                        end: "receiver".into(),
                        state: "open".into(),
                        credit: Some(16),
                        queued: 3,
                    }],
                },
                ConnectionSnapshot {
                    id: 1,
                    state: "opening".into(),
                    calls: None,
                    channels: None,
                    outgoing: Vec::new(),
                    incoming: Vec::new(),
                    channel_list: Vec::new(),
                },
            ],
            outbound_queued: 4,
            outbound_capacity: 1024,
            owed: 1,
            mailbox_queued: 6,
            draining: true,
            root_released: false,
        };
        assert_eq!(
            snapshot.to_string(),
            "session established (generation 2), draining\n\
             \x20 outbound 4/1024 queued, 1 owed by the session, 6 requests in the mailbox\n\
             \x20 connection 0 (open): 3 calls, 1 handlers in flight; channels 2 open, 0 pending, 0 closing, 0 closed, deepest queue 5\n\
             \x20   call 7 method 9 for 12 ms (waiting)\n\
             \x20   handling 4 method 10 for 3 ms (stopping)\n\
             \x20   channel 2 (receiver, open): credit 16, 3 queued\n\
             \x20 connection 1 (opening)\n"
        );
        let bytes = postcard::to_allocvec(&snapshot).expect("serialize");
        let back: SessionSnapshot = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(back, snapshot, "tools get every field back");
    }
}
