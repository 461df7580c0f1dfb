//! Graceful draining (`SessionHandle::drain`): new requests and opens are
//! refused, and the session ends once no handler is in flight or when the
//! grace period runs out. The decisions are the machine's; the timer and
//! the wake-up are the loop's.

use super::{Event, RunLoop};
use crate::session::machine::Step;
use crate::session::phase::CloseReason;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A graceful shutdown in progress: the session ends once no handler is in
/// flight or at `deadline`.
pub(crate) struct Draining {
    idle: Arc<tokio::sync::Notify>,
    deadline: Instant,
}

/// While draining: a handler ended (check whether all are done) or the
/// grace period ran out.
pub(super) async fn drain_event(d: &Option<Draining>) -> Event {
    let Some(d) = d else { return std::future::pending().await };
    tokio::select! {
        _ = d.idle.notified() => Event::DrainProgress,
        _ = tokio::time::sleep_until(d.deadline) => Event::DrainDeadline,
    }
}

impl RunLoop {
    /// Starts draining with `grace` to finish (a second request keeps the
    /// first deadline).
    pub(super) fn start_drain(&mut self, grace: Duration) -> Step {
        if self.draining.is_none() {
            let idle = Arc::new(tokio::sync::Notify::new());
            self.machine.start_draining(idle.clone());
            self.draining = Some(Draining { idle, deadline: Instant::now() + grace });
        }
        self.drain_check()
    }

    /// While draining: ends the session once no handler is in flight.
    pub(super) fn drain_check(&mut self) -> Step {
        if self.draining.is_none() || !self.machine.is_idle() {
            return Step::Continue;
        }
        Step::End(CloseReason::Shutdown, None, self.machine.phase.is_established())
    }
}
