//! The schema exchange (rule `schema.identity`): before a method's first
//! call on a connection, the caller asks the handler side for its schema
//! of that method with an ordinary request to the reserved method
//! `vox.schema.describe` (`docs/spec/wire.md` section 9).

use super::hash::SchemaHash;
use super::method::MethodSchema;
use crate::wire::{self, MethodId};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// The service name of the schema exchange. It contains a dot, which no
/// Rust identifier kebabs to, so no service method can have its id.
pub const SCHEMA_SERVICE_NAME: &str = "vox.schema";
/// The method name of the schema exchange.
pub const SCHEMA_METHOD_NAME: &str = "describe";

static SCHEMA_METHOD: LazyLock<MethodId> =
    LazyLock::new(|| MethodId::from_names(SCHEMA_SERVICE_NAME, SCHEMA_METHOD_NAME));

/// The id of `vox.schema.describe`.
pub fn schema_method_id() -> MethodId {
    *SCHEMA_METHOD
}

/// The arguments of `vox.schema.describe`: the method the caller is about
/// to call and the caller's hash of its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaQuery {
    /// The method asked about.
    pub method: MethodId,
    /// The caller's [`MethodSchema::hash`].
    pub hash: SchemaHash,
}

/// The return value of `vox.schema.describe`. A handler side that does not
/// serve the method answers `UnknownMethod` instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaAnswer {
    /// The handler's hash equals the caller's: nothing else happens.
    Same,
    /// The handler's schema of the method, which differs.
    Different(MethodSchema),
}

impl SchemaAnswer {
    /// The answer to `query` of a handler whose schema of the method is
    /// `local`.
    pub fn to(query: &SchemaQuery, local: &MethodSchema) -> SchemaAnswer {
        if local.hash() == query.hash { SchemaAnswer::Same } else { SchemaAnswer::Different(local.clone()) }
    }

    /// Decodes an answer received from a peer, within
    /// [`SchemaLimits`](super::SchemaLimits), and checks every reference
    /// of a received schema.
    ///
    /// # Errors
    /// Malformed bytes, a limit exceeded, or a dangling reference.
    pub fn decode(bytes: &[u8]) -> Result<SchemaAnswer, String> {
        let _ = super::limits::take_hit();
        let decoded = wire::decode_slice::<SchemaAnswer>("schema answer", bytes)
            .map_err(|e| super::limits::take_hit().unwrap_or_else(|| e.to_string()))?;
        match decoded {
            SchemaAnswer::Same => Ok(SchemaAnswer::Same),
            SchemaAnswer::Different(m) => Ok(SchemaAnswer::Different(m.validated()?)),
        }
    }
}
