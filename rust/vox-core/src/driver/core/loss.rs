//! The end of the connection. It settles everything the core still holds
//! (pending calls, running handlers, channels) in one place, under the lock
//! the send gate checks, so nothing outlives it unsettled.

use super::ConnectionCore;
use super::outgoing::{CallEntry, CallEvent};
use crate::driver::channel::LossCause;

impl ConnectionCore {
    /// The connection ended: every pending call fails with `cause`, every
    /// handler is stopped, every channel ends. Idempotent.
    pub(crate) fn on_lost(&self, cause: LossCause) {
        let (calls, handlers, waker) = {
            let mut st = self.state.lock();
            if !st.lost.end(cause.clone()) {
                return;
            }
            st.cancels_due.clear();
            (std::mem::take(&mut st.calls), std::mem::take(&mut st.handlers), st.flush_waker.take())
        };
        self.slots.close();
        for (_, entry) in calls {
            let (_, effect) = CallEntry::step(Some(entry.state), CallEvent::Lost(cause.clone()));
            effect.deliver();
        }
        // Dropping the entries drops their stop senders, which stops every
        // handler (rule: connection.close).
        drop(handlers);
        self.registry.on_connection_lost(cause);
        if let Some(w) = waker {
            w.wake();
        }
    }
}
