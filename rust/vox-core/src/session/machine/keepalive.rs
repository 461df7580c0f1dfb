//! The keepalive tick (rule `session.keepalive`): one ping outstanding at a
//! time, and a pong overdue ends the session. Answering the peer's pings is
//! inbound handling, metered like any other message.

use super::{Machine, Step};
use crate::session::phase::CloseReason;
use crate::wire::{Message, Payload};
use tokio::time::Instant;

impl<A, R> Machine<A, R> {
    /// The keepalive interval passed at `now`.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Step {
        let Some(k) = self.limits.keepalive.clone() else { return Step::Continue };
        if let Some((_, sent)) = self.ping_outstanding {
            if now.saturating_duration_since(sent) >= k.timeout {
                // rule: session.keepalive
                return Step::End(CloseReason::KeepaliveTimeout, None, false);
            }
            return Step::Continue;
        }
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        self.ping_outstanding = Some((self.ping_nonce, now));
        self.owe(Message::root(Payload::Ping { nonce: self.ping_nonce }));
        Step::Continue
    }
}
