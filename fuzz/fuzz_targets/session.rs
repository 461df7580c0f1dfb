//! Structure-aware session target; see `vox_fuzz::session`.
#![no_main]
libfuzzer_sys::fuzz_target!(|scenario: vox_fuzz::session::Scenario| {
    vox_fuzz::session::run(&scenario);
});
