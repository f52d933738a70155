#![no_main]
//! Any bytes given to the `.pth` reader (zip layer, pickle machine, storage records) give a state
//! dict or an error naming the file, within small limits (the bound, not its size, is tested).
use kdlab::train::pth::{parse_state_dict, Limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { archive_bytes: 8 << 20, pickle_depth: 200, pickle_bytes: 16 << 20 };

fuzz_target!(|data: &[u8]| {
    let p = std::path::Path::new("fuzz.pth");
    match parse_state_dict(std::io::Cursor::new(data), p, &LIMITS) {
        Ok(sd) => {
            for t in sd.values() {
                assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
            }
        }
        Err(e) => assert!(format!("{e:#}").starts_with("fuzz.pth: ")),
    }
});
