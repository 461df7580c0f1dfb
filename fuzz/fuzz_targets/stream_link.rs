//! Stream link target; see `vox_fuzz::stream`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vox_fuzz::stream::run(data));
