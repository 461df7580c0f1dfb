//! Public handles: [`SessionHandle`], [`ConnectionHandle`], [`Caller`].

use super::control::{ControlMsg, DropRequest, MailboxTx};
use super::{CloseReason, SessionError};
use crate::driver::{CallError, ChannelArg, ConnectionCore, CoreStats};
use crate::wire::{self, Blob, ConnectionId, ConnectionSettings, Metadata, MethodId, ResponseBody};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// Controls a session; cheap to clone. Every method goes through the one
/// control mailbox (see ADR 0002).
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) mailbox: MailboxTx,
    pub(crate) closed: watch::Receiver<Option<CloseReason>>,
    pub(crate) generation: watch::Receiver<u64>,
    pub(crate) op_ids: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle").field("close_reason", &self.close_reason()).finish()
    }
}

impl SessionHandle {
    fn ended(&self) -> SessionError {
        SessionError::Closed(self.close_reason().unwrap_or(CloseReason::Shutdown))
    }

    /// Opens a virtual connection; resolves when the peer accepts or rejects.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future either sent nothing or leaves the open to
    /// the session, which closes the connection again once the peer accepts it
    /// (nobody holds its callers).
    ///
    /// # Errors
    /// [`SessionError::Rejected`] if the peer refuses,
    /// [`SessionError::TooManyConnections`] at the local limit,
    /// [`SessionError::IdSpaceExhausted`], [`SessionError::Resuming`] while the
    /// session waits for a replacement conduit (retry after
    /// [`attached_after`](Self::attached_after)), [`SessionError::Closed`] once
    /// the session has ended.
    pub async fn open_connection(
        &self,
        settings: ConnectionSettings,
        metadata: Metadata,
    ) -> Result<ConnectionHandle, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox.send(ControlMsg::OpenConnection { settings, metadata, reply }).await.map_err(|_| self.ended())?;
        rx.await.map_err(|_| self.ended())?
    }

    /// Closes a virtual connection: pending calls fail, channels end, and the
    /// peer gets `CloseConnection`.
    ///
    /// # Cancel safety
    /// Cancel-safe: once the request reached the mailbox, dropping the future
    /// does not stop the close; before that, nothing was sent.
    ///
    /// # Errors
    /// [`SessionError::CannotCloseRoot`] for the root connection,
    /// [`SessionError::UnknownConnection`] if `id` is not open (never opened,
    /// or already closed by either side), [`SessionError::Closed`] once the
    /// session has ended.
    pub async fn close_connection(&self, id: ConnectionId, metadata: Metadata) -> Result<(), SessionError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox.send(ControlMsg::CloseConnection { id, metadata, reply }).await.map_err(|_| self.ended())?;
        rx.await.map_err(|_| self.ended())?
    }

    /// What the session holds now: its phase, every connection with its
    /// calls, handlers and channels, and the depth of its queues (see
    /// [`SessionSnapshot`](crate::session::SessionSnapshot)). It goes through
    /// the control mailbox like every request, so it waits while the
    /// mailbox is full.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future only drops the answer.
    ///
    /// # Errors
    /// [`SessionError::Closed`] once the session has ended.
    pub async fn snapshot(&self) -> Result<crate::session::SessionSnapshot, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.mailbox.send(ControlMsg::Snapshot { reply }).await.map_err(|_| self.ended())?;
        rx.await.map_err(|_| self.ended())
    }

    /// Asks the session to shut down. Never waits, so it may be called from
    /// `Drop`. Returns `Err` if the session had already ended.
    pub fn shutdown(&self) -> Result<(), SessionError> {
        if let Some(r) = self.close_reason() {
            return Err(SessionError::Closed(r));
        }
        self.mailbox.post(DropRequest::Shutdown);
        Ok(())
    }

    /// Shuts the session down gracefully: requests that arrive from now on
    /// are answered `Rejected` (nothing runs, so the caller may retry
    /// elsewhere), the handlers in flight get up to `grace` to finish, then
    /// the session ends as [`shutdown`](Self::shutdown) does. Resolves with
    /// the close reason once it has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe once the request reached the mailbox: dropping the
    /// future does not stop the drain.
    ///
    /// # Errors
    /// Never fails; a session that had already ended returns its reason.
    pub async fn drain(&self, grace: std::time::Duration) -> CloseReason {
        if self.mailbox.send(ControlMsg::Drain { grace }).await.is_err() {
            return self.closed().await;
        }
        self.closed().await
    }

    /// Resolves when the session has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches the session, so it may be used in
    /// `tokio::select!`.
    ///
    /// # Errors
    /// Never fails: it resolves with the close reason
    /// ([`CloseReason::Shutdown`] if the session went without recording one).
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone().unwrap_or(CloseReason::Shutdown);
            }
        }
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.borrow().clone()
    }

    /// The current attachment's generation: 1 after the handshake, +1 each
    /// time a replacement conduit is bound (rule `session.resume`).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Resolves once an attachment newer than `generation` is bound, with
    /// its generation; fails if the session ends first.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches the session, so it may be used in
    /// `tokio::select!`.
    ///
    /// # Errors
    /// [`SessionError::Closed`] with the close reason if the session ends (or
    /// had ended) before a newer attachment is bound.
    pub async fn attached_after(&self, generation: u64) -> Result<u64, SessionError> {
        let mut rx = self.generation.clone();
        loop {
            let g = *rx.borrow_and_update();
            if g > generation {
                return Ok(g);
            }
            if let Some(r) = self.close_reason() {
                return Err(SessionError::Closed(r));
            }
            if rx.changed().await.is_err() {
                return Err(self.ended());
            }
        }
    }

    /// A new operation id for a logical call (rule `retry.op-id`): unique in
    /// this session and increasing, as the peer's operation table expects.
    /// Every attempt of the call carries the same id
    /// ([`write_op_id`](crate::plumbing::operations::write_op_id)).
    pub fn next_op_id(&self) -> crate::plumbing::operations::OpId {
        crate::plumbing::operations::OpId(self.op_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }

    /// The most requests ever waiting in the control mailbox's bounded queue.
    pub fn mailbox_high_water(&self) -> usize {
        self.mailbox.queue_high_water()
    }

    /// The control mailbox's capacity.
    pub fn mailbox_capacity(&self) -> usize {
        self.mailbox.queue_capacity()
    }
}

/// Keeps a connection alive while any [`Caller`] of it exists (rule
/// `rpc.caller.liveness`); its drop posts to the mailbox's reserved lane.
pub(crate) struct LiveToken {
    mailbox: MailboxTx,
    request: DropRequest,
}

impl LiveToken {
    pub(crate) fn new(mailbox: MailboxTx, id: ConnectionId) -> Arc<LiveToken> {
        let request = if id.is_root() { DropRequest::RootDropped } else { DropRequest::ConnectionDropped(id) };
        Arc::new(LiveToken { mailbox, request })
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.mailbox.post(self.request);
    }
}

/// Makes calls on one connection; cheap to clone. When the last caller of a
/// virtual connection is dropped, the connection is closed.
///
/// A caller may carry defaults for every call made through it: a timeout
/// ([`with_timeout`](Self::with_timeout)) and metadata
/// ([`with_metadata`](Self::with_metadata)). A typed client built from such a
/// caller uses them for each of its calls.
#[derive(Clone)]
pub struct Caller {
    pub(crate) core: CoreRef,
    pub(crate) _live: Arc<LiveToken>,
    defaults: Arc<CallDefaults>,
    /// The session, for a root caller: its calls survive a resume, so typed
    /// clients retry through it (operation ids, the next attachment).
    session: Option<Arc<SessionHandle>>,
    /// What this side learnt about the peer's method schemas on this
    /// connection (rule `schema.identity`); shared by every clone.
    schemas: Arc<crate::schema::SchemaCache>,
}

/// What a [`Caller`] adds to each call.
#[derive(Clone, Debug)]
struct CallDefaults {
    timeout: Option<std::time::Duration>,
    metadata: Metadata,
    retry: RetryPolicy,
}

impl Default for CallDefaults {
    fn default() -> Self {
        CallDefaults { timeout: None, metadata: Metadata::new(), retry: RetryPolicy::default() }
    }
}

/// How generated clients retry a call whose attempt failed in the
/// environment (the connection or session broke: rule
/// `retry.layers.no-silent-retry` keeps lower layers from doing it).
///
/// They retry only where it is safe, across a session resume: an
/// `#[vox(idem)]` method is simply called again; any other method carries
/// an operation id (rule `retry.op-id`), so the peer's operation table
/// attaches a retry to the execution or replays its outcome, and answers
/// `Indeterminate` rather than run it twice. Calls with channels are never
/// retried (their channel ends are gone with the attempt), nor calls on
/// virtual connections (they end with their attachment). Each retry is
/// logged at debug level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 turns retrying off
    /// (default 3).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3 }
    }
}

impl RetryPolicy {
    /// No retries.
    pub const NEVER: RetryPolicy = RetryPolicy { max_attempts: 1 };
}

/// Which driver core a caller uses. A virtual connection's core lives and
/// dies with its attachment. The root connection survives a resume (rule
/// `session.resume`), so its callers go through a slot the run loop points at
/// the current attachment's root core.
#[derive(Clone)]
pub(crate) enum CoreRef {
    Fixed(Arc<ConnectionCore>),
    Root(Arc<RootSlot>),
}

/// The current attachment's root core.
pub(crate) struct RootSlot(crate::sync::Mutex<Arc<ConnectionCore>>);

impl RootSlot {
    pub(crate) fn new(core: Arc<ConnectionCore>) -> Arc<RootSlot> {
        Arc::new(RootSlot(crate::sync::Mutex::new(core)))
    }

    pub(crate) fn set(&self, core: Arc<ConnectionCore>) {
        *self.0.lock() = core;
    }
}

impl CoreRef {
    fn get(&self) -> Arc<ConnectionCore> {
        match self {
            CoreRef::Fixed(c) => c.clone(),
            CoreRef::Root(slot) => slot.0.lock().clone(),
        }
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("connection", &self.core.get().id()).finish()
    }
}

/// A successful raw response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The serialized return value.
    pub ret: Bytes,
    /// Response metadata.
    pub metadata: Metadata,
}

impl Caller {
    pub(crate) fn new(core: CoreRef, live: Arc<LiveToken>) -> Caller {
        Caller { core, _live: live, defaults: Arc::default(), session: None, schemas: Arc::default() }
    }

    /// The connection's schema cache.
    pub(crate) fn schema_cache(&self) -> &crate::schema::SchemaCache {
        &self.schemas
    }

    pub(crate) fn in_session(mut self, session: SessionHandle) -> Caller {
        self.session = Some(Arc::new(session));
        self
    }

    /// The session, for a caller of the root connection (whose calls can
    /// outlive a conduit).
    pub fn session(&self) -> Option<&SessionHandle> {
        self.session.as_deref()
    }

    /// This caller with `policy` for the retries of generated clients
    /// (see [`RetryPolicy`]).
    pub fn with_retry(&self, policy: RetryPolicy) -> Caller {
        let mut defaults = (*self.defaults).clone();
        defaults.retry = policy;
        Caller { defaults: Arc::new(defaults), ..self.clone() }
    }

    /// The retry policy of generated clients built from this caller.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.defaults.retry
    }

    /// This caller with a deadline of `timeout` for every call (rule
    /// `rpc.deadline`): at the deadline the call fails with
    /// [`CallError::DeadlineExceeded`] and is cancelled, and the handler
    /// side stops the handler. A call made while handling a request keeps
    /// the request's remaining time if that is shorter.
    ///
    /// ```no_run
    /// # async fn demo(caller: vox_core::session::Caller) -> Result<(), vox_core::driver::CallError> {
    /// use std::time::Duration;
    /// use vox_core::wire::MethodId;
    /// let quick = caller.with_timeout(Duration::from_secs(2));
    /// let echoed: String = quick.call(MethodId::from_names("Testbed", "echo"), &"hi", vec![]).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Caller {
        let mut defaults = (*self.defaults).clone();
        defaults.timeout = Some(timeout);
        Caller { defaults: Arc::new(defaults), ..self.clone() }
    }

    /// This caller with `metadata` added to every call's metadata (after the
    /// call's own entries). Typed clients built from it send it too.
    pub fn with_metadata(&self, metadata: Metadata) -> Caller {
        let mut defaults = (*self.defaults).clone();
        defaults.metadata.0.extend(metadata.0);
        Caller { defaults: Arc::new(defaults), ..self.clone() }
    }

    /// The connection this caller uses.
    pub fn connection_id(&self) -> ConnectionId {
        self.core.get().id()
    }

    /// Driver counters of the connection.
    pub fn stats(&self) -> CoreStats {
        self.core.get().stats()
    }

    /// Channel counters of the connection.
    pub fn channel_stats(&self) -> crate::driver::channel::ChannelStats {
        self.core.get().channel_stats()
    }

    /// Calls `method_id` with serialized `args` (a [`Bytes`], a `Vec<u8>`,
    /// or a [`Blob`] from [`wire::encode_payload`], whose large buffers are
    /// then sent without a copy) and the given channel ends.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the call (`CancelRequest`).
    ///
    /// # Errors
    /// The handler's own error ([`CallError::User`]), what the peer said
    /// instead of a value, [`CallError::DeadlineExceeded`] when the caller's
    /// timeout or the inherited deadline passed, or how the connection ended.
    pub async fn call_raw(
        &self,
        method_id: MethodId,
        args: impl Into<Blob>,
        channels: Vec<ChannelArg>,
        metadata: Metadata,
    ) -> Result<RawResponse, CallError> {
        crate::driver::metrics::observe_call(
            method_id,
            self.call_unobserved(method_id, args.into(), channels, metadata),
        )
        .await
    }

    async fn call_unobserved(
        &self,
        method_id: MethodId,
        args: Blob,
        channels: Vec<ChannelArg>,
        mut metadata: Metadata,
    ) -> Result<RawResponse, CallError> {
        use crate::driver::context;
        use tracing::Instrument;
        let core = self.core.get();
        let span = tracing::debug_span!("call", conn = %core.id(), method = %method_id, channels = channels.len());
        metadata.0.extend(self.defaults.metadata.0.iter().cloned());
        crate::driver::trace::inject(&span, &mut metadata);
        // rule: rpc.deadline — our own timeout, or the remaining time of the
        // request being handled, whichever ends first.
        let own = self.defaults.timeout.map(|t| tokio::time::Instant::now() + t);
        let deadline = context::earliest(own, context::inherited_deadline());
        let call = async {
            match deadline {
                None => core.call(method_id, args, &channels, metadata).await,
                Some(deadline) => {
                    if deadline <= tokio::time::Instant::now() {
                        return Err(CallError::DeadlineExceeded);
                    }
                    context::write_deadline(&mut metadata, deadline);
                    // At the deadline the call future is dropped, which
                    // sends CancelRequest.
                    match tokio::time::timeout_at(deadline, core.call(method_id, args, &channels, metadata)).await {
                        Ok(r) => r,
                        Err(_) => Err(CallError::DeadlineExceeded),
                    }
                }
            }
        };
        let (body, metadata) = call.instrument(span).await?;
        match body {
            ResponseBody::Ok(b) => Ok(RawResponse { ret: b.into_bytes(), metadata }),
            ResponseBody::User(b) => Err(CallError::User(b)),
            ResponseBody::UnknownMethod => Err(CallError::UnknownMethod { method: method_id.to_string() }),
            ResponseBody::InvalidPayload { reason } => Err(CallError::InvalidPayload(reason)),
            ResponseBody::Cancelled => Err(CallError::Cancelled),
            ResponseBody::Indeterminate => Err(CallError::Indeterminate),
            ResponseBody::HandlerFailed { reason } => Err(CallError::HandlerFailed(reason)),
            ResponseBody::Rejected { reason } => Err(CallError::Rejected(reason)),
            ResponseBody::DeadlineExceeded => Err(CallError::DeadlineExceeded),
            ResponseBody::IncompatibleSchema { method, path, field, reason } => {
                Err(CallError::IncompatibleSchema { method, path, field, reason })
            }
        }
    }

    /// Serializes `args`, calls, and decodes the return value.
    ///
    /// # Cancel safety
    /// As [`call_raw`](Self::call_raw): dropping the future cancels the call
    /// (`CancelRequest`).
    ///
    /// # Errors
    /// [`CallError::SendFailed`] if `args` cannot be encoded,
    /// [`CallError::InvalidResponse`] if the return value does not decode as
    /// `R`; otherwise as [`call_raw`](Self::call_raw).
    ///
    /// ```no_run
    /// # async fn demo(caller: vox_core::session::Caller) -> Result<(), vox_core::driver::CallError> {
    /// use vox_core::wire::MethodId;
    /// let echoed: String = caller.call(MethodId::from_names("Testbed", "echo"), &"hi", vec![]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method_id: MethodId,
        args: &A,
        channels: Vec<ChannelArg>,
    ) -> Result<R, CallError> {
        let args = wire::encode_payload("call arguments", args).map_err(|e| CallError::SendFailed(e.to_string()))?;
        let resp = self.call_raw(method_id, args, channels, Metadata::new()).await?;
        wire::decode::<R>("return value", &resp.ret).map_err(|e| CallError::InvalidResponse(e.to_string()))
    }
}

/// An open connection: its id and a caller.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    /// The connection id.
    pub id: ConnectionId,
    /// Makes calls on it.
    pub caller: Caller,
}
