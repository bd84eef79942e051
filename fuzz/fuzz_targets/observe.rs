//! Fuzz target: `selfheal_exporter::fuzzing::observe` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    selfheal_exporter::fuzzing::observe(data);
});
