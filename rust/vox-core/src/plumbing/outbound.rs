//! The session's one ordered outbound path.
//!
//! Every message of every connection is queued here and written by ONE
//! writer task that owns the conduit's sending half; nothing else can reach
//! the conduit. The queue is bounded: senders wait when it is full. The
//! writer encodes what is queued into one batch and writes it with one
//! vectored write (see [`ConduitWriter`]).

use super::item_runs::ItemRuns;
use super::outbox::ChannelOutbox;
use crate::conduit::{ConduitTx, ConduitWriter};
use crate::wire::{Blob, ChannelId, ConduitMsg, ConnectionId, Message, Payload};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a message could not be queued.
#[derive(Debug, Clone, thiserror::Error)]
#[error("outbound path is closed: the session has ended")]
pub struct OutboundClosed;

/// One place in the outbound queue: a message, or the marker of a
/// channel's outbox, which the writer replaces by the items the outbox
/// holds when it gets there (`outbox.rs`).
#[derive(Debug)]
pub(crate) enum Queued {
    Message(Message),
    Outbox(crate::sync::Arc<ChannelOutbox>),
}

/// A handle to the outbound queue; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Queued>,
    stats: Arc<Stats>,
}

struct Stats {
    high_water: AtomicUsize,
    capacity: usize,
}

/// A reserved place in the outbound queue: sending through it cannot wait
/// or fail, so check-then-send sequences are atomic with respect to order.
pub struct OutboundPermit<'a> {
    permit: mpsc::Permit<'a, Queued>,
    outbound: &'a Outbound,
}

impl OutboundPermit<'_> {
    /// Queues the message.
    pub fn send(self, msg: Message) {
        self.permit.send(Queued::Message(msg));
        self.outbound.note_depth();
    }

    /// Queues the marker of `outbox`: its items take this place.
    pub(crate) fn send_outbox(self, outbox: crate::sync::Arc<ChannelOutbox>) {
        self.permit.send(Queued::Outbox(outbox));
        self.outbound.note_depth();
    }
}

impl Outbound {
    /// Queues one message, waiting while the queue is full.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a dropped future
    /// queued nothing.
    ///
    /// # Errors
    /// [`OutboundClosed`] once the writer has stopped (the session ended); the
    /// message is not queued.
    pub async fn send(&self, msg: Message) -> Result<(), OutboundClosed> {
        self.reserve().await?.send(msg);
        Ok(())
    }

    /// Reserves a place.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: dropping the future
    /// reserves nothing.
    ///
    /// # Errors
    /// [`OutboundClosed`] once the writer has stopped (the session ended).
    pub async fn reserve(&self) -> Result<OutboundPermit<'_>, OutboundClosed> {
        let permit = self.tx.reserve().await.map_err(|_| OutboundClosed)?;
        Ok(OutboundPermit { permit, outbound: self })
    }

    /// Reserves a place if one is free right now.
    pub fn try_reserve(&self) -> Option<OutboundPermit<'_>> {
        let permit = self.tx.try_reserve().ok()?;
        Some(OutboundPermit { permit, outbound: self })
    }

    fn note_depth(&self) {
        self.stats.high_water.fetch_max(self.queued(), Ordering::Relaxed);
    }

    /// The messages waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.stats.capacity - self.tx.capacity()
    }

    /// The most messages ever waiting at once.
    pub fn high_water(&self) -> usize {
        self.stats.high_water.load(Ordering::Relaxed)
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.stats.capacity
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// How the writer should finish.
#[derive(Debug)]
pub struct Finish {
    /// A last message written after the queue (e.g. `ProtocolError`).
    pub last: Option<Message>,
    /// Graceful end: write everything queued, including what senders that
    /// already hold a place add. Otherwise (teardown after a violation) only
    /// what is queued at this moment is written.
    pub drain: bool,
    /// The longest the finish may take before the link is dropped: the
    /// session's linger for a graceful end, its protocol-error deadline
    /// after a violation.
    pub linger: Duration,
}

/// Why the writer task ended early.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Writing to the conduit failed (the link broke, or a message did not
    /// encode): the environment's fault, or a local bug for an encode error.
    #[error(transparent)]
    Conduit(#[from] crate::conduit::ConduitError),
    /// After the end was decided, the peer did not take the last messages
    /// within the linger.
    #[error("the peer did not read the last messages within {0:?}")]
    LingerExpired(Duration),
}

/// Starts the writer task. It returns when the link fails or after
/// `finish` is received and handled; the `Result` tells the run loop why.
/// With `item_runs` (both sides agreed on `vox.channel-items`) it sends the
/// items of one channel queued one after another as one `ChannelItems`.
pub fn spawn_writer(
    conduit: ConduitTx,
    capacity: usize,
    finish: oneshot::Receiver<Finish>,
    item_runs: bool,
) -> (Outbound, tokio::task::JoinHandle<Result<(), WriterError>>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let outbound = Outbound { tx, stats: Arc::new(Stats { high_water: AtomicUsize::new(0), capacity }) };
    let task = tokio::spawn(writer(conduit, rx, finish, ItemRuns::new(item_runs)));
    (outbound, task)
}

/// The conduit's writer with the runs of items not yet handed to it: every
/// flush and close first hands over the run in progress.
struct Sink {
    out: ConduitWriter,
    runs: ItemRuns,
    /// The storage the next outbox's items are taken into.
    spare: Vec<Blob>,
}

impl Sink {
    /// Writes the items of the outbox whose marker the writer reached.
    async fn push_outbox(&mut self, outbox: crate::sync::Arc<ChannelOutbox>) -> Result<(), WriterError> {
        // The writer's empty vector and the outbox's full one trade places:
        // the storage circulates, so a steady stream allocates none.
        let mut items = std::mem::take(&mut self.spare);
        outbox.take(&mut items);
        let (connection_id, id) = outbox.channel();
        let mut written = Ok(());
        for item in items.drain(..) {
            // Most items join the run in progress without waiting: no
            // `push_item` future per item for them.
            if self.runs.joins(&item) {
                let Some(ended) = self.runs.add(connection_id, id, item) else { continue };
                written = self.out.push(&ConduitMsg::Message(ended)).await.map_err(WriterError::from);
            } else {
                written = self.push_item(connection_id, id, item).await;
            }
            if written.is_err() {
                break;
            }
        }
        items.clear();
        self.spare = items;
        written
    }

    /// Writes one place of the queue: a message, or the items of the
    /// outbox whose marker it is. One match on the place, so that a
    /// message is moved into its write once.
    async fn push(&mut self, q: Queued) -> Result<(), WriterError> {
        match q {
            Queued::Outbox(outbox) => self.push_outbox(outbox).await,
            Queued::Message(Message { connection_id, payload: Payload::ChannelItem { id, item } }) => {
                self.push_item(connection_id, id, item).await
            }
            Queued::Message(m) => {
                if let Some(run) = self.runs.take() {
                    self.out.push(&ConduitMsg::Message(run)).await?;
                }
                Ok(self.out.push(&ConduitMsg::Message(m)).await?)
            }
        }
    }

    async fn push_item(&mut self, connection_id: ConnectionId, id: ChannelId, item: Blob) -> Result<(), WriterError> {
        if !self.runs.joins(&item) {
            if let Some(run) = self.runs.take() {
                self.out.push(&ConduitMsg::Message(run)).await?;
            }
            let m = Message { connection_id, payload: Payload::ChannelItem { id, item } };
            return Ok(self.out.push(&ConduitMsg::Message(m)).await?);
        }
        match self.runs.add(connection_id, id, item) {
            Some(ended) => Ok(self.out.push(&ConduitMsg::Message(ended)).await?),
            None => Ok(()),
        }
    }

    async fn hand_over(&mut self) -> Result<(), WriterError> {
        if let Some(run) = self.runs.take() {
            self.out.push(&ConduitMsg::Message(run)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WriterError> {
        self.hand_over().await?;
        Ok(self.out.flush().await?)
    }

    /// A run in progress counts as a batch begun, also on a link that
    /// sends each message at once; its bytes are counted once it is handed
    /// over (at most [`MAX_CHANNEL_ITEMS`] small items).
    ///
    /// [`MAX_CHANNEL_ITEMS`]: crate::wire::MAX_CHANNEL_ITEMS
    fn wants_more(&self) -> bool {
        (self.out.pending() == 0 && self.runs.held() > 0) || self.out.wants_more()
    }

    /// Messages in the batch, counting the items of the run in progress
    /// one each (they decide whether waiting for more is worth it).
    fn pending(&self) -> usize {
        self.out.pending() + self.runs.held()
    }
}

/// An outbound path with no writer, for in-crate model tests that need a
/// `ConnectionCore` but never send.
#[cfg(test)]
pub(crate) fn detached(capacity: usize) -> (Outbound, Detached) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(Stats { high_water: AtomicUsize::new(0), capacity: capacity.max(1) });
    (Outbound { tx, stats }, Detached { rx, taken: std::collections::VecDeque::new() })
}

/// The reading end of a [`detached`] path: what the writer would be given,
/// each outbox's items as the `ChannelItem` messages they stand for.
#[cfg(test)]
pub(crate) struct Detached {
    rx: mpsc::Receiver<Queued>,
    taken: std::collections::VecDeque<Message>,
}

#[cfg(test)]
impl Detached {
    fn expand(&mut self, q: Queued) {
        match q {
            Queued::Message(m) => self.taken.push_back(m),
            Queued::Outbox(outbox) => {
                let mut items = Vec::new();
                outbox.take(&mut items);
                let (connection_id, id) = outbox.channel();
                let items =
                    items.into_iter().map(|item| Message { connection_id, payload: Payload::ChannelItem { id, item } });
                self.taken.extend(items);
            }
        }
    }

    /// The next message, if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Result<Message, mpsc::error::TryRecvError> {
        loop {
            if let Some(m) = self.taken.pop_front() {
                return Ok(m);
            }
            let q = self.rx.try_recv()?;
            self.expand(q);
        }
    }

    /// The next message, waiting for one; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.taken.pop_front() {
                return Some(m);
            }
            let q = self.rx.recv().await?;
            self.expand(q);
        }
    }
}

/// Most times the writer yields to let a batch grow before writing it.
const MAX_YIELDS: usize = 1;

/// Adds `first` and whatever else is queued to the batch, then writes it.
///
/// When the queue had more than one message, several senders are active:
/// the writer yields so that the ones runnable right now can add to this
/// batch before it pays for a write, for as long as each yield brings more.
/// A lone message (request/response traffic) is written at once.
async fn write_batch(out: &mut Sink, rx: &mut mpsc::Receiver<Queued>, first: Queued) -> Result<(), WriterError> {
    out.push(first).await?;
    gather(out, rx).await?;
    let mut yields = 0;
    while out.pending() > 1 && out.wants_more() && yields < MAX_YIELDS {
        let before = out.pending();
        tokio::task::yield_now().await;
        gather(out, rx).await?;
        yields += 1;
        if out.pending() == before {
            break;
        }
    }
    out.flush().await
}

/// Moves what is already queued into the batch, while the batch wants more.
async fn gather(out: &mut Sink, rx: &mut mpsc::Receiver<Queued>) -> Result<(), WriterError> {
    while out.wants_more() {
        let Ok(m) = rx.try_recv() else { break };
        out.push(m).await?;
    }
    Ok(())
}

async fn writer(
    conduit: ConduitTx,
    mut rx: mpsc::Receiver<Queued>,
    mut finish: oneshot::Receiver<Finish>,
    runs: ItemRuns,
) -> Result<(), WriterError> {
    // The writer owns the conduit from here on; on a stream link it writes
    // the frames itself, so a message takes one task hop to the socket.
    let mut out = Sink { out: conduit.into_writer().await?, runs, spare: Vec::new() };
    let how = loop {
        tokio::select! {
            biased;
            f = &mut finish => break f.ok(),
            m = rx.recv() => match m {
                Some(m) => write_batch(&mut out, &mut rx, m).await?,
                // All senders gone: nothing more can be written.
                None => break None,
            },
        }
    };
    rx.close();
    let Some(how) = how else {
        out.hand_over().await?;
        return Ok(out.out.close().await?);
    };
    let linger = how.linger;
    let work = async move {
        // What was queued before the end was decided is written in order
        // (a pong queued before a violation still precedes the
        // ProtocolError); `linger` bounds this if the peer stopped reading.
        // Without `drain`, only what is already queued goes, never what
        // senders still holding a place add later.
        loop {
            match rx.try_recv() {
                Ok(m) => out.push(m).await?,
                Err(mpsc::error::TryRecvError::Empty) if how.drain => {
                    // Senders holding a place may still add: send what is
                    // batched while waiting for them.
                    out.flush().await?;
                    match rx.recv().await {
                        Some(m) => out.push(m).await?,
                        None => break,
                    }
                }
                Err(_) => break,
            }
            if !out.wants_more() {
                out.flush().await?;
            }
        }
        if let Some(last) = how.last {
            out.push(Queued::Message(last)).await?;
        }
        out.hand_over().await?;
        if how.drain {
            Ok(out.out.close().await?)
        } else {
            // rule: session.protocol-error — never wait on the violator
            // (a stable conduit would otherwise wait for its acks).
            Ok(out.out.abort().await?)
        }
    };
    match tokio::time::timeout(linger, work).await {
        Ok(r) => r,
        Err(_) => Err(WriterError::LingerExpired(linger)),
    }
}
