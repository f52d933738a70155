#![no_main]
//! Any bytes given to the IDX reader give an array or an error, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kdlab::data::idx::parse(data, std::path::Path::new("fuzz"));
});
