//! Decoder target; see `vox_fuzz::decode::conduit`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vox_fuzz::decode::conduit(data));
