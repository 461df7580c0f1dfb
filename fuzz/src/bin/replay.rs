//! Runs inputs through a target outside libFuzzer, with normal panics and
//! backtraces: `cargo run --manifest-path fuzz/Cargo.toml --bin replay --
//! TARGET FILE...`. With `VOX_FUZZ_TRACE=1`, prints vox-core's debug traces;
//! with `VOX_FUZZ_REAL_TIME=1`, the session target runs on the real clock;
//! for `session`, prints the decoded scenario first.

use arbitrary::{Arbitrary, Unstructured};

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay TARGET FILE...");
    if std::env::var_os("VOX_FUZZ_TRACE").is_some() {
        tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_target(false).init();
    }
    for file in args {
        let data = std::fs::read(&file).expect("read input");
        println!("== {target} {file} ({} bytes)", data.len());
        match target.as_str() {
            "decode_transport" => vox_fuzz::decode::transport(&data),
            "decode_conduit" => vox_fuzz::decode::conduit(&data),
            "decode_stable" => vox_fuzz::decode::stable(&data),
            "decode_stable_hello" => vox_fuzz::decode::stable_hello(&data),
            "stream_link" => vox_fuzz::stream::run(&data),
            "session" => {
                let s = vox_fuzz::session::Scenario::arbitrary_take_rest(Unstructured::new(&data)).expect("scenario");
                println!("{s:#?}");
                let out = vox_fuzz::session::run(&s);
                println!("{out:?}");
            }
            other => panic!("unknown target {other}"),
        }
    }
}
