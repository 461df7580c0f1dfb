//! Decoder targets: whatever the bytes, a decoder returns `Ok` or `Err`
//! (never panics), costs a bounded amount of memory, agrees with the
//! copying decoder, and what it returns survives a re-encode/decode round
//! trip unchanged.

use crate::alloc;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use vox_core::wire::{self, ConduitMsg, StableMsg};

/// The most a decode may allocate beyond a small factor of its input: the
/// bounded sequences (metadata entries, channels, features) cost a fixed
/// number of bytes each however few bytes they take on the wire, and
/// `DecodeLimits` caps how many there are (about 20 KiB with the defaults,
/// doubled for `Vec` growth).
pub const DECODE_SLACK: usize = 64 * 1024;

/// Memory one decode may cost, at most: 4x its input plus [`DECODE_SLACK`]
/// (rule `session.decode.bounded`; issue 16 asks for at most 4x for a
/// maximal `Request`).
pub fn decode_budget(input_len: usize) -> usize {
    4 * input_len + DECODE_SLACK
}

/// Decodes `data` as a `T` and checks the decoder's properties. Returns the
/// value if it decoded.
pub fn check<T>(what: &'static str, data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let input = Bytes::copy_from_slice(data);

    let base = alloc::reset_peak();
    let shared = wire::decode::<T>(what, &input);
    let cost = alloc::peak().saturating_sub(base);
    let budget = decode_budget(data.len());
    assert!(
        cost <= budget,
        "decoding {what} from {} bytes allocated {cost} bytes at peak (budget {budget}); result: {}",
        data.len(),
        if shared.is_ok() { "Ok" } else { "Err" }
    );

    // The copying decoder (`decode_slice`) must agree with the sharing one.
    let copied = wire::decode_slice::<T>(what, data);
    let value = match (shared, copied) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decode and decode_slice of {what} disagree");
            a
        }
        (Err(_), Err(_)) => return None,
        (a, b) => panic!("decode and decode_slice of {what} disagree: {a:?} vs {b:?}"),
    };

    // Round trip: the value re-encodes, decodes again to an equal value, and
    // the re-encoding is canonical (stable) and never longer than the input.
    let encoded = wire::encode(what, &value).unwrap_or_else(|e| panic!("re-encoding a decoded {what}: {e}"));
    assert!(
        encoded.len() <= data.len(),
        "re-encoded {what} is longer ({}) than the input it was decoded from ({})",
        encoded.len(),
        data.len()
    );
    let again = wire::decode::<T>(what, &Bytes::from(encoded.clone()))
        .unwrap_or_else(|e| panic!("decoding a re-encoded {what}: {e}\nvalue: {value:?}"));
    assert_eq!(value, again, "{what} changed in a re-encode/decode round trip");
    let twice = wire::encode(what, &again).expect("encoding again");
    assert_eq!(encoded, twice, "re-encoding {what} is not stable");
    Some(value)
}

/// The `decode_transport` target.
pub fn transport(data: &[u8]) {
    check::<wire::TransportMsg>("TransportMsg", data);
}

/// The `decode_conduit` target (handshake messages and session messages).
pub fn conduit(data: &[u8]) {
    check::<ConduitMsg>("ConduitMsg", data);
}

/// The `decode_stable` target: a stable-conduit link message and, for a
/// frame, its item as the conduit message it carries (as the stable conduit
/// decodes it).
pub fn stable(data: &[u8]) {
    if let Some(StableMsg::Frame(frame)) = check::<StableMsg>("StableMsg", data) {
        check::<ConduitMsg>("ConduitMsg", frame.item.bytes());
    }
}

/// The `decode_stable_hello` target: the stable conduit's setup messages,
/// `ClientHello` (client to server) and `StableHelloReply` (the answer),
/// each decoded from the whole input.
pub fn stable_hello(data: &[u8]) {
    check::<wire::ClientHello>("ClientHello", data);
    check::<wire::StableHelloReply>("StableHelloReply", data);
}
