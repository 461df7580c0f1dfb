//! The retries of generated clients (see [`RetryPolicy`]): a call whose
//! attempt failed in the environment is made again once the session is
//! attached to a new conduit, where that is safe.

use super::MethodInfo;
use crate::driver::{CallError, ChannelArg};
use crate::plumbing::operations::write_op_id;
use crate::session::{Caller, RetryPolicy};
use crate::wire::{self, Blob, Metadata, MethodId};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One logical call of a generated client's method: attempts and retries
/// it as [`RetryPolicy`] and the method's policy allow.
pub(crate) async fn call<A: Serialize, R: DeserializeOwned>(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    args: &A,
    channels: Vec<ChannelArg>,
) -> Result<R, CallError> {
    let args = wire::encode_payload("call arguments", args).map_err(|e| CallError::SendFailed(e.to_string()))?;
    let ret = call_bytes(caller, info, method_id, args, channels).await?;
    wire::decode::<R>("return value", &ret).map_err(|e| named(info, CallError::InvalidResponse(e.to_string())))
}

/// As [`call`], with the arguments and the return value as bytes.
pub(crate) async fn call_bytes(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    args: Blob,
    channels: Vec<ChannelArg>,
) -> Result<Bytes, CallError> {
    crate::driver::metrics::name_method(method_id, info.service, info.name);
    let policy: RetryPolicy = caller.retry_policy();
    let session = match caller.session() {
        Some(s) if channels.is_empty() && policy.max_attempts > 1 => s.clone(),
        // Channels end with their attempt; virtual connections with their
        // attachment: one attempt only.
        _ => {
            return caller
                .call_raw(method_id, args, channels, Metadata::new())
                .await
                .map(|r| r.ret)
                .map_err(|e| named(info, e));
        }
    };
    // rule: retry.op-id — every attempt carries the same id, so the peer
    // never runs a non-idempotent call twice.
    let op = (!info.idem).then(|| session.next_op_id());
    let mut attempt = 1;
    loop {
        let generation = session.generation();
        // Each attempt's metadata is built afresh: cheaper than keeping one
        // to clone, since nearly every call has exactly one attempt.
        let mut metadata = Metadata::new();
        if let Some(op) = op {
            write_op_id(&mut metadata, op);
        }
        match caller.call_raw(method_id, args.clone(), Vec::new(), metadata).await {
            Ok(resp) => return Ok(resp.ret),
            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                tracing::debug!(
                    service = info.service,
                    method = info.name,
                    attempt,
                    error = %e,
                    "call failed in the environment; retrying once the session is attached again"
                );
                // A session that cannot resume ends instead: then the
                // attempt's error is the answer.
                if session.attached_after(generation).await.is_err() {
                    return Err(e);
                }
                attempt += 1;
            }
            Err(e) => return Err(named(info, e)),
        }
    }
}

/// Names the method in the errors whose text is about the call itself.
pub(crate) fn named(info: &MethodInfo, e: CallError) -> CallError {
    match e {
        CallError::InvalidResponse(r) => CallError::InvalidResponse(format!("{}.{}: {r}", info.service, info.name)),
        CallError::UnknownMethod { .. } => {
            CallError::UnknownMethod { method: format!("{}.{}", info.service, info.name) }
        }
        CallError::InvalidPayload(r) if !r.starts_with(info.service) => {
            CallError::InvalidPayload(format!("{}.{}: {r}", info.service, info.name))
        }
        e => e,
    }
}
