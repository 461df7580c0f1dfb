//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml --bin
//! gen_corpus [-- DIR]` (default `fuzz/corpus` next to this crate), one
//! directory per target. With `--check`, also runs every session seed and
//! prints what it did.

use std::path::PathBuf;

fn main() {
    let args = std::env::args().skip(1);
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut check = false;
    for a in args {
        if a == "--check" {
            check = true;
        } else {
            dir = PathBuf::from(a);
        }
    }
    let seeds = vox_fuzz::seeds::all();
    for (target, name, bytes) in &seeds {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("create corpus directory");
        std::fs::write(d.join(name), bytes).expect("write seed");
    }
    println!("wrote {} seeds under {}", seeds.len(), dir.display());
    if check {
        let mut failed = 0;
        for (name, s) in vox_fuzz::seeds::scenarios() {
            let t = std::time::Instant::now();
            match std::panic::catch_unwind(|| vox_fuzz::session::run(&s)) {
                Ok(out) => println!("{name:28} {:>8.2?} {out:?}", t.elapsed()),
                Err(_) => {
                    failed += 1;
                    println!("{name:28} FAILED (see the panic above)");
                }
            }
        }
        for (target, name, bytes) in &seeds {
            match *target {
                "decode_transport" => vox_fuzz::decode::transport(bytes),
                "decode_conduit" => vox_fuzz::decode::conduit(bytes),
                "decode_stable" => vox_fuzz::decode::stable(bytes),
                "decode_stable_hello" => vox_fuzz::decode::stable_hello(bytes),
                "stream_link" => vox_fuzz::stream::run(bytes),
                _ => {}
            }
            let _ = name;
        }
        if failed > 0 {
            println!("{failed} session seed(s) failed their checks");
            std::process::exit(1);
        }
        println!("every seed passes its target's checks");
    }
}
