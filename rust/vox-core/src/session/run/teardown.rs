//! Ending the session: failing what is pending, letting a graceful end
//! flush what the application already handed over, writing what is owed,
//! and reporting the reason to every handle.

use super::{Resume, ResumeSide, RunLoop};
use crate::plumbing::outbound::Finish;
use crate::session::phase::CloseReason;
use crate::wire::Message;

impl RunLoop {
    pub(super) async fn teardown(mut self, reason: CloseReason, last: Option<Message>, drain: bool) {
        tracing::debug!(%reason, "session ending");
        if let Some(Resume { key, side: ResumeSide::Acceptor { registry }, .. }) = &self.resume {
            registry.remove(key);
        }
        let cause = reason.loss_cause();
        let (cores, attachment) = self.machine.on_closing(&reason);
        if drain {
            // What the application handed over before the end (a channel
            // close, the cancel of a dropped call) is already accepted for
            // sending and must not be lost to the connection loss below:
            // let every flush task queue what is due first (rule:
            // rpc.caller.liveness — releasing the root ends the session
            // gracefully). `linger` bounds it if the peer stopped reading.
            // One after the other is enough: every flush task makes progress
            // meanwhile, each wait only observes its task's end.
            let flushes = async {
                for core in &cores {
                    core.drain_flush().await;
                }
            };
            if tokio::time::timeout(self.config.linger, flushes).await.is_err() {
                tracing::debug!("flush tasks did not finish within linger; dropping what they still owe");
            }
        }
        for core in &cores {
            core.on_lost(cause.clone());
        }
        // While resuming there is no attachment: nothing to write to, and
        // nothing is owed (the loss cleared it).
        if let Some(mut link) = attachment {
            // Owed messages (a pong, a close) were decided before the end:
            // they go first. A graceful end waits for room; a violation only
            // takes the room there is, so a peer that stopped reading cannot
            // stall us.
            while let Some(m) = self.machine.poll_transmit() {
                if drain {
                    if link.outbound.send(m).await.is_err() {
                        break;
                    }
                } else if let Some(p) = link.outbound.try_reserve() {
                    p.send(m);
                } else {
                    break;
                }
            }
            if let Some(f) = link.finish.take() {
                let linger = if drain { self.config.linger } else { self.config.protocol_error_deadline };
                let _ = f.send(Finish { last, drain, linger });
            }
            if let Some(w) = link.writer.take() {
                if let Err(e) = w.await {
                    tracing::debug!(error = %e, "writer task ended abnormally");
                }
            }
        }
        let reason = self.machine.phase.on_closed().unwrap_or(reason);
        let _ = self.closed_tx.send(Some(reason));
    }
}
