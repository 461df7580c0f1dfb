//! The schema exchange (rule `schema.identity`): before a method's first
//! call on a connection, the caller sends its signature of that method and
//! the type schemas the handler side lacks, and gets the handler side's in
//! return, with an ordinary request to the reserved method
//! `vox.schema.describe` (`docs/spec/wire.md` section 9).

use super::hash::SchemaHash;
use super::limits::{hashes_seq, types_seq};
use super::signature::{MethodSignature, TypeSchema};
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
/// to call, its signature, the schemas of the types it names that this
/// connection's handler side has not acknowledged yet, and the hashes of
/// the handler side's types the caller already holds (so the answer leaves
/// them out). Each type crosses a connection once (rule `schema.identity`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaQuery {
    /// The method asked about.
    pub method: MethodId,
    /// The caller's signature of the method.
    pub signature: MethodSignature,
    /// Type schemas of the caller's signature not sent before.
    #[serde(deserialize_with = "types_seq")]
    pub types: Vec<TypeSchema>,
    /// Hashes of the handler side's type schemas the caller holds.
    #[serde(deserialize_with = "hashes_seq")]
    pub held: Vec<SchemaHash>,
}

/// The return value of `vox.schema.describe`. A handler side that does not
/// serve the method answers `UnknownMethod` instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaAnswer {
    /// The handler's signature equals the caller's: nothing else happens.
    Same,
    /// The handler's signature differs: here it is, with the schemas of
    /// its types the caller neither holds nor named itself. The handler
    /// translates what it receives (arguments, caller-to-handler items),
    /// the caller what it receives (rule `schema.evolution`).
    Different {
        /// The handler's signature of the method.
        signature: MethodSignature,
        /// Type schemas the caller lacks.
        #[serde(deserialize_with = "types_seq")]
        types: Vec<TypeSchema>,
    },
}

impl SchemaQuery {
    /// Decodes a query received from a peer, within
    /// [`SchemaLimits`](super::SchemaLimits).
    ///
    /// # Errors
    /// Malformed bytes or a limit exceeded, said in words.
    pub fn decode(bytes: &[u8]) -> Result<SchemaQuery, String> {
        bounded_decode("schema query", bytes)
    }
}

impl SchemaAnswer {
    /// Decodes an answer received from a peer, within
    /// [`SchemaLimits`](super::SchemaLimits).
    ///
    /// # Errors
    /// Malformed bytes or a limit exceeded, said in words.
    pub fn decode(bytes: &[u8]) -> Result<SchemaAnswer, String> {
        bounded_decode("schema answer", bytes)
    }
}

/// Decodes `bytes` and reports the schema limit a failure broke, if one
/// did (postcard keeps only "deserialization error" of a custom error).
fn bounded_decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, String> {
    let _ = super::limits::take_hit();
    wire::decode_slice::<T>(what, bytes).map_err(|e| super::limits::take_hit().unwrap_or_else(|| e.to_string()))
}
