//! A real, class-balanced subset of Fashion-MNIST compiled into the binary (10,000 training and
//! 2,000 test images: the first 1,000 / 200 of each class), so that the demo and the quick tests
//! run on a fresh machine with no download. Made by `scripts/make_embedded_subset.py`; the files'
//! sha256 are in the user guide (guide/src/data.md).
use super::{catalog, idx, Dataset};
use anyhow::Result;
use std::path::Path;

pub const NAME: &str = "fashion-mnist-mini";

const FILES: [(&str, &[u8]); 4] = [
    ("train-images-idx3-ubyte.gz", include_bytes!("../../assets/fashion-mnist-mini/train-images-idx3-ubyte.gz")),
    ("train-labels-idx1-ubyte.gz", include_bytes!("../../assets/fashion-mnist-mini/train-labels-idx1-ubyte.gz")),
    ("t10k-images-idx3-ubyte.gz", include_bytes!("../../assets/fashion-mnist-mini/t10k-images-idx3-ubyte.gz")),
    ("t10k-labels-idx1-ubyte.gz", include_bytes!("../../assets/fashion-mnist-mini/t10k-labels-idx1-ubyte.gz")),
];

fn parse(i: usize) -> Result<idx::IdxArray> {
    use std::io::Read;
    let (name, gz) = FILES[i];
    let mut raw = vec![];
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw)?;
    idx::parse(&raw, Path::new(&format!("<embedded>/{name}")))
}

/// The embedded subset, with Fashion-MNIST's class names and defaults.
pub fn load() -> Result<Dataset> {
    let name = |i: usize| Path::new(FILES[i].0).to_path_buf();
    let (train, _) = idx::split_from_arrays(parse(0)?, &name(0), parse(1)?, &name(1))?;
    let (test, _) = idx::split_from_arrays(parse(2)?, &name(2), parse(3)?, &name(3))?;
    let full = catalog::find("fashion-mnist").expect("fashion-mnist is in the catalogue");
    Ok(Dataset {
        name: NAME.to_string(),
        source: "embedded".to_string(),
        train,
        test,
        val: None,
        classes: 10,
        class_names: full.class_names,
        profile: full.profile,
        stream: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_subset_is_balanced_and_real() {
        let d = super::load().unwrap();
        assert_eq!(d.train.len(), 10_000);
        assert_eq!(d.test.len(), 2_000);
        assert_eq!(d.train.class_counts(10), vec![1000; 10]);
        assert_eq!(d.test.class_counts(10), vec![200; 10]);
        assert_eq!(d.train.shape.to_string(), "1x28x28");
        // Real images: the mean pixel of Fashion-MNIST is about 0.286.
        let (mean, _) = d.train.channel_stats();
        assert!((mean[0] - 0.286).abs() < 0.02, "{mean:?}");
    }
}
