//! `cases::RESTRICTED` is the one place that says which cases run over one
//! transport only: every name in it is a case, and every case that takes a
//! raw TCP stream (`subject::dial_raw`, `subject::server_raw`) is in it as
//! tcp-only, so no such case is ever run, or counted, over TLS or WebSocket.

use std::path::Path;
use vox_spec_tests::cases::{CASES, RESTRICTED};
use vox_spec_tests::transport::Kind;

#[test]
fn restricted_names_are_cases() {
    for (name, _, why) in RESTRICTED {
        assert!(CASES.iter().any(|c| c.name == *name), "RESTRICTED names {name}, which is no case");
        assert!(!why.trim().is_empty(), "RESTRICTED gives no reason for {name}");
    }
}

#[test]
fn cases_on_raw_tcp_are_tcp_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cases");
    let mut checked = 0;
    for path in case_files(&dir) {
        let text = std::fs::read_to_string(&path).expect("read case file");
        // Split into top-level functions: each chunk starts at `pub async fn`.
        for chunk in text.split("\npub async fn ").skip(1) {
            let name = chunk.split('(').next().unwrap_or_default().trim();
            if chunk.contains("dial_raw(") || chunk.contains("server_raw(") {
                checked += 1;
                let case = CASES.iter().find(|c| c.name == name);
                assert!(case.is_some(), "{name} takes a raw TCP stream but is no case");
                assert_eq!(
                    case.and_then(|c| c.only_on()).map(|(k, _)| k),
                    Some(Kind::Tcp),
                    "{name} takes a raw TCP stream: mark it tcp-only in cases::RESTRICTED"
                );
            }
        }
    }
    assert!(checked >= 4, "found only {checked} cases on raw TCP; the scan is broken");
}

/// The `.rs` files under `dir`, in its subfolders too (a group of cases
/// may be a folder, like `cases/schema/`).
fn case_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read a cases folder") {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            out.extend(case_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out
}
