//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): whatever recorder the program installs (Prometheus, StatsD,
//! a test's own) receives them. Without the feature, every hook is an
//! identity function the compiler removes.
//!
//! | Name | Kind | Labels | What |
//! |---|---|---|---|
//! | [`CALLS_STARTED`] | counter | `method` | calls made through a `Caller` (typed clients included) |
//! | [`CALLS_FINISHED`] | counter | `method`, `outcome` | those calls ended: `ok`, the `CallError` kind (`deadline_exceeded`, `connection_closed`...), or `dropped` when the caller stopped waiting |
//! | [`CALL_DURATION`] | histogram (seconds) | `method`, `outcome` | from the call to its end |
//! | [`REQUESTS_RECEIVED`] | counter | `method` | requests that arrived for this side's handlers |
//! | [`REQUESTS_ANSWERED`] | counter | `outcome` | responses this side sent: `ok`, `user_error`, `rejected`, `deadline_exceeded`... (the `ResponseBody` kind) |
//! | [`CHANNEL_ITEMS`] | counter | `direction` (`sent`, `received`) | items through `Tx`/`Rx` |
//! | [`CREDIT_STALLS`] | counter | | sends that had to wait for credit |
//! | [`CREDIT_STALL_DURATION`] | histogram (seconds) | | how long they waited |
//! | [`VIOLATIONS`] | counter | `kind` | protocol violations by the peer: the rule (`rpc.response.one-per-request`) or the channel violation (`UnknownChannel`) |
//! | [`SESSIONS_STARTED`] | counter | | sessions established |
//! | [`SESSIONS_ENDED`] | counter | `reason` | sessions ended, by close reason (`PeerClosed`, `KeepaliveTimeout`...) |
//! | [`SESSIONS_ACTIVE`] | gauge | | sessions running |
//! | [`SESSION_RESUMES`] | counter | | replacement conduits bound to a session (rule `session.resume`) |
//!
//! `method` is `Service.method` for the methods of generated clients and
//! served dispatchers, the method id otherwise.

#[cfg(feature = "metrics")]
use crate::driver::CallError;
use crate::wire::MethodId;
use std::future::Future;

/// Counter: calls started, by `method`.
pub const CALLS_STARTED: &str = "vox_calls_started_total";
/// Counter: calls finished, by `method` and `outcome`.
pub const CALLS_FINISHED: &str = "vox_calls_finished_total";
/// Histogram: call latency in seconds, by `method` and `outcome`.
pub const CALL_DURATION: &str = "vox_call_duration_seconds";
/// Counter: requests received for this side's handlers, by `method`.
pub const REQUESTS_RECEIVED: &str = "vox_requests_received_total";
/// Counter: responses sent by this side, by `outcome`.
pub const REQUESTS_ANSWERED: &str = "vox_requests_answered_total";
/// Counter: channel items, by `direction` (`sent`, `received`).
pub const CHANNEL_ITEMS: &str = "vox_channel_items_total";
/// Counter: sends that waited for credit.
pub const CREDIT_STALLS: &str = "vox_channel_credit_stalls_total";
/// Histogram: seconds a send waited for credit.
pub const CREDIT_STALL_DURATION: &str = "vox_channel_credit_stall_seconds";
/// Counter: protocol violations by the peer, by `kind`.
pub const VIOLATIONS: &str = "vox_violations_total";
/// Counter: sessions established.
pub const SESSIONS_STARTED: &str = "vox_sessions_started_total";
/// Counter: sessions ended, by `reason`.
pub const SESSIONS_ENDED: &str = "vox_sessions_ended_total";
/// Gauge: sessions running.
pub const SESSIONS_ACTIVE: &str = "vox_sessions_active";
/// Counter: session resumes (replacement conduits bound).
pub const SESSION_RESUMES: &str = "vox_session_resumes_total";

/// The `direction` label of an item sent.
#[cfg(feature = "metrics")]
const SENT: &str = "sent";
/// The `direction` label of an item received.
#[cfg(feature = "metrics")]
const RECEIVED: &str = "received";

/// The variant name of a value's `Debug` form (`KeepaliveTimeout` from
/// `KeepaliveTimeout`, `LinkError` from `LinkError("..")`): a bounded label.
#[cfg(feature = "metrics")]
fn variant(value: &dyn std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    text[..end].to_string()
}

#[cfg(feature = "metrics")]
static NAMES: std::sync::LazyLock<parking_lot::RwLock<std::collections::HashMap<MethodId, String>>> =
    std::sync::LazyLock::new(Default::default);

/// Names `id` as `service.method` in the `method` label.
#[cfg(feature = "metrics")]
pub(crate) fn name_method(id: MethodId, service: &str, method: &str) {
    if !NAMES.read().contains_key(&id) {
        NAMES.write().insert(id, format!("{service}.{method}"));
    }
}

/// Names `id` as `service.method` in the `method` label.
#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn name_method(_id: MethodId, _service: &str, _method: &str) {}

#[cfg(feature = "metrics")]
fn method_label(id: MethodId) -> String {
    NAMES.read().get(&id).cloned().unwrap_or_else(|| id.to_string())
}

#[cfg(feature = "metrics")]
fn outcome<R>(r: &Result<R, CallError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(CallError::User(_)) => "user_error",
        Err(CallError::UnknownMethod { .. }) => "unknown_method",
        Err(CallError::InvalidPayload(_)) => "invalid_payload",
        Err(CallError::Cancelled) => "cancelled",
        Err(CallError::Indeterminate) => "indeterminate",
        Err(CallError::HandlerFailed(_)) => "handler_failed",
        Err(CallError::Rejected(_)) => "rejected",
        Err(CallError::DeadlineExceeded) => "deadline_exceeded",
        Err(CallError::ConnectionClosed) => "connection_closed",
        Err(CallError::SessionShutdown) => "session_shutdown",
        Err(CallError::SendFailed(_)) => "send_failed",
        Err(CallError::ProtocolError { .. }) => "protocol_error",
        Err(CallError::InvalidResponse(_)) => "invalid_response",
        Err(CallError::IncompatibleSchema { .. }) => "incompatible_schema",
    }
}

/// Records a call that ends without an outcome (its future was dropped).
#[cfg(feature = "metrics")]
struct CallTimer {
    method: String,
    start: std::time::Instant,
    done: bool,
}

#[cfg(feature = "metrics")]
impl CallTimer {
    fn finish(&mut self, outcome: &'static str) {
        self.done = true;
        let method = std::mem::take(&mut self.method);
        metrics::counter!(CALLS_FINISHED, "method" => method.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(CALL_DURATION, "method" => method, "outcome" => outcome)
            .record(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(feature = "metrics")]
impl Drop for CallTimer {
    fn drop(&mut self) {
        if !self.done {
            self.finish("dropped");
        }
    }
}

/// Counts a call of `id` and its end (see the table above).
#[cfg(feature = "metrics")]
pub(crate) async fn observe_call<R, F: Future<Output = Result<R, CallError>>>(id: MethodId, call: F) -> F::Output {
    let method = method_label(id);
    metrics::counter!(CALLS_STARTED, "method" => method.clone()).increment(1);
    let mut timer = CallTimer { method, start: std::time::Instant::now(), done: false };
    let r = call.await;
    timer.finish(outcome(&r));
    r
}

/// Counts a call of `id` and its end (see the table above).
#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn observe_call<F: Future>(_id: MethodId, call: F) -> F {
    call
}

/// Counts a request that arrived for a handler.
#[inline(always)]
pub(crate) fn request_received(id: MethodId) {
    #[cfg(feature = "metrics")]
    metrics::counter!(REQUESTS_RECEIVED, "method" => method_label(id)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = id;
}

/// Counts a response sent, by its kind.
#[inline(always)]
pub(crate) fn request_answered(body: &crate::wire::ResponseBody) {
    #[cfg(feature = "metrics")]
    {
        use crate::wire::ResponseBody as B;
        let outcome = match body {
            B::Ok(_) => "ok",
            B::User(_) => "user_error",
            B::UnknownMethod => "unknown_method",
            B::InvalidPayload { .. } => "invalid_payload",
            B::Cancelled => "cancelled",
            B::Indeterminate => "indeterminate",
            B::HandlerFailed { .. } => "handler_failed",
            B::Rejected { .. } => "rejected",
            B::DeadlineExceeded => "deadline_exceeded",
            B::IncompatibleSchema { .. } => "incompatible_schema",
        };
        metrics::counter!(REQUESTS_ANSWERED, "outcome" => outcome).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = body;
}

/// Counts one channel item sent through a `Tx`.
#[inline(always)]
pub(crate) fn item_sent() {
    #[cfg(feature = "metrics")]
    metrics::counter!(CHANNEL_ITEMS, "direction" => SENT).increment(1);
}

/// Counts one channel item received through an `Rx`.
#[inline(always)]
pub(crate) fn item_received() {
    #[cfg(feature = "metrics")]
    metrics::counter!(CHANNEL_ITEMS, "direction" => RECEIVED).increment(1);
}

/// Waits for credit as `wait` does, counting a stall when it cannot go at once.
#[cfg(feature = "metrics")]
pub(crate) async fn credit_wait<F: Future>(wait: F) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    let mut stalled: Option<std::time::Instant> = None;
    let out = std::future::poll_fn(|cx| match wait.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(v),
        std::task::Poll::Pending => {
            if stalled.is_none() {
                stalled = Some(std::time::Instant::now());
                metrics::counter!(CREDIT_STALLS).increment(1);
            }
            std::task::Poll::Pending
        }
    })
    .await;
    if let Some(at) = stalled {
        metrics::histogram!(CREDIT_STALL_DURATION).record(at.elapsed().as_secs_f64());
    }
    out
}

/// Waits for credit as `wait` does, counting a stall when it cannot go at once.
#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn credit_wait<F: Future>(wait: F) -> F {
    wait
}

/// Counts a protocol violation by the peer, labelled with the rule broken
/// or the channel violation's kind, passing it through.
#[inline(always)]
pub(crate) fn violation(v: crate::driver::Violation) -> crate::driver::Violation {
    #[cfg(feature = "metrics")]
    {
        let kind = match &v {
            crate::driver::Violation::Request { rule, .. } => rule.to_string(),
            crate::driver::Violation::Channel { source, .. } => variant(&source.kind),
        };
        metrics::counter!(VIOLATIONS, "kind" => kind).increment(1);
    }
    v
}

/// Counts a session's start, its resumes and its end, watching its close
/// reason and generation (a task per session, with the feature only).
#[cfg(feature = "metrics")]
pub(crate) fn watch_session<R: std::fmt::Debug + Send + Sync + 'static>(
    mut closed: tokio::sync::watch::Receiver<Option<R>>,
    mut generation: tokio::sync::watch::Receiver<u64>,
) {
    metrics::counter!(SESSIONS_STARTED).increment(1);
    metrics::gauge!(SESSIONS_ACTIVE).increment(1.0);
    tokio::spawn(async move {
        let mut seen = *generation.borrow_and_update();
        let mut generation_open = true;
        loop {
            if let Some(reason) = &*closed.borrow_and_update() {
                metrics::counter!(SESSIONS_ENDED, "reason" => variant(reason)).increment(1);
                break;
            }
            tokio::select! {
                c = closed.changed() => if c.is_err() {
                    let reason = closed.borrow().as_ref().map_or_else(|| "Shutdown".to_string(), |r| variant(r));
                    metrics::counter!(SESSIONS_ENDED, "reason" => reason).increment(1);
                    break;
                },
                g = generation.changed(), if generation_open => match g {
                    Ok(()) => {
                        let now = *generation.borrow_and_update();
                        metrics::counter!(SESSION_RESUMES).increment(now.saturating_sub(seen));
                        seen = now;
                    }
                    Err(_) => generation_open = false,
                },
            }
        }
        metrics::gauge!(SESSIONS_ACTIVE).decrement(1.0);
    });
}

/// Counts a session's start, its resumes and its end, watching its close
/// reason and generation (a task per session, with the feature only).
#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn watch_session<R>(
    _closed: tokio::sync::watch::Receiver<Option<R>>,
    _generation: tokio::sync::watch::Receiver<u64>,
) {
}
