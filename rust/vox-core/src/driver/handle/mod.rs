//! Typed channel handles: [`Tx<T>`] sends, [`Rx<T>`] receives.
//!
//! A pair made by [`channel`] starts unbound. Passing one end to a call (as
//! a [`ChannelArg`]) binds both ends once the request is queued, so the
//! `Request` always leaves before any item of its channels; until then
//! `send`/`recv` wait.

mod slot;
mod xlate;

use super::channel::{LossCause, RecvError, SendError};
use super::core::{ChannelPort, ConnectionCore};
use crate::plumbing::outbox::ChannelOutbox;
use crate::sync::Mutex;
use crate::wire::{self, ChannelDirection, ChannelId};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
pub(crate) use slot::{ChannelSlot, Early, SlotRef};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Items up to this many bytes are decoded from a plain slice (see `Rx::recv`).
const SLICE_DECODE_MAX: usize = 64;

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
    #[error("protocol error ({}): {description}", crate::plumbing::loss::blame(*fault))]
    ProtocolError {
        /// Who broke the rule (see [`LossCause::ProtocolError`]).
        fault: crate::plumbing::loss::Fault,
        /// The violation.
        description: String,
    },
    /// The call that would have announced the channel failed before sending.
    #[error("the channel was never announced: {0}")]
    NotAnnounced(String),
    /// An item could not be encoded or decoded.
    #[error("channel item codec error: {0}")]
    Codec(String),
    /// The item cannot cross between the two sides' item types (rule
    /// `schema.incompatible`: a value of a variant the other side lacks).
    /// Only this item failed; the channel stays usable.
    #[error("incompatible schema in {method} at {path}, field `{field}`: {reason}")]
    IncompatibleSchema {
        /// `Service.method` of the channel's call.
        method: String,
        /// The access path to the value holding the field, and its type.
        path: String,
        /// The field or variant.
        field: String,
        /// What differs.
        reason: String,
    },
}

impl From<LossCause> for ChannelError {
    fn from(c: LossCause) -> Self {
        match c {
            LossCause::ConnectionClosed => ChannelError::ConnectionClosed,
            LossCause::SessionShutdown => ChannelError::SessionShutdown,
            LossCause::ProtocolError { fault, description } => ChannelError::ProtocolError { fault, description },
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

/// One end of a channel handed to a call, announced in its `Request`.
pub struct ChannelArg {
    pub(crate) direction: ChannelDirection,
    pub(crate) initial_credit: u32,
    pub(crate) slot: SlotRef,
}

impl ChannelArg {
    /// Marks the kept end as failed: the call never announced the channel.
    pub(crate) fn fail(&self, reason: &str) {
        self.slot.fail(reason);
    }

    /// Makes the kept end translate its items with `plan` (schema
    /// evolution); called before the call that binds it.
    pub(crate) fn translate_items(&self, plan: crate::schema::Plan, method: String) -> Result<(), ChannelError> {
        self.slot.translate_items(plan, method)
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
    let xlate = xlate::Xlate::default();
    let pair = ChannelSlot::pair(xlate.clone());
    (
        Tx {
            slot: ChannelSlot::Paired(pair.clone(), initial_credit),
            xlate: Some(xlate.clone()),
            outbox: None,
            _t: PhantomData,
        },
        Rx { slot: ChannelSlot::Paired(pair, initial_credit), xlate: Some(xlate), _t: PhantomData },
    )
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
    slot: ChannelSlot,
    /// Caller side: the item translation the call may set.
    xlate: Option<xlate::Xlate>,
    /// The items sent and not yet taken by the writer; made on the first
    /// send after the channel is bound.
    outbox: Option<crate::sync::Arc<ChannelOutbox>>,
    _t: PhantomData<fn(T)>,
}

/// The receiving end of a channel.
pub struct Rx<T> {
    slot: ChannelSlot,
    /// Caller side: the item translation the call may set.
    xlate: Option<xlate::Xlate>,
    _t: PhantomData<fn() -> T>,
}

/// Hands one end of a caller-side pair to a call; the call binds the other
/// end (`kept`). `None` for a handler-side (already bound) end.
fn hand_over(slot: &mut ChannelSlot, kept: Role, direction: ChannelDirection) -> Option<ChannelArg> {
    let ChannelSlot::Paired(pair, initial_credit) = slot else { return None };
    let (pair, initial_credit) = (pair.clone(), *initial_credit);
    // This end goes to the peer; dropping it must not release anything.
    *slot = ChannelSlot::Gone;
    Some(ChannelArg { direction, initial_credit, slot: SlotRef { pair, role: kept } })
}

/// A trace span for one channel operation, built only when it is enabled.
fn span(core: &ConnectionCore, id: ChannelId, end: &'static str) -> Option<tracing::Span> {
    if tracing::enabled!(tracing::Level::TRACE) {
        Some(tracing::trace_span!("channel", conn = %core.connection_id(), channel = %id, end))
    } else {
        None
    }
}

/// The part of a send that may wait: first the credit, then a place in the
/// outbound queue. With `try_first` (the traced path) it first tries to
/// send at once, as `Tx::send_raw` otherwise does before it gets here.
async fn send_waiting(
    core: &ConnectionCore,
    id: ChannelId,
    outbox: &crate::sync::Arc<ChannelOutbox>,
    item: Bytes,
    try_first: bool,
) -> Result<(), ChannelError> {
    let item = match try_first {
        true => match core.try_send_item(id, outbox, item)? {
            None => {
                crate::driver::metrics::item_sent();
                return Ok(());
            }
            Some(item) => item,
        },
        false => item,
    };
    crate::driver::metrics::credit_wait(std::future::poll_fn(|cx| core.poll_credit(id, cx))).await?;
    core.send_item(id, outbox, item).await?;
    crate::driver::metrics::item_sent();
    Ok(())
}

impl<T> Tx<T> {
    pub(crate) fn from_slot(slot: ChannelSlot) -> Self {
        Tx { slot, xlate: None, outbox: None, _t: PhantomData }
    }

    /// Hands this end to a call: the handler will send, the caller keeps the
    /// matching `Rx`. Fails if this end came from a handler's binder.
    pub fn into_arg(mut self) -> Option<ChannelArg> {
        // The caller keeps the Rx: that is the end the call binds.
        hand_over(&mut self.slot, Role::Receiver, ChannelDirection::HandlerToCaller)
    }

    /// Sends one item, waiting for credit (backpressure).
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: dropping the future
    /// before it returns sends nothing and spends no credit.
    ///
    /// # Errors
    /// [`ChannelError::Codec`] if `item` cannot be encoded; otherwise as
    /// [`send_raw`](Self::send_raw).
    pub async fn send(&mut self, item: &T) -> Result<(), ChannelError>
    where
        T: Serialize,
    {
        let bytes = wire::encode_item("channel item", item).map_err(|e| ChannelError::Codec(e.to_string()))?;
        let Some(x) = &self.xlate else { return self.send_raw(bytes).await };
        // rule: schema.evolution — a caller-side end translates into the
        // handler's layout once the schema exchange set a plan (always
        // before the call binds the channel).
        let Some(bytes) = self.slot.keep_early_translated(bytes, x)? else {
            crate::driver::metrics::item_sent();
            return Ok(());
        };
        if !matches!(self.slot, ChannelSlot::Bound { .. }) {
            std::future::poll_fn(|cx| self.slot.poll_bound(Role::Sender, Some(cx))).await?;
        }
        let bytes = xlate::apply(&self.xlate, bytes)?;
        self.send_raw(bytes).await
    }

    /// Sends one pre-serialized item.
    ///
    /// Before the channel's call is made, up to the channel's initial credit
    /// of items are kept and go out right after the call's request, so
    /// "fill the stream, then call" works; beyond that, `send` waits for the
    /// call.
    ///
    /// Inside a tokio runtime a send counts against the task's cooperative
    /// budget, as tokio's own channels do: a loop that always finds credit
    /// still yields now and then, so the tasks sharing its worker (the
    /// writer that drains what it sends, among them) get to run.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: credit is spent and
    /// the item queued in one step that cannot wait, so a dropped future sends
    /// nothing and spends no credit.
    ///
    /// # Errors
    /// [`ChannelError::Reset`] once the receiver reset the channel;
    /// [`ChannelError::ConnectionClosed`], [`ChannelError::SessionShutdown`] or
    /// [`ChannelError::ProtocolError`] when the connection was lost;
    /// [`ChannelError::NotAnnounced`] if the channel's call failed before
    /// sending its request.
    pub async fn send_raw(&mut self, item: Bytes) -> Result<(), ChannelError> {
        use tracing::Instrument;
        let item = match self.slot.keep_early(item) {
            None => return Ok(()).inspect(|()| crate::driver::metrics::item_sent()),
            Some(item) => item,
        };
        if !matches!(self.slot, ChannelSlot::Bound { .. }) {
            std::future::poll_fn(|cx| self.slot.poll_bound(Role::Sender, Some(cx))).await?;
        }
        let ChannelSlot::Bound { core, id } = &self.slot else { return Err(ChannelError::Closed) };
        let (core, id) = (&**core, *id);
        let outbox = &*self.outbox.get_or_insert_with(|| ChannelOutbox::new(core.connection_id(), id));
        // A send that finds credit does not wait; without this, a producer
        // loop holding ample credit would never give its worker back, and
        // the writer it feeds, woken onto the same worker, would not run
        // until the credit ran out.
        std::future::poll_fn(|cx| tokio::task::coop::poll_proceed(cx).map(|r| r.made_progress())).await;
        if let Some(span) = span(core, id, "tx") {
            return Box::pin(send_waiting(core, id, outbox, item, true).instrument(span)).await;
        }
        // Most sends find a credit and need no place in the queue, or find
        // one free: one registry lock then, and no await.
        let Some(item) = core.try_send_item(id, outbox, item)? else {
            crate::driver::metrics::item_sent();
            return Ok(());
        };
        // The waiting part lives in its own allocation, made only when a
        // send waits: this future, which a stream's handler holds across
        // every send, stays a few words instead of the waiting states'.
        Box::pin(send_waiting(core, id, outbox, item, false)).await
    }

    /// Sends now or hands the item back: `Full` when there is no credit or
    /// no room in the outbound queue, `Closed` when the channel ended.
    pub fn try_send(&mut self, item: T) -> Result<(), TrySendError<T>>
    where
        T: Serialize,
    {
        let Some((core, id)) = self.slot.current(Role::Sender) else {
            return Err(TrySendError::Full(item));
        };
        let outbox = self.outbox.get_or_insert_with(|| ChannelOutbox::new(core.connection_id(), id));
        let bytes = match wire::encode("channel item", &item).map(Bytes::from) {
            Ok(b) => match xlate::apply(&self.xlate, b) {
                Ok(b) => b,
                Err(e) => return Err(TrySendError::Closed(item, e)),
            },
            Err(e) => return Err(TrySendError::Closed(item, ChannelError::Codec(e.to_string()))),
        };
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match core.poll_credit(id, &mut cx) {
            std::task::Poll::Pending => return Err(TrySendError::Full(item)),
            std::task::Poll::Ready(Err(e)) => return Err(TrySendError::Closed(item, e.into())),
            std::task::Poll::Ready(Ok(())) => {}
        }
        match core.try_send_item(id, outbox, bytes) {
            Ok(None) => {
                crate::driver::metrics::item_sent();
                Ok(())
            }
            Ok(Some(_)) => Err(TrySendError::Full(item)),
            Err(e) => Err(TrySendError::Closed(item, e.into())),
        }
    }

    /// Closes the channel after the items already sent. Before the
    /// channel's call is made, the close goes out after the call's request
    /// and the items kept for it, and this returns at once.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future drops the `Tx`, which closes the channel
    /// after the items already sent just the same.
    ///
    /// # Errors
    /// [`ChannelError::Reset`] if the receiver had already reset the channel, a
    /// connection-loss variant ([`ChannelError::ConnectionClosed`],
    /// [`ChannelError::SessionShutdown`], [`ChannelError::ProtocolError`]), or
    /// [`ChannelError::NotAnnounced`] if the channel's call failed before
    /// sending its request.
    pub async fn close(mut self) -> Result<(), ChannelError> {
        if self.slot.close_early() {
            self.slot = ChannelSlot::Gone;
            return Ok(());
        }
        let (core, id) = self.slot.wait_bound(Role::Sender).await?;
        core.close(id)?;
        // The close is made due in the registry and sent by the flush task,
        // after every item this handle queued; dropping must not release.
        self.slot = ChannelSlot::Gone;
        Ok(())
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        self.slot.drop_end(Role::Sender);
    }
}

impl<T> Rx<T> {
    pub(crate) fn from_slot(slot: ChannelSlot) -> Self {
        Rx { slot, xlate: None, _t: PhantomData }
    }

    /// This end, translating each received item with `plan` (a handler's
    /// end of a channel whose item type the caller describes differently).
    pub(crate) fn translating(mut self, plan: crate::schema::Plan, method: String) -> Self {
        self.xlate = Some(xlate::fixed(plan, method));
        self
    }

    /// Hands this end to a call: the handler will receive, the caller keeps
    /// the matching `Tx`. Fails if this end came from a handler's binder.
    pub fn into_arg(mut self) -> Option<ChannelArg> {
        hand_over(&mut self.slot, Role::Sender, ChannelDirection::CallerToHandler)
    }

    /// The next item: `Ok(Some(item))` in order, `Ok(None)` after the sender
    /// closed and every item was taken, or an error on reset or loss.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`recv_raw`](Self::recv_raw).
    ///
    /// # Errors
    /// [`ChannelError::Codec`] for an item that does not decode as `T`;
    /// otherwise as [`recv_raw`](Self::recv_raw).
    pub async fn recv(&mut self) -> Result<Option<T>, ChannelError>
    where
        T: DeserializeOwned,
    {
        match self.recv_raw().await? {
            None => Ok(None),
            Some(b) => {
                // rule: schema.evolution — from the handler's layout.
                let b = xlate::apply(&self.xlate, b)?;
                // A small item is decoded from its slice: sharing its
                // buffer with a blob inside it would cost more than copying
                // the few bytes such a blob could hold.
                let item = if b.len() <= SLICE_DECODE_MAX {
                    wire::decode_slice::<T>("channel item", &b)
                } else {
                    wire::decode::<T>("channel item", &b)
                };
                item.map(Some).map_err(|e| ChannelError::Codec(e.to_string()))
            }
        }
    }

    /// The next pre-serialized item.
    ///
    /// Inside a tokio runtime it counts against the task's cooperative
    /// budget (see [`Tx::send_raw`]): a consumer of a full queue yields now
    /// and then.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: an item is taken
    /// only when the future completes, so a dropped future loses nothing.
    ///
    /// # Errors
    /// [`ChannelError::ConnectionClosed`], [`ChannelError::SessionShutdown`] or
    /// [`ChannelError::ProtocolError`] when the connection was lost (items
    /// still queued are not delivered); [`ChannelError::NotAnnounced`] if the
    /// channel's call failed before sending its request.
    pub async fn recv_raw(&mut self) -> Result<Option<Bytes>, ChannelError> {
        use tracing::Instrument;
        if !matches!(self.slot, ChannelSlot::Bound { .. }) {
            std::future::poll_fn(|cx| self.slot.poll_bound(Role::Receiver, Some(cx))).await?;
        }
        let ChannelSlot::Bound { core, id } = &self.slot else { return Err(ChannelError::Closed) };
        let (core, id) = (&**core, *id);
        // Counted against the task's budget like tokio's own channels, so a
        // consumer of a full queue yields now and then to the tasks that
        // feed it and send its grants.
        let recv = std::future::poll_fn(|cx| {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let r = core.poll_recv(id, cx);
            if r.is_ready() {
                coop.made_progress();
            }
            r
        });
        let r = match span(core, id, "rx") {
            Some(span) => recv.instrument(span).await,
            None => recv.await,
        };
        Ok(r?.inspect(|_| crate::driver::metrics::item_received()))
    }

    /// Asks the sender to stop (sends `ResetChannel`).
    pub fn reset(self) {
        // Drop does it.
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        self.slot.drop_end(Role::Receiver);
    }
}
