//! A bounded mutation fuzzer for the file readers, run in CI: thousands of corrupted variants of
//! valid IDX, CIFAR and .npy files (bit flips, truncations, insertions, overwritten headers) must
//! each give a value or an error — never a panic, a hang or a huge allocation. (`fuzz/` holds
//! cargo-fuzz targets for the same readers, for longer, coverage-guided runs.)
use kdlab::data::{cifar, idx, npy, Split};
use kdlab::util::rng::Rng;
use std::path::Path;

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
