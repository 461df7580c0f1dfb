//! Encoding and decoding (serde + postcard), zero-copy payload bytes, and
//! allocation-bounded sequence decoding.
//!
//! Two guarantees hold for every decoder in this module:
//! - it never panics, whatever the input: it returns `Ok` or a [`DecodeError`];
//! - it never allocates more than the input justifies: sequence capacities
//!   are capped (see [`bounded_seq`]), strings and blobs are at most as long
//!   as the input, and the link refuses an over-long message before reading it.

use bytes::Bytes;
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid encoding of the expected message.
    #[error("cannot decode {what}: {source}")]
    Malformed {
        /// The message type that was expected.
        what: &'static str,
        /// What postcard reported.
        source: postcard::Error,
    },
    /// A complete message was decoded but bytes were left over.
    #[error("cannot decode {what}: {trailing} trailing byte(s) after a complete message")]
    TrailingBytes {
        /// The message type that was expected.
        what: &'static str,
        /// How many bytes were left.
        trailing: usize,
    },
}

/// Why a value could not be encoded (only possible for user types whose
/// `Serialize` implementation fails).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct EncodeError {
    /// The type being encoded.
    pub what: &'static str,
    /// What postcard reported.
    pub source: postcard::Error,
}

/// Encodes any serializable value with postcard.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_allocvec(value).map_err(|source| EncodeError { what, source })
}

/// Encodes a value with postcard at the end of `buf`, without a buffer of
/// its own (the session writer encodes messages straight into its batch).
/// On failure `buf` may hold part of the value; the caller truncates it.
pub fn encode_into<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    buf: &mut bytes::BytesMut,
) -> Result<(), EncodeError> {
    postcard::serialize_with_flavor(value, Appender(buf)).map_err(|source| EncodeError { what, source })
}

/// A postcard output that appends to a `BytesMut`, copying slices whole.
struct Appender<'a>(&'a mut bytes::BytesMut);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes a whole message from `input`. Byte payloads ([`Blob`]) inside the
/// message share `input`'s memory instead of being copied.
pub fn decode<T: DeserializeOwned>(what: &'static str, input: &Bytes) -> Result<T, DecodeError> {
    let _guard = SourceGuard::enter(input.clone());
    let (value, rest) =
        postcard::take_from_bytes::<T>(input).map_err(|source| DecodeError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { what, trailing: rest.len() });
    }
    Ok(value)
}

/// Decodes a value from a plain slice (payload bytes are copied).
pub fn decode_slice<T: DeserializeOwned>(what: &'static str, input: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(input).map_err(|source| DecodeError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { what, trailing: rest.len() });
    }
    Ok(value)
}

thread_local! {
    // The buffer currently being decoded on this thread. A `Blob` decoded
    // from a sub-slice of it becomes a cheap `Bytes::slice_ref` instead of a
    // copy. Serde offers no way to pass this down explicitly.
    static SOURCE: RefCell<Vec<Bytes>> = const { RefCell::new(Vec::new()) };
}

struct SourceGuard;

impl SourceGuard {
    fn enter(source: Bytes) -> SourceGuard {
        SOURCE.with(|s| s.borrow_mut().push(source));
        SourceGuard
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        SOURCE.with(|s| {
            s.borrow_mut().pop();
        });
    }
}

fn share_or_copy(sub: &[u8]) -> Bytes {
    SOURCE.with(|s| {
        if let Some(src) = s.borrow().last() {
            let start = src.as_ptr() as usize;
            let end = start + src.len();
            let p = sub.as_ptr() as usize;
            if !sub.is_empty() && p >= start && p + sub.len() <= end {
                return src.slice_ref(sub);
            }
        }
        Bytes::copy_from_slice(sub)
    })
}

/// Opaque payload bytes (arguments, return values, channel items). Encoded as
/// a varint length followed by the bytes. Decoding with [`decode`] shares the
/// input buffer instead of copying.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(pub Bytes);

impl Blob {
    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Self {
        Blob(b)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(b: Vec<u8>) -> Self {
        Blob(Bytes::from(b))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(b: &'static [u8]) -> Self {
        Blob(Bytes::from_static(b))
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
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
                Ok(Blob(share_or_copy(v)))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(BlobVisitor)
    }
}

/// Upper bound on the capacity reserved up front for a decoded sequence. The
/// length prefix is peer input: reserving what it announces would let a
/// ten-byte message ask for gigabytes. Longer sequences simply grow.
pub const MAX_PREALLOCATED_ELEMENTS: usize = 16;

/// `deserialize_with` helper for `Vec<T>` fields: never reserves more than
/// [`MAX_PREALLOCATED_ELEMENTS`] up front, whatever length the input claims.
pub fn bounded_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct SeqVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED_ELEMENTS);
            let mut out = Vec::with_capacity(hint);
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(SeqVisitor(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_decoded_from_bytes_shares_the_input_buffer() {
        let encoded = Bytes::from(encode("blob", &Blob::from(vec![7u8; 100])).unwrap());
        let blob: Blob = decode("blob", &encoded).unwrap();
        let start = encoded.as_ptr() as usize;
        let p = blob.0.as_ptr() as usize;
        assert!(p > start && p < start + encoded.len(), "blob was copied");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut encoded = encode("u32", &5u32).unwrap();
        encoded.push(0);
        let err = decode::<u32>("u32", &Bytes::from(encoded)).unwrap_err();
        assert!(matches!(err, DecodeError::TrailingBytes { trailing: 1, .. }));
    }

    #[test]
    fn huge_announced_sequence_length_does_not_preallocate() {
        // varint for u64::MAX / 2 elements, then nothing.
        let input = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        let err = decode::<super::super::Metadata>("metadata", &input);
        assert!(err.is_err());
    }

    #[test]
    fn encode_into_appends_exactly_what_encode_returns() {
        let value = (7u32, "text".to_string(), Blob::from(vec![3u8; 5000]));
        let mut buf = bytes::BytesMut::from(&b"head"[..]);
        encode_into("tuple", &value, &mut buf).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &encode("tuple", &value).unwrap()[..]);
    }
}
