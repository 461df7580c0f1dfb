//! tower integration (feature `tower`): vox calls as [`tower::Service`]s,
//! so that tower's layers (timeout, concurrency limit, load shedding,
//! retry, balance) stack over them, on both sides of a connection.
//!
//! - Client side: a [`Caller`] is a `Service<RawRequest>` answering
//!   [`RawResponse`]; a [`ClientService`] wraps a generated typed client as a
//!   service whose requests are [`TypedCall`]s (`TypedCall::new(|c| async
//!   move { c.add(1, 2).await })`), so each typed call goes through the stack.
//! - Server side: a [`HandlerService`] is any [`Handler`] (a generated
//!   dispatcher, a [`ServiceRouter`](super::ServiceRouter)) as a
//!   `Service<InboundRequest>` answering a [`Reply`]; a [`TowerHandler`]
//!   turns such a service, layers and all, back into a [`Handler`] for a
//!   session or a router.
//!
//! Dropping a client-side future (a `Timeout` firing) cancels the call with
//! `CancelRequest`, as dropping any call does. A server-side layer's error
//! becomes the one response: tower's `Elapsed` is `DeadlineExceeded`,
//! `Overloaded` is `Rejected` (nothing ran, so the caller may try elsewhere),
//! any other error `HandlerFailed` with its text.

use super::Client;
use crate::driver::{Call, CallError, ChannelArg, ChannelBinder, Handler, MethodPolicy, ReplySink};
use crate::session::{Caller, CloseReason, RawResponse};
use crate::wire::{self, Metadata, MethodId, ResponseBody};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The error type tower's layers use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed, sendable response future of the services in this module.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// One call through a [`Caller`] as a `tower::Service`: the method, its
/// serialized arguments, extra metadata and channel ends (as
/// [`Caller::call_raw`] takes them).
#[derive(Debug)]
pub struct RawRequest {
    /// Which method.
    pub method_id: MethodId,
    /// The arguments, postcard-encoded.
    pub args: Bytes,
    /// Metadata for this call (the caller's defaults are added after it).
    pub metadata: Metadata,
    /// Channel ends handed to the call, in argument order.
    pub channels: Vec<ChannelArg>,
}

impl RawRequest {
    /// A request with already encoded arguments, no metadata and no channels.
    pub fn new(method_id: MethodId, args: Bytes) -> RawRequest {
        RawRequest { method_id, args, metadata: Metadata::new(), channels: Vec::new() }
    }

    /// Encodes `args` into a request.
    ///
    /// # Errors
    /// [`CallError::SendFailed`] if `args` does not encode.
    pub fn encode<A: serde::Serialize>(method_id: MethodId, args: &A) -> Result<RawRequest, CallError> {
        let bytes = wire::encode("call arguments", args).map_err(|e| CallError::SendFailed(e.to_string()))?;
        Ok(RawRequest::new(method_id, Bytes::from(bytes)))
    }

    /// This request with `metadata` as its own metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> RawRequest {
        self.metadata = metadata;
        self
    }

    /// A copy for another attempt (what `tower::retry::Policy::clone_request`
    /// needs), or `None` for a request with channels: a channel end belongs
    /// to one attempt.
    pub fn try_clone(&self) -> Option<RawRequest> {
        self.channels.is_empty().then(|| RawRequest {
            method_id: self.method_id,
            args: self.args.clone(),
            metadata: self.metadata.clone(),
            channels: Vec::new(),
        })
    }
}

/// What a caller whose session has ended says before any call: the session
/// is gone for good, so the service is no longer ready (tower's balancers
/// drop a service that says so).
fn ended(reason: &CloseReason) -> CallError {
    match reason {
        CloseReason::Shutdown | CloseReason::RootReleased => CallError::SessionShutdown,
        _ => CallError::ConnectionClosed,
    }
}

fn readiness(caller: &Caller) -> Result<(), CallError> {
    match caller.session().and_then(|s| s.close_reason()) {
        Some(reason) => Err(ended(&reason)),
        None => Ok(()),
    }
}

/// A caller is a service: always ready while its session lives (vox
/// pipelines calls; the limits are the peer's and the layers' business),
/// and failing readiness with the session's end once it has ended. A
/// caller of a virtual connection has no session to watch: it stays ready,
/// and a call on a closed connection fails with `ConnectionClosed`.
impl ::tower::Service<RawRequest> for Caller {
    type Response = RawResponse;
    type Error = CallError;
    type Future = ResponseFuture<RawResponse, CallError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(readiness(self))
    }

    fn call(&mut self, req: RawRequest) -> Self::Future {
        let caller = self.clone();
        Box::pin(async move { caller.call_raw(req.method_id, req.args, req.channels, req.metadata).await })
    }
}

/// A generated typed client as a `tower::Service` whose requests are
/// [`TypedCall`]s answering `T` or failing with `E`: each makes one typed
/// call with the client it is given. One service has one answer type (so
/// that `ready()` knows its request type); clones of the client are cheap,
/// so make one service per answer type.
///
/// ```no_run
/// # #[vox_core::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
/// # async fn demo(calc: CalculatorClient) -> Result<(), vox_core::driver::CallError> {
/// use tower::{Service, ServiceExt};
/// use vox_core::service::tower::{ClientService, TypedCall};
/// let mut svc = ClientService::new(calc);
/// let add = TypedCall::new(|c: CalculatorClient| async move { c.add(2, 3).await });
/// assert_eq!(svc.ready().await?.call(add).await?, 5);
/// # Ok(()) }
/// ```
pub struct ClientService<C, T, E> {
    client: C,
    answers: std::marker::PhantomData<fn() -> (T, E)>,
}

impl<C: Clone, T, E> Clone for ClientService<C, T, E> {
    fn clone(&self) -> Self {
        ClientService { client: self.client.clone(), answers: std::marker::PhantomData }
    }
}

impl<C: std::fmt::Debug, T, E> std::fmt::Debug for ClientService<C, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService").field("client", &self.client).finish()
    }
}

impl<C: Client, T, E> ClientService<C, T, E> {
    /// Serves requests with `client`.
    pub fn new(client: C) -> ClientService<C, T, E> {
        ClientService { client, answers: std::marker::PhantomData }
    }

    /// The typed client.
    pub fn client(&self) -> &C {
        &self.client
    }
}

/// One typed call, as a request of a [`ClientService`]: a function that
/// makes the call with the client it is given, answering `T` or failing
/// with `E` (a generated method's own `CallError` or `ServiceError<U>`).
///
/// It is `Clone` (the function is shared), so retry layers can make it
/// again; each attempt calls the function anew.
pub struct TypedCall<C, T, E> {
    make: Arc<dyn Fn(C) -> ResponseFuture<T, E> + Send + Sync>,
}

impl<C, T, E> Clone for TypedCall<C, T, E> {
    fn clone(&self) -> Self {
        TypedCall { make: self.make.clone() }
    }
}

impl<C, T, E> std::fmt::Debug for TypedCall<C, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedCall").finish_non_exhaustive()
    }
}

impl<C, T, E> TypedCall<C, T, E> {
    /// The call `make` makes with a client.
    pub fn new<F, Fut>(make: F) -> TypedCall<C, T, E>
    where
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        TypedCall { make: Arc::new(move |c| Box::pin(make(c))) }
    }

    /// Makes the call with `client`.
    pub fn call_with(&self, client: C) -> ResponseFuture<T, E> {
        (self.make)(client)
    }
}

impl<C, T, E> ::tower::Service<TypedCall<C, T, E>> for ClientService<C, T, E>
where
    C: Client,
    E: From<CallError>,
{
    type Response = T;
    type Error = E;
    type Future = ResponseFuture<T, E>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(readiness(self.client.caller()).map_err(E::from))
    }

    fn call(&mut self, request: TypedCall<C, T, E>) -> Self::Future {
        request.call_with(self.client.clone())
    }
}

/// An inbound call as a server-side `tower::Service` request: the [`Call`]
/// without its reply sink (the answer is the service's [`Reply`]).
pub struct InboundRequest {
    /// Which method.
    pub method_id: MethodId,
    /// Serialized arguments (postcard).
    pub args: Bytes,
    /// Request metadata.
    pub metadata: Metadata,
    /// The channels announced by the request, in argument order.
    pub channels: ChannelBinder,
    /// What the schema exchange says about the request.
    pub(crate) schema: crate::driver::CallSchema,
}

impl std::fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRequest")
            .field("method_id", &self.method_id)
            .field("metadata", &self.metadata)
            .field("channels", &self.channels.len())
            .finish()
    }
}

/// A server-side service's answer to an [`InboundRequest`]: the response
/// body and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response.
    pub body: ResponseBody,
    /// Response metadata.
    pub metadata: Metadata,
}

/// A [`Handler`] as a server-side `tower::Service`: each request is handed
/// to the handler with a reply sink, and the service's future resolves with
/// the handler's one answer (`HandlerFailed` if it ended without one). A
/// handler that goes on working after it answered keeps running in a task
/// of its own, within the request's [`CallContext`](crate::driver::CallContext).
pub struct HandlerService<H: ?Sized> {
    handler: Arc<H>,
}

impl<H: ?Sized> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        HandlerService { handler: self.handler.clone() }
    }
}

impl<H: ?Sized> std::fmt::Debug for HandlerService<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<H: Handler> HandlerService<H> {
    /// Serves requests with `handler`.
    pub fn new(handler: H) -> HandlerService<H> {
        HandlerService { handler: Arc::new(handler) }
    }
}

impl<H: Handler + ?Sized> HandlerService<H> {
    /// Serves requests with a shared `handler`.
    pub fn from_arc(handler: Arc<H>) -> HandlerService<H> {
        HandlerService { handler }
    }
}

impl<H: Handler + ?Sized> ::tower::Service<InboundRequest> for HandlerService<H> {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<Reply, std::convert::Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: InboundRequest) -> Self::Future {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let call = Call {
            method_id: req.method_id,
            args: req.args,
            metadata: req.metadata,
            channels: req.channels,
            reply: ReplySink::new(tx),
            schema: req.schema,
        };
        let mut running = self.handler.handle(call);
        Box::pin(async move {
            let mut finished = false;
            let answer = tokio::select! {
                biased;
                r = &mut rx => r.ok(),
                () = &mut running => {
                    finished = true;
                    rx.await.ok()
                }
            };
            if !finished {
                // The handler answered and goes on (say, streaming on a
                // channel): it runs to its end, as the driver would run it.
                match crate::driver::CallContext::current() {
                    Some(ctx) => drop(tokio::spawn(ctx.scope(running))),
                    None => drop(tokio::spawn(running)),
                }
            }
            Ok(match answer {
                Some((body, metadata)) => Reply { body, metadata },
                None => Reply {
                    body: ResponseBody::HandlerFailed {
                        reason: "handler ended without replying (it dropped its reply sink)".to_string(),
                    },
                    metadata: Metadata::new(),
                },
            })
        })
    }
}

/// A server-side `tower::Service` (layers and all) as a [`Handler`].
///
/// Each call clones the service, waits for it to be ready, and answers with
/// its [`Reply`]; an error of the stack becomes the response: tower's
/// timeout `Elapsed` is `DeadlineExceeded`, load shedding's `Overloaded` is
/// `Rejected`, anything else `HandlerFailed`. Method policies
/// ([`Handler::policy`]) come from the handler given to
/// [`layered`](Self::layered), or from [`with_methods`](Self::with_methods).
///
/// ```no_run
/// # #[vox_core::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
/// # struct Calc;
/// # impl Calculator for Calc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
/// use std::time::Duration;
/// use vox_core::service::tower::TowerHandler;
/// let stack = tower::ServiceBuilder::new()
///     .timeout(Duration::from_secs(2))
///     .concurrency_limit(64);
/// let handler = TowerHandler::layered(CalculatorDispatcher::new(Calc), stack);
/// let builder = vox_core::session::SessionBuilder::new().handler(handler);
/// # drop(builder);
/// ```
pub struct TowerHandler<S> {
    service: S,
    policy: Option<Arc<dyn Handler>>,
    methods: &'static [super::MethodInfo],
}

impl<S: Clone> Clone for TowerHandler<S> {
    fn clone(&self) -> Self {
        TowerHandler { service: self.service.clone(), policy: self.policy.clone(), methods: self.methods }
    }
}

impl<S> std::fmt::Debug for TowerHandler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TowerHandler").field("methods", &self.methods.len()).finish_non_exhaustive()
    }
}

impl<S> TowerHandler<S> {
    /// Serves calls with `service`; every method has the default (volatile,
    /// non-idem) policy unless [`with_methods`](Self::with_methods) says
    /// otherwise.
    pub fn new(service: S) -> TowerHandler<S> {
        TowerHandler { service, policy: None, methods: &[] }
    }

    /// This handler with the policies of a generated `METHODS` table.
    pub fn with_methods(mut self, methods: &'static [super::MethodInfo]) -> TowerHandler<S> {
        self.methods = methods;
        self
    }
}

impl<S> TowerHandler<S> {
    /// Serves calls with `handler` under `layer`, keeping `handler`'s method
    /// policies.
    pub fn layered<H, L>(handler: H, layer: L) -> TowerHandler<L::Service>
    where
        H: Handler,
        L: ::tower::Layer<HandlerService<H>, Service = S>,
    {
        let handler = Arc::new(handler);
        let service = layer.layer(HandlerService::from_arc(handler.clone()));
        TowerHandler { service, policy: Some(handler), methods: &[] }
    }
}

/// The response for an error of a server-side stack.
pub fn error_body(error: BoxError) -> ResponseBody {
    if error.is::<::tower::timeout::error::Elapsed>() {
        ResponseBody::DeadlineExceeded
    } else if error.is::<::tower::load_shed::error::Overloaded>() {
        ResponseBody::Rejected { reason: format!("server overloaded: {error}") }
    } else {
        ResponseBody::HandlerFailed { reason: error.to_string() }
    }
}

impl<S> Handler for TowerHandler<S>
where
    S: ::tower::Service<InboundRequest, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn handle(&self, call: Call) -> crate::driver::BoxFuture {
        let mut service = self.service.clone();
        Box::pin(async move {
            let Call { method_id, args, metadata, channels, reply, schema } = call;
            let request = InboundRequest { method_id, args, metadata, channels, schema };
            let ready = std::future::poll_fn(|cx| service.poll_ready(cx).map_err(Into::into)).await;
            let result: Result<Reply, BoxError> = match ready {
                Ok(()) => service.call(request).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => reply.reply(r.body, r.metadata),
                Err(e) => reply.reply(error_body(e), Metadata::new()),
            }
        })
    }

    fn policy(&self, method: MethodId) -> MethodPolicy {
        if let Some(h) = &self.policy {
            return h.policy(method);
        }
        super::MethodInfo::find(self.methods, method)
            .map(|m| MethodPolicy { idem: m.idem, persist: m.persist })
            .unwrap_or_default()
    }
}
