#![no_main]
//! Any bytes given to the CIFAR readers (all three variants) give records or an error.
use kdlab::data::{cifar, Split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for v in [cifar::Variant::Cifar10, cifar::Variant::Cifar100Fine, cifar::Variant::Cifar100Coarse] {
        let mut s = Split { images: vec![], labels: vec![], shape: cifar::SHAPE };
        let _ = cifar::parse_into(data, v, std::path::Path::new("fuzz"), &mut s);
    }
});
