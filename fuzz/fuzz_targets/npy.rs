#![no_main]
//! Any bytes given to the .npy reader give an array (whose conversions also succeed or fail
//! cleanly) or an error.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = std::path::Path::new("fuzz");
    if let Ok(a) = kdlab::data::npy::parse(data, p) {
        let _ = a.to_f64(p);
        let _ = a.to_i64(p);
    }
});
