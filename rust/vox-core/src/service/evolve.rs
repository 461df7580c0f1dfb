//! Schema evolution on the call path of generated clients (rules
//! `schema.identity`, `schema.evolution`, `schema.incompatible`; ADR 0008).
//!
//! Before a method's first call on a connection the two sides exchange
//! their schemas of it (`vox.schema.describe`): signatures once per
//! connection and method, type schemas once per connection and type.
//! Matching signatures keep the plain postcard path; differing ones get
//! plans, and each side translates what it receives: the handler side the
//! arguments and caller-to-handler items, the caller the return value, the
//! error and handler-to-caller items.

use super::MethodInfo;
use super::retry::{call_bytes, named};
use crate::driver::{Call, CallError, CallSchema, ChannelArg, ReplySink};
use crate::schema::{Inbound, MethodSchema, SchemaAnswer, SchemaError, SchemaQuery, Translation, schema_method_id};
use crate::session::Caller;
use crate::wire::{self, Metadata, MethodId};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Exchanges schemas of `method_id` with the handler side: sends the
/// caller's signature with the type schemas not sent yet on this
/// connection, and gets the handler side's. One exchange at a time per
/// connection, so a type crosses once. A peer that does not know the query
/// or the method answers `UnknownMethod`: no schema information, the plain
/// path (the call itself then reports what the peer says). Other failures
/// are the call's and are not remembered.
async fn query(
    caller: &Caller,
    info: &MethodInfo,
    method_id: MethodId,
    local: &MethodSchema,
) -> Result<Translation, CallError> {
    let mut exchange = caller.schema_cache().exchange().await;
    let q = exchange.query(method_id, local);
    let args = Bytes::from(wire::encode("schema query", &q).map_err(|e| CallError::SendFailed(e.to_string()))?);
    let answer = match query_attempts(caller, info, args).await {
        Ok(ret) => ret,
        Err(CallError::UnknownMethod { .. }) => return Ok(Translation::Same),
        Err(e) => return Err(named(info, e)),
    };
    let name = format!("{}.{}", info.service, info.name);
    let t = match SchemaAnswer::decode(&answer) {
        Ok(a) => exchange.on_answer(local, &name, a),
        Err(reason) => Translation::Incompatible(SchemaError {
            path: "schema answer".into(),
            field: String::new(),
            reason: format!("the peer's schema answer is invalid: {reason}"),
        }),
    };
    match &t {
        Translation::Same => {}
        Translation::Translate(_) => {
            tracing::debug!(service = info.service, method = info.name, "peer schema differs; answers are translated")
        }
        Translation::Incompatible(e) => {
            tracing::warn!(service = info.service, method = info.name, error = %e, "peer schema is incompatible")
        }
    }
    Ok(t)
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

/// One call of a generated client's method, with schema evolution. The
/// arguments and caller-to-handler items go in the caller's layout (the
/// handler side translates them); what comes back is translated here (rule
/// `schema.evolution`: the receiver translates).
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
    for (i, arg) in channels.iter().enumerate() {
        if let Some(plan) = plans.received_items(i) {
            arg.translate_items(plan.clone(), format!("{}.{}", info.service, info.name))
                .map_err(|e| CallError::SendFailed(e.to_string()))?;
        }
    }
    let args = wire::encode_payload("call arguments", args).map_err(|e| CallError::SendFailed(e.to_string()))?;
    let ret = match call_bytes(caller, info, method_id, args, channels).await {
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
/// `ids`, `infos` and `schemas` (in the same order): `Same`, or its
/// signature and the type schemas the caller lacks, or `UnknownMethod`
/// for a method it does not have. The connection's handler side keeps the
/// caller's types and the plan for its requests.
pub(crate) fn answer(call: Call, ids: &[MethodId], infos: &[MethodInfo], schemas: &[MethodSchema]) {
    let q = match SchemaQuery::decode(&call.args) {
        Ok(q) => q,
        Err(e) => return call.reply.invalid_payload(format!("vox.schema.describe: {e}")),
    };
    let (Some(i), CallSchema::Exchange(state)) = (ids.iter().position(|id| *id == q.method), &call.schema) else {
        return call.reply.unknown_method();
    };
    let name = format!("{}.{}", infos[i].service, infos[i].name);
    match state.answer(q, &schemas[i], &name) {
        Ok(a) => call.reply.ok(&a),
        Err(e) => call.reply.invalid_payload(format!("vox.schema.describe: {e}")),
    }
}

/// Why a generated dispatcher could not take a request's arguments.
#[derive(Debug)]
pub enum ArgsError {
    /// They do not decode (rule `rpc.invalid-payload`).
    Decode(wire::DecodeError),
    /// They cannot be translated from the caller's schema (rule
    /// `schema.incompatible`).
    Incompatible(SchemaError),
}

/// The arguments of `call`, translated first if the caller's schema of the
/// method differs (rule `schema.evolution`: the receiver translates).
pub(crate) fn decode_args<A: DeserializeOwned>(call: &Call) -> Result<A, ArgsError> {
    match &call.schema {
        CallSchema::Inbound(Inbound::Translate(p)) => match &p.args {
            Some(plan) => {
                let bytes = plan.translate(&call.args).map_err(ArgsError::Incompatible)?;
                wire::decode_slice::<A>("call arguments", &bytes).map_err(ArgsError::Decode)
            }
            None => call.decode_args().map_err(ArgsError::Decode),
        },
        CallSchema::Inbound(Inbound::Incompatible(e)) => Err(ArgsError::Incompatible(e.clone())),
        _ => call.decode_args().map_err(ArgsError::Decode),
    }
}

/// Answers a request whose arguments [`decode_args`] refused.
pub(crate) fn args_failed(reply: ReplySink, info: &MethodInfo, e: ArgsError) {
    match e {
        ArgsError::Decode(e) => reply.invalid_payload(format!("{}.{}: {e}", info.service, info.name)),
        ArgsError::Incompatible(e) => reply.incompatible_schema(&format!("{}.{}", info.service, info.name), e),
    }
}

/// The method a call is routed by: its own, or for a schema query the
/// method asked about (rule `schema.identity`: the query goes to the
/// service owning that method).
pub(crate) fn routed_method(call: &Call) -> Result<MethodId, String> {
    if call.method_id != schema_method_id() {
        return Ok(call.method_id);
    }
    SchemaQuery::decode(&call.args).map(|q| q.method).map_err(|e| format!("vox.schema.describe: {e}"))
}
