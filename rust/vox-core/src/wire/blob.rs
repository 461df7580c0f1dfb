//! [`Blob`]: opaque payload bytes, shared rather than copied.
//!
//! A received blob is one `Bytes`, usually a slice of the frame it came in.
//! A blob made on the sending side by [`encode_payload`](super::encode_payload)
//! may instead be a *rope*: the encoded bytes with the large byte buffers of
//! the value left out, and those buffers kept in their own storage, so that
//! the session writer sends a user's `Vec<u8>` from the allocation the user
//! handed over instead of copying it first (issue 18, point 9).

use super::codec::{Spliced, offer_spliced, share_or_copy, withdraw_spliced};
use bytes::Bytes;
use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// Opaque payload bytes (arguments, return values, channel items). Encoded as
/// a varint length followed by the bytes. Decoding with
/// [`decode`](super::decode) shares the input buffer instead of copying;
/// cloning shares too.
///
/// ```
/// use vox_core::wire::{self, Blob};
/// let blob = Blob::from(vec![1u8, 2, 3]);
/// let encoded = bytes::Bytes::from(wire::encode("blob", &blob).unwrap());
/// assert_eq!(&encoded[..], &[3, 1, 2, 3]); // length, then the bytes
/// let back: Blob = wire::decode("blob", &encoded).unwrap();
/// assert_eq!(back, blob);
/// ```
#[derive(Clone, Default)]
pub struct Blob {
    /// All the bytes; for a rope, the bytes around its pieces.
    bytes: Bytes,
    /// Only for a blob made by `encode_payload` that left buffers out.
    rope: Option<Arc<Rope>>,
}

/// The buffers a rope left out of its bytes.
struct Rope {
    /// Each piece and the offset in `Blob::bytes` it belongs at, in order.
    pieces: Spliced,
    /// The length of the whole blob.
    len: usize,
    /// The blob in one buffer, made the first time anyone asks for it (the
    /// session writer never does).
    flat: OnceLock<Bytes>,
}

impl Blob {
    /// A blob of `bytes`.
    pub fn new(bytes: Bytes) -> Blob {
        Blob { bytes, rope: None }
    }

    /// A blob of `between` with `pieces` put back at their offsets in it
    /// (as [`splicing`](super::splicing) returns them).
    pub(crate) fn with_pieces(between: Bytes, pieces: Spliced) -> Blob {
        if pieces.is_empty() {
            return Blob::new(between);
        }
        let len = between.len() + pieces.iter().map(|(_, p)| p.len()).sum::<usize>();
        Blob { bytes: between, rope: Some(Arc::new(Rope { pieces, len, flat: OnceLock::new() })) }
    }

    /// The bytes, in one buffer. For a blob that keeps large buffers apart
    /// (made on the sending side) they are copied together once, on the
    /// first call.
    pub fn bytes(&self) -> &Bytes {
        match &self.rope {
            None => &self.bytes,
            Some(rope) => rope.flat.get_or_init(|| {
                let mut flat = Vec::with_capacity(rope.len);
                self.for_each_part(|part| flat.extend_from_slice(part));
                Bytes::from(flat)
            }),
        }
    }

    /// The bytes, in one buffer (see [`bytes`](Self::bytes)).
    pub fn into_bytes(self) -> Bytes {
        match self.rope {
            None => self.bytes,
            Some(_) => self.bytes().clone(),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.rope.as_ref().map_or(self.bytes.len(), |r| r.len)
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some of the bytes are kept apart (see [`Blob::with_pieces`]).
    pub(crate) fn is_rope(&self) -> bool {
        self.rope.is_some()
    }

    /// Calls `part` with the blob's bytes in order, as slices: the kept-apart
    /// pieces as `Err` (their own storage), the rest as `Ok`.
    pub(crate) fn for_each_piece(&self, mut part: impl FnMut(Result<&[u8], &Bytes>)) {
        let Some(rope) = &self.rope else {
            part(Ok(&self.bytes));
            return;
        };
        let mut at = 0;
        for (offset, piece) in &rope.pieces {
            if *offset > at {
                part(Ok(&self.bytes[at..*offset]));
            }
            part(Err(piece));
            at = *offset;
        }
        if at < self.bytes.len() {
            part(Ok(&self.bytes[at..]));
        }
    }

    fn for_each_part(&self, mut part: impl FnMut(&[u8])) {
        self.for_each_piece(|p| part(p.unwrap_or_else(|b| &b[..])));
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Blob {}

impl Hash for Blob {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes().hash(state)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob::new(b)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(b: Vec<u8>) -> Self {
        Blob::new(Bytes::from(b))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(b: &'static [u8]) -> Self {
        Blob::new(Bytes::from_static(b))
    }
}

impl From<Blob> for Bytes {
    fn from(b: Blob) -> Bytes {
        b.into_bytes()
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A rope inside a message the session writer encodes field by field
        // never gets here (`encode_conduit_into`); elsewhere it is flattened.
        serialize_shared(self.bytes(), s)
    }
}

/// Serializes `bytes` as a byte string; while [`splicing`](super::splicing)
/// they may be taken by reference instead of copied.
pub(crate) fn serialize_shared<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    offer_spliced(bytes);
    let result = s.serialize_bytes(bytes);
    withdraw_spliced(bytes);
    result
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl<'de> Visitor<'de> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Blob, E> {
                Ok(Blob::new(share_or_copy(v)))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob::new(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob::from(v))
            }
        }
        d.deserialize_bytes(BlobVisitor)
    }
}
