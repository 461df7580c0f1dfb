//! Encoding and decoding (serde + postcard), zero-copy payload bytes, and
//! allocation-bounded sequence decoding.
//!
//! Two guarantees hold for every decoder in this module:
//! - it never panics, whatever the input: it returns `Ok` or a [`DecodeError`];
//! - it never allocates more than the input justifies: sequence capacities
//!   are capped (see [`bounded_seq`]), strings and blobs are at most as long
//!   as the input, and the link refuses an over-long message before reading it.

#[cfg(test)]
use super::blob::Blob;
use bytes::Bytes;
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::cell::{Cell, RefCell};
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
    /// The message holds more elements of a sequence than the receiver's
    /// [`DecodeLimits`] allow (rule `session.decode.bounded`). Counted while
    /// decoding: nothing beyond the limit is allocated.
    #[error("cannot decode {what}: more than {max} {sequence} ({field}); announced or found: {found}")]
    LimitExceeded {
        /// The message type that was expected.
        what: &'static str,
        /// Which sequence, in words ("metadata entries").
        sequence: &'static str,
        /// The limit that bounds it: a [`DecodeLimits`] field
        /// (`"DecodeLimits::max_features"`) or a protocol constant
        /// (`"wire::MAX_CHANNEL_ITEMS"`).
        field: &'static str,
        /// The limit in force.
        max: usize,
        /// How many the input announced or held when decoding stopped.
        found: usize,
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

/// [`Blob`](super::Blob)s at least this long are taken by reference while [`splicing`]
/// is on, instead of being copied into the output buffer.
pub(crate) const SPLICE_MIN: usize = 4 * 1024;

/// Payloads taken by reference during [`splicing`]: where in the output
/// buffer each belongs, and its bytes.
pub(crate) type Spliced = Vec<(usize, Bytes)>;

/// The payloads of the [`splicing`] in progress on this thread.
#[derive(Default)]
struct Splice {
    /// The [`Blob`](super::Blob) being serialized right now, if long enough: the next
    /// slice written that is exactly its bytes is taken, not copied.
    next: Option<Bytes>,
    /// What was taken so far.
    taken: Spliced,
}

/// Runs `encode`, in which [`encode_into`] takes every [`Blob`](super::Blob) of at least
/// [`SPLICE_MIN`] bytes by reference instead of copying it into its buffer:
/// the buffer then lacks those bytes, and the returned list says, in order,
/// at which length of the buffer each payload's bytes belong (the varint
/// length in front of a payload is written as usual). The encoded message
/// is the buffer with the payloads put back at those positions; the session
/// writer writes them from their own storage ([`crate::link`]'s batch).
///
/// Only `encode_into` calls into one buffer may run inside (positions are
/// lengths of that buffer). Reentrant (an outer call's payloads are set
/// aside), and a panic inside leaves no state behind.
#[inline]
pub(crate) fn splicing<R>(encode: impl FnOnce() -> R) -> (R, Spliced) {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            if SPLICING.get() == HOLDING {
                // Only after a panic inside: drop what this level took.
                take_splice();
            }
            if self.0 == HOLDING {
                SPLICE.with(|s| *s.borrow_mut() = ASIDE.with(|a| a.borrow_mut().pop()).unwrap_or_default());
            }
            SPLICING.set(self.0);
        }
    }
    let outer = SPLICING.replace(ON);
    if outer == HOLDING {
        // Nested in a splicing that holds payloads: those wait aside.
        let aside = take_splice();
        ASIDE.with(|a| a.borrow_mut().push(aside));
    }
    let restore = Restore(outer);
    let result = encode();
    let taken = if SPLICING.get() == HOLDING {
        SPLICING.set(ON);
        take_splice().taken
    } else {
        Vec::new()
    };
    drop(restore);
    (result, taken)
}

/// Runs `encode` with [`splicing`] paused: everything is copied into the
/// buffer being written, and the splicing around it is left as it was.
pub(super) fn not_splicing<R>(encode: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            SPLICING.set(self.0);
        }
    }
    let _restore = Restore(SPLICING.replace(OFF));
    encode()
}

/// Appends `bytes` to `buf`, or while [`splicing`] (and if long enough)
/// records them by reference at this point of `buf` instead.
pub(super) fn splice_or_copy(bytes: &Bytes, buf: &mut bytes::BytesMut) {
    offer_spliced(bytes);
    if bytes.len() < SPLICE_MIN || !take_spliced(bytes, buf.len()) {
        buf.extend_from_slice(bytes);
    }
    withdraw_spliced(bytes);
}

// `SPLICING`: off; on with `SPLICE` empty; on with an offer or payloads.
const OFF: u8 = 0;
const ON: u8 = 1;
const HOLDING: u8 = 2;
fn take_splice() -> Splice {
    SPLICE.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// A postcard output that appends to a `BytesMut`, copying slices whole
/// (or, while [`splicing`], leaving a long [`Blob`](super::Blob)'s bytes out).
struct Appender<'a>(&'a mut bytes::BytesMut);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() >= SPLICE_MIN && take_spliced(data, self.0.len()) {
            return Ok(());
        }
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

/// How many elements the sequences of one decoded message may hold (rule
/// `session.decode.bounded`).
///
/// Each element of a decoded sequence costs a fixed number of bytes in
/// memory (a metadata entry 64, a channel declaration 16, a feature 24)
/// while it may take as little as one to four bytes on the wire, so without
/// a bound a message of tiny elements decodes into many times its size.
/// With these bounds, decoding a message of `n` bytes allocates at most
/// about `n` bytes (strings are copied once; byte payloads are shared, not
/// copied) plus a constant: `max_metadata_entries` × 64 B per metadata
/// list, `max_channels` × 16 B, `max_features` × 24 B, about 20 KiB with
/// the defaults. A message over a limit is refused as a whole.
///
/// ```
/// use vox_core::wire::{self, DecodeError, DecodeLimits, Metadata};
/// let md = (0..10).fold(Metadata::new(), |m, i| m.with_u64("k", i, 0));
/// let bytes = bytes::Bytes::from(wire::encode("metadata", &md).unwrap());
/// let tight = DecodeLimits { max_metadata_entries: 4, ..DecodeLimits::default() };
/// let err = wire::decode_with::<Metadata>("metadata", &bytes, &tight).unwrap_err();
/// assert!(matches!(err, DecodeError::LimitExceeded { max: 4, .. }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Entries in one metadata list (default 128).
    pub max_metadata_entries: usize,
    /// Channels declared by one request (default 128).
    pub max_channels: usize,
    /// Features listed in one handshake message (default 32).
    pub max_features: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_metadata_entries: 128, max_channels: 128, max_features: 32 }
    }
}

/// Which bounded sequence a `deserialize_with` helper decodes.
#[derive(Clone, Copy, Debug)]
enum Sequence {
    Metadata,
    Channels,
    Features,
    ChannelItems,
}

impl Sequence {
    fn bound(self, limits: &DecodeLimits) -> (usize, &'static str, &'static str) {
        match self {
            Sequence::Metadata => {
                (limits.max_metadata_entries, "metadata entries", "DecodeLimits::max_metadata_entries")
            }
            Sequence::Channels => (limits.max_channels, "channel declarations", "DecodeLimits::max_channels"),
            Sequence::Features => (limits.max_features, "features", "DecodeLimits::max_features"),
            // A protocol constant, not a local choice: the sender batches
            // up to it.
            Sequence::ChannelItems => {
                (super::MAX_CHANNEL_ITEMS, "items in one ChannelItems", "wire::MAX_CHANNEL_ITEMS")
            }
        }
    }
}

/// A limit hit inside serde, where the error type cannot carry it: kept
/// here until [`decode_with`] turns it into [`DecodeError::LimitExceeded`].
#[derive(Clone, Copy, Debug)]
struct LimitHit {
    sequence: Sequence,
    max: usize,
    found: usize,
}

/// Decodes a whole message from `input` with the default [`DecodeLimits`].
/// Byte payloads ([`Blob`](super::Blob)) inside the message share `input`'s memory
/// instead of being copied.
pub fn decode<T: DeserializeOwned>(what: &'static str, input: &Bytes) -> Result<T, DecodeError> {
    decode_with(what, input, &DecodeLimits::default())
}

/// Decodes a whole message from `input`, refusing sequences longer than
/// `limits` allow (rule `session.decode.bounded`). Byte payloads share
/// `input`'s memory.
pub fn decode_with<T: DeserializeOwned>(
    what: &'static str,
    input: &Bytes,
    limits: &DecodeLimits,
) -> Result<T, DecodeError> {
    let _guard = SourceGuard::enter(input.clone(), *limits);
    finish(what, postcard::take_from_bytes::<T>(input))
}

/// Decodes a value from a plain slice (payload bytes are copied), with the
/// default [`DecodeLimits`].
pub fn decode_slice<T: DeserializeOwned>(what: &'static str, input: &[u8]) -> Result<T, DecodeError> {
    let _guard = LimitGuard::enter(DecodeLimits::default());
    finish(what, postcard::take_from_bytes::<T>(input))
}

fn finish<T>(what: &'static str, decoded: postcard::Result<(T, &[u8])>) -> Result<T, DecodeError> {
    let hit = LIMIT_HIT.with(|h| h.take());
    let (value, rest) = decoded.map_err(|source| match hit {
        Some(LimitHit { sequence, max, found }) => {
            let (_, words, field) = sequence.bound(&DecodeLimits::default());
            DecodeError::LimitExceeded { what, sequence: words, field, max, found }
        }
        None => DecodeError::Malformed { what, source },
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { what, trailing: rest.len() });
    }
    Ok(value)
}

/// While [`splicing`]: if `data` is exactly the bytes of the [`Blob`](super::Blob) being
/// serialized, records them as belonging at `at` and says so (the caller
/// then copies nothing). Same pointer and length means the same bytes, so
/// writing the recorded `Bytes` there is always what copying would write.
// Out of line: only long slices get here, and the copy path stays small.
#[inline(never)]
pub(super) fn take_spliced(data: &[u8], at: usize) -> bool {
    if SPLICING.get() != HOLDING {
        return false;
    }
    SPLICE.with(|s| {
        let mut s = s.borrow_mut();
        match s.next.take() {
            Some(b) if b.as_ptr() == data.as_ptr() && b.len() == data.len() => {
                s.taken.push((at, b));
                true
            }
            other => {
                s.next = other;
                false
            }
        }
    })
}

/// While [`splicing`]: notes `bytes` as the payload now being serialized
/// (see [`take_spliced`]), when it is long enough.
#[inline]
pub(super) fn offer_spliced(bytes: &Bytes) {
    #[inline(never)]
    fn offer(bytes: &Bytes) {
        if SPLICING.get() != OFF {
            SPLICE.with(|s| s.borrow_mut().next = Some(bytes.clone()));
            SPLICING.set(HOLDING);
        }
    }
    if bytes.len() >= SPLICE_MIN {
        offer(bytes);
    }
}

/// Ends the offer of [`offer_spliced`] (taken or not): it never matches later.
#[inline]
pub(super) fn withdraw_spliced(bytes: &Bytes) {
    if bytes.len() >= SPLICE_MIN && SPLICING.get() == HOLDING {
        SPLICE.with(|s| s.borrow_mut().next = None);
    }
}

thread_local! {
    // Whether a `splicing` is in progress on this thread (`OFF`, `ON`,
    // `HOLDING`), and its payloads: the flag alone is read per message.
    static SPLICING: Cell<u8> = const { Cell::new(OFF) };
    static SPLICE: RefCell<Splice> = const { RefCell::new(Splice { next: None, taken: Vec::new() }) };
    static ASIDE: RefCell<Vec<Splice>> = const { RefCell::new(Vec::new()) };
    // The buffer currently being decoded on this thread. A `Blob` decoded
    // from a sub-slice of it becomes a cheap `Bytes::slice_ref` instead of a
    // copy. Serde offers no way to pass this down explicitly.
    static SOURCE: RefCell<Vec<Bytes>> = const { RefCell::new(Vec::new()) };
    // The limits of the decode in progress on this thread (innermost last),
    // and the limit it hit, if any; serde offers no way to pass them either.
    static LIMITS: RefCell<Vec<DecodeLimits>> = const { RefCell::new(Vec::new()) };
    static LIMIT_HIT: Cell<Option<LimitHit>> = const { Cell::new(None) };
}

struct SourceGuard {
    _limits: LimitGuard,
}

impl SourceGuard {
    fn enter(source: Bytes, limits: DecodeLimits) -> SourceGuard {
        SOURCE.with(|s| s.borrow_mut().push(source));
        SourceGuard { _limits: LimitGuard::enter(limits) }
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        SOURCE.with(|s| {
            s.borrow_mut().pop();
        });
    }
}

/// The limits of one decode, on this thread's stack of them while it runs.
struct LimitGuard {
    /// Whether `limits` were pushed. The defaults are not, outside any
    /// other decode: an empty stack means the defaults already
    /// ([`current_limits`]), and most decodes (every channel item) use them.
    pushed: bool,
}

impl LimitGuard {
    fn enter(limits: DecodeLimits) -> LimitGuard {
        let pushed = LIMITS.with(|l| {
            let mut l = l.borrow_mut();
            if l.is_empty() && limits == DecodeLimits::default() {
                return false;
            }
            l.push(limits);
            true
        });
        LIMIT_HIT.with(|h| h.set(None));
        LimitGuard { pushed }
    }
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        if self.pushed {
            LIMITS.with(|l| {
                l.borrow_mut().pop();
            });
        }
    }
}

/// The limits of the current decode (the defaults outside one, e.g. when a
/// caller uses postcard directly).
fn current_limits() -> DecodeLimits {
    LIMITS.with(|l| l.borrow().last().copied().unwrap_or_default())
}

pub(super) fn share_or_copy(sub: &[u8]) -> Bytes {
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

/// Upper bound on the capacity reserved up front for a decoded sequence. The
/// length prefix is peer input: reserving what it announces would let a
/// ten-byte message ask for gigabytes. Longer sequences simply grow.
pub const MAX_PREALLOCATED_ELEMENTS: usize = 16;

/// `deserialize_with` helper for `Vec<T>` fields: never reserves more than
/// [`MAX_PREALLOCATED_ELEMENTS`] up front, whatever length the input claims.
/// (It bounds no count; the protocol's own sequences use the helpers bounded
/// by [`DecodeLimits`].)
pub fn bounded_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor { sequence: None, _t: std::marker::PhantomData })
}

/// Metadata entries, at most [`DecodeLimits::max_metadata_entries`].
pub(crate) fn metadata_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor { sequence: Some(Sequence::Metadata), _t: std::marker::PhantomData })
}

/// A request's channel declarations, at most [`DecodeLimits::max_channels`].
pub(crate) fn channel_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor { sequence: Some(Sequence::Channels), _t: std::marker::PhantomData })
}

/// The items of one `ChannelItems`, at most [`MAX_CHANNEL_ITEMS`](super::MAX_CHANNEL_ITEMS).
pub(crate) fn channel_item_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor { sequence: Some(Sequence::ChannelItems), _t: std::marker::PhantomData })
}

/// Handshake features, at most [`DecodeLimits::max_features`].
pub(crate) fn feature_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor { sequence: Some(Sequence::Features), _t: std::marker::PhantomData })
}

struct SeqVisitor<T> {
    /// `None`: capacity capped, count unbounded.
    sequence: Option<Sequence>,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        let max = self.sequence.map_or(usize::MAX, |s| s.bound(&current_limits()).0);
        let exceeded = |found: usize| {
            if let Some(sequence) = self.sequence {
                LIMIT_HIT.with(|h| h.set(Some(LimitHit { sequence, max, found })));
            }
            serde::de::Error::custom("sequence longer than the decode limit")
        };
        // rule: session.decode.bounded — an announced count over the limit
        // is refused before a single element is decoded.
        if announced > max {
            return Err(exceeded(announced));
        }
        let mut out = Vec::with_capacity(announced.min(MAX_PREALLOCATED_ELEMENTS));
        while let Some(item) = seq.next_element()? {
            if out.len() == max {
                return Err(exceeded(out.len() + 1));
            }
            out.push(item);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_decoded_from_bytes_shares_the_input_buffer() {
        let encoded = Bytes::from(encode("blob", &Blob::from(vec![7u8; 100])).unwrap());
        let blob: Blob = decode("blob", &encoded).unwrap();
        let start = encoded.as_ptr() as usize;
        let p = blob.bytes().as_ptr() as usize;
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

    // rule: session.decode.bounded — limits given for one decode apply to
    // it (from a thread with no decode in progress), the defaults apply to
    // the next one, and nothing is left on the thread's stack of limits.
    #[test]
    fn session_decode_bounded_limits_apply_to_their_decode_only() {
        let three = super::super::Metadata::new().with_u64("a", 1, 0).with_u64("b", 2, 0).with_u64("c", 3, 0);
        let encoded = Bytes::from(encode("metadata", &three).unwrap());
        let tight = DecodeLimits { max_metadata_entries: 2, ..DecodeLimits::default() };
        let err = decode_with::<super::super::Metadata>("metadata", &encoded, &tight).unwrap_err();
        assert!(matches!(err, DecodeError::LimitExceeded { max: 2, found: 3, .. }), "{err:?}");
        assert!(LIMITS.with(|l| l.borrow().is_empty()), "the decode left its limits behind");
        assert_eq!(decode::<super::super::Metadata>("metadata", &encoded).unwrap(), three);
        assert_eq!(decode_slice::<super::super::Metadata>("metadata", &encoded).unwrap(), three);
        assert!(LIMITS.with(|l| l.borrow().is_empty()), "a default decode left limits behind");
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
