//! Schema evolution on the call path of generated clients (rules
//! `schema.identity`, `schema.evolution`, `schema.incompatible`; ADR 0008).
//!
//! Before a method's first call on a connection the caller asks the handler
//! side for its schema (`vox.schema.describe`), once per connection and
//! method. Matching hashes keep the plain postcard path; differing ones get
//! a plan, and the caller translates both ways: arguments and
//! caller-to-handler items into the handler's layout, the return value,
//! the error and handler-to-caller items into its own.

use super::MethodInfo;
use super::retry::{call_bytes, named};
use crate::driver::{Call, CallError, ChannelArg};
use crate::schema::{MethodPlans, MethodSchema, SchemaAnswer, SchemaError, SchemaQuery, Translation, schema_method_id};
use crate::session::Caller;
use crate::wire::{self, Metadata, MethodId};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The `IncompatibleSchema` error of `info` for `e`.
pub(crate) fn incompatible(info: &MethodInfo, e: SchemaError) -> CallError {
    CallError::IncompatibleSchema {
        method: format!("{}.{}", info.service, info.name),
        path: e.path,
        field: e.field,
        reason: e.reason,
    }
}

/// What the caller knows about `method` on its connection, asking the peer
/// first if nothing is known yet (one query per connection and method;
/// concurrent first calls wait for it).
async fn translation(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    local: &MethodSchema,
) -> Result<Translation, CallError> {
    let cell = caller.schema_cache().entry(method_id);
    if let Some(t) = cell.get() {
        return Ok(t.clone());
    }
    cell.get_or_try_init(|| query(caller, info, method_id, local)).await.cloned()
}

/// Asks the handler side for its schema of `method_id`. A peer that does not
/// know the query or the method answers `UnknownMethod`: no schema
/// information, the plain path (the call itself then reports what the peer
/// says). Other failures are the call's and are not remembered.
async fn query(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    local: &MethodSchema,
) -> Result<Translation, CallError> {
    let q = SchemaQuery { method: method_id, hash: local.hash() };
    let args = Bytes::from(wire::encode("schema query", &q).map_err(|e| CallError::SendFailed(e.to_string()))?);
    let answer = query_attempts(caller, info, args).await;
    let answer = match answer {
        Ok(ret) => ret,
        Err(CallError::UnknownMethod { .. }) => return Ok(Translation::Same),
        Err(e) => return Err(named(info, e)),
    };
    Ok(match SchemaAnswer::decode(&answer) {
        Ok(SchemaAnswer::Same) => Translation::Same,
        Ok(SchemaAnswer::Different(remote)) => match MethodPlans::build(local, &remote) {
            Ok(plans) => {
                tracing::debug!(
                    service = info.service,
                    method = info.name,
                    "peer schema differs; calls are translated"
                );
                Translation::Translate(Arc::new(plans))
            }
            Err(e) => {
                tracing::warn!(service = info.service, method = info.name, error = %e, "peer schema is incompatible");
                Translation::Incompatible(e)
            }
        },
        Err(reason) => Translation::Incompatible(SchemaError {
            path: "schema answer".into(),
            field: String::new(),
            reason: format!("the peer's schema answer is invalid: {reason}"),
        }),
    })
}

/// Sends the query, and on a resumable session retries it like the call it
/// precedes would be (it changes nothing on the peer: always safe to
/// repeat) when the connection was lost and the session is attached again.
async fn query_attempts(caller: &Caller, info: &MethodInfo, args: Bytes) -> Result<Bytes, CallError> {
    let attempts = caller.retry_policy().max_attempts;
    let mut attempt = 1;
    loop {
        let generation = caller.session().map(|s| s.generation());
        match caller.call_raw(schema_method_id(), args.clone(), Vec::new(), Metadata::new()).await {
            Ok(resp) => return Ok(resp.ret),
            Err(e) if e.is_retryable() && attempt < attempts => {
                let (Some(session), Some(generation)) = (caller.session(), generation) else { return Err(e) };
                tracing::debug!(service = info.service, method = info.name, attempt, error = %e, "schema query failed; retrying");
                if session.attached_after(generation).await.is_err() {
                    return Err(e);
                }
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One call of a generated client's method, with schema evolution.
pub(crate) async fn call<A: Serialize, R: DeserializeOwned>(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    local: &MethodSchema,
    args: &A,
    channels: Vec<ChannelArg>,
) -> Result<R, CallError> {
    let plans = match translation(caller, info, method_id, local).await {
        Ok(Translation::Same) => return super::retry::call(caller, info, method_id, args, channels).await,
        Ok(Translation::Translate(plans)) => plans,
        Ok(Translation::Incompatible(e)) => return Err(fail_channels(&channels, incompatible(info, e))),
        Err(e) => return Err(fail_channels(&channels, e)),
    };
    let encoded = wire::encode("call arguments", args).map_err(|e| CallError::SendFailed(e.to_string()))?;
    // rule: schema.incompatible — a value the handler cannot take (a
    // variant it lacks) fails here, before anything is sent.
    let translated = match plans.args.translate(&encoded) {
        Ok(t) => t,
        Err(e) => return Err(fail_channels(&channels, incompatible(info, e))),
    };
    for (arg, plan) in channels.iter().zip(&plans.channels) {
        if plan.is_identity() {
            continue;
        }
        if let Err(e) = arg.translate_items(plan.clone(), format!("{}.{}", info.service, info.name)) {
            // An item kept before the call cannot cross.
            let e = match e {
                crate::driver::ChannelError::IncompatibleSchema { method, path, field, reason } => {
                    CallError::IncompatibleSchema { method, path, field, reason }
                }
                other => CallError::SendFailed(other.to_string()),
            };
            return Err(fail_channels(&channels, e));
        }
    }
    let ret = match call_bytes(caller, info, method_id, wire::Blob::from(translated), channels).await {
        Ok(ret) => ret,
        Err(CallError::User(blob)) => {
            let Some(plan) = &plans.err else { return Err(CallError::User(blob)) };
            let e = plan.translate(blob.bytes()).map_err(|e| incompatible(info, e))?;
            return Err(CallError::User(wire::Blob::new(Bytes::from(e))));
        }
        Err(e) => return Err(e),
    };
    let ret = plans.ret.translate(&ret).map_err(|e| incompatible(info, e))?;
    wire::decode_slice::<R>("return value", &ret).map_err(|e| named(info, CallError::InvalidResponse(e.to_string())))
}

/// Marks the kept ends of a call that is not sent as failed, and returns
/// the error.
fn fail_channels(channels: &[ChannelArg], e: CallError) -> CallError {
    for c in channels {
        c.fail(&e.to_string());
    }
    e
}

/// Answers a `vox.schema.describe` call for a service whose methods have
/// `ids` and `schemas` (in the same order): `Same`, its schema, or
/// `UnknownMethod` for a method it does not have.
pub(crate) fn answer(call: Call, ids: &[MethodId], schemas: &[MethodSchema]) {
    let q = match call.decode_args::<SchemaQuery>() {
        Ok(q) => q,
        Err(e) => return call.reply.invalid_payload(format!("vox.schema.describe: {e}")),
    };
    match ids.iter().position(|id| *id == q.method) {
        Some(i) => call.reply.ok(&SchemaAnswer::to(&q, &schemas[i])),
        None => call.reply.unknown_method(),
    }
}

/// The method a call is routed by: its own, or for a schema query the
/// method asked about (rule `schema.identity`: the query goes to the
/// service owning that method).
pub(crate) fn routed_method(call: &Call) -> Result<MethodId, String> {
    if call.method_id != schema_method_id() {
        return Ok(call.method_id);
    }
    call.decode_args::<SchemaQuery>().map(|q| q.method).map_err(|e| format!("vox.schema.describe: {e}"))
}
