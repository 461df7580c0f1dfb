//! The handler side: the [`Handler`] trait, the [`Call`] it receives, the
//! [`ReplySink`] it answers through exactly once, and the [`ChannelBinder`]
//! that turns announced channel ids into typed handles.

use super::channel::LocalError;
use super::core::{ChannelPort, ConnectionCore};
use super::handle::{ChannelSlot, Role, Rx, Tx};
use crate::wire::{self, Blob, ChannelDecl, ChannelDirection, Metadata, MethodId, ResponseBody};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::oneshot;

/// A boxed, sendable future, as returned by [`Handler::handle`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Serves the requests of a connection.
///
/// A plain call's handler is polled once on the session's receive loop as
/// the request arrives; one that replies in that poll is answered at once,
/// and one that waits for anything goes on in a task of its own, so a slow
/// handler never holds up others (rule `rpc.pipelining`). The code before a
/// handler's first `.await` therefore runs on the receive loop and must not
/// block: move heavy synchronous work to `tokio::task::spawn_blocking`
/// (ADR 0004).
///
/// Any `Fn(Call) -> impl Future<Output = ()>` is a handler:
///
/// ```
/// use vox_core::driver::{Call, Handler};
/// let echo = |call: Call| async move {
///     let args = call.args.clone();
///     call.reply.ok_raw(args);
/// };
/// fn takes_handler(_: impl Handler) {}
/// takes_handler(echo);
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one call; must answer through `call.reply`. Dropping the sink
    /// without answering, panicking, or being cancelled each still produce
    /// exactly one (error) response.
    fn handle(&self, call: Call) -> BoxFuture;

    /// The retry policy of `method` (PROTOCOL.md section 10), read by the
    /// session's operation table when a request carries an operation id.
    /// The default, volatile and non-idem, is the safe one: nothing is kept
    /// and nothing is re-run. Generated dispatchers answer from their
    /// `#[vox(idem)]` / `#[vox(persist)]` attributes; a wrapping handler
    /// should forward this method to the handler it wraps.
    fn policy(&self, method: MethodId) -> crate::plumbing::operations::MethodPolicy {
        let _ = method;
        crate::plumbing::operations::MethodPolicy::default()
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, call: Call) -> BoxFuture {
        Box::pin(self(call))
    }
}

/// One inbound call.
pub struct Call {
    /// Which method.
    pub method_id: MethodId,
    /// Serialized arguments (postcard).
    pub args: Bytes,
    /// Request metadata.
    pub metadata: Metadata,
    /// The channels announced by the request, in argument order.
    pub channels: ChannelBinder,
    /// Where the one response goes.
    pub reply: ReplySink,
    /// What the schema exchange says about this request.
    pub(crate) schema: CallSchema,
}

/// What the schema exchange of the connection says about one request
/// (rules `schema.identity`, `schema.evolution`).
#[derive(Clone, Debug, Default)]
pub(crate) enum CallSchema {
    /// The plain path: no exchange, or the same schemas.
    #[default]
    Plain,
    /// A `vox.schema.describe` query: the connection's handler-side state,
    /// which the answer updates.
    Exchange(Arc<crate::schema::HandlerSchemas>),
    /// The caller's schema differs: its arguments come in its layout.
    Inbound(crate::schema::Inbound),
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("method_id", &self.method_id).field("metadata", &self.metadata).finish()
    }
}

impl Call {
    /// Decodes the arguments. On failure, answer with
    /// [`ReplySink::invalid_payload`] (rule `rpc.invalid-payload`).
    pub fn decode_args<A: DeserializeOwned>(&self) -> Result<A, wire::DecodeError> {
        wire::decode::<A>("call arguments", &self.args)
    }
}

/// Answers a call exactly once; consuming methods make a second answer
/// impossible, and dropping the sink makes the driver answer
/// `HandlerFailed`.
pub struct ReplySink {
    tx: oneshot::Sender<(ResponseBody, Metadata)>,
}

impl ReplySink {
    pub(crate) fn new(tx: oneshot::Sender<(ResponseBody, Metadata)>) -> Self {
        ReplySink { tx }
    }

    /// Sends a response body with metadata.
    pub fn reply(self, body: ResponseBody, metadata: Metadata) {
        // The driver stopped waiting only if the call was cancelled or the
        // connection ended; either way there is no one to answer.
        let _ = self.tx.send((body, metadata));
    }

    /// Answers with an already serialized return value.
    pub fn ok_raw(self, ret: Bytes) {
        self.reply(ResponseBody::Ok(Blob::new(ret)), Metadata::new());
    }

    /// Serializes and returns `value`.
    pub fn ok<R: Serialize>(self, value: &R) {
        match wire::encode_payload("return value", value) {
            Ok(b) => self.reply(ResponseBody::Ok(b), Metadata::new()),
            Err(e) => self.reply(ResponseBody::HandlerFailed { reason: e.to_string() }, Metadata::new()),
        }
    }

    /// Returns the handler's own (application) error.
    pub fn user_error<E: Serialize>(self, error: &E) {
        match wire::encode_payload("user error", error) {
            Ok(b) => self.reply(ResponseBody::User(b), Metadata::new()),
            Err(e) => self.reply(ResponseBody::HandlerFailed { reason: e.to_string() }, Metadata::new()),
        }
    }

    /// The arguments could not be decoded (rule `rpc.invalid-payload`).
    pub fn invalid_payload(self, reason: impl std::fmt::Display) {
        self.reply(ResponseBody::InvalidPayload { reason: reason.to_string() }, Metadata::new());
    }

    /// The arguments cannot be translated from the caller's schema (rule
    /// `schema.incompatible`).
    pub(crate) fn incompatible_schema(self, method: &str, e: crate::schema::SchemaError) {
        let body = ResponseBody::IncompatibleSchema {
            method: method.to_owned(),
            path: e.path,
            field: e.field,
            reason: e.reason,
        };
        self.reply(body, Metadata::new());
    }

    /// No such method (rule `rpc.unknown-method`).
    pub fn unknown_method(self) {
        self.reply(ResponseBody::UnknownMethod, Metadata::new());
    }
}

/// Why a channel could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No channel at this argument position.
    #[error("request announces no channel at position {0}")]
    NoSuchChannel(usize),
    /// The channel at this position flows the other way.
    #[error("channel at position {index} flows {actual:?}, not the requested direction")]
    WrongDirection {
        /// Position.
        index: usize,
        /// Announced direction.
        actual: ChannelDirection,
    },
    /// Already bound.
    #[error("channel at position {0} is already bound")]
    AlreadyBound(usize),
    /// The registry refused.
    #[error("cannot bind channel: {0}")]
    Registry(String),
}

/// Turns the channels announced by a request into typed handles. Channels
/// that are never bound are bound and released when the binder is dropped,
/// so the peer always learns their end (reset for receivers, close for
/// senders).
pub struct ChannelBinder {
    core: Arc<ConnectionCore>,
    /// What the request announced. Whether one is taken is the registry's
    /// to say (a taken channel is no longer `Pending` there), not ours.
    decls: Vec<ChannelDecl>,
    /// The item plans of caller-to-handler channels whose item type the
    /// caller's schema describes differently (rule `schema.evolution`).
    plans: Option<Arc<crate::schema::InboundPlans>>,
}

impl ChannelBinder {
    pub(crate) fn new(core: Arc<ConnectionCore>, decls: Vec<ChannelDecl>) -> Self {
        ChannelBinder { core, decls, plans: None }
    }

    /// Translates the items of the channels `plans` has a plan for.
    pub(crate) fn translating(&mut self, plans: Arc<crate::schema::InboundPlans>) {
        self.plans = Some(plans);
    }

    /// How many channels the request announced.
    pub fn len(&self) -> usize {
        self.decls.len()
    }

    /// Whether the request announced no channels.
    pub fn is_empty(&self) -> bool {
        self.decls.is_empty()
    }

    fn take(&mut self, index: usize, want: ChannelDirection) -> Result<ChannelDecl, BindError> {
        let decl = *self.decls.get(index).ok_or(BindError::NoSuchChannel(index))?;
        if decl.direction != want {
            return Err(BindError::WrongDirection { index, actual: decl.direction });
        }
        self.core.bind(decl.id).map_err(|e| match e {
            LocalError::AlreadyBound(_) => BindError::AlreadyBound(index),
            e => BindError::Registry(e.to_string()),
        })?;
        Ok(decl)
    }

    /// Binds the channel at `index` (an `Rx<T>` argument: the caller sends,
    /// this handler receives).
    pub fn rx<T: DeserializeOwned>(&mut self, index: usize) -> Result<Rx<T>, BindError> {
        let decl = self.take(index, ChannelDirection::CallerToHandler)?;
        let rx = Rx::from_slot(ChannelSlot::bound(self.core.clone(), decl.id));
        match self.plans.as_ref().and_then(|p| Some((p.channels.get(index)?.as_ref()?, &p.method))) {
            Some((plan, method)) => Ok(rx.translating(plan.clone(), method.clone())),
            None => Ok(rx),
        }
    }

    /// Binds the channel at `index` (a `Tx<T>` argument: this handler sends).
    pub fn tx<T: Serialize>(&mut self, index: usize) -> Result<Tx<T>, BindError> {
        let decl = self.take(index, ChannelDirection::HandlerToCaller)?;
        Ok(Tx::from_slot(ChannelSlot::bound(self.core.clone(), decl.id)))
    }
}

impl Drop for ChannelBinder {
    fn drop(&mut self) {
        // The channels no handle took: bind them only to release them (a
        // taken one refuses the bind), so the caller's ends learn the end.
        for decl in &self.decls {
            if self.core.bind(decl.id).is_ok() {
                let role = match decl.direction {
                    ChannelDirection::CallerToHandler => Role::Receiver,
                    ChannelDirection::HandlerToCaller => Role::Sender,
                };
                self.core.release(decl.id, role);
            }
        }
    }
}
