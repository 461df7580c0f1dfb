//! Decoder robustness: whatever bytes a peer sends, every top-level decoder
//! returns `Ok` or `Err` (never panics), announced lengths never make it
//! reserve memory the input does not justify, and every `Message` value
//! survives an encode/decode round trip.
//!
//! Case count: 10,000 per property by default. Set `PROPTEST_CASES=<n>` to
//! override it (e.g. `PROPTEST_CASES=200` for a quick run, or a large value
//! for a soak). proptest only reads that variable for `ProptestConfig::default()`,
//! so [`config`] reads it explicitly on top of our own default.
//!
//! Allocation bound: the workspace sets `unsafe_code = "forbid"`, which a
//! test file cannot relax with `#![allow(unsafe_code)]` (rustc error E0453),
//! so a counting `#[global_allocator]` (it needs an `unsafe impl GlobalAlloc`)
//! is not possible here. Instead, on Linux, the huge-length inputs are decoded
//! in a child process of this test binary that runs under an address-space
//! limit (`ulimit -v`): reserving the announced size aborts the child and
//! fails the test. A control child proves the limit is enforced.

#[path = "common/wire_vectors.rs"]
mod wire_vectors;

use bytes::Bytes;
use proptest::prelude::*;
use std::time::{Duration, Instant};
use vox_core::wire::{
    Blob, ChannelDecl, ChannelDirection, ChannelId, ConnectionId, ConnectionSettings, DecodeError, Message, Metadata,
    MetadataEntry, MetadataValue, MethodId, Parity, Payload, RequestId, ResponseBody, decode, decode_slice, encode,
};
use wire_vectors::{Vector, decode_with_every_decoder, vectors};

const DEFAULT_CASES: u32 = 10_000;

/// 10,000 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// Decodes `input` with every decoder, both the zero-copy and the slice
/// entry points, and checks that whatever decoded re-encodes to bytes that
/// decode to the same value (decoders may accept non-minimal varints, so
/// the bytes themselves can differ).
fn decode_everything(input: &[u8]) -> Result<(), TestCaseError> {
    let bytes = Bytes::copy_from_slice(input);
    for decoded in decode_with_every_decoder(&bytes).into_iter().flatten() {
        let again = decoded.decode_same_type(&Bytes::from(decoded.encode()));
        prop_assert_eq!(again.ok(), Some(decoded), "re-encoding a decoded value changed it");
    }
    // The slice decoders must agree with the zero-copy ones on success.
    let slice_ok = [
        decode_slice::<vox_core::wire::TransportMsg>("TransportMsg", input).is_ok(),
        decode_slice::<vox_core::wire::ConduitMsg>("ConduitMsg", input).is_ok(),
        decode_slice::<vox_core::wire::HandshakeMsg>("HandshakeMsg", input).is_ok(),
        decode_slice::<Message>("Message", input).is_ok(),
        decode_slice::<vox_core::wire::ClientHello>("ClientHello", input).is_ok(),
        decode_slice::<vox_core::wire::ServerHello>("ServerHello", input).is_ok(),
        decode_slice::<vox_core::wire::StableFrame>("StableFrame", input).is_ok(),
        decode_slice::<vox_core::wire::StableHelloReply>("StableHelloReply", input).is_ok(),
        decode_slice::<vox_core::wire::StableMsg>("StableMsg", input).is_ok(),
        decode_slice::<Metadata>("Metadata", input).is_ok(),
        decode_slice::<vox_core::schema::SchemaQuery>("SchemaQuery", input).is_ok(),
        decode_slice::<vox_core::schema::SchemaAnswer>("SchemaAnswer", input).is_ok(),
    ];
    let bytes_ok: Vec<bool> = decode_with_every_decoder(&bytes).iter().map(Result::is_ok).collect();
    prop_assert_eq!(&slice_ok[..], &bytes_ok[..], "decode and decode_slice disagree");
    Ok(())
}

// ------------------------------------------------------------- mutations

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Insert { at, byte } => {
            let i = at % (bytes.len() + 1);
            bytes.insert(i, *byte);
        }
        _ if bytes.is_empty() => {}
        Mutation::FlipBit { at, bit } => {
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
        }
        Mutation::SetByte { at, byte } => {
            let i = at % bytes.len();
            bytes[i] = *byte;
        }
        Mutation::Delete { at } => {
            bytes.remove(at % bytes.len());
        }
        Mutation::Truncate { at } => bytes.truncate(at % bytes.len()),
    }
}

#[test]
fn mutation_helper_changes_the_bytes_as_described() {
    let mut b = vec![0u8, 1, 2, 3];
    apply(&mut b, &Mutation::FlipBit { at: 0, bit: 7 });
    assert_eq!(b, [0x80, 1, 2, 3]);
    apply(&mut b, &Mutation::Delete { at: 0 });
    assert_eq!(b, [1, 2, 3]);
    apply(&mut b, &Mutation::Insert { at: 3, byte: 9 });
    assert_eq!(b, [1, 2, 3, 9]);
    apply(&mut b, &Mutation::Truncate { at: 2 });
    assert_eq!(b, [1, 2]);
}

// ------------------------------------------------- strategies for Message

fn blob() -> impl Strategy<Value = Blob> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Blob::from)
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn parity() -> impl Strategy<Value = Parity> {
    prop_oneof![Just(Parity::Odd), Just(Parity::Even)]
}

fn settings() -> impl Strategy<Value = ConnectionSettings> {
    (any::<u32>(), any::<u32>()).prop_map(|(max_concurrent_requests, max_initial_credit)| ConnectionSettings {
        max_concurrent_requests,
        max_initial_credit,
    })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    let value = prop_oneof![
        text().prop_map(MetadataValue::String),
        blob().prop_map(MetadataValue::Bytes),
        any::<u64>().prop_map(MetadataValue::U64),
    ];
    let entry =
        (text(), value, any::<u64>()).prop_map(|(key, value, flags)| MetadataEntry { key: key.into(), value, flags });
    proptest::collection::vec(entry, 0..4).prop_map(Metadata)
}

fn channel_decl() -> impl Strategy<Value = ChannelDecl> {
    let direction = prop_oneof![Just(ChannelDirection::CallerToHandler), Just(ChannelDirection::HandlerToCaller)];
    (any::<u64>(), direction, any::<u32>()).prop_map(|(id, direction, initial_credit)| ChannelDecl {
        id: ChannelId(id),
        direction,
        initial_credit,
    })
}

fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        blob().prop_map(ResponseBody::Ok),
        blob().prop_map(ResponseBody::User),
        Just(ResponseBody::UnknownMethod),
        text().prop_map(|reason| ResponseBody::InvalidPayload { reason }),
        Just(ResponseBody::Cancelled),
        Just(ResponseBody::Indeterminate),
        text().prop_map(|reason| ResponseBody::HandlerFailed { reason }),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    let rid = any::<u64>().prop_map(RequestId);
    let cid = || any::<u64>().prop_map(ChannelId);
    prop_oneof![
        text().prop_map(|description| Payload::ProtocolError { description }),
        any::<u64>().prop_map(|nonce| Payload::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Payload::Pong { nonce }),
        (parity(), settings(), metadata()).prop_map(|(parity, settings, metadata)| Payload::OpenConnection {
            parity,
            settings,
            metadata
        }),
        (settings(), metadata()).prop_map(|(settings, metadata)| Payload::AcceptConnection { settings, metadata }),
        metadata().prop_map(|metadata| Payload::RejectConnection { metadata }),
        metadata().prop_map(|metadata| Payload::CloseConnection { metadata }),
        (rid.clone(), any::<u64>(), blob(), proptest::collection::vec(channel_decl(), 0..4), metadata()).prop_map(
            |(id, method, args, channels, metadata)| Payload::Request {
                id,
                method_id: MethodId(method),
                args,
                channels,
                metadata
            }
        ),
        (rid.clone(), response_body(), metadata()).prop_map(|(id, ret, metadata)| Payload::Response {
            id,
            ret,
            metadata
        }),
        rid.prop_map(|id| Payload::CancelRequest { id }),
        (cid(), blob()).prop_map(|(id, item)| Payload::ChannelItem { id, item }),
        (cid(), metadata()).prop_map(|(id, metadata)| Payload::CloseChannel { id, metadata }),
        (cid(), metadata()).prop_map(|(id, metadata)| Payload::ResetChannel { id, metadata }),
        (cid(), any::<u32>()).prop_map(|(id, additional)| Payload::GrantCredit { id, additional }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), payload()).prop_map(|(c, payload)| Message { connection_id: ConnectionId(c), payload })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&input)?;
    }

    #[test]
    fn decoders_never_panic_on_mutated_golden_vectors(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let all = vectors();
        let (_, vector) = &all[which % all.len()];
        let mut bytes = vector.encode();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_everything(&bytes)?;
    }

    #[test]
    fn any_message_round_trips(msg in message()) {
        let encoded = Bytes::from(encode("Message", &msg).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let decoded: Message = decode("Message", &encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &msg);
        // Also as the conduit wraps it, and inside a stable frame.
        let conduit = vox_core::wire::ConduitMsg::Message(msg);
        let frame = vox_core::wire::StableFrame {
            seq: 1,
            ack: None,
            item: Blob::from(encode("ConduitMsg", &conduit).map_err(|e| TestCaseError::fail(e.to_string()))?),
        };
        let framed = Bytes::from(encode("StableFrame", &frame).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let frame_back: vox_core::wire::StableFrame =
            decode("StableFrame", &framed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let conduit_back: vox_core::wire::ConduitMsg =
            decode("ConduitMsg", frame_back.item.bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(conduit_back, conduit);
    }
}

// ---------------------------------------------- huge announced lengths

/// LEB128 varint, as postcard writes lengths.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn varint_helper_matches_postcard() {
    for n in [0u64, 1, 127, 128, 300, 1 << 32, u64::MAX] {
        assert_eq!(varint(n), encode("u64", &n).unwrap(), "{n}");
    }
}

/// Announced lengths, from merely too long for the input to absurd.
const HUGE: [u64; 6] = [1 << 16, 1 << 26, 1 << 32, 1 << 48, 1 << 60, u64::MAX];

/// Inputs whose length prefix (sequence, string or blob) claims far more
/// than follows, as (description, decoder, bytes). The claim is followed by
/// 64 zero bytes, so a few elements (e.g. empty metadata entries) do decode
/// before the input runs out.
fn huge_length_inputs() -> Vec<(String, &'static str, Vec<u8>)> {
    // (description, decoder, bytes before the length, bytes after it)
    let shapes: [(&str, &str, &[u8]); 14] = [
        ("metadata entries", "Metadata", &[]),
        ("metadata key", "Metadata", &[0x01]),
        ("metadata string value", "Metadata", &[0x01, 0x00, 0x00]),
        ("metadata bytes value", "Metadata", &[0x01, 0x00, 0x01]),
        ("open-connection metadata", "Message", &[0x03, 0x03, 0x01, 0x08, 0x10]),
        ("request args", "Message", &[0x00, 0x07, 0x01, 0x01]),
        ("request channels", "Message", &[0x00, 0x07, 0x01, 0x01, 0x00]),
        ("request metadata", "Message", &[0x00, 0x07, 0x01, 0x01, 0x00, 0x00]),
        ("hello features", "HandshakeMsg", &[0x00, 0x01, 0x00, 0x40, 0x80, 0x08]),
        ("hello-yourself features", "ConduitMsg", &[0x00, 0x01, 0x01, 0x20, 0x10]),
        ("transport reject reason", "TransportMsg", &[0x02]),
        ("protocol error description", "ConduitMsg", &[0x01, 0x00, 0x00]),
        ("server hello resume key", "ServerHello", &[]),
        ("stable frame item", "StableFrame", &[0x00, 0x00]),
    ];
    let mut out = Vec::new();
    for (what, decoder, prefix) in shapes {
        for n in HUGE {
            let mut bytes = prefix.to_vec();
            bytes.extend(varint(n));
            bytes.extend([0u8; 64]);
            out.push((format!("{what} announcing {n}"), decoder, bytes));
        }
    }
    out
}

fn decode_as(decoder: &str, bytes: &Bytes) -> Result<Vector, DecodeError> {
    let all = decode_with_every_decoder(bytes);
    let index = [
        "TransportMsg",
        "ConduitMsg",
        "HandshakeMsg",
        "Message",
        "ClientHello",
        "ServerHello",
        "StableFrame",
        "StableHelloReply",
        "StableMsg",
        "Metadata",
    ]
    .iter()
    .position(|d| *d == decoder)
    .unwrap_or_else(|| panic!("unknown decoder {decoder}"));
    all.into_iter().nth(index).unwrap_or_else(|| panic!("no result for {decoder}"))
}

#[test]
fn huge_length_inputs_reach_the_length_they_test() {
    // Each shape must be valid up to the length: with the length replaced by
    // 0 and the zero padding trimmed to what the rest of the message needs,
    // some input decodes. This keeps the shapes from silently failing early
    // (e.g. on a wrong variant index) and so testing nothing.
    for (what, decoder, bytes) in huge_length_inputs().into_iter().filter(|(w, ..)| w.ends_with(" 65536")) {
        let prefix_len = bytes.len() - 64 - varint(1 << 16).len();
        let decodes = (0..=64).any(|pad| {
            let mut b = bytes[..prefix_len].to_vec();
            b.push(0);
            b.extend(std::iter::repeat_n(0u8, pad));
            decode_as(decoder, &Bytes::from(b)).is_ok()
        });
        assert!(decodes, "{what}: the prefix is not a valid {decoder} prefix");
    }
}

#[test]
fn huge_announced_lengths_are_rejected_quickly() {
    let start = Instant::now();
    for (what, decoder, bytes) in huge_length_inputs() {
        let result = decode_as(decoder, &Bytes::from(bytes));
        assert!(
            matches!(result, Err(DecodeError::Malformed { .. } | DecodeError::LimitExceeded { .. })),
            "{what}: expected a malformed-input or decode-limit error, got {result:?}"
        );
    }
    // Generous: the whole batch takes microseconds; an implementation that
    // reserved or zeroed the announced sizes would take far longer.
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "decoding the huge-length inputs took {elapsed:?}");
}

/// Address-space limit for the child processes, in KiB. The child runs in
/// about 8 MiB of address space (measured on Linux/glibc, debug build);
/// 128 MiB leaves ample headroom while any reservation of an announced
/// 2^26-or-more elements (at least 1 GiB for the smallest element type,
/// `ChannelDecl`) or 2^32-or-more bytes is far beyond it. Reservations below
/// ~100 MiB are not caught by this check; the capped preallocation
/// (`MAX_PREALLOCATED_ELEMENTS`) is what keeps those small.
#[cfg(target_os = "linux")]
const CHILD_ADDRESS_SPACE_KIB: u64 = 128 * 1024;

/// Runs one `#[ignore]`d test of this binary in a child under the
/// address-space limit; returns (success, stdout, stderr).
#[cfg(target_os = "linux")]
fn run_limited_child(test: &str) -> (bool, String, String) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let script =
        format!("ulimit -v {CHILD_ADDRESS_SPACE_KIB} && exec \"$0\" --ignored --exact --test-threads=1 {test}");
    let out = std::process::Command::new("sh").arg("-c").arg(script).arg(exe).output().expect("running sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(target_os = "linux")]
#[test]
fn huge_announced_lengths_never_reserve_the_announced_size() {
    let (ok, stdout, stderr) = run_limited_child("child_decode_huge_lengths");
    assert!(ok && stdout.contains("1 passed"), "child failed under the memory limit:\n{stdout}\n{stderr}");
}

#[cfg(target_os = "linux")]
#[test]
fn address_space_limit_catches_an_oversized_reservation() {
    // Control for the test above: the same limit does stop a 1 GiB reservation.
    let (ok, stdout, stderr) = run_limited_child("child_reserve_one_gib");
    assert!(!ok, "reserving 1 GiB succeeded under a {CHILD_ADDRESS_SPACE_KIB} KiB limit:\n{stdout}\n{stderr}");
    assert!(stderr.contains("memory allocation"), "child failed for another reason:\n{stdout}\n{stderr}");
}

#[test]
#[ignore = "child process of huge_announced_lengths_never_reserve_the_announced_size"]
fn child_decode_huge_lengths() {
    for (what, decoder, bytes) in huge_length_inputs() {
        assert!(decode_as(decoder, &Bytes::from(bytes)).is_err(), "{what}");
    }
}

#[test]
#[ignore = "child process of address_space_limit_catches_an_oversized_reservation"]
fn child_reserve_one_gib() {
    let v: Vec<u64> = Vec::with_capacity(1 << 27);
    assert!(std::hint::black_box(v.capacity()) >= 1 << 27);
}
