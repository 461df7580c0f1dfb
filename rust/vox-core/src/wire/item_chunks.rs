//! Small channel items encoded into shared chunks instead of an
//! allocation each.
//!
//! A stream of small items (numbers, short structs) paid one `malloc` per
//! item for its encoded bytes and one `free` when the session writer had
//! copied them into its batch: about 370 of the 3,220 instructions an item
//! cost both ends (docs/perf.md, issue 20). Here each thread keeps one chunk
//! of [`CHUNK`] bytes; an item's bytes are appended to it and split off as
//! a `Bytes` that shares the chunk, so a new allocation is made once per
//! chunk, and dropping an item is a reference count decrement.
//!
//! What this costs: a chunk lives until the last item cut from it is
//! dropped. Channel items are short-lived (queued, written, dropped; at
//! most the channel's credit of them held anywhere), so a chunk is pinned
//! for about as long as one batch takes to write, and never by more than
//! its [`CHUNK`] bytes per item still alive.

use super::codec::{EncodeError, not_splicing};
use super::rope::encode_payload;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use std::cell::RefCell;

/// The size of one chunk.
const CHUNK: usize = 1024;

/// Items up to this size go into a chunk; larger ones get a buffer of their
/// own ([`encode_payload`]), as do the large byte buffers inside them.
const SMALL_ITEM: usize = 128;

thread_local! {
    static ITEMS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Encodes one channel item as [`encode_payload`] does, returning its bytes
/// in one buffer; an item of at most 128 bytes shares a chunk with the
/// items encoded before it on this thread. What `Tx::send` uses; for
/// `Tx::send_raw`, encode with this.
///
/// ```
/// let item = vox_core::wire::encode_item("item", &7u64).unwrap();
/// assert_eq!(&item[..], &[7]);
/// ```
///
/// # Errors
/// [`EncodeError`] if `value` cannot be encoded.
pub fn encode_item<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Bytes, EncodeError> {
    let mut small = [0u8; SMALL_ITEM];
    let Ok(used) = not_splicing(|| postcard::to_slice(value, &mut small)) else {
        return Ok(encode_payload(what, value)?.into_bytes());
    };
    let used: &[u8] = used;
    Ok(ITEMS.with(|chunk| {
        let Ok(mut chunk) = chunk.try_borrow_mut() else { return Bytes::copy_from_slice(used) };
        if chunk.capacity() - chunk.len() < used.len() {
            *chunk = BytesMut::with_capacity(CHUNK);
        }
        chunk.extend_from_slice(used);
        chunk.split().freeze()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_items_small_share_a_chunk_and_encode_as_encode_does() {
        let a = encode_item("item", &7u64).unwrap();
        let b = encode_item("item", &300u64).unwrap();
        assert_eq!(&a[..], &crate::wire::encode("item", &7u64).unwrap()[..]);
        assert_eq!(&b[..], &crate::wire::encode("item", &300u64).unwrap()[..]);
        // Cut from one chunk: b starts where a ends.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        // A full chunk is replaced, not grown: earlier items keep their bytes.
        let items: Vec<Bytes> = (0..200u64).map(|i| encode_item("item", &(i << 40)).unwrap()).collect();
        for (i, item) in items.iter().enumerate() {
            assert_eq!(&item[..], &crate::wire::encode("item", &((i as u64) << 40)).unwrap()[..]);
        }
        assert_eq!(&a[..], &[7]);
    }

    #[test]
    fn channel_items_large_get_their_own_buffer() {
        let big = vec![5u8; 4000];
        let item = encode_item("item", &big).unwrap();
        assert_eq!(&item[..], &crate::wire::encode("item", &big).unwrap()[..]);
        let small = encode_item("item", &1u8).unwrap();
        assert!(!(item.as_ptr()..item.as_ptr().wrapping_add(item.len())).contains(&small.as_ptr()));
    }
}
