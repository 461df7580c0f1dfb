//! Sending payloads without copying their large byte buffers.
//!
//! [`encode_payload`] encodes a value the way [`encode`](super::encode) does
//! but keeps the shared byte buffers inside it (a [`Blob`], a generated
//! service's `Vec<u8>`) of at least [`SPLICE_MIN`](super::SPLICE_MIN) bytes
//! by reference: the result is a [`Blob`] rope. [`encode_conduit_into`] writes
//! a session message carrying such a rope as its arguments, return value,
//! error or channel item: the fields around the payload through serde, the
//! payload's pieces as they are, so that inside the session writer's
//! [`splicing`] the user's buffer goes to the link from its own storage.
//! The bytes are always those of the message with the payload in one piece
//! (tests below).

use super::blob::Blob;
use super::codec::{EncodeError, encode_into, not_splicing, splice_or_copy, splicing};
use super::message::{ConduitMsg, Message, Payload, ResponseBody};
use bytes::BytesMut;
use serde::Serialize;

/// Encodes `value` as a payload (arguments, a return value, an error, a
/// channel item). Large shared byte buffers inside it are not copied: the
/// blob keeps them, and the session writer sends them from where they are.
///
/// A small payload is encoded into a buffer kept per thread and then copied
/// into an allocation of exactly its size: one allocation per payload,
/// instead of a vector grown from empty plus the header `Bytes` adds to a
/// vector with spare room (docs/perf.md, session 9). A large one takes the
/// buffer it was encoded into with it. One of at most 128 bytes (a
/// number, a short struct: most channel items) is encoded on the stack
/// first, which skips the per-thread buffer and the splicing state.
pub fn encode_payload<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Blob, EncodeError> {
    let mut small = [0u8; SMALL];
    // Not splicing: a large buffer cannot fit here, and an enclosing
    // splicing must not see this attempt's offer of one.
    if let Ok(used) = not_splicing(|| postcard::to_slice(value, &mut small)) {
        return Ok(Blob::new(bytes::Bytes::copy_from_slice(used)));
    }
    SCRATCH.with(|scratch| {
        // A value whose serialization encodes a payload itself gets a
        // buffer of its own.
        let Ok(mut buf) = scratch.try_borrow_mut() else { return encode_payload_in(what, value, BytesMut::new()).1 };
        let (kept, blob) = encode_payload_in(what, value, std::mem::take(&mut *buf));
        *buf = kept;
        blob
    })
}

/// Encodes into `buf` (empty); returns the buffer to keep and the payload.
fn encode_payload_in<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    mut buf: BytesMut,
) -> (BytesMut, Result<Blob, EncodeError>) {
    let (encoded, pieces) = splicing(|| encode_into(what, value, &mut buf));
    if let Err(e) = encoded {
        // A value that failed after writing much leaves no large buffer
        // behind either.
        if buf.capacity() > 2 * SCRATCH_MAX {
            return (BytesMut::new(), Err(e));
        }
        buf.clear();
        return (buf, Err(e));
    }
    if buf.len() >= SCRATCH_MAX {
        return (BytesMut::new(), Ok(Blob::with_pieces(buf.freeze(), pieces)));
    }
    let bytes = bytes::Bytes::copy_from_slice(&buf);
    buf.clear();
    (buf, Ok(Blob::with_pieces(bytes, pieces)))
}

/// Payloads at least this long are not copied out of the buffer they were
/// encoded into; it goes with them, and a failed encoding that grew the
/// buffer beyond twice this drops it: the buffer kept per thread stays
/// small.
const SCRATCH_MAX: usize = super::SPLICE_MIN;

/// The longest payload [`encode_payload`] tries to encode on the stack; a
/// longer one costs one failed attempt of this many bytes first.
const SMALL: usize = 128;

thread_local! {
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Encodes a conduit message into a buffer of its own, as
/// [`encode_conduit_into`] does.
pub(crate) fn encode_conduit(msg: &ConduitMsg) -> Result<bytes::Bytes, EncodeError> {
    let mut buf = BytesMut::new();
    encode_conduit_into(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// Encodes a conduit message at the end of `buf`, as
/// [`encode_into`](super::encode_into) would, without flattening a rope
/// payload first. On failure `buf` may hold part of it; the caller
/// truncates.
pub(crate) fn encode_conduit_into(msg: &ConduitMsg, buf: &mut BytesMut) -> Result<(), EncodeError> {
    const WHAT: &str = "ConduitMsg";
    let Some((payload, stripped, tail)) = strip(msg) else { return encode_into(WHAT, msg, buf) };
    // The message with an empty payload, and the fields after the payload,
    // both copied whole: the empty payload is one zero byte (its length)
    // right before those fields.
    let (head, tail) = not_splicing(|| -> Result<_, EncodeError> {
        let mut head = BytesMut::new();
        encode_into(WHAT, &stripped, &mut head)?;
        let mut after = BytesMut::new();
        tail(&mut after)?;
        Ok((head, after))
    })?;
    let Some(cut) = head.len().checked_sub(tail.len() + 1).filter(|&cut| head[cut] == 0 && head.ends_with(&tail))
    else {
        // Not the layout this function knows: the plain way, flattened.
        return encode_into(WHAT, msg, buf);
    };
    buf.extend_from_slice(&head[..cut]);
    put_varint(payload.len() as u64, buf);
    payload.for_each_piece(|part| match part {
        Ok(bytes) => buf.extend_from_slice(bytes),
        Err(piece) => splice_or_copy(piece, buf),
    });
    buf.extend_from_slice(&tail);
    Ok(())
}

/// The fields after a payload, encoded.
type Tail<'a> = Box<dyn FnOnce(&mut BytesMut) -> Result<(), EncodeError> + 'a>;

/// For a message whose payload is a rope: the payload, the message with an
/// empty payload instead, and the encoder of the fields after it.
fn strip(msg: &ConduitMsg) -> Option<(&Blob, ConduitMsg, Tail<'_>)> {
    let ConduitMsg::Message(Message { connection_id, payload }) = msg else { return None };
    let message = |payload| ConduitMsg::Message(Message { connection_id: *connection_id, payload });
    match payload {
        Payload::Request { id, method_id, args, channels, metadata } if args.is_rope() => Some((
            args,
            message(Payload::Request {
                id: *id,
                method_id: *method_id,
                args: Blob::default(),
                channels: channels.clone(),
                metadata: metadata.clone(),
            }),
            Box::new(move |buf| encode_into("Request", &(channels, metadata), buf)),
        )),
        Payload::Response { id, ret: ret @ (ResponseBody::Ok(b) | ResponseBody::User(b)), metadata } if b.is_rope() => {
            let empty = match ret {
                ResponseBody::Ok(_) => ResponseBody::Ok(Blob::default()),
                _ => ResponseBody::User(Blob::default()),
            };
            Some((
                b,
                message(Payload::Response { id: *id, ret: empty, metadata: metadata.clone() }),
                Box::new(move |buf| encode_into("Response", metadata, buf)),
            ))
        }
        Payload::ChannelItem { id, item } if item.is_rope() => {
            Some((item, message(Payload::ChannelItem { id: *id, item: Blob::default() }), Box::new(|_| Ok(()))))
        }
        _ => None,
    }
}

/// postcard's varint (LEB128), as it writes a byte string's length.
fn put_varint(mut n: u64, buf: &mut BytesMut) {
    while n >= 0x80 {
        buf.extend_from_slice(&[(n as u8) | 0x80]);
        n >>= 7;
    }
    buf.extend_from_slice(&[n as u8]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChannelDecl, ChannelDirection, ChannelId, ConnectionId, Metadata, MethodId, RequestId, encode};
    use bytes::Bytes;

    /// A value with two large buffers and small fields around them.
    fn value(big: &Bytes, other: &Bytes) -> (u32, Blob, String, Blob, u8) {
        (7, Blob::new(big.clone()), "between".into(), Blob::new(other.clone()), 9)
    }

    fn big(len: usize, seed: u8) -> Bytes {
        Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
    }

    #[test]
    fn a_payload_keeps_its_large_buffers_and_means_the_same_bytes() {
        let (a, b) = (big(70_000, 1), big(5000, 2));
        let blob = encode_payload("value", &value(&a, &b)).unwrap();
        assert!(blob.is_rope());
        let mut kept = Vec::new();
        blob.for_each_piece(|p| {
            if let Err(piece) = p {
                kept.push(piece.as_ptr());
            }
        });
        assert_eq!(kept, vec![a.as_ptr(), b.as_ptr()], "the buffers were copied");
        let flat = encode("value", &value(&a, &b)).unwrap();
        assert_eq!(blob.len(), flat.len());
        assert_eq!(&blob.bytes()[..], &flat[..]);
        assert_eq!(blob, Blob::from(flat));
    }

    #[test]
    fn payloads_encoded_one_after_another_are_independent() {
        // The per-thread buffer is reused: earlier payloads must not change.
        let blobs: Vec<(u64, Blob)> =
            (0..100u64).map(|i| (i, encode_payload("n", &(i, "x".repeat(i as usize * 97))).unwrap())).collect();
        for (i, blob) in blobs {
            assert_eq!(&blob.bytes()[..], &encode("n", &(i, "x".repeat(i as usize * 97))).unwrap()[..]);
        }
        let err = encode_payload("bad", &Unencodable).unwrap_err();
        assert!(err.to_string().contains("bad"));
        let kept = || SCRATCH.with(|s| s.borrow().capacity());
        let big = encode_payload("big", &vec!["z".repeat(50_000)]).unwrap();
        assert_eq!(&big.bytes()[..], &encode("big", &vec!["z".repeat(50_000)]).unwrap()[..]);
        assert!(kept() <= 2 * SCRATCH_MAX, "a large payload left {} bytes behind", kept());
        let err = encode_payload("bad big", &(vec!["y".repeat(20_000)], Unencodable)).unwrap_err();
        assert!(kept() <= 2 * SCRATCH_MAX, "a failed large encoding left {} bytes behind", kept());
        assert!(err.to_string().contains("bad"));
        assert_eq!(&encode_payload("after", &7u8).unwrap().bytes()[..], &[7]);
    }

    /// A value whose `Serialize` fails (after writing some bytes).
    struct Unencodable;
    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&1234u32)?;
            Err(S::Error::custom("no"))
        }
    }

    #[test]
    fn a_payload_encoding_a_payload_inside_gets_its_own_buffer() {
        struct Nested;
        impl Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = encode_payload("inner", &(5u8, "inner")).map_err(serde::ser::Error::custom)?;
                inner.serialize(s)
            }
        }
        let blob = encode_payload("outer", &(1u8, Nested, 2u8)).unwrap();
        let inner = encode("inner", &(5u8, "inner")).unwrap();
        assert_eq!(&blob.bytes()[..], &encode("outer", &(1u8, Blob::from(inner), 2u8)).unwrap()[..]);
    }

    #[test]
    fn a_payload_without_large_buffers_is_one_piece() {
        let blob = encode_payload("value", &value(&big(10, 1), &big(4095, 2))).unwrap();
        assert!(!blob.is_rope());
    }

    /// Every message kind that carries a payload, with it as a rope.
    fn messages(payload: &Blob) -> Vec<ConduitMsg> {
        let mut metadata = Metadata::new().with_str("k", "v", 0);
        // A large metadata blob after the payload is copied, not spliced.
        metadata.push("blob", crate::wire::MetadataValue::Bytes(Blob::new(big(5000, 9))), 0);
        let decl = ChannelDecl { id: ChannelId(3), direction: ChannelDirection::CallerToHandler, initial_credit: 16 };
        let conn = ConnectionId(5);
        [
            Payload::Request {
                id: RequestId(300),
                method_id: MethodId(u64::MAX - 3),
                args: payload.clone(),
                channels: vec![decl],
                metadata: metadata.clone(),
            },
            Payload::Response { id: RequestId(1), ret: ResponseBody::Ok(payload.clone()), metadata: metadata.clone() },
            Payload::Response { id: RequestId(2), ret: ResponseBody::User(payload.clone()), metadata: Metadata::new() },
            Payload::ChannelItem { id: ChannelId(200), item: payload.clone() },
        ]
        .into_iter()
        .map(|payload| ConduitMsg::Message(Message { connection_id: conn, payload }))
        .collect()
    }

    #[test]
    fn a_message_with_a_rope_payload_is_the_bytes_of_the_flat_message() {
        for len in [4096, 20_000, 70_000, 3 << 20] {
            let rope = encode_payload("value", &value(&big(len, 3), &big(len / 2 + 4096, 4))).unwrap();
            assert!(rope.is_rope());
            let flat = Blob::new(rope.bytes().clone());
            for (with_rope, with_flat) in messages(&rope).iter().zip(messages(&flat)) {
                let mut buf = BytesMut::from(&b"head"[..]);
                encode_conduit_into(with_rope, &mut buf).unwrap();
                assert_eq!(&buf[..4], b"head");
                assert_eq!(&buf[4..], &encode("flat", &with_flat).unwrap()[..], "{with_flat:?}");
            }
        }
    }

    #[test]
    fn while_splicing_the_rope_pieces_are_taken_by_reference() {
        let (a, b) = (big(70_000, 5), big(9000, 6));
        let rope = encode_payload("value", &value(&a, &b)).unwrap();
        for msg in messages(&rope) {
            let mut buf = BytesMut::new();
            let (done, taken) = splicing(|| encode_conduit_into(&msg, &mut buf));
            done.unwrap();
            let ptrs: Vec<_> = taken.iter().map(|(_, p)| p.as_ptr()).collect();
            assert!(ptrs.contains(&a.as_ptr()) && ptrs.contains(&b.as_ptr()), "copied: {msg:?}");
            // Put back, the pieces make the plain encoding.
            let mut whole = Vec::new();
            let mut at = 0;
            for (offset, piece) in &taken {
                whole.extend_from_slice(&buf[at..*offset]);
                whole.extend_from_slice(piece);
                at = *offset;
            }
            whole.extend_from_slice(&buf[at..]);
            assert_eq!(whole, encode("plain", &msg).unwrap());
        }
    }

    #[test]
    fn varints_are_postcards() {
        for n in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let mut buf = BytesMut::new();
            put_varint(n, &mut buf);
            assert_eq!(&buf[..], &encode("n", &n).unwrap()[..], "{n}");
        }
    }
}
