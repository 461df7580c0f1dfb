//! Decoder target; see `vox_fuzz::decode::transport`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vox_fuzz::decode::transport(data));
