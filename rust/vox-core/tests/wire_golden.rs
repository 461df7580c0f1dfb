//! Golden byte vectors: the examples in `docs/spec/wire.md` ("Golden
//! vectors") must be exactly what `vox_core::wire::encode` produces, and must
//! decode back to the same values.
//!
//! To regenerate the table after a deliberate format change, run
//! `VOX_BLESS=1 cargo test -p vox-core --test wire_golden -- --nocapture` and
//! paste the printed rows into the doc by hand. The test never rewrites the
//! doc, and still fails until the doc matches.

#[path = "common/wire_vectors.rs"]
mod wire_vectors;

use bytes::Bytes;
use std::collections::BTreeMap;
use wire_vectors::{decode_with_every_decoder, vectors};

const SECTION: &str = "## Golden vectors";

/// Lowercase hex without separators.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase (or uppercase) hex without separators.
pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {hex:?}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            let pair = hex.get(i..i + 2).ok_or_else(|| format!("non-ASCII hex in {hex:?}"))?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("bad hex {pair:?} in {hex:?}: {e}"))
        })
        .collect()
}

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/spec/wire.md")
}

/// The `| name | hex |` rows of the "Golden vectors" section, in order.
fn doc_rows() -> Vec<(String, String)> {
    let path = doc_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_rows(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_rows(text: &str) -> Result<Vec<(String, String)>, String> {
    let start = text.find(SECTION).ok_or_else(|| format!("no {SECTION:?} section"))?;
    let section = &text[start + SECTION.len()..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let mut rows = Vec::new();
    for line in section.lines().map(str::trim).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [name, hex] = cells[..] else {
            return Err(format!("row {line:?} does not have exactly two cells"));
        };
        if name == "name" || name.chars().all(|c| c == '-' || c == ':') {
            continue; // header or separator
        }
        if hex.is_empty() || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!("row {name}: hex must be non-empty lowercase hex without spaces, got {hex:?}"));
        }
        rows.push((name.to_owned(), hex.to_owned()));
    }
    if rows.is_empty() {
        return Err(format!("the {SECTION:?} section has no rows"));
    }
    Ok(rows)
}

fn doc_table() -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for (name, hex) in doc_rows() {
        if table.insert(name.clone(), hex).is_some() {
            panic!("vector {name} is listed twice in the doc");
        }
    }
    table
}

#[test]
fn wire_golden_vector_names_are_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in vectors() {
        assert!(seen.insert(name), "vector name {name} is used twice in the code");
    }
}

#[test]
fn wire_golden_vectors_match_doc() {
    let all = vectors();
    if std::env::var("VOX_BLESS").as_deref() == Ok("1") {
        println!("| name | hex |\n|---|---|");
        for (name, vector) in &all {
            println!("| {name} | {} |", to_hex(&vector.encode()));
        }
    }
    let doc = doc_table();
    let mut mismatches = Vec::new();
    for (name, vector) in &all {
        let actual = to_hex(&vector.encode());
        match doc.get(*name) {
            None => mismatches.push(format!("{name}: missing from the doc (encodes to {actual})")),
            Some(expected) if *expected != actual => {
                mismatches.push(format!("{name}: doc says {expected}, encode gives {actual}"))
            }
            Some(_) => {}
        }
    }
    assert!(mismatches.is_empty(), "golden vectors differ from docs/spec/wire.md:\n{}", mismatches.join("\n"));
}

#[test]
fn wire_doc_lists_no_unknown_vector() {
    let known: std::collections::BTreeSet<&str> = vectors().into_iter().map(|(name, _)| name).collect();
    let unknown: Vec<String> = doc_table().into_keys().filter(|name| !known.contains(name.as_str())).collect();
    assert!(unknown.is_empty(), "rows in docs/spec/wire.md with no vector in the code: {unknown:?}");
}

#[test]
fn wire_golden_vectors_round_trip() {
    let doc = doc_table();
    for (name, vector) in vectors() {
        let Some(hex) = doc.get(name) else { continue }; // reported by wire_golden_vectors_match_doc
        let bytes = Bytes::from(from_hex(hex).unwrap_or_else(|e| panic!("{name}: {e}")));
        let decoded =
            vector.decode_same_type(&bytes).unwrap_or_else(|e| panic!("{name}: doc hex does not decode: {e}"));
        assert_eq!(decoded, vector, "{name}: doc hex decodes to a different value");
    }
}

#[test]
fn wire_decoder_table_decodes_each_vector_as_its_own_type() {
    // `decode_with_every_decoder` (also used by the robustness tests) must
    // map each type to its own decoder. A vector may also be a valid
    // encoding of another type; that is fine.
    for (name, vector) in vectors() {
        let bytes = Bytes::from(vector.encode());
        let results = decode_with_every_decoder(&bytes);
        let own = results
            .into_iter()
            .flatten()
            .find(|v| v.what() == vector.what())
            .unwrap_or_else(|| panic!("{name}: does not decode as {}", vector.what()));
        assert_eq!(own, vector, "{name}");
    }
}

#[test]
fn wire_golden_vector_with_a_trailing_byte_is_rejected() {
    for (name, vector) in vectors() {
        let mut bytes = vector.encode();
        bytes.push(0);
        let err = vector.decode_same_type(&Bytes::from(bytes)).expect_err(name);
        assert!(
            matches!(err, vox_core::wire::DecodeError::TrailingBytes { trailing: 1, .. }),
            "{name}: expected a trailing-bytes error, got {err}"
        );
    }
}

#[test]
fn wire_golden_truncated_vector_is_rejected() {
    for (name, vector) in vectors() {
        let bytes = vector.encode();
        for len in 0..bytes.len() {
            let cut = Bytes::copy_from_slice(&bytes[..len]);
            assert!(vector.decode_same_type(&cut).is_err(), "{name}: prefix of {len} bytes decoded");
        }
    }
}

#[test]
fn wire_doc_parser_rejects_malformed_rows() {
    let ok = "x\n## Golden vectors\n\n| name | hex |\n|---|---|\n| a.b | 00ff |\n\n## Next\n| c | zz |\n";
    assert_eq!(parse_rows(ok), Ok(vec![("a.b".to_owned(), "00ff".to_owned())]));
    assert!(parse_rows("## Golden vectors\n| a | 00 ff |\n").is_err(), "spaces in hex");
    assert!(parse_rows("## Golden vectors\n| a | 00FF |\n").is_err(), "uppercase hex");
    assert!(parse_rows("## Golden vectors\n| a | 00 | x |\n").is_err(), "three cells");
    assert!(parse_rows("## Golden vectors\n| name | hex |\n").is_err(), "no rows");
    assert!(parse_rows("| a | 00 |\n").is_err(), "no section");
}

// ------------------------------------------------- primitives (section 1)

fn hex_of<T: serde::Serialize>(value: &T) -> String {
    to_hex(&vox_core::wire::encode("primitive", value).unwrap())
}

#[test]
fn wire_primitives_encode_as_the_doc_says() {
    // 1.1 varint table
    for (value, hex) in
        [(0u64, "00"), (127, "7f"), (128, "8001"), (300, "ac02"), (1024, "8008"), (u64::MAX, "ffffffffffffffffff01")]
    {
        assert_eq!(hex_of(&value), hex, "u64 {value}");
    }
    assert_eq!(hex_of(&u32::MAX), "ffffffff0f");
    assert_eq!(hex_of(&u16::MAX), "ffff03", "a u16 takes at most 3 bytes");
    // 1.2 zigzag
    assert_eq!(hex_of(&[0i64, -1, 1, -2]), "00010203");
    // 1.3 option
    assert_eq!(hex_of(&None::<u32>), "00");
    assert_eq!(hex_of(&Some(41u32)), "0129");
    // 1.4 string
    assert_eq!(hex_of(&"hé"), "0368c3a9");
    assert_eq!(hex_of(&""), "00");
    // 1.5 blob: length then raw bytes (not a sequence of u8 varints)
    assert_eq!(hex_of(&vox_core::wire::Blob::from(vec![0xffu8, 0x80])), "02ff80");
    // 1.6 fixed array: raw bytes, no length
    assert_eq!(hex_of(&vox_core::wire::TRANSPORT_MAGIC), "564f5831");
    // 1.7 ids are plain varints
    assert_eq!(hex_of(&vox_core::wire::ChannelId(300)), "ac02");
    // 1.8 parity and mode
    assert_eq!(hex_of(&vox_core::wire::Parity::Even), "01");
    assert_eq!(hex_of(&vox_core::wire::ConduitMode::Stable), "01");
}

fn decodes<T: serde::de::DeserializeOwned>(hex: &str) -> Result<T, vox_core::wire::DecodeError> {
    vox_core::wire::decode("doc claim", &Bytes::from(from_hex(hex).unwrap()))
}

#[test]
fn wire_decoder_accepts_non_minimal_varints() {
    // Documented in 1.1: re-encoding is not byte-identical to the input.
    let md: vox_core::wire::Metadata = decodes("8000").expect("non-minimal count");
    assert!(md.is_empty());
    let msg: vox_core::wire::Message = decodes("800001ac02").expect("non-minimal connection id");
    assert_eq!(to_hex(&vox_core::wire::encode("Message", &msg).unwrap()), "0001ac02");
}

#[test]
fn wire_decoder_rejects_malformed_primitives() {
    use vox_core::wire::{ClientHello, ConduitMsg, Message, TransportMsg};
    // Each case: (what, accepted input, rejected input differing only in the
    // part under test), so a rejection cannot come from elsewhere.
    let message: [(&str, &str, &str); 5] = [
        ("u32 varint with bits beyond 32", "000d01ffffffff0f", "000d01ffffffff1f"),
        ("u64 varint longer than 10 bytes", "0001ffffffffffffffffff01", "0001ffffffffffffffffff8001"),
        ("payload index 14", "000d0101", "000e0101"),
        ("channel direction 2", "00070101000101010000", "00070101000101020000"),
        ("overlong string length", "000003616263", "000004616263"),
    ];
    for (what, good, bad) in message {
        assert!(decodes::<Message>(good).is_ok(), "{what}: control {good} should decode");
        assert!(decodes::<Message>(bad).is_err(), "{what}: {bad} should not decode");
    }
    assert!(decodes::<ClientHello>("0000").is_ok());
    assert!(decodes::<ClientHello>("0200").is_err(), "option tag 2");
    assert!(decodes::<ConduitMsg>("0002").is_ok());
    assert!(decodes::<ConduitMsg>("0202").is_err(), "conduit index 2");
    assert!(decodes::<TransportMsg>("020161").is_ok());
    assert!(decodes::<TransportMsg>("0201ff").is_err(), "invalid UTF-8");
    assert!(decodes::<TransportMsg>("0301").is_err(), "transport index 3");
}
