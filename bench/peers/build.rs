//! Generates the tonic service from proto/bench.proto with the protoc that
//! `protoc-bin-vendored` ships (no protoc on the machine, none fetched).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script runs single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(&["proto/bench.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/bench.proto");
    Ok(())
}
