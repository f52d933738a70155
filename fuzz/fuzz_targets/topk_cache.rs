#![no_main]
//! A top-k teacher cache with valid checksums around any header numbers and any row bytes (the
//! first 40 input bytes set samples, classes, k, epochs and the block size; the rest are rows)
//! opens as a cache whose every record can be read, or gives an error naming the file.
use kdlab::train::topk_cache::TopKCache;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let n = |i: usize| u64::from_le_bytes(data[8 * i..8 * i + 8].try_into().unwrap()) as usize;
    let header = TopKCache::synthetic_header(n(0) % 64, n(1), n(2), n(3) % 8, n(4));
    let path = std::env::temp_dir().join(format!("kdlab-fuzz-{}.kdlk", std::process::id()));
    if TopKCache::write_raw(&path, &header, &data[40..]).is_err() {
        return;
    }
    match TopKCache::open(&path) {
        Ok(c) => {
            let all: Vec<u32> = (0..c.header.samples as u32).collect();
            for e in 0..c.header.epochs {
                let t = c.lookup(e, &all).unwrap();
                assert_eq!(t.size(), vec![c.header.samples as i64, c.header.classes as i64]);
            }
        }
        Err(e) => assert!(format!("{e:#}").contains(&path.display().to_string())),
    }
});
