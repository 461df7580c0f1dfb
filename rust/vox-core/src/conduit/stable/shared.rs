//! The state one conduit's halves and tasks share ([`StableShared`]): the state
//! machine, the link slots and the wake-ups, behind one lock. The
//! transitions every task may take (break, attach, violation, end) live here
//! so each is taken under the lock, in one place.

use super::state::StableState;
use super::{StableConfig, StableEnd};
use crate::link::{Link, LinkRx, LinkTx};
use crate::sync::Mutex;
use crate::wire::ResumeKey;
// std's Arc, not the loom shim's: the conduit needs `Weak` (for the
// registry) and is not part of the loom models.
use std::sync::Arc;
use tokio::sync::Notify;

/// Where the conduit is. How it is being closed lives inside the open
/// phases, so a closed conduit has no "closing" left to disagree with its
/// end, and a break or a new link keeps the close that was under way.
#[derive(Debug)]
pub(super) enum Phase {
    Attached(Closing),
    Broken(Closing),
    Closed(StableEnd),
}

impl Phase {
    /// Whether, and how, the conduit is being closed; `None` once closed.
    pub(super) fn closing(&self) -> Option<&Closing> {
        match self {
            Phase::Attached(closing) | Phase::Broken(closing) => Some(closing),
            Phase::Closed(_) => None,
        }
    }

    /// See [`closing`](Self::closing).
    pub(super) fn closing_mut(&mut self) -> Option<&mut Closing> {
        match self {
            Phase::Attached(closing) | Phase::Broken(closing) => Some(closing),
            Phase::Closed(_) => None,
        }
    }
}

/// Whether, and how, the conduit is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Closing {
    /// Not closing.
    No,
    /// Once every frame is acknowledged, `Bye` and close (nothing lost).
    Graceful,
    /// Once every frame held is written (the `ProtocolError` among them),
    /// close the link without waiting for acknowledgements: the peer broke
    /// the rules, so nothing it does may hold the conduit open (rule
    /// `session.protocol-error`). Ends the conduit with `end`.
    Abort { end: StableEnd },
}

/// The largest message the conduit's links may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReceiveLimit {
    /// Whatever each link was given (its setup code decides).
    AsLink,
    /// At most this many bytes (the session handshake is not done).
    Setup(usize),
    /// The link's configured maximum (the session is established).
    Full,
}

pub(super) struct Core {
    pub(super) sm: StableState,
    pub(super) phase: Phase,
    /// The peer's violation, once seen: the deadline for the end runs.
    pub(super) violation: Option<StableEnd>,
    pub(super) receive_limit: ReceiveLimit,
    /// The newest epoch whose link the reader read to its end.
    pub(super) drained_epoch: Option<u64>,
    /// Incremented per attached link; halves of an older link are dropped.
    pub(super) epoch: u64,
    pub(super) tx_slot: Option<LinkTx>,
    pub(super) rx_slot: Option<LinkRx>,
}

/// State shared by the halves and tasks of one conduit. Each `Notify` has a
/// single waiter (writer task, sending half, receiving half, recovery task),
/// so `notify_one`'s stored permit makes every wake-up impossible to lose.
pub(super) struct StableShared {
    pub(super) core: Mutex<Core>,
    pub(super) key: ResumeKey,
    pub(super) config: StableConfig,
    pub(super) writer_wake: Notify,
    pub(super) room: Notify,
    pub(super) reader_wake: Notify,
    pub(super) broken: Notify,
    /// Wakes the writer out of a link write that may never finish (a peer
    /// that stopped reading) once the conduit is closed.
    pub(super) shutdown: Notify,
    /// The first link's peer address.
    pub(super) peer_addr: Option<std::net::SocketAddr>,
    /// The first link's verified peer identity (TLS). A redialed link is
    /// verified the same way by its source.
    pub(super) peer_identity: Option<crate::link::PeerIdentity>,
    /// The consumer found nothing queued and waits (see `reader`): how
    /// often, and a wake-up for the reader.
    pub(super) demands: std::sync::atomic::AtomicU64,
    pub(super) demand: Notify,
    /// The reader finished a link (see `Core::drained_epoch`).
    pub(super) reader_drained: Notify,
}

impl StableShared {
    pub(super) fn new(key: ResumeKey, config: StableConfig, link: Link) -> Arc<StableShared> {
        let peer_addr = link.rx.peer_addr();
        let peer_identity = link.rx.peer_identity().cloned();
        let (tx, rx) = link.split();
        Arc::new(StableShared {
            core: Mutex::new(Core {
                sm: StableState::new(config.replay_limit),
                phase: Phase::Attached(Closing::No),
                violation: None,
                receive_limit: ReceiveLimit::AsLink,
                drained_epoch: None,
                epoch: 0,
                tx_slot: Some(tx),
                rx_slot: Some(rx),
            }),
            key,
            config,
            writer_wake: Notify::new(),
            room: Notify::new(),
            reader_wake: Notify::new(),
            broken: Notify::new(),
            shutdown: Notify::new(),
            peer_addr,
            peer_identity,
            demands: std::sync::atomic::AtomicU64::new(0),
            demand: Notify::new(),
            reader_drained: Notify::new(),
        })
    }

    fn wake_all(&self) {
        self.writer_wake.notify_one();
        self.room.notify_one();
        self.reader_wake.notify_one();
        self.broken.notify_one();
        self.shutdown.notify_one();
    }

    /// Ends the conduit at once: every link half is released now, whatever
    /// the peer does (an unread link's writer is aborted, not drained).
    pub(super) fn finish(&self, end: StableEnd) {
        {
            let mut core = self.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                return;
            }
            tracing::debug!(reason = %end, "stable conduit ended");
            core.phase = Phase::Closed(end);
            if let Some(tx) = core.tx_slot.take() {
                tx.abort();
            }
            core.rx_slot = None;
        }
        self.wake_all();
    }

    /// The peer broke the rules (seen by the reader, or by the consumer
    /// decoding an item): the consumer is told and is expected to send its
    /// `ProtocolError` and [`abort`](StableTx::abort); the conduit ends
    /// after [`StableConfig::violation_deadline`] in any case, so a consumer
    /// that never does cannot keep the violator's link open (rule
    /// `session.protocol-error`).
    pub(super) fn violated(self: &Arc<Self>, end: StableEnd) {
        {
            let mut core = self.core.lock();
            if matches!(core.phase, Phase::Closed(_)) || core.violation.is_some() {
                return;
            }
            tracing::debug!(reason = %end, "stable conduit peer violation; closing after the protocol error");
            core.violation = Some(end.clone());
        }
        // Weak: a conduit that ended sooner is freed at once, not when the
        // timer fires.
        let shared = Arc::downgrade(self);
        let deadline = self.config.violation_deadline;
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if let Some(shared) = shared.upgrade() {
                shared.finish(end);
            }
        });
    }

    /// The link of `epoch` failed (seen by the writer or the reader).
    pub(super) fn on_broken(&self, epoch: u64) {
        {
            let mut core = self.core.lock();
            if core.epoch != epoch {
                return;
            }
            let Phase::Attached(closing) = &mut core.phase else { return };
            let closing = std::mem::replace(closing, Closing::No);
            tracing::debug!(epoch, "stable conduit link broke; waiting for a new one");
            core.phase = Phase::Broken(closing);
        }
        self.broken.notify_one();
        // The writer releases the dead link's write half.
        self.writer_wake.notify_one();
    }

    /// A new link replaces the current one; `peer_last` is what the peer
    /// says it received.
    pub(super) fn attach(&self, link: Link, peer_last: Option<u32>) -> Result<(), StableEnd> {
        {
            let mut core = self.core.lock();
            let closing = match &core.phase {
                Phase::Closed(end) => return Err(end.clone()),
                Phase::Attached(closing) | Phase::Broken(closing) => closing.clone(),
            };
            if let Err(e) = core.sm.on_reattach(peer_last) {
                drop(core);
                self.finish(StableEnd::Violation(e.clone()));
                return Err(StableEnd::Violation(e));
            }
            let (tx, rx) = link.split();
            core.epoch += 1;
            core.tx_slot = Some(tx);
            core.rx_slot = Some(rx);
            core.phase = Phase::Attached(closing);
            tracing::debug!(epoch = core.epoch, "stable conduit attached a new link");
        }
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
        Ok(())
    }

    pub(super) fn last_received(&self) -> Option<u32> {
        self.core.lock().sm.last_received()
    }
}
