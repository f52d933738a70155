#![no_main]
//! Any bytes as an image-folder cache file, resealed with a valid sha256 (so that the checks
//! behind the checksum are reached), give splits that fit their shape and classes, or an error.
use kdlab::data::imagefolder::read_cache;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() > 32 {
        let body = bytes.len() - 32;
        let digest = Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&digest);
    }
    let path = std::env::temp_dir().join(format!("kdlab-fuzz-{}.kdimg", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(Some((a, b, _))) = read_cache(&path, "key", 3) {
        for s in [a, b] {
            assert_eq!(s.images.len(), s.len() * s.shape.numel());
            assert!(s.labels.iter().all(|&y| y < 3));
        }
    }
});
