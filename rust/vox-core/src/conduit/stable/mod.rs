//! The stable conduit (rules `conduit.stable`, `stable.*`): a conduit that
//! outlives its link. Every message travels in a numbered frame; frames are
//! kept until the peer acknowledges them and are sent again, in their
//! original order and with their original seq, on the next link.
//!
//! The numbering and buffering are the sans-IO [`StableState`]; this module
//! adds the tasks around it:
//! - one writer task per conduit owns the current link's sending half, so
//!   frames leave in seq order even while links are swapped;
//! - the receiving half ([`StableRx`]) reads the current link and switches
//!   to a newer one as soon as it is attached;
//! - on a break, the client redials through its [`LinkSource`] with
//!   [`Backoff`] until the recovery timeout; the server waits that long for
//!   the client to come back with the conduit's resume key.

mod state;

pub use state::{Inbound, StableError, StableState, seq_after};

use super::ConduitError;
use crate::link::{Backoff, Link, LinkError, LinkRx, LinkSource, LinkTx};
// std's Arc, not the loom shim's: the conduit needs `Weak` (for the
// registry) and is not part of the loom models.
use crate::sync::Mutex;
use crate::transport;
use crate::wire::{
    self, Blob, ClientHello, ConduitMode, ConduitMsg, ResumeKey, ServerHello, StableHelloReply, StableMsg,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Settings of a stable conduit.
#[derive(Clone, Debug)]
pub struct StableConfig {
    /// Byte limit of the replay buffer; senders wait when it is full (rule
    /// `stable.replay-buffer.bounded`). Default 1 MiB.
    pub replay_limit: usize,
    /// How long a broken conduit waits for a new link before it gives up.
    pub recovery_timeout: Duration,
    /// Delays between redial attempts (client side).
    pub backoff: Backoff,
    /// How long the hello exchange on a fresh link may take.
    pub hello_timeout: Duration,
    /// How long a conduit whose peer broke the rules stays open to carry
    /// the `ProtocolError` out: it is closed then even if the session never
    /// closes it (rule `session.protocol-error`). Default 500 ms.
    pub violation_deadline: Duration,
    /// The longest a conduit whose sending half was dropped, not closed,
    /// waits for the peer to acknowledge what is still held before it ends
    /// anyway. Default 5 s.
    pub drop_close_timeout: Duration,
}

impl Default for StableConfig {
    fn default() -> Self {
        StableConfig {
            replay_limit: 1 << 20,
            recovery_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            hello_timeout: Duration::from_secs(10),
            violation_deadline: Duration::from_millis(500),
            drop_close_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a stable conduit ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StableEnd {
    /// The peer closed it on purpose.
    #[error("the peer closed the stable conduit")]
    PeerBye,
    /// This side closed it.
    #[error("the stable conduit was closed locally")]
    LocalClose,
    /// The server did not know the resume key: the session is lost.
    #[error("resume refused, the session is lost: {0}")]
    UnknownKey(String),
    /// No new link came within the recovery timeout.
    #[error("no new link within the recovery timeout of {0:?}")]
    RecoveryTimeout(Duration),
    /// The peer broke the stable-conduit rules.
    #[error(transparent)]
    Violation(#[from] StableError),
    /// The peer sent a link message that is not a `StableMsg`.
    #[error("undecodable stable-conduit message from the peer: {0}")]
    Undecodable(String),
}

#[derive(Debug)]
enum Phase {
    Attached,
    Broken,
    Closed(StableEnd),
}

/// Whether, and how, the conduit is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closing {
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
enum ReceiveLimit {
    /// Whatever each link was given (its setup code decides).
    AsLink,
    /// At most this many bytes (the session handshake is not done).
    Setup(usize),
    /// The link's configured maximum (the session is established).
    Full,
}

struct Core {
    sm: StableState,
    phase: Phase,
    closing: Closing,
    /// The peer's violation, once seen: the deadline for the end runs.
    violation: Option<StableEnd>,
    receive_limit: ReceiveLimit,
    /// The newest epoch whose link the reader read to its end.
    drained_epoch: Option<u64>,
    /// Incremented per attached link; halves of an older link are dropped.
    epoch: u64,
    tx_slot: Option<LinkTx>,
    rx_slot: Option<LinkRx>,
}

/// State shared by the halves and tasks of one conduit. Each `Notify` has a
/// single waiter (writer task, sending half, receiving half, recovery task),
/// so `notify_one`'s stored permit makes every wake-up impossible to lose.
struct Shared {
    core: Mutex<Core>,
    key: ResumeKey,
    config: StableConfig,
    writer_wake: Notify,
    room: Notify,
    reader_wake: Notify,
    broken: Notify,
    /// Wakes the writer out of a link write that may never finish (a peer
    /// that stopped reading) once the conduit is closed.
    shutdown: Notify,
    /// The first link's peer address.
    peer_addr: Option<std::net::SocketAddr>,
    /// The first link's verified peer identity (TLS). A redialed link is
    /// verified the same way by its source.
    peer_identity: Option<crate::link::PeerIdentity>,
    /// The consumer found nothing queued and waits (see `reader`): how
    /// often, and a wake-up for the reader.
    demands: std::sync::atomic::AtomicU64,
    demand: Notify,
    /// The reader finished a link (see `Core::drained_epoch`).
    reader_drained: Notify,
}

impl Shared {
    fn new(key: ResumeKey, config: StableConfig, link: Link) -> Arc<Shared> {
        let peer_addr = link.rx.peer_addr();
        let peer_identity = link.rx.peer_identity().cloned();
        let (tx, rx) = link.split();
        Arc::new(Shared {
            core: Mutex::new(Core {
                sm: StableState::new(config.replay_limit),
                phase: Phase::Attached,
                closing: Closing::No,
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
    fn finish(&self, end: StableEnd) {
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
    fn violated(self: &Arc<Self>, end: StableEnd) {
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
    fn on_broken(&self, epoch: u64) {
        {
            let mut core = self.core.lock();
            if core.epoch != epoch || !matches!(core.phase, Phase::Attached) {
                return;
            }
            tracing::debug!(epoch, "stable conduit link broke; waiting for a new one");
            core.phase = Phase::Broken;
        }
        self.broken.notify_one();
        // The writer releases the dead link's write half.
        self.writer_wake.notify_one();
    }

    /// A new link replaces the current one; `peer_last` is what the peer
    /// says it received.
    fn attach(&self, link: Link, peer_last: Option<u32>) -> Result<(), StableEnd> {
        {
            let mut core = self.core.lock();
            if let Phase::Closed(end) = &core.phase {
                return Err(end.clone());
            }
            if let Err(e) = core.sm.on_reattach(peer_last) {
                drop(core);
                self.finish(StableEnd::Violation(e.clone()));
                return Err(StableEnd::Violation(e));
            }
            let (tx, rx) = link.split();
            core.epoch += 1;
            core.tx_slot = Some(tx);
            core.rx_slot = Some(rx);
            core.phase = Phase::Attached;
            tracing::debug!(epoch = core.epoch, "stable conduit attached a new link");
        }
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
        Ok(())
    }

    fn last_received(&self) -> Option<u32> {
        self.core.lock().sm.last_received()
    }
}

fn encode(msg: &StableMsg) -> Result<Bytes, ConduitError> {
    Ok(Bytes::from(wire::encode("StableMsg", msg)?))
}

enum Work {
    Wait,
    Send(u64, StableMsg),
    Bye,
    /// Everything held was written after a violation: close the link, end.
    Abort(StableEnd),
}

/// `fut`, unless the conduit is closed first (then `None`): a write to a
/// peer that stopped reading must not outlive the conduit.
async fn unless_shut<T>(shared: &Shared, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = shared.shutdown.notified() => None,
    }
}

/// The one task that writes to the conduit's links.
async fn writer(shared: Arc<Shared>) {
    let mut link: Option<(u64, LinkTx)> = None;
    loop {
        let notified = shared.writer_wake.notified();
        let work = {
            let mut core = shared.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                break;
            }
            if link.as_ref().map(|l| l.0) != Some(core.epoch) {
                link = core.tx_slot.take().map(|tx| (core.epoch, tx));
            }
            if matches!(core.phase, Phase::Broken) {
                // The link is dead: release its write half now, not when a
                // new link or the end comes (a peer must not keep the socket).
                if let Some((_, tx)) = link.take() {
                    tx.abort();
                }
            }
            let epoch = core.epoch;
            let attached = link.is_some() && matches!(core.phase, Phase::Attached);
            let core = &mut *core;
            match &core.closing {
                // No link to carry the ProtocolError: end now rather than
                // wait for the violator to come back.
                Closing::Abort { end } if !attached => Work::Abort(end.clone()),
                Closing::Abort { end } => match core.sm.next_to_send() {
                    Some(frame) => Work::Send(epoch, StableMsg::Frame(frame)),
                    None => Work::Abort(end.clone()),
                },
                _ if !attached => Work::Wait,
                closing => {
                    if let Some(frame) = core.sm.next_to_send() {
                        Work::Send(epoch, StableMsg::Frame(frame))
                    } else if let Some(ack) = core.sm.take_owed_ack() {
                        Work::Send(epoch, StableMsg::Ack { ack })
                    } else if *closing == Closing::Graceful && core.sm.replay_len() == 0 {
                        // Everything was acknowledged: nothing can be lost by ending now.
                        Work::Bye
                    } else {
                        Work::Wait
                    }
                }
            }
        };
        match work {
            Work::Wait => notified.await,
            Work::Send(epoch, msg) => {
                let Some((_, tx)) = link.as_ref() else { continue };
                let sent = match encode(&msg) {
                    Ok(bytes) => match unless_shut(&shared, tx.send(bytes)).await {
                        Some(r) => r.map_err(|e| e.to_string()),
                        // Closed meanwhile: the loop sees it next.
                        None => continue,
                    },
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = sent {
                    tracing::debug!(epoch, error = %e, "stable conduit send failed");
                    if let Some((_, tx)) = link.take() {
                        tx.abort();
                    }
                    shared.on_broken(epoch);
                }
            }
            Work::Bye => {
                if let Some((_, tx)) = link.take() {
                    if let Ok(bytes) = encode(&StableMsg::Bye) {
                        let _ = unless_shut(&shared, tx.send(bytes)).await;
                    }
                    close_link(&shared, tx).await;
                }
                shared.finish(StableEnd::LocalClose);
                break;
            }
            Work::Abort(end) => {
                if let Some((_, tx)) = link.take() {
                    close_link(&shared, tx).await;
                }
                shared.finish(end);
                break;
            }
        }
    }
    if let Some((_, tx)) = link.take() {
        tx.abort();
    }
}

/// Flushes and closes a link's sending half, unless the conduit is closed
/// first (a peer that stopped reading): then the half is aborted.
async fn close_link(shared: &Shared, tx: LinkTx) {
    // `close` consumes the half; keep a way to abort it if we give up.
    let abort = tx.abort_handle();
    if unless_shut(shared, tx.close()).await.is_none() {
        abort.abort();
    }
}

/// Sending half of a stable conduit.
pub struct StableTx {
    shared: Arc<Shared>,
}

/// Receiving half of a stable conduit.
pub struct StableRx {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Result<Bytes, ConduitError>>,
}

impl std::fmt::Debug for StableTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableTx").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StableRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRx").finish_non_exhaustive()
    }
}

fn ended(end: &StableEnd) -> ConduitError {
    ConduitError::Stable(end.clone())
}

impl StableTx {
    /// Queues one encoded message. Waits while the replay buffer is full
    /// (backpressure, rule `stable.replay-buffer.bounded`); returns once the
    /// message is in the buffer, from where it is sent and, if needed, sent
    /// again. Cancel-safe: a cancelled call queued nothing.
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), ConduitError> {
        let mut item = Blob(bytes);
        loop {
            let notified = self.shared.room.notified();
            {
                let mut core = self.shared.core.lock();
                if let Phase::Closed(end) = &core.phase {
                    return Err(ended(end));
                }
                match core.sm.push(item) {
                    Ok(_) => {
                        drop(core);
                        self.shared.writer_wake.notify_one();
                        return Ok(());
                    }
                    Err(back) => item = back,
                }
            }
            notified.await;
        }
    }

    /// Encodes and queues one message.
    pub async fn send(&self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        self.send_encoded(Bytes::from(wire::encode("ConduitMsg", msg)?)).await
    }

    /// Bytes waiting for the peer's acknowledgement.
    pub fn replay_bytes(&self) -> usize {
        self.shared.core.lock().sm.replay_bytes()
    }

    /// Closes the conduit once the peer has acknowledged everything sent,
    /// then tells it with `Bye` so it does not wait for a reconnect.
    ///
    /// # Cancel safety
    /// Dropping the future ends the conduit at once (what is not
    /// acknowledged yet is lost): a caller that bounds the close with a
    /// timeout gets a conduit that is gone when the timeout fires.
    ///
    /// # Errors
    /// The reason the conduit ended, if it ended otherwise than by this
    /// close or the peer's `Bye`.
    pub async fn close(self) -> Result<(), ConduitError> {
        self.end(Closing::Graceful).await
    }

    /// Closes the conduit after the peer broke the rules: writes what is
    /// held (the session's `ProtocolError` last), then closes the link
    /// without waiting for acknowledgements, which the violator may never
    /// send (rule `session.protocol-error`).
    ///
    /// # Cancel safety
    /// Dropping the future ends the conduit at once.
    ///
    /// # Errors
    /// None in practice: the conduit ends either way; an earlier end that
    /// was not a local close or the peer's `Bye` is reported.
    pub async fn abort(self) -> Result<(), ConduitError> {
        let end = StableEnd::LocalClose;
        self.end(Closing::Abort { end }).await
    }

    async fn end(self, how: Closing) -> Result<(), ConduitError> {
        {
            let mut core = self.shared.core.lock();
            // An abort already under way (a violation) is not softened.
            if !matches!(core.closing, Closing::Abort { .. }) {
                core.closing = how;
            }
        }
        self.shared.writer_wake.notify_one();
        loop {
            let notified = self.shared.room.notified();
            if let Phase::Closed(end) = &self.shared.core.lock().phase {
                return match end {
                    StableEnd::LocalClose | StableEnd::PeerBye => Ok(()),
                    other => Err(ended(other)),
                };
            }
            notified.await;
        }
    }

    /// Cuts the current link without closing the conduit, as a network
    /// failure would. For fault-injection tests.
    pub fn break_link(&self) {
        let epoch = self.shared.core.lock().epoch;
        self.shared.on_broken(epoch);
    }
}

impl Drop for StableTx {
    /// Dropping the sending half without closing it closes the conduit
    /// gracefully in the background: what was queued is still delivered,
    /// then `Bye`, for at most [`StableConfig::drop_close_timeout`]. Dropping
    /// it while a [`close`](Self::close) or [`abort`](Self::abort) was under
    /// way (its future was cancelled, e.g. by a timeout) ends the conduit
    /// at once.
    fn drop(&mut self) {
        let mut core = self.shared.core.lock();
        if matches!(core.phase, Phase::Closed(_)) {
            return;
        }
        if core.closing != Closing::No {
            drop(core);
            self.shared.finish(StableEnd::LocalClose);
            return;
        }
        core.closing = Closing::Graceful;
        drop(core);
        self.shared.writer_wake.notify_one();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let limit = self.shared.config.drop_close_timeout;
            let shared = Arc::downgrade(&self.shared);
            runtime.spawn(async move {
                tokio::time::sleep(limit).await;
                if let Some(shared) = shared.upgrade() {
                    shared.finish(StableEnd::LocalClose);
                }
            });
        }
    }
}

enum Got {
    Link(Result<Option<Bytes>, LinkError>),
    NewLink,
}

impl StableRx {
    /// The next message, or `None` once the conduit was closed on purpose.
    /// Link breaks are invisible here: delivery resumes on the next link.
    /// Cancel-safe.
    ///
    /// # Errors
    /// [`ConduitError::Decode`] for an item that is not a message (the
    /// conduit then closes within [`StableConfig::violation_deadline`]), or
    /// [`ConduitError::Stable`] with why the conduit ended.
    pub async fn recv(&mut self) -> Result<Option<ConduitMsg>, ConduitError> {
        let Some(bytes) = self.recv_item().await? else { return Ok(None) };
        match wire::decode::<ConduitMsg>("ConduitMsg", &bytes) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                self.violated(StableEnd::Undecodable(e.to_string()));
                Err(e.into())
            }
        }
    }

    /// The peer broke the rules above this conduit (an item that does not
    /// decode): the conduit writes what is held, the session's
    /// `ProtocolError` among it, closes, and ends within
    /// [`StableConfig::violation_deadline`] whatever happens.
    pub fn violated(&self, end: StableEnd) {
        self.shared.violated(end);
    }

    /// Bounds the messages every link of this conduit delivers: `Some(max)`
    /// while the session handshake runs (rule `session.setup.limits`),
    /// `None` for the links' configured maximum afterwards.
    pub fn restrict(&self, max: Option<usize>) {
        self.shared.core.lock().receive_limit = match max {
            Some(max) => ReceiveLimit::Setup(max),
            None => ReceiveLimit::Full,
        };
        self.shared.reader_wake.notify_one();
    }

    /// The peer's network address, as the conduit's first link recorded it.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.peer_addr
    }

    /// The peer's verified identity, as the conduit's first link recorded it.
    pub fn peer_identity(&self) -> Option<crate::link::PeerIdentity> {
        self.shared.peer_identity.clone()
    }

    /// The next delivered item, undecoded (see [`recv`](Self::recv)).
    pub(crate) async fn recv_item(&mut self) -> Result<Option<Bytes>, ConduitError> {
        let next = match self.queue.try_recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // Nothing queued: the reader may read the next item (it
                // waits for this while the session handshake runs).
                self.shared.demands.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.shared.demand.notify_one();
                self.queue.recv().await
            }
        };
        match next {
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(e)) => Err(e),
            None => match &self.shared.core.lock().phase {
                Phase::Closed(StableEnd::LocalClose | StableEnd::PeerBye) => Ok(None),
                Phase::Closed(other) => Err(ended(other)),
                // The reader task only stops once the conduit is closed.
                _ => Ok(None),
            },
        }
    }
}

/// Capacity of the queue between the reader task and [`StableRx`]. When it
/// is full the reader stops reading the link (backpressure to the peer,
/// whose replay buffer then fills up).
const DELIVERY_QUEUE: usize = 32;

/// Reads the current link: applies acks at once (so a sender's replay
/// buffer drains even while nobody consumes messages here), drops
/// duplicates, and queues delivered messages for [`StableRx`]. Messages that
/// arrive after the receiving half was dropped are acknowledged and
/// discarded, so closing never waits on a reader that is gone.
async fn reader(shared: Arc<Shared>, out: mpsc::Sender<Result<Bytes, ConduitError>>) {
    let mut link: Option<(u64, LinkRx)> = None;
    // While the session handshake runs, an item is read only once the
    // consumer asked for one with nothing queued: a message the peer sends
    // right after its last handshake message must be judged by the limit
    // in force after the handshake, not read ahead under the setup limit.
    let mut delivered_in_setup: Option<u64> = None;
    loop {
        let notified = shared.reader_wake.notified();
        tokio::pin!(notified);
        let setup;
        {
            let mut core = shared.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                return;
            }
            if link.as_ref().map(|l| l.0) != Some(core.epoch) {
                if let Some(rx) = core.rx_slot.take() {
                    link = Some((core.epoch, rx));
                }
            }
            if let Some((_, rx)) = link.as_mut() {
                // rule: session.setup.limits — every link, also one
                // attached later, carries what the session's phase allows.
                match core.receive_limit {
                    ReceiveLimit::AsLink => {}
                    ReceiveLimit::Setup(max) => rx.restrict(max),
                    ReceiveLimit::Full => rx.unrestrict(),
                }
            }
            setup = matches!(core.receive_limit, ReceiveLimit::Setup(_));
        }
        let Some((epoch, rx)) = link.as_mut() else {
            notified.await;
            continue;
        };
        if let (true, Some(seen)) = (setup, delivered_in_setup) {
            // Only a request made after that delivery counts.
            let demand = shared.demand.notified();
            if shared.demands.load(std::sync::atomic::Ordering::SeqCst) <= seen {
                tokio::select! {
                    _ = demand => {}
                    _ = &mut notified => {}
                }
                continue;
            }
            delivered_in_setup = None;
        }
        let epoch = *epoch;
        let got = tokio::select! {
            r = rx.recv() => Got::Link(r),
            _ = &mut notified => Got::NewLink,
        };
        let bytes = match got {
            Got::NewLink => continue,
            Got::Link(Ok(Some(bytes))) => bytes,
            Got::Link(Ok(None) | Err(_)) => {
                link = None;
                shared.core.lock().drained_epoch = Some(epoch);
                shared.reader_drained.notify_one();
                shared.on_broken(epoch);
                continue;
            }
        };
        match on_link_message(&shared, &bytes) {
            Ok(None) => {}
            Ok(Some(item)) => {
                delivered_in_setup = setup.then(|| shared.demands.load(std::sync::atomic::Ordering::SeqCst));
                // A dropped receiving half is not an error: see above.
                let _ = out.send(Ok(item)).await;
            }
            Err(end) => {
                // rule: session.protocol-error — the session answers with a
                // ProtocolError; nothing more the violator sends is read,
                // and the conduit closes once that is written (or at the
                // violation deadline).
                shared.violated(end.clone());
                let _ = out.send(Err(ConduitError::Stable(end))).await;
                return;
            }
        }
    }
}

/// One link message: applies its ack, and returns the item to deliver (if
/// any), or how the peer broke the rules.
fn on_link_message(shared: &Shared, bytes: &Bytes) -> Result<Option<Bytes>, StableEnd> {
    let msg = match wire::decode::<StableMsg>("StableMsg", bytes) {
        Ok(m) => m,
        Err(e) => return Err(StableEnd::Undecodable(e.to_string())),
    };
    let inbound = {
        let mut core = shared.core.lock();
        match msg {
            StableMsg::Frame(frame) => core.sm.on_frame(frame).map(Some),
            StableMsg::Ack { ack } => core.sm.on_ack(ack).map(|_| None),
            StableMsg::Bye => {
                drop(core);
                shared.finish(StableEnd::PeerBye);
                return Ok(None);
            }
        }
    };
    // An ack may have freed replay room, and a delivered frame owes one.
    shared.room.notify_one();
    shared.writer_wake.notify_one();
    match inbound {
        Ok(Some(Inbound::Deliver(item))) => Ok(Some(item.0)),
        Ok(Some(Inbound::Duplicate) | None) => Ok(None),
        Err(v) => Err(StableEnd::Violation(v)),
    }
}

fn halves(shared: Arc<Shared>) -> (StableTx, StableRx) {
    let (out, queue) = mpsc::channel(DELIVERY_QUEUE);
    tokio::spawn(writer(shared.clone()));
    tokio::spawn(reader(shared.clone(), out));
    (StableTx { shared: shared.clone() }, StableRx { shared, queue })
}

// ------------------------------------------------------------------ client

/// Why opening or resuming a stable conduit failed.
#[derive(Debug, thiserror::Error)]
pub enum StableSetupError {
    /// Dialing or the link failed.
    #[error("stable conduit setup: link error: {0}")]
    Link(#[from] LinkError),
    /// The transport prologue failed.
    #[error("stable conduit setup: {0}")]
    Prologue(#[from] transport::PrologueError),
    /// The hello exchange failed.
    #[error("stable conduit setup: {0}")]
    Hello(String),
    /// The server does not know the key.
    #[error("stable conduit setup: resume refused: {0}")]
    UnknownKey(String),
    /// Encoding or decoding failed.
    #[error("stable conduit setup: {0}")]
    Conduit(#[from] ConduitError),
}

async fn recv_decoded<T: serde::de::DeserializeOwned>(
    link: &mut Link,
    what: &'static str,
) -> Result<T, StableSetupError> {
    let bytes =
        link.rx.recv().await?.ok_or_else(|| StableSetupError::Hello(format!("peer closed before sending {what}")))?;
    wire::decode::<T>(what, &bytes).map_err(|e| StableSetupError::Hello(e.to_string()))
}

async fn send_encoded<T: serde::Serialize>(tx: &LinkTx, what: &'static str, v: &T) -> Result<(), StableSetupError> {
    let bytes = wire::encode(what, v).map_err(ConduitError::from)?;
    tx.send(Bytes::from(bytes)).await?;
    Ok(())
}

/// Client: prologue and hello on a fresh link. Returns the link and the
/// server's answer.
async fn hello_on(
    mut link: Link,
    hello: ClientHello,
    limit: Duration,
) -> Result<(Link, ServerHello), StableSetupError> {
    let attempt = async {
        transport::initiate(&mut link, ConduitMode::Stable).await?;
        send_encoded(&link.tx, "ClientHello", &hello).await?;
        match recv_decoded::<StableHelloReply>(&mut link, "StableHelloReply").await? {
            StableHelloReply::Welcome(sh) => Ok(sh),
            StableHelloReply::UnknownKey { reason } => Err(StableSetupError::UnknownKey(reason)),
        }
    };
    let sh = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| StableSetupError::Hello(format!("no answer to ClientHello within {limit:?}")))??;
    Ok((link, sh))
}

/// Opens a new stable conduit through `source` (client side). The conduit
/// redials through the same source after every break.
pub async fn connect(
    source: Arc<dyn LinkSource>,
    config: StableConfig,
) -> Result<(StableTx, StableRx), StableSetupError> {
    let link = source.dial().await?;
    connect_over(link, source, config).await
}

/// Like [`connect`], with the first link already dialed (for example by
/// [`crate::link::connect_waiting`]).
pub async fn connect_over(
    link: Link,
    source: Arc<dyn LinkSource>,
    config: StableConfig,
) -> Result<(StableTx, StableRx), StableSetupError> {
    let (link, sh) =
        hello_on(link, ClientHello { resume_key: None, last_received: None }, config.hello_timeout).await?;
    if sh.last_received.is_some() {
        return Err(StableSetupError::Hello("a new conduit's ServerHello claims frames were received".into()));
    }
    let shared = Shared::new(sh.resume_key, config, link);
    tokio::spawn(redial(shared.clone(), source));
    Ok(halves(shared))
}

/// The longest a redial waits for the reader to finish the broken link.
const DRAIN_BEFORE_REDIAL: Duration = Duration::from_millis(500);

/// Client recovery task: after each break, redials with backoff until the
/// recovery timeout, presenting the resume key.
async fn redial(shared: Arc<Shared>, source: Arc<dyn LinkSource>) {
    loop {
        shared.broken.notified().await;
        let epoch = {
            let core = shared.core.lock();
            match &core.phase {
                Phase::Closed(_) => return,
                Phase::Attached => continue,
                Phase::Broken => core.epoch,
            }
        };
        // What the broken link still delivers (the peer's last frames, say
        // its ProtocolError before it closed) is read before anything
        // replaces or ends the conduit: the writer may have seen the break
        // first. Bounded, for a link that never ends.
        let drained = async {
            loop {
                let notified = shared.reader_drained.notified();
                if shared.core.lock().drained_epoch.is_some_and(|e| e >= epoch) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_BEFORE_REDIAL, drained).await;
        let limit = shared.config.recovery_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let mut attempt = 0u32;
        let outcome = loop {
            let wait = shared.config.backoff.delay(attempt);
            if tokio::time::Instant::now() + wait >= deadline {
                break Err(StableEnd::RecoveryTimeout(limit));
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
            if matches!(shared.core.lock().phase, Phase::Closed(_)) {
                return;
            }
            let hello = ClientHello { resume_key: Some(shared.key.clone()), last_received: shared.last_received() };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let dialed = match tokio::time::timeout(left, source.dial()).await {
                Ok(Ok(link)) => hello_on(link, hello, left.min(shared.config.hello_timeout)).await,
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(StableSetupError::Hello("dial timed out".into())),
            };
            match dialed {
                // A different key means a new server session: never treat it as resumed.
                Ok((_, sh)) if sh.resume_key != shared.key => {
                    break Err(StableEnd::UnknownKey("the server answered with a different session's key".into()));
                }
                Ok((link, sh)) => break Ok((link, sh.last_received)),
                Err(StableSetupError::UnknownKey(reason)) => break Err(StableEnd::UnknownKey(reason)),
                Err(e) => tracing::debug!(attempt, error = %e, "stable conduit redial failed; retrying"),
            }
        };
        match outcome {
            Ok((link, peer_last)) => {
                if shared.attach(link, peer_last).is_err() {
                    return;
                }
            }
            Err(end) => {
                shared.finish(end);
                return;
            }
        }
    }
}

// ------------------------------------------------------------------ server

/// Server-side index of live stable conduits by resume key, so a client
/// coming back on a new link finds its conduit. Entries are weak: a conduit
/// that ended is dropped from the index on the next insertion.
#[derive(Clone, Default)]
pub struct StableRegistry {
    inner: Arc<Mutex<HashMap<Bytes, Weak<Shared>>>>,
}

impl std::fmt::Debug for StableRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRegistry").field("conduits", &self.inner.lock().len()).finish()
    }
}

/// What a stable link brought to the server.
pub enum StableAccepted {
    /// A new conduit: run the session handshake on it.
    New(StableTx, StableRx),
    /// The link was attached to an existing conduit; nothing more to do.
    Resumed,
}

impl std::fmt::Debug for StableAccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StableAccepted::New(..) => f.write_str("New"),
            StableAccepted::Resumed => f.write_str("Resumed"),
        }
    }
}

/// A fresh resume key: 32 bytes from the operating system's random source
/// (rule `stable.resume-key` asks for at least 16).
fn fresh_key() -> Result<ResumeKey, StableSetupError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| StableSetupError::Hello(format!("no randomness for a resume key: {e}")))?;
    Ok(ResumeKey(Blob(Bytes::copy_from_slice(&key))))
}

impl StableRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        StableRegistry::default()
    }

    /// Live conduits.
    pub fn len(&self) -> usize {
        self.inner.lock().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Whether no conduit is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Server side of a link whose prologue asked for `stable`: reads the
    /// `ClientHello` and either starts a new conduit or attaches the link to
    /// the conduit named by its resume key. An unknown key is refused with
    /// `UnknownKey` and the link is closed.
    pub async fn accept(&self, mut link: Link, config: StableConfig) -> Result<StableAccepted, StableSetupError> {
        let limit = config.hello_timeout;
        let hello = tokio::time::timeout(limit, recv_decoded::<ClientHello>(&mut link, "ClientHello"))
            .await
            .map_err(|_| StableSetupError::Hello(format!("no ClientHello within {limit:?}")))??;
        let Some(key) = hello.resume_key else {
            let key = fresh_key()?;
            send_encoded(
                &link.tx,
                "StableHelloReply",
                &StableHelloReply::Welcome(ServerHello { resume_key: key.clone(), last_received: None }),
            )
            .await?;
            let shared = Shared::new(key.clone(), config, link);
            {
                let mut map = self.inner.lock();
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(key.0.0.clone(), Arc::downgrade(&shared));
            }
            tokio::spawn(watchdog(shared.clone()));
            let (tx, rx) = halves(shared);
            return Ok(StableAccepted::New(tx, rx));
        };
        let found = self.inner.lock().get(&key.0.0).and_then(Weak::upgrade);
        let live = found.filter(|s| !matches!(s.core.lock().phase, Phase::Closed(_)));
        let Some(shared) = live else {
            let reason = "unknown or expired resume key".to_string();
            send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::UnknownKey { reason: reason.clone() })
                .await?;
            let _ = link.tx.close().await;
            return Err(StableSetupError::UnknownKey(reason));
        };
        // Judge the client's position before answering: a Welcome followed
        // by a failed attach would look like a resume that then broke.
        let position = shared.core.lock().sm.check_reattach(hello.last_received);
        if let Err(e) = position {
            let reason = format!("cannot resume: {e}");
            send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::UnknownKey { reason: reason.clone() })
                .await?;
            let _ = link.tx.close().await;
            shared.finish(StableEnd::Violation(e));
            return Err(StableSetupError::UnknownKey(reason));
        }
        let reply = ServerHello { resume_key: shared.key.clone(), last_received: shared.last_received() };
        send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::Welcome(reply)).await?;
        shared.attach(link, hello.last_received).map_err(|e| StableSetupError::Hello(e.to_string()))?;
        Ok(StableAccepted::Resumed)
    }
}

/// Server recovery task: after a break, ends the conduit if no link comes
/// back within the recovery timeout.
async fn watchdog(shared: Arc<Shared>) {
    loop {
        shared.broken.notified().await;
        let epoch = {
            let core = shared.core.lock();
            match core.phase {
                Phase::Closed(_) => return,
                Phase::Attached => continue,
                Phase::Broken => core.epoch,
            }
        };
        let limit = shared.config.recovery_timeout;
        tokio::time::sleep(limit).await;
        let still_broken = {
            let core = shared.core.lock();
            core.epoch == epoch && matches!(core.phase, Phase::Broken)
        };
        if still_broken {
            shared.finish(StableEnd::RecoveryTimeout(limit));
            return;
        }
    }
}
