//! The pool as a `tower::Service` ([`PoolService`]).

use super::{Pool, PoolError};
use crate::service::Client;

/// The client, answer and error types a [`PoolService`] is for.
type Answers<C, T, E> = std::marker::PhantomData<fn() -> (C, T, E)>;

/// A [`Pool`] as a `tower::Service` of [`TypedCall`](crate::service::tower::TypedCall)s,
/// so that tower's layers (timeout, concurrency limit...) stack over the
/// pool: an idempotent service retries on another endpoint as
/// [`Pool::call_idem`] does, the other makes each call once as
/// [`Pool::call_once`] does. Always ready: a call waits for an endpoint.
///
/// ```no_run
/// # #[vox_core::service] pub trait Calculator { #[vox(idem)] async fn add(&self, a: i64, b: i64) -> i64; }
/// # async fn demo(pool: vox_core::service::balance::Pool) -> Result<(), tower::BoxError> {
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
/// use vox_core::driver::CallError;
/// use vox_core::service::tower::TypedCall;
/// let svc = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .service(pool.idem_service::<CalculatorClient, i64, CallError>());
/// let sum = svc.oneshot(TypedCall::new(|c: CalculatorClient| async move { c.add(2, 3).await })).await?;
/// # Ok(()) }
/// ```
pub struct PoolService<C, T, E> {
    pool: Pool,
    idem: bool,
    answers: Answers<C, T, E>,
}

impl<C, T, E> Clone for PoolService<C, T, E> {
    fn clone(&self) -> Self {
        PoolService { pool: self.pool.clone(), idem: self.idem, answers: std::marker::PhantomData }
    }
}

impl<C, T, E> std::fmt::Debug for PoolService<C, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolService").field("idem", &self.idem).finish_non_exhaustive()
    }
}

impl Pool {
    /// This pool as a service of calls to `#[vox(idem)]` methods (retried
    /// on another endpoint; see [`call_idem`](Self::call_idem)).
    pub fn idem_service<C, T, E>(&self) -> PoolService<C, T, E> {
        PoolService { pool: self.clone(), idem: true, answers: std::marker::PhantomData }
    }

    /// This pool as a service of calls made once each (see
    /// [`call_once`](Self::call_once)).
    pub fn once_service<C, T, E>(&self) -> PoolService<C, T, E> {
        PoolService { pool: self.clone(), idem: false, answers: std::marker::PhantomData }
    }
}

impl<C, T, E> ::tower::Service<crate::service::tower::TypedCall<C, T, E>> for PoolService<C, T, E>
where
    C: Client,
    T: Send + 'static,
    E: PoolError + Send + 'static,
{
    type Response = T;
    type Error = E;
    type Future = crate::service::tower::ResponseFuture<T, E>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: crate::service::tower::TypedCall<C, T, E>) -> Self::Future {
        let (pool, idem) = (self.pool.clone(), self.idem);
        Box::pin(async move {
            if idem {
                pool.call_idem(|c: C| request.call_with(c)).await
            } else {
                pool.call_once(|c: C| request.call_with(c)).await
            }
        })
    }
}
