//! Documentation rules the compiler does not check, read from the sources.
//!
//! The engineering standard: every public async fn documents `# Cancel
//! safety` (what dropping its future before it completes leaves behind) and
//! `# Errors` (which errors it returns and when, or "Never fails" and why).
//!
//! A public async fn is a `pub async fn` line, at any indentation, outside
//! comments and string literals; its doc is the run of `///` lines (and
//! attributes, and plain `//` comments) right above it.

#[path = "support/sources.rs"]
mod sources;
use sources::{code_only, rust_files, src_dir};

const SECTIONS: &[&str] = &["# Cancel safety", "# Errors"];

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
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut missing = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        // The same lines with comments and string literals blanked: a
        // `pub async fn` there is code.
        let code = code_only(&text);
        for (n, line) in code.lines().enumerate() {
            let Some(name) = pub_async_fn(line) else { continue };
            checked += 1;
            let doc = doc_above(&lines, n);
            let lacking: Vec<&str> = SECTIONS
                .iter()
                .copied()
                .filter(|s| !doc.iter().any(|l| l.trim_start_matches('/').trim() == *s))
                .collect();
            if !lacking.is_empty() {
                let rel = path.strip_prefix(&src).unwrap_or(path).display();
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
