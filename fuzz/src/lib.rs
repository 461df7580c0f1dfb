//! Fuzz targets for vox-core: the shared code behind `fuzz_targets/*.rs`.
//!
//! - [`decode`]: the wire decoders, with a re-encode/decode round trip and a
//!   bound on what one decode may allocate (rule `session.decode.bounded`);
//! - [`stream`]: a stream link fed arbitrary bytes in arbitrary chunks,
//!   checked against a model of the length-prefix framing;
//! - [`session`]: a real acceptor session driven by a raw initiator sending
//!   arbitrary sequences of well-formed messages (structure-aware, with
//!   `arbitrary`);
//! - [`seeds`]: the seed corpora (`fuzz/corpus/<target>/`), written by
//!   `cargo run --bin gen_corpus`.
//!
//! See `docs/fuzzing.md` for how to run them.

pub mod alloc;
pub mod decode;
pub mod seeds;
pub mod session;
pub mod stream;

/// Every binary of this crate counts its allocations, so a target can bound
/// what one input makes vox-core allocate.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;
