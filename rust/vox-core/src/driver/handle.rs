//! Typed channel handles: [`Tx<T>`] sends, [`Rx<T>`] receives.
//!
//! A pair made by [`channel`] starts unbound. Passing one end to a call (as
//! a [`ChannelArg`]) binds both ends once the request is queued, so the
//! `Request` always leaves before any item of its channels; until then
//! `send`/`recv` wait.

use super::channel::{LossCause, RecvError, SendError};
use super::core::ConnectionCore;
use crate::sync::Mutex;
use crate::wire::{self, Blob, ChannelDirection, ChannelId};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::sync::Arc;
use tokio::sync::Notify;

/// The default initial credit of a channel.
pub const DEFAULT_INITIAL_CREDIT: u32 = 16;

/// Which end of a channel a handle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends items.
    Sender,
    /// Receives items.
    Receiver,
}

/// What a channel operation reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The receiver reset the channel.
    #[error("channel was reset by the receiver")]
    Reset,
    /// The channel was closed by this side.
    #[error("channel is closed")]
    Closed,
    /// The connection ended normally.
    #[error("connection closed")]
    ConnectionClosed,
    /// The session was shut down.
    #[error("session shut down")]
    SessionShutdown,
    /// A protocol violation ended the session.
    #[error("protocol error: {0}")]
    ProtocolError(String),
    /// The call that would have announced the channel failed before sending.
    #[error("the channel was never announced: {0}")]
    NotAnnounced(String),
    /// An item could not be encoded or decoded.
    #[error("channel item codec error: {0}")]
    Codec(String),
}

impl From<LossCause> for ChannelError {
    fn from(c: LossCause) -> Self {
        match c {
            LossCause::ConnectionClosed => ChannelError::ConnectionClosed,
            LossCause::SessionShutdown => ChannelError::SessionShutdown,
            LossCause::ProtocolError(d) => ChannelError::ProtocolError(d),
        }
    }
}

impl From<SendError> for ChannelError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Reset => ChannelError::Reset,
            SendError::ConnectionLost(c) => c.into(),
            other => ChannelError::NotAnnounced(other.to_string()),
        }
    }
}

impl From<RecvError> for ChannelError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Reset => ChannelError::Reset,
            RecvError::ConnectionLost(c) => c.into(),
            other => ChannelError::NotAnnounced(other.to_string()),
        }
    }
}

enum SlotState {
    Unbound,
    Bound { core: Arc<ConnectionCore>, id: ChannelId },
    Failed(String),
    // This end was dropped before its call bound the channel.
    Abandoned,
}

/// Shared between the two ends of a pair until it is bound.
pub(crate) struct ChannelSlot {
    state: Mutex<SlotState>,
    bound: Notify,
    role: Role,
}

impl ChannelSlot {
    fn unbound(role: Role) -> Arc<ChannelSlot> {
        Arc::new(ChannelSlot { state: Mutex::new(SlotState::Unbound), bound: Notify::new(), role })
    }

    pub(crate) fn bound(core: Arc<ConnectionCore>, id: ChannelId, role: Role) -> Arc<ChannelSlot> {
        Arc::new(ChannelSlot { state: Mutex::new(SlotState::Bound { core, id }), bound: Notify::new(), role })
    }

    /// Called by the call once the request is queued.
    pub(crate) fn bind(&self, core: Arc<ConnectionCore>, id: ChannelId, _announced_role: Role) {
        let mut st = self.state.lock();
        match *st {
            SlotState::Abandoned => {
                drop(st);
                release(&core, id, self.role);
            }
            _ => {
                *st = SlotState::Bound { core, id };
                drop(st);
                self.bound.notify_waiters();
            }
        }
    }

    /// Called when the call failed before announcing the channel.
    pub(crate) fn fail(&self, reason: String) {
        let mut st = self.state.lock();
        if matches!(*st, SlotState::Unbound) {
            *st = SlotState::Failed(reason);
            drop(st);
            self.bound.notify_waiters();
        }
    }

    async fn wait_bound(&self) -> Result<(Arc<ConnectionCore>, ChannelId), ChannelError> {
        loop {
            let notified = self.bound.notified();
            tokio::pin!(notified);
            // Register before checking so a bind in between is not missed.
            notified.as_mut().enable();
            match &*self.state.lock() {
                SlotState::Bound { core, id } => return Ok((core.clone(), *id)),
                SlotState::Failed(r) => return Err(ChannelError::NotAnnounced(r.clone())),
                SlotState::Abandoned => return Err(ChannelError::Closed),
                SlotState::Unbound => {}
            }
            notified.await;
        }
    }

    fn current(&self) -> Option<(Arc<ConnectionCore>, ChannelId)> {
        match &*self.state.lock() {
            SlotState::Bound { core, id } => Some((core.clone(), *id)),
            _ => None,
        }
    }

    fn drop_end(&self) {
        let mut st = self.state.lock();
        match std::mem::replace(&mut *st, SlotState::Abandoned) {
            SlotState::Bound { core, id } => {
                drop(st);
                release(&core, id, self.role);
            }
            SlotState::Unbound => {}
            other => *st = other,
        }
    }
}

fn release(core: &ConnectionCore, id: ChannelId, role: Role) {
    match role {
        // rule: rpc.channel.close — a dropped sender closes after its items.
        Role::Sender => core.registry.sender_dropped(id),
        // A dropped receiver resets (rule: rpc.channel.reset).
        Role::Receiver => core.registry.receiver_dropped(id),
    }
}

/// One end of a channel handed to a call, announced in its `Request`.
pub struct ChannelArg {
    pub(crate) direction: ChannelDirection,
    pub(crate) initial_credit: u32,
    pub(crate) slot: Arc<ChannelSlot>,
}

impl ChannelArg {
    pub(crate) fn local_role(&self) -> Role {
        self.slot.role
    }

    /// Marks the kept end as failed: the call never announced the channel.
    pub(crate) fn fail(&self, reason: &str) {
        self.slot.fail(reason.to_string());
    }
}

impl std::fmt::Debug for ChannelArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelArg").field("direction", &self.direction).field("credit", &self.initial_credit).finish()
    }
}

/// Creates an unbound channel pair with the default initial credit (16).
/// Pass one end to a call; keep the other.
///
/// ```
/// let (tx, rx) = vox_core::driver::channel::<u32>();
/// # drop((tx, rx));
/// ```
pub fn channel<T>() -> (Tx<T>, Rx<T>) {
    channel_with_credit(DEFAULT_INITIAL_CREDIT)
}

/// Creates an unbound channel pair with `initial_credit` (0 allowed: the
/// sender waits for the receiver's first grant).
pub fn channel_with_credit<T>(initial_credit: u32) -> (Tx<T>, Rx<T>) {
    let tx_slot = ChannelSlot::unbound(Role::Sender);
    let rx_slot = ChannelSlot::unbound(Role::Receiver);
    let link = Arc::new(PairLink { tx: tx_slot.clone(), rx: rx_slot.clone() });
    (
        Tx { slot: tx_slot, pair: Some((link.clone(), initial_credit)), _t: PhantomData },
        Rx { slot: rx_slot, pair: Some((link, initial_credit)), _t: PhantomData },
    )
}

// Both ends of a caller-side pair, so whichever end goes into the call can
// reach the other end's slot.
struct PairLink {
    tx: Arc<ChannelSlot>,
    rx: Arc<ChannelSlot>,
}

/// Result of [`Tx::try_send`] when the item could not be sent now.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError<T> {
    /// No credit or no room in the outbound queue; the item is handed back.
    #[error("channel is full")]
    Full(T),
    /// The channel ended; the item is handed back with the reason.
    #[error("channel ended: {1}")]
    Closed(T, ChannelError),
}

/// The sending end of a channel.
pub struct Tx<T> {
    slot: Arc<ChannelSlot>,
    pair: Option<(Arc<PairLink>, u32)>,
    _t: PhantomData<fn(T)>,
}

/// The receiving end of a channel.
pub struct Rx<T> {
    slot: Arc<ChannelSlot>,
    pair: Option<(Arc<PairLink>, u32)>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Tx<T> {
    pub(crate) fn from_slot(slot: Arc<ChannelSlot>) -> Self {
        Tx { slot, pair: None, _t: PhantomData }
    }

    /// Hands this end to a call: the handler will send, the caller keeps the
    /// matching `Rx`. Fails if this end came from a handler's binder.
    pub fn into_arg(mut self) -> Option<ChannelArg> {
        let (pair, credit) = self.pair.take()?;
        // The caller keeps the Rx: that is the slot the call binds.
        let slot = pair.rx.clone();
        // This end goes to the peer; dropping it must not release anything.
        *self.slot.state.lock() = SlotState::Failed("handed to a call".into());
        Some(ChannelArg { direction: ChannelDirection::HandlerToCaller, initial_credit: credit, slot })
    }

    /// Sends one item, waiting for credit (backpressure). Cancel-safe:
    /// dropping the future before it returns sends nothing and spends no credit.
    pub async fn send(&mut self, item: &T) -> Result<(), ChannelError>
    where
        T: Serialize,
    {
        let bytes = Bytes::from(wire::encode("channel item", item).map_err(|e| ChannelError::Codec(e.to_string()))?);
        self.send_raw(bytes).await
    }

    /// Sends one pre-serialized item.
    pub async fn send_raw(&mut self, item: Bytes) -> Result<(), ChannelError> {
        use tracing::Instrument;
        let (core, id) = self.slot.wait_bound().await?;
        let span = tracing::trace_span!("channel", conn = %core.id(), channel = %id, end = "tx");
        async {
            std::future::poll_fn(|cx| core.registry.poll_credit(id, cx)).await?;
            let permit = core.reserve().await?;
            // One sender per channel: the credit seen above is still there
            // unless a reset or connection loss came in between, which is
            // then reported.
            core.send_item_with(permit, id, Blob(item)).map_err(ChannelError::from)
        }
        .instrument(span)
        .await
    }

    /// Sends now or hands the item back: `Full` when there is no credit or
    /// no room in the outbound queue, `Closed` when the channel ended.
    pub fn try_send(&mut self, item: T) -> Result<(), TrySendError<T>>
    where
        T: Serialize,
    {
        let Some((core, id)) = self.slot.current() else {
            return Err(TrySendError::Full(item));
        };
        let bytes = match wire::encode("channel item", &item) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Err(TrySendError::Closed(item, ChannelError::Codec(e.to_string()))),
        };
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match core.registry.poll_credit(id, &mut cx) {
            std::task::Poll::Pending => return Err(TrySendError::Full(item)),
            std::task::Poll::Ready(Err(e)) => return Err(TrySendError::Closed(item, e.into())),
            std::task::Poll::Ready(Ok(())) => {}
        }
        let Some(permit) = core.try_reserve() else {
            return Err(TrySendError::Full(item));
        };
        core.send_item_with(permit, id, Blob(bytes)).map_err(|e| TrySendError::Closed(item, e.into()))
    }

    /// Closes the channel after the items already sent.
    pub async fn close(self) -> Result<(), ChannelError> {
        let (core, id) = self.slot.wait_bound().await?;
        core.registry.local_close(id)?;
        // The close is made due in the registry and sent by the flush task,
        // after every item this handle queued.
        *self.slot.state.lock() = SlotState::Abandoned;
        Ok(())
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        self.slot.drop_end();
    }
}

impl<T> Rx<T> {
    pub(crate) fn from_slot(slot: Arc<ChannelSlot>) -> Self {
        Rx { slot, pair: None, _t: PhantomData }
    }

    /// Hands this end to a call: the handler will receive, the caller keeps
    /// the matching `Tx`. Fails if this end came from a handler's binder.
    pub fn into_arg(mut self) -> Option<ChannelArg> {
        let (pair, credit) = self.pair.take()?;
        let slot = pair.tx.clone();
        *self.slot.state.lock() = SlotState::Failed("handed to a call".into());
        Some(ChannelArg { direction: ChannelDirection::CallerToHandler, initial_credit: credit, slot })
    }

    /// The next item: `Ok(Some(item))` in order, `Ok(None)` after the sender
    /// closed and every item was taken, or an error on reset or loss.
    pub async fn recv(&mut self) -> Result<Option<T>, ChannelError>
    where
        T: DeserializeOwned,
    {
        match self.recv_raw().await? {
            None => Ok(None),
            Some(b) => wire::decode::<T>("channel item", &b).map(Some).map_err(|e| ChannelError::Codec(e.to_string())),
        }
    }

    /// The next pre-serialized item.
    pub async fn recv_raw(&mut self) -> Result<Option<Bytes>, ChannelError> {
        use tracing::Instrument;
        let (core, id) = self.slot.wait_bound().await?;
        let span = tracing::trace_span!("channel", conn = %core.id(), channel = %id, end = "rx");
        let r = std::future::poll_fn(|cx| core.registry.poll_recv(id, cx)).instrument(span).await;
        Ok(r?)
    }

    /// Asks the sender to stop (sends `ResetChannel`).
    pub fn reset(self) {
        // Drop does it.
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        self.slot.drop_end();
    }
}
