//! Schemas and evolution (PROTOCOL.md section 11; the exchange is
//! `docs/spec/wire.md` section 9). The harness mirrors the schema messages
//! with its own serde types and hashes type schemas itself (`model.rs`), so
//! it can describe a Testbed of another version (`testbed.rs`).
//!
//! - `handler.rs`: the harness calls, the subject is the handler side.
//! - `caller.rs`: the subject calls through its generated client.

mod caller;
mod handler;
mod model;
mod testbed;

pub use caller::{
    schema_evolution_subject_translates_by_name, schema_incompatible_subject_call_fails_connection_stays_up,
    schema_incompatible_subject_unknown_variant_fails_that_call,
};
pub use handler::{
    schema_evolution_subject_translates_arguments_it_receives, schema_identity_subject_describes_its_methods,
    schema_incompatible_subject_refuses_arguments_it_cannot_translate,
};

use crate::error::CaseResult;
use crate::fail;
use model::{Hash, TypeSchema};
use std::collections::HashSet;
use vox_core::wire::MethodId;

/// `vox.schema.describe` (wire.md section 9).
fn describe_id() -> MethodId {
    MethodId::from_names("vox.schema", "describe")
}

/// The hashes of type schemas received from the subject, each checked:
/// every reference inside its table (else there is no hash), no type twice.
fn received_hashes(types: &[TypeSchema], what: &str) -> CaseResult<Vec<Hash>> {
    let mut out = Vec::with_capacity(types.len());
    let mut seen = HashSet::new();
    for t in types {
        let h = match t.hash() {
            Ok(h) => h,
            Err(e) => fail!("session.decode.bounded: a type schema of {what} is invalid: {e}: {t:?}"),
        };
        if !seen.insert(h) {
            fail!("schema.identity: {what} carries the type schema {t:?} twice");
        }
        out.push(h);
    }
    Ok(out)
}
