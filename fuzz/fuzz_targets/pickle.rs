#![no_main]
//! Any bytes as a checkpoint's `data.pkl` (zipped with two small storages, so that the pickle
//! machine is reached without the zip layer's checksums in the way) give a value or an error.
use kdlab::train::pth::{parse_state_dict, Limits};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

const LIMITS: Limits = Limits { archive_bytes: 8 << 20, pickle_depth: 200, pickle_bytes: 16 << 20 };

fuzz_target!(|data: &[u8]| {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(data).unwrap();
    for k in 0..2 {
        zip.start_file(format!("archive/data/{k}"), opts).unwrap();
        zip.write_all(&[0x3f; 48]).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    let _ = parse_state_dict(std::io::Cursor::new(bytes), std::path::Path::new("fuzz.pth"), &LIMITS);
});
