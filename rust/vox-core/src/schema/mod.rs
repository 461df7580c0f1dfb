//! Schemas of the types a service uses, their stable hashes, and the plans
//! that translate postcard bytes between two versions of a type by field and
//! variant name (PROTOCOL.md section 11, ADR 0008).
//!
//! - [`Schema`] describes a type into a [`SchemaBuilder`]; derive it with
//!   [`macro@crate::Schema`]. vox-core implements it for primitives, strings,
//!   [`Bytes`](bytes::Bytes), `Option`, `Vec`, maps, sets, tuples and arrays.
//! - [`MethodSchema`] is what one method uses (arguments, return value,
//!   error, channel items); the `#[service]` macro builds one per method.
//! - [`SchemaHash`] is BLAKE3 over a canonical encoding (rule
//!   `schema.identity`).
//! - [`Plan`] translates a value encoded with one schema into the layout of
//!   another, matching by name (rule `schema.evolution`), or says precisely
//!   why it cannot ([`SchemaError`], rule `schema.incompatible`).
//!
//! ```
//! use vox_core::schema::{Plan, SchemaGraph};
//! #[derive(serde::Serialize, serde::Deserialize, vox_core::Schema)]
//! struct PointV1 { x: i32, y: i32 }
//! #[derive(serde::Serialize, serde::Deserialize, vox_core::Schema, Debug, PartialEq)]
//! struct PointV2 { y: i32, label: Option<String>, x: i32 }
//!
//! let (old, old_root) = SchemaGraph::of::<PointV1>();
//! let (new, new_root) = SchemaGraph::of::<PointV2>();
//! let plan = Plan::build(&old, old_root, &new, new_root).unwrap();
//! let bytes = postcard::to_stdvec(&PointV1 { x: 1, y: 2 }).unwrap();
//! let translated = plan.translate(&bytes).unwrap();
//! let p: PointV2 = postcard::from_bytes(&translated).unwrap();
//! assert_eq!(p, PointV2 { x: 1, y: 2, label: None });
//! ```

mod builder;
mod cache;
mod error;
mod exchange;
mod hash;
mod impls;
mod inbound;
mod limits;
mod method;
mod model;
mod plan;
mod signature;
mod store;
mod translate;

pub use builder::SchemaBuilder;
pub use cache::{MethodPlans, SchemaCache, Translation};
pub use error::SchemaError;
pub use exchange::{SCHEMA_METHOD_NAME, SCHEMA_SERVICE_NAME, SchemaAnswer, SchemaQuery, schema_method_id};
pub use hash::SchemaHash;
pub(crate) use inbound::HandlerSchemas;
pub(crate) use inbound::{Inbound, InboundPlans};
pub use limits::SchemaLimits;
pub use method::{ChannelSchema, MethodSchema};
pub use model::{Field, Node, SchemaGraph, TypeRef, Variant, VariantKind};
pub use plan::Plan;
pub use signature::{ArgSignature, ChannelSignature, MethodSignature, TypeSchema};

/// A type whose structure vox can describe, hash and translate.
///
/// Derive it with `#[derive(vox_core::Schema)]` next to serde's derives;
/// the derive refuses serde attributes that change the encoding in ways a
/// schema would not describe. Implement it by hand only for a type whose
/// serde encoding is exactly the node you return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no vox schema",
    label = "used by a vox service or channel",
    note = "add `#[derive(vox_core::Schema)]` next to its serde derives (rule schema.identity, ADR 0008)"
)]
pub trait Schema: 'static {
    /// Adds this type's node (and those of the types it contains) to
    /// `builder` and returns its reference. Call
    /// [`SchemaBuilder::of`] for contained types, never `describe` directly,
    /// so shared and recursive types are described once.
    fn describe(builder: &mut SchemaBuilder) -> TypeRef;
}

/// The postcard bytes of `T::default()`, for a field declared with a
/// default (used by the derive).
#[doc(hidden)]
pub fn default_bytes<T: Default + serde::Serialize>() -> Option<crate::wire::Blob> {
    crate::wire::encode("schema default", &T::default()).ok().map(|v| crate::wire::Blob::new(bytes::Bytes::from(v)))
}
