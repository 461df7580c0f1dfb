//! Documentation rules the compiler does not check, read from the sources.
//!
//! The engineering standard: every public async fn documents `# Cancel
//! safety` (what dropping its future before it completes leaves behind) and
//! `# Errors` (which errors it returns and when, or "Never fails" and why).
//!
//! A public async fn is a `pub async fn` line, at any indentation, outside
//! comments and string literals; its doc is the run of `///` lines (and
//! attributes, and plain `//` comments) right above it.

use std::path::{Path, PathBuf};

const SECTIONS: &[&str] = &["# Cancel safety", "# Errors"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which lines of `src` start inside a block comment or a string literal
/// (a multi-line one), where a `pub async fn` is not code.
fn lines_inside_comment_or_string(src: &str) -> Vec<bool> {
    let b = src.as_bytes();
    let mut inside = vec![false];
    let mut i = 0;
    // Block comment nesting depth; in a string, the closing delimiter.
    let mut depth = 0usize;
    let mut string: Option<Vec<u8>> = None;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            inside.push(depth > 0 || string.is_some());
            i += 1;
        } else if let Some(close) = &string {
            if close == b"\"" && c == b'\\' {
                // An escape; an escaped newline still starts a new line.
                i += if b.get(i + 1) == Some(&b'\n') { 1 } else { 2 };
            } else if b[i..].starts_with(close) {
                i += close.len();
                string = None;
            } else {
                i += 1;
            }
        } else if depth > 0 {
            if b[i..].starts_with(b"/*") {
                depth += 1;
                i += 2;
            } else if b[i..].starts_with(b"*/") {
                depth -= 1;
                i += 2;
            } else {
                i += 1;
            }
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            depth = 1;
            i += 2;
        } else if c == b'"' {
            string = Some(b"\"".to_vec());
            i += 1;
        } else if c == b'r' && starts_word(b, i) && matches!(b.get(i + 1), Some(b'"' | b'#')) {
            // A raw string r"..." or r#"..."# (br"..." too), or an identifier
            // like r#type.
            let mut j = i + 1;
            while j < b.len() && b[j] == b'#' {
                j += 1;
            }
            if b.get(j) == Some(&b'"') {
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', j - i - 1));
                string = Some(close);
                i = j + 1;
            } else {
                i = j;
            }
        } else if c == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A char literal ('"' or '\''); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    inside
}

/// Whether `b[i]` starts a token: no identifier character before it, or
/// only the `b` of a byte string.
fn starts_word(b: &[u8], i: usize) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    match i {
        0 => true,
        1 => !ident(b[0]) || b[0] == b'b',
        _ => !ident(b[i - 1]) || (b[i - 1] == b'b' && !ident(b[i - 2])),
    }
}

/// The name of the fn a `pub async fn` line declares.
fn pub_async_fn(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("pub")?;
    let rest = rest.strip_prefix(char::is_whitespace)?.trim_start().strip_prefix("async")?;
    let rest = rest.strip_prefix(char::is_whitespace)?.trim_start().strip_prefix("fn")?;
    let rest = rest.strip_prefix(char::is_whitespace)?.trim_start();
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The doc lines right above line `at`: `///` lines, with the attributes
/// and plain comments between them and the fn.
fn doc_above<'a>(lines: &[&'a str], at: usize) -> Vec<&'a str> {
    let mut doc = Vec::new();
    for line in lines[..at].iter().rev() {
        let t = line.trim_start();
        if t.starts_with("///") {
            doc.push(t);
        } else if !(t.starts_with("#[") || t.starts_with("//")) {
            break;
        }
    }
    doc
}

#[test]
fn public_async_fns_document_cancel_safety_and_errors() {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut checked = 0;
    let mut missing = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        let inside = lines_inside_comment_or_string(&text);
        for (n, line) in lines.iter().enumerate() {
            let Some(name) = pub_async_fn(line) else { continue };
            if inside.get(n).copied().unwrap_or(false) {
                continue;
            }
            checked += 1;
            let doc = doc_above(&lines, n);
            let lacking: Vec<&str> = SECTIONS
                .iter()
                .copied()
                .filter(|s| !doc.iter().any(|l| l.trim_start_matches('/').trim() == *s))
                .collect();
            if !lacking.is_empty() {
                let rel = path.strip_prefix(src).unwrap_or(path).display();
                missing.push(format!("src/{rel}:{}: {name} lacks {}", n + 1, lacking.join(" and ")));
            }
        }
    }
    assert!(checked > 0, "no `pub async fn` found under {}", src.display());
    assert!(
        missing.is_empty(),
        "{} of {checked} public async fns lack a doc section (see the standard: `# Cancel safety` and `# Errors`):\n{}",
        missing.len(),
        missing.join("\n")
    );
}
