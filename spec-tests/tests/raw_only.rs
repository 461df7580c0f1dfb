//! The harness must be able to say what a correct runtime never would, so it
//! may use only vox-core's `wire` and `link` modules, never its session,
//! conduit, driver or transport modules.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn harness_uses_only_wire_and_link_from_vox_core() {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(!files.is_empty());
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("vox_core::") {
                let after = &rest[i + "vox_core::".len()..];
                if !(after.starts_with("wire") || after.starts_with("link")) {
                    offences.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
                rest = after;
            }
        }
    }
    assert!(offences.is_empty(), "the harness reaches past wire/link:\n{}", offences.join("\n"));
}

#[test]
fn manifest_does_not_enable_vox_core_features() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("manifest");
    let line = manifest.lines().find(|l| l.starts_with("vox-core")).expect("vox-core dependency");
    assert!(!line.contains("features"), "the harness must not enable vox-core features: {line}");
}
