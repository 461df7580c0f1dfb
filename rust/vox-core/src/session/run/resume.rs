//! Losing the conduit and binding a replacement (rule `session.resume`):
//! what a resumable session keeps across the break, what fails with the old
//! attachment, and the redial (initiator) or the listener's hand-over
//! (acceptor) that ends the wait.

use super::{Attachment, Event, Redial, RunLoop};
use crate::session::phase::CloseReason;
use crate::session::resume::{NewConduit, Redialer, SessionRegistry, redial};
use crate::wire::ResumeKey;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How a resumable session gets its next conduit.
pub(crate) struct Resume {
    pub(crate) key: ResumeKey,
    pub(crate) side: ResumeSide,
}

pub(crate) enum ResumeSide {
    /// We redial (the attempt in flight is the phase's, see [`Redial`]).
    Initiator { redialer: Redialer },
    /// The listener routes a resuming `Hello` to us (`ControlMsg::Reattach`).
    Acceptor { registry: SessionRegistry },
}

/// While resuming: the redial's result (initiator) or the recovery
/// deadline, both held by the phase.
pub(super) async fn resume_event(wait: Option<(Instant, &mut Redial)>) -> Event {
    let Some((deadline, redial)) = wait else { return std::future::pending().await };
    let redialed = async {
        match redial {
            Some(p) => match p.await {
                Ok(r) => r,
                Err(_) => Err("the redial task ended without a result".into()),
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = redialed => Event::Redialed(r),
        _ = tokio::time::sleep_until(deadline) => Event::RecoveryTimeout,
    }
}

impl RunLoop {
    /// The conduit is gone. A resumable session keeps its session-scoped
    /// state (connection namespace, operation table, handles) and waits for
    /// a replacement; what was in flight on the lost attachment fails (rule
    /// `session.resume`). Otherwise `Err` says why the session ends.
    pub(super) fn detach(&mut self, reason: CloseReason) -> Result<(), CloseReason> {
        let Some(resume) = self.resume.as_ref() else { return Err(reason) };
        // One deadline for both: the loop gives up when the redial does.
        let deadline = Instant::now() + self.config.session_resume.recovery_timeout;
        let (tx, rx) = oneshot::channel();
        let redialer = match &resume.side {
            ResumeSide::Initiator { redialer } => Some(redialer.clone()),
            ResumeSide::Acceptor { .. } => None,
        };
        let wait = redialer.as_ref().map(|_| rx);
        let (lost, attachment) = match self.machine.on_attachment_lost(deadline, wait) {
            Ok(lost) => lost,
            Err(e) => {
                tracing::debug!(error = %e, "conduit loss outside Established");
                return Err(reason);
            }
        };
        tracing::info!(%reason, generation = lost, "session conduit lost; resuming");
        // Nothing queued for the old attachment may reach a new conduit.
        if let Some(w) = &attachment.writer {
            w.abort();
        }
        drop(attachment);
        if let Some(redialer) = redialer {
            tokio::spawn(async move {
                let _ = tx.send(redial(redialer, deadline).await);
            });
        }
        Ok(())
    }

    /// Binds `conduit` as the next attachment. A resume that arrives while
    /// we still think the old attachment is alive first detaches it: the
    /// peer has given it up (rule `session.resume`).
    pub(super) fn reattach(&mut self, conduit: NewConduit) {
        if self.machine.phase.is_established() {
            if let Err(reason) = self.detach(CloseReason::LinkError("replaced by a resumed conduit".into())) {
                tracing::debug!(%reason, "reattach to a session that cannot resume");
                return;
            }
        }
        if self.machine.root.local_parity != conduit.negotiated.local_parity {
            tracing::warn!("resuming conduit negotiated another parity; dropped");
            return;
        }
        if self.machine.phase.resuming_deadline().is_none() {
            tracing::debug!("reattach outside Resuming; conduit dropped");
            return;
        }
        let negotiated = conduit.negotiated.clone();
        let peer_addr = conduit.rx.peer_addr();
        let peer_identity = conduit.rx.peer_identity();
        let attachment = Attachment::start(conduit, self.config.outbound_capacity);
        let root =
            self.machine.root.successor(attachment.outbound.clone(), negotiated.local_root, negotiated.peer_root);
        root.set_peer_addr(peer_addr);
        root.set_peer_identity(peer_identity);
        // The finished wait (a redial's receiver) is dropped with the phase
        // it belonged to.
        let generation = match self.machine.on_reattached(attachment, root.clone()) {
            Ok((generation, _redial)) => generation,
            Err(e) => {
                tracing::debug!(error = %e, "reattach refused by the phase; conduit dropped");
                return;
            }
        };
        self.root_slot.set(root);
        tracing::info!(generation, "session resumed on a new conduit");
        let _ = self.generation_tx.send(generation);
    }
}
