//! The keepalive tick (rule `session.keepalive`): one ping outstanding at a
//! time, and a pong overdue ends the session. Answering the peer's pings is
//! inbound handling, metered like any other message.

use super::{RunLoop, Step};
use crate::session::phase::CloseReason;
use crate::wire::{Message, Payload};
use tokio::time::Instant;

impl RunLoop {
    pub(super) fn on_tick(&mut self) -> Step {
        let Some(k) = self.config.keepalive.clone() else { return Step::Continue };
        if let Some((_, sent)) = self.link.ping_outstanding {
            if sent.elapsed() >= k.timeout {
                // rule: session.keepalive
                return Step::End(CloseReason::KeepaliveTimeout, None, false);
            }
            return Step::Continue;
        }
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        self.link.ping_outstanding = Some((self.ping_nonce, Instant::now()));
        self.owe(Message::root(Payload::Ping { nonce: self.ping_nonce }));
        Step::Continue
    }
}
