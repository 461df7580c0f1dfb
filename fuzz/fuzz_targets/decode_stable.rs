//! Decoder target; see `vox_fuzz::decode::stable`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vox_fuzz::decode::stable(data));
