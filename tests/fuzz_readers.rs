//! A bounded mutation fuzzer for the file readers, run in CI: thousands of corrupted variants of
//! valid IDX, CIFAR and .npy files (bit flips, truncations, insertions, overwritten headers) must
//! each give a value or an error — never a panic, a hang or a huge allocation. The readers of
//! files from strangers get the same: PyTorch checkpoints (zip layer, pickle opcodes, storage
//! records), PNG and JPEG through the image-folder decoder, the image-folder cache and the top-k
//! teacher cache (the caches resealed after each mutation, so that what lies behind their
//! checksums is fuzzed too). (`fuzz/` holds cargo-fuzz targets for the same readers, for longer,
//! coverage-guided runs.)
//!
//! `KDLAB_FUZZ_SECONDS=600 cargo test --release --test fuzz_readers -- --nocapture TARGET` runs a
//! target for that long instead of its fixed count (docs/reliability.md records such runs), and
//! prints the inputs tried, the slowest input and the peak memory; an input that panics is saved
//! as `fuzz-crash-TARGET.bin` in the working directory.
use kdlab::data::imagefolder;
use kdlab::data::{cifar, idx, npy, Shape, Split};
use kdlab::train::pth;
use kdlab::train::topk_cache::{self, TopKCache};
use kdlab::util::rng::Rng;
use std::path::Path;
use std::time::{Duration, Instant};

fn mutate(base: &[u8], r: &mut Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + r.below(4) {
        match r.below(5) {
            0 if !v.is_empty() => {
                let i = r.below(v.len() as u64) as usize;
                v[i] ^= 1 << r.below(8);
            }
            1 => v.truncate(r.below(v.len() as u64 + 1) as usize),
            2 => {
                let i = r.below(v.len() as u64 + 1) as usize;
                v.insert(i, r.below(256) as u8);
            }
            3 if v.len() >= 16 => {
                // Overwrite a header word with an extreme value.
                let i = r.below(16) as usize & !3;
                let w = [0u32, 1, 0xFF, 0xFFFF_FFFF, 0x8000_0000][r.below(5) as usize];
                v[i..i + 4].copy_from_slice(&w.to_be_bytes());
            }
            _ => {
                let i = r.below(v.len() as u64 + 1) as usize;
                v.truncate(i);
                v.extend((0..r.below(64)).map(|_| r.below(256) as u8));
            }
        }
    }
    v
}

#[test]
fn corrupted_files_give_errors_not_panics() {
    let mut r = Rng::new(2026);
    let p = Path::new("fuzz.bin");
    let idx_img = idx::encode(&[3, 4, 4], &(0..48).collect::<Vec<u8>>());
    let idx_lab = idx::encode(&[3], &[1, 2, 3]);
    let px: Vec<u8> = (0..3072).map(|i| i as u8).collect();
    let c10 = cifar::encode(cifar::Variant::Cifar10, &[(3, 0, &px), (9, 0, &px)]);
    let c100 = cifar::encode(cifar::Variant::Cifar100Fine, &[(3, 42, &px)]);
    let npy_f = npy::encode_f32(&[2, 3], &[0.5, 1.0, -2.0, 3.0, 4.0, 5.0]);
    let npy_i = npy::encode_i64(&[3], &[0, 1, 2]);
    let mut errors = 0;
    for _ in 0..10_000 {
        for base in [&idx_img, &idx_lab] {
            if idx::parse(&mutate(base, &mut r), p).is_err() {
                errors += 1;
            }
        }
        for (base, v) in [
            (&c10, cifar::Variant::Cifar10),
            (&c100, cifar::Variant::Cifar100Fine),
            (&c100, cifar::Variant::Cifar100Coarse),
        ] {
            let mut s = Split { images: vec![], labels: vec![], shape: cifar::SHAPE };
            if cifar::parse_into(&mutate(base, &mut r), v, p, &mut s).is_err() {
                errors += 1;
            }
        }
        for base in [&npy_f, &npy_i] {
            match npy::parse(&mutate(base, &mut r), p) {
                Ok(a) => {
                    let _ = a.to_f64(p);
                    let _ = a.to_i64(p);
                }
                Err(_) => errors += 1,
            }
        }
    }
    // The mutations are real: most variants are refused.
    assert!(errors > 37_500, "only {errors} of 70,000 mutated files were refused");
}

/// Runs `one(input number)` `count` times, or for `$KDLAB_FUZZ_SECONDS` seconds when that is set;
/// returns how many inputs were refused. Prints the count, the slowest input and the peak RSS.
/// `one` returns whether its input was refused, and the input (kept for a crash report).
fn campaign(target: &str, count: usize, mut one: impl FnMut(&mut Rng) -> (bool, Vec<u8>)) -> (usize, usize) {
    let seconds = std::env::var("KDLAB_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let seed = std::env::var("KDLAB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    let mut r = Rng::new(seed);
    let (mut tried, mut refused, mut slowest) = (0usize, 0usize, Duration::ZERO);
    let started = Instant::now();
    loop {
        match deadline {
            Some(d) if Instant::now() >= d => break,
            None if tried >= count => break,
            _ => {}
        }
        let t = Instant::now();
        let mut last = vec![];
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&mut r)));
        match outcome {
            Ok((was_refused, input)) => {
                refused += was_refused as usize;
                last = input;
            }
            Err(p) => {
                let _ = std::fs::write(format!("fuzz-crash-{target}.txt"), format!("input {tried}, seed {seed}"));
                std::panic::resume_unwind(p);
            }
        }
        drop(last);
        slowest = slowest.max(t.elapsed());
        tried += 1;
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    eprintln!(
        "fuzz {target}: {tried} inputs in {:.1} s, {refused} refused, slowest {:.1} ms, peak RSS {peak} KiB",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    (tried, refused)
}

/// Tight limits for fuzzing: a mutated pickle can legitimately ask for gigabytes (a memo copied
/// over and over) within the default limits; the bound, not its size, is what is tested.
const FUZZ_LIMITS: pth::Limits = pth::Limits { archive_bytes: 8 << 20, pickle_depth: 200, pickle_bytes: 16 << 20 };

/// Pickle opcodes, for mutations that splice one in.
const OPCODES: &[u8] = b"()]}tlduaesqrhjRQ.NKJMXGbc\x80\x85\x86\x87\x88\x89\x8a\x8c\x8d\x8e\x93\x94\x95\x81CB";

fn pth_seed() -> (Vec<u8>, Vec<u8>) {
    let w: Vec<f32> = (0..12).map(|i| i as f32 - 3.5).collect();
    let zip = pth::encode_state_dict(&[("conv.weight", &[2, 1, 2, 3], &w), ("fc.bias", &[3], &[0.5, 1.5, -2.0])]);
    let mut pkl = vec![];
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&zip)).unwrap();
    std::io::Read::read_to_end(&mut z.by_name("archive/data.pkl").unwrap(), &mut pkl).unwrap();
    (zip, pkl)
}

/// A checkpoint zip around `pkl`, with the seed's two storages (the second one short at times).
fn rezip(pkl: &[u8], r: &mut Rng) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pkl).unwrap();
    for (k, n) in [(0, 48), (1, [12, 4, 0][r.below(3) as usize])] {
        zip.start_file(format!("archive/data/{k}"), opts).unwrap();
        zip.write_all(&vec![0x3f; n]).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn fuzz_pth(count: usize) -> (usize, usize) {
    let (zip, pkl) = pth_seed();
    let p = Path::new("fuzz.pth");
    campaign("pth", count, |r| {
        let input = match r.below(3) {
            // The zip layer: the archive's bytes mutated (most fail their CRC or directory).
            0 => mutate(&zip, r),
            // The pickle machine: the pickle mutated, opcodes spliced in, then zipped again.
            _ => {
                let mut p = mutate(&pkl, r);
                for _ in 0..r.below(3) {
                    let at = r.below(p.len() as u64 + 1) as usize;
                    p.insert(at, OPCODES[r.below(OPCODES.len() as u64) as usize]);
                }
                rezip(&p, r)
            }
        };
        let refused = match pth::parse_state_dict(std::io::Cursor::new(&input), p, &FUZZ_LIMITS) {
            Ok(sd) => {
                // What is read is consistent: every tensor holds as many values as its shape says.
                for t in sd.values() {
                    assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
                }
                false
            }
            Err(e) => {
                assert!(format!("{e:#}").starts_with("fuzz.pth: "), "{e:#}");
                true
            }
        };
        (refused, input)
    })
}

#[test]
fn mutated_checkpoints_give_errors_not_panics() {
    let (tried, refused) = fuzz_pth(20_000);
    assert!(refused > tried / 2, "only {refused} of {tried} mutated checkpoints were refused");
}

fn image_seeds() -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let mut seeds = vec![];
    for (c, jpeg) in [(1, false), (3, false), (1, true), (3, true)] {
        let shape = Shape { c, h: 12, w: 10 };
        let px: Vec<u8> = (0..shape.numel()).map(|i| (i * 37 % 251) as u8).collect();
        let path = tmp.path().join(if jpeg { "x.jpg" } else { "x.png" });
        imagefolder::write_image(&path, &px, shape, jpeg).unwrap();
        seeds.push(std::fs::read(&path).unwrap());
    }
    seeds
}

fn fuzz_images(count: usize) -> (usize, usize) {
    let seeds = image_seeds();
    campaign("image", count, |r| {
        let input = mutate(&seeds[r.below(seeds.len() as u64) as usize], r);
        // Within 2^20 pixels: the bound is what is tested, and the fuzzer stays fast.
        let refused = match imagefolder::decode_bytes(&input, 1 << 20) {
            Ok(img) => {
                for c in [1, 3] {
                    let shape = Shape { c, h: 8, w: 8 };
                    imagefolder::convert_into(img.clone(), shape, &mut vec![0; shape.numel()]);
                }
                false
            }
            Err(_) => true,
        };
        (refused, input)
    })
}

#[test]
fn mutated_png_and_jpeg_files_give_errors_not_panics() {
    let (tried, refused) = fuzz_images(10_000);
    assert!(refused > tried / 3, "only {refused} of {tried} mutated images were refused");
}

/// A mutated image cache, resealed with a valid sha256 so that the reader's checks behind the
/// checksum are fuzzed too.
fn fuzz_image_cache(count: usize) -> (usize, usize) {
    use sha2::{Digest, Sha256};
    let tmp =
        if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() }.unwrap();
    let path = tmp.path().join("c.kdimg");
    let shape = Shape { c: 3, h: 4, w: 5 };
    let split = |n: usize| Split {
        images: (0..n * shape.numel()).map(|i| i as u8).collect(),
        labels: (0..n).map(|i| (i % 3) as u16).collect(),
        shape,
    };
    imagefolder::write_cache(&path, "key", &split(3), &split(2), "note").unwrap();
    let seed = std::fs::read(&path).unwrap();
    campaign("image-cache", count, |r| {
        let mut input = mutate(&seed, r);
        if input.len() > 32 && r.below(8) > 0 {
            let body = input.len() - 32;
            let digest = Sha256::digest(&input[..body]);
            input[body..].copy_from_slice(&digest);
        }
        std::fs::write(&path, &input).unwrap();
        let refused = match imagefolder::read_cache(&path, "key", 3) {
            Ok(Some((a, b, _))) => {
                for s in [a, b] {
                    assert_eq!(s.images.len(), s.len() * s.shape.numel());
                    assert!(s.labels.iter().all(|&y| y < 3));
                }
                false
            }
            Ok(None) => false,
            Err(e) => {
                assert!(format!("{e:#}").contains(&path.display().to_string()), "{e:#}");
                true
            }
        };
        (refused, input)
    })
}

#[test]
fn mutated_image_caches_give_errors_not_panics() {
    let (tried, refused) = fuzz_image_cache(3_000);
    assert!(refused > tried / 3, "only {refused} of {tried} mutated image caches were refused");
}

fn topk_header() -> topk_cache::Header {
    TopKCache::synthetic_header(5, 10, 3, 2, 64)
}

/// Top-k caches that pass their checksums but hold anything: a header with extreme numbers, rows
/// with any bytes; and raw mutations of a valid file (most fail their checksums).
fn fuzz_topk(count: usize) -> (usize, usize) {
    let dir =
        if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() }.unwrap();
    let path = dir.path().join("c.kdlk");
    let good = topk_header();
    let rows: Vec<u8> = (0..good.epochs * good.samples)
        .flat_map(|i| {
            let mut row = vec![0u8, 0, 0, 0, 8, 0, 8, 0, (i % 2) as u8, 0, 0x3c];
            for c in [(i % 10) as u16, ((i + 1) % 10) as u16, ((i + 2) % 10) as u16] {
                row.extend_from_slice(&c.to_le_bytes());
            }
            row.extend_from_slice(&[0, 0x40, 0, 0x3e, 0, 0x3c]);
            row
        })
        .collect();
    TopKCache::write_raw(&path, &good, &rows).unwrap();
    let valid = std::fs::read(&path).unwrap();
    let extreme = [0usize, 1, 2, 3, 255, 65_535, 65_536, 1 << 32, usize::MAX / 2, usize::MAX];
    campaign("topk-cache", count, |r| {
        let input = if r.below(3) == 0 {
            let bytes = mutate(&valid, r);
            std::fs::write(&path, &bytes).unwrap();
            bytes
        } else {
            let mut h = topk_header();
            for _ in 0..r.below(3) {
                let v = extreme[r.below(extreme.len() as u64) as usize];
                match r.below(5) {
                    0 => h.samples = v,
                    1 => h.classes = v,
                    2 => h.k = v,
                    3 => h.epochs = v,
                    _ => h.block_bytes = v,
                }
            }
            let rows = mutate(&rows, r);
            TopKCache::write_raw(&path, &h, &rows).unwrap();
            rows
        };
        let refused = match TopKCache::open(&path) {
            Ok(c) => {
                let h = &c.header;
                assert!(h.samples > 0 && h.epochs > 0, "a cache without records opened");
                for e in 0..h.epochs {
                    let all: Vec<u32> = (0..h.samples as u32).collect();
                    let t = c.lookup(e, &all).unwrap();
                    assert_eq!(t.size(), vec![h.samples as i64, h.classes as i64]);
                    assert!(c.lookup(e, &[h.samples as u32]).is_err());
                }
                assert!(c.lookup(h.epochs, &[0]).is_err());
                false
            }
            Err(e) => {
                assert!(format!("{e:#}").contains(&path.display().to_string()), "{e:#}");
                true
            }
        };
        (refused, input)
    })
}

#[test]
fn mutated_topk_caches_give_errors_not_panics() {
    let (tried, refused) = fuzz_topk(2_000);
    assert!(refused > tried / 3, "only {refused} of {tried} mutated top-k caches were refused");
}
