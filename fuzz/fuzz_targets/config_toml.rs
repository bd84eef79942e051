//! Fuzz target: a toml config file through the whole loader must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    selfheal_exporter::fuzzing::config(data, true);
});
