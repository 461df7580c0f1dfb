//! Metadata: an ordered list of `(key, value, flags)` entries.

use super::blob::Blob;
use super::codec::metadata_seq;
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;

/// Flag bit 0: the value is never logged, traced, or put in an error message.
pub const SENSITIVE: u64 = 1 << 0;
/// Flag bit 1: the entry is stripped when metadata is forwarded downstream.
pub const NO_PROPAGATE: u64 = 1 << 1;

/// The `RejectConnection` metadata key with a readable reason.
pub const REJECT_REASON_KEY: &str = "vox-reject-reason";

/// A metadata value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataValue {
    /// A UTF-8 string.
    String(String),
    /// Raw bytes.
    Bytes(Blob),
    /// An unsigned integer.
    U64(u64),
}

/// A metadata key: borrowed for the runtime's own keys, which a decoded
/// entry then shares instead of allocating (see [`RUNTIME_KEYS`]), owned
/// otherwise.
pub type MetadataKey = Cow<'static, str>;

/// The keys the runtime itself reads and writes on every call that uses
/// them (an operation id, a deadline, trace context, ...). A decoded entry
/// with one of these keys borrows it: no allocation per call, and none per
/// clone of the metadata. Any other key is decoded as its own `String`.
pub const RUNTIME_KEYS: &[&str] = &[
    runtime_key::OP_ID,
    runtime_key::DEADLINE,
    runtime_key::TRACEPARENT,
    runtime_key::TRACESTATE,
    runtime_key::SERVICE,
    REJECT_REASON_KEY,
];

/// The runtime's keys, spelled once: the layers that use them name their
/// public constants after these (`OP_ID_KEY`, `DEADLINE_KEY`, ...).
pub(crate) mod runtime_key {
    pub(crate) const OP_ID: &str = "vox.op-id";
    pub(crate) const DEADLINE: &str = "vox-deadline-us";
    pub(crate) const TRACEPARENT: &str = "traceparent";
    pub(crate) const TRACESTATE: &str = "tracestate";
    pub(crate) const SERVICE: &str = "vox-service";
}

/// One metadata entry. Unknown flag bits are kept as they are.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataEntry {
    /// The key; duplicates are allowed and keep their order.
    #[serde(deserialize_with = "runtime_key_or_owned")]
    pub key: MetadataKey,
    /// The value.
    pub value: MetadataValue,
    /// Flag bits ([`SENSITIVE`], [`NO_PROPAGATE`], and any unknown bits).
    pub flags: u64,
}

/// Decodes a key, borrowing it when it is one of [`RUNTIME_KEYS`].
fn runtime_key_or_owned<'de, D: Deserializer<'de>>(d: D) -> Result<MetadataKey, D::Error> {
    struct KeyVisitor;
    impl serde::de::Visitor<'_> for KeyVisitor {
        type Value = MetadataKey;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a metadata key (a string)")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<MetadataKey, E> {
            Ok(key.into_metadata_key())
        }
    }
    d.deserialize_str(KeyVisitor)
}

/// What [`Metadata::push`] and its builder forms take as a key: a `&str`
/// (borrowed if it is one of [`RUNTIME_KEYS`], copied otherwise), a
/// `String` (kept as it is) or a [`MetadataKey`].
pub trait IntoMetadataKey {
    /// The key.
    fn into_metadata_key(self) -> MetadataKey;
}

impl IntoMetadataKey for &str {
    fn into_metadata_key(self) -> MetadataKey {
        match RUNTIME_KEYS.iter().find(|k| **k == self) {
            Some(k) => Cow::Borrowed(k),
            None => Cow::Owned(self.to_owned()),
        }
    }
}

impl IntoMetadataKey for &String {
    fn into_metadata_key(self) -> MetadataKey {
        self.as_str().into_metadata_key()
    }
}

impl IntoMetadataKey for String {
    fn into_metadata_key(self) -> MetadataKey {
        Cow::Owned(self)
    }
}

impl IntoMetadataKey for MetadataKey {
    fn into_metadata_key(self) -> MetadataKey {
        self
    }
}

impl MetadataEntry {
    /// Whether the value must never be logged.
    pub fn is_sensitive(&self) -> bool {
        self.flags & SENSITIVE != 0
    }
}

// Debug redacts sensitive values so that `{:?}` in a log line or an error
// message can never leak them.
impl std::fmt::Debug for MetadataEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("MetadataEntry");
        s.field("key", &self.key);
        if self.is_sensitive() {
            s.field("value", &"<redacted>");
        } else {
            s.field("value", &self.value);
        }
        s.field("flags", &self.flags).finish()
    }
}

impl std::fmt::Debug for MetadataValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataValue::String(s) => write!(f, "{s:?}"),
            MetadataValue::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            MetadataValue::U64(v) => write!(f, "{v}"),
        }
    }
}

/// Ordered metadata attached to requests, responses and connection messages.
///
/// ```
/// use vox_core::wire::{Metadata, SENSITIVE};
/// let md = Metadata::new().with_str("trace-id", "abc", 0).with_str("token", "secret", SENSITIVE);
/// assert!(!format!("{md:?}").contains("secret"));
/// assert_eq!(md.get_str("trace-id"), Some("abc"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(#[serde(deserialize_with = "metadata_seq")] pub Vec<MetadataEntry>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Metadata(Vec::new())
    }

    /// Appends an entry.
    pub fn push(&mut self, key: impl IntoMetadataKey, value: MetadataValue, flags: u64) {
        self.0.push(MetadataEntry { key: key.into_metadata_key(), value, flags });
    }

    /// Builder form of [`Metadata::push`] for a string value.
    pub fn with_str(mut self, key: impl IntoMetadataKey, value: impl Into<String>, flags: u64) -> Self {
        self.push(key, MetadataValue::String(value.into()), flags);
        self
    }

    /// Builder form of [`Metadata::push`] for an integer value.
    pub fn with_u64(mut self, key: impl IntoMetadataKey, value: u64, flags: u64) -> Self {
        self.push(key, MetadataValue::U64(value), flags);
        self
    }

    /// The first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&MetadataEntry> {
        self.0.iter().find(|e| e.key == key)
    }

    /// The first string value with `key`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key).map(|e| &e.value) {
            Some(MetadataValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The first integer value with `key`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.get(key).map(|e| &e.value) {
            Some(MetadataValue::U64(v)) => Some(*v),
            _ => None,
        }
    }

    /// The metadata to forward to a downstream call: every entry except those
    /// flagged [`NO_PROPAGATE`], in order, with unknown flag bits preserved.
    pub fn for_forwarding(&self) -> Metadata {
        Metadata(self.0.iter().filter(|e| e.flags & NO_PROPAGATE == 0).cloned().collect())
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_key_of_a_runtime_str_is_borrowed_any_other_is_owned() {
        let md = Metadata::new().with_u64("vox.op-id", 1, 0).with_u64("x-mine", 2, 0).with_u64(
            String::from("vox.op-id"),
            3,
            0,
        );
        let borrowed: Vec<bool> = md.0.iter().map(|e| matches!(e.key, Cow::Borrowed(_))).collect();
        assert_eq!(borrowed, [true, false, false]);
        assert_eq!(md.get_u64("vox.op-id"), Some(1));
        assert_eq!(md.get_u64("x-mine"), Some(2));
    }

    #[test]
    fn rpc_metadata_forwarding_strips_no_propagate_and_keeps_unknown_flags() {
        let md = Metadata::new().with_str("a", "1", 0).with_str("hop", "x", NO_PROPAGATE).with_str("a", "2", 1 << 40);
        let fwd = md.for_forwarding();
        assert_eq!(fwd.0.len(), 2);
        assert_eq!(fwd.0[0].key, "a");
        assert_eq!(fwd.0[1].flags, 1 << 40);
        assert_eq!(md.get_str("a"), Some("1"), "duplicates keep their order");
    }

    #[test]
    fn rpc_metadata_sensitive_value_is_redacted_in_debug() {
        let md = Metadata::new().with_str("authorization", "hunter2", SENSITIVE);
        let shown = format!("{md:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("authorization"));
    }
}
