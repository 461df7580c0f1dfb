//! The layering of `rust/vox-core/src` (DESIGN.md, "How the code is laid
//! out"): every module imports only its own layer and the layers below it.
//!
//! This reads the sources, not the compiled crate: every `crate::<module>`
//! path and every `super::` chain that leaves its top-level module, outside
//! comments and string literals, is an import of that module. A path into a
//! higher layer fails the test, naming the file, the line and the rule. It
//! also bounds the length of every source file.

use std::collections::BTreeMap;
use std::path::Path;

#[path = "support/sources.rs"]
mod sources;
use sources::{code_only, rust_files, src_dir};

/// The layers, lowest first. A module may name modules of its own rank and
/// below. `lib.rs` (the crate root, re-exports only) is above everything.
const LAYERS: &[(&str, &[&str])] = &[
    ("support", &["sync", "id_window", "mutant"]),
    ("wire", &["wire", "schema"]),
    ("link", &["link"]),
    ("transport", &["transport"]),
    ("conduit", &["conduit"]),
    ("plumbing", &["plumbing"]),
    ("driver", &["driver"]),
    ("session", &["session"]),
    ("service", &["service"]),
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The module path of a source file: `driver/channel/inner.rs` is
/// `["driver", "channel", "inner"]`, `driver/mod.rs` is `["driver"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

fn ident_at(line: &str, at: usize) -> &str {
    let rest = &line[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
    &rest[..end]
}

/// Every top-level module a file names, with the line it is named on.
fn imports(module: &[String], code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find("crate::") {
            let start = from + at;
            let before = line[..start].chars().next_back();
            from = start + "crate::".len();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                continue; // `$crate::` in macros, or an identifier ending in `crate`
            }
            let name = ident_at(line, from);
            if !name.is_empty() {
                found.push((n + 1, name.to_owned()));
            }
        }
        // `super::super::x` from a file `depth` modules deep reaches the
        // crate root after `depth` supers (a file's own `mod` counts).
        let mut from = 0;
        while let Some(at) = line[from..].find("super::") {
            let start = from + at;
            let before = line[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                from = start + 7;
                continue;
            }
            let mut supers = 0;
            let mut i = start;
            while line[i..].starts_with("super::") {
                supers += 1;
                i += 7;
            }
            from = i;
            if supers >= module.len() {
                let name = ident_at(line, i);
                if !name.is_empty() {
                    found.push((n + 1, name.to_owned()));
                }
            }
        }
    }
    found
}

struct Import {
    file: String,
    line: usize,
    from: String,
    to: String,
}

fn all_imports() -> Vec<Import> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), src.display());
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src");
        let module = module_path(rel);
        let Some(top) = module.first() else { continue }; // lib.rs: the root
        let code = code_only(&std::fs::read_to_string(&path).expect("read source"));
        for (line, to) in imports(&module, &code) {
            out.push(Import { file: rel.display().to_string(), line, from: top.clone(), to });
        }
    }
    out
}

#[test]
fn layering_every_module_belongs_to_a_layer() {
    let mut unknown = Vec::new();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    for path in files {
        let rel = path.strip_prefix(src_dir()).expect("under src");
        if let Some(top) = module_path(rel).first()
            && rank(top).is_none()
        {
            unknown.push(rel.display().to_string());
        }
    }
    assert!(unknown.is_empty(), "modules in no layer of tests/layering.rs (add them to LAYERS): {unknown:?}");
}

#[test]
fn layering_no_module_imports_a_higher_layer() {
    let mut upward = Vec::new();
    for import in all_imports() {
        let (Some(from), Some(to)) = (rank(&import.from), rank(&import.to)) else { continue };
        if to > from {
            upward.push(format!(
                "{}:{}: {} (layer {}) names crate::{} (layer {})",
                import.file, import.line, import.from, LAYERS[from].0, import.to, LAYERS[to].0
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "upward imports (DESIGN.md, \"How the code is laid out\": a lower layer never names a higher one; \
         take a trait or a callback instead):\n{}",
        upward.join("\n")
    );
}

#[test]
fn layering_no_cycle_between_top_level_modules() {
    // Same-layer modules (the support ones) may name each other, but not
    // both ways.
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for import in all_imports() {
        if import.from != import.to {
            edges.entry((import.from.clone(), import.to.clone())).or_insert(format!("{}:{}", import.file, import.line));
        }
    }
    let cycles: Vec<String> = edges
        .iter()
        .filter(|((a, b), _)| a < b)
        .filter_map(|((a, b), at)| edges.get(&(b.clone(), a.clone())).map(|back| format!("{a} <-> {b} ({at}, {back})")))
        .collect();
    assert!(cycles.is_empty(), "import cycles between top-level modules: {cycles:?}");
}

/// Files stay small enough to read in one sitting (issue 17): a file that
/// grows past the limit is split by concern into a folder.
const MAX_FILE_LINES: usize = 600;

#[test]
fn layering_no_source_file_longer_than_600_lines() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).expect("read source").lines().count();
            (lines > MAX_FILE_LINES)
                .then(|| format!("{} ({lines} lines)", path.strip_prefix(src_dir()).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "source files over {MAX_FILE_LINES} lines (split them by concern): {long:?}");
}

/// The check itself: an upward path, a `super::` chain out of the module, and
/// paths in comments, strings and `$crate` are told apart.
#[test]
fn layering_reader_finds_paths_in_code_only() {
    let module: Vec<String> = vec!["driver".into(), "core".into()];
    let code = code_only(
        "use crate::session::X; // crate::service::Y\nlet s = \"crate::service\";\n$crate::wire::Z;\nsuper::super::link::L;\nsuper::handle::H;\n/* crate::conduit */ let c = 'x';\n",
    );
    let found = imports(&module, &code);
    assert_eq!(found, vec![(1, "session".to_owned()), (4, "link".to_owned())]);
}
