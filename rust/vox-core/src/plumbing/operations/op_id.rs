//! The operation id (rule `retry.op-id`) and how it travels: the request
//! metadata key [`OP_ID_KEY`], read and written here so every side agrees on
//! its encoding.

use crate::wire::{Metadata, MetadataValue, NO_PROPAGATE};

/// The request metadata key that carries the operation id (a `U64` value).
pub const OP_ID_KEY: &str = crate::wire::runtime_key::OP_ID;

/// An operation id: every attempt of one logical call carries the same one;
/// a new call gets a new one (rule `retry.op-id`).
///
/// Callers should allocate them in increasing order (a per-session counter):
/// the table's memory of expired ids is exact only for the most recent ones
/// and conservative below a watermark (see
/// [`OperationConfig::max_expired_ids`](super::OperationConfig::max_expired_ids)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `vox.op-id` entry is present but does not hold a `U64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata key `vox.op-id` must hold a U64 value")]
pub struct OpIdError;

/// Reads the operation id of a request: `Ok(None)` when the call carries none
/// (it is then not tracked by the table), an error when the entry is
/// malformed (the driver answers `InvalidPayload` rather than guessing).
///
/// ```
/// use vox_core::session::{OpId, read_op_id, write_op_id};
/// use vox_core::wire::Metadata;
/// let mut md = Metadata::new();
/// assert_eq!(read_op_id(&md), Ok(None));
/// write_op_id(&mut md, OpId(42));
/// write_op_id(&mut md, OpId(42)); // idempotent: one entry per request
/// assert_eq!(read_op_id(&md), Ok(Some(OpId(42))));
/// assert_eq!(md.0.len(), 1);
/// ```
pub fn read_op_id(metadata: &Metadata) -> Result<Option<OpId>, OpIdError> {
    match metadata.get(OP_ID_KEY).map(|e| &e.value) {
        None => Ok(None),
        Some(MetadataValue::U64(v)) => Ok(Some(OpId(*v))),
        Some(_) => Err(OpIdError),
    }
}

/// Sets the operation id of a request, replacing an existing `vox.op-id`
/// entry so that a retried attempt never carries two ids.
///
/// The entry is flagged `NO_PROPAGATE`: a handler that forwards its metadata
/// to a downstream call must not hand that call the same id, since the
/// downstream call is a different logical call (a different method, so the
/// downstream table would reject it as a conflict or, worse, replay).
pub fn write_op_id(metadata: &mut Metadata, op: OpId) {
    match metadata.0.iter_mut().find(|e| e.key == OP_ID_KEY) {
        Some(entry) => {
            entry.value = MetadataValue::U64(op.0);
            entry.flags |= NO_PROPAGATE;
        }
        None => metadata.push(OP_ID_KEY, MetadataValue::U64(op.0), NO_PROPAGATE),
    }
}
