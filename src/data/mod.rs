//! Data: readers for the on-disk formats (IDX, CIFAR binary, NumPy .npy, image folders), the catalogue of known
//! data sets and where they live, the embedded Fashion-MNIST subset, augmentation, and the
//! background batch loader.
pub mod augment;
pub mod batch;
pub mod catalog;
pub mod cifar;
pub mod decode;
pub mod embedded;
pub mod fetch;
pub mod idx;
pub mod imagefolder;
pub mod loader;
pub mod npy;
pub mod pool;
pub mod source;
pub mod stream;
pub mod transform;

use serde::{Deserialize, Serialize};

/// Channels × height × width of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn dims(&self) -> [i64; 3] {
        [self.c as i64, self.h as i64, self.w as i64]
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

impl std::str::FromStr for Shape {
    type Err = anyhow::Error;
    /// Parses "CxHxW", e.g. "3x32x32".
    fn from_str(s: &str) -> anyhow::Result<Shape> {
        let parts: Vec<usize> = s
            .split('x')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("bad input shape '{s}': expected CxHxW, e.g. 3x32x32"))?;
        match parts[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 => Ok(Shape { c, h, w }),
            _ => anyhow::bail!("bad input shape '{s}': expected CxHxW with positive sizes, e.g. 3x32x32"),
        }
    }
}

/// One split (train or test): u8 pixels, channel-planar (N×C×H×W, row-major), and labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub shape: Shape,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        &self.images[i * n..(i + 1) * n]
    }
    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.shape.numel());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Split { images, labels: indices.iter().map(|&i| self.labels[i]).collect(), shape: self.shape }
    }

    /// How many samples each class has (index = class).
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &y in &self.labels {
            counts[y as usize] += 1;
        }
        counts
    }
    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub(crate) fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.shape.h * self.shape.w;
        let mut sum = vec![0f64; self.shape.c];
        let mut sq = vec![0f64; self.shape.c];
        for img in self.images.chunks_exact(self.shape.numel()) {
            for (c, px) in img.chunks_exact(plane).enumerate() {
                for &p in px {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq.iter().zip(&mean).map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32).collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }
}

/// Per-data-set defaults for input normalisation and augmentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Zero padding for random crops, in pixels.
    pub pad: usize,
    /// Random horizontal flips (off for digits, whose mirror images are other symbols).
    pub flip: bool,
}

/// A data set ready to train on: both splits, class names, and its defaults.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Catalogue name ("fashion-mnist", "fashion-mnist-mini", "cifar100", …) or directory name.
    pub name: String,
    /// Where it was read from (a directory, or "embedded").
    pub source: String,
    pub train: Split,
    pub test: Split,
    /// Images held out of the training set for selecting hyper-parameters (see [`Dataset::carve`]).
    pub val: Option<Split>,
    pub classes: usize,
    pub class_names: Vec<String>,
    pub profile: Profile,
    /// For an image folder under the ImageNet recipe (`DIR:transform=imagenet`): the files, the
    /// recipe and where the pixels are kept. Then `train` and `test` hold the labels and the
    /// shape of a network input, but no pixels: batches come from [`Dataset::feed`].
    pub stream: Option<std::sync::Arc<stream::Streamed>>,
}

impl Dataset {
    /// What a loader draws the split `name` ("train", "test", "val") from: its decoded images
    /// with the profile's views (the augmented ones when `augment`), or for a streamed image
    /// folder its files under the recipe (training views when `augment`).
    pub fn feed(&self, name: &str, augment: bool) -> anyhow::Result<loader::Feed> {
        use std::sync::Arc;
        let Some(s) = &self.stream else {
            let split = Arc::new(self.split(name)?.clone());
            return Ok(loader::Feed::Memory {
                split,
                augment: Arc::new(augment::Augment::new(&self.profile, augment)),
            });
        };
        let images = match name {
            "train" => s.train.clone(),
            "test" => s.test.clone(),
            "val" => anyhow::bail!(
                "{}: a validation split cannot be carved from a streamed image folder (transform=imagenet); evaluate on val/",
                self.name
            ),
            other => anyhow::bail!("unknown split '{other}': expected 'train', 'test' or 'val'"),
        };
        Ok(loader::Feed::Files(Arc::new(stream::FileFeed::new(images, s, &self.profile, augment))))
    }

    pub fn shape(&self) -> Shape {
        self.train.shape
    }

    /// A checksum of both splits' pixels and labels: identifies the data a run or a logit cache
    /// was made from, independent of file names and compression.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        if let Some(s) = &self.stream {
            return s.fingerprint.clone(); // no pixels in memory: the files and options
        }
        let mut h = Sha256::new();
        for split in [Some(&self.train), Some(&self.test), self.val.as_ref()].into_iter().flatten() {
            h.update((split.len() as u64).to_le_bytes());
            h.update(split.shape.to_string().as_bytes());
            h.update(&split.images);
            for y in &split.labels {
                h.update(y.to_le_bytes());
            }
        }
        hex(&h.finalize())
    }

    /// The first `train` and `test` samples of each split (for quick tests and smoke runs).
    pub fn head(&self, train: usize, test: usize) -> Dataset {
        let cut = |s: &Split, n: usize| {
            let n = n.min(s.len());
            Split { images: s.images[..n * s.shape.numel()].to_vec(), labels: s.labels[..n].to_vec(), shape: s.shape }
        };
        Dataset { train: cut(&self.train, train), test: cut(&self.test, test), val: None, ..self.clone() }
    }

    /// The split named "train", "test" or "val" (the last only where one was carved).
    pub fn split(&self, name: &str) -> anyhow::Result<&Split> {
        match name {
            "train" => Ok(&self.train),
            "test" => Ok(&self.test),
            "val" => self.val.as_ref().ok_or_else(|| {
                anyhow::anyhow!("{} has no validation split: carve one with val_per_class (--val-per-class)", self.name)
            }),
            other => anyhow::bail!("unknown split '{other}': expected 'train', 'test' or 'val'"),
        }
    }

    /// Carves the training images into a class-balanced training subset of `train_per_class`
    /// images per class (0: every image not held out) and a validation split of `val_per_class`
    /// images per class, disjoint from it. Each class's images are shuffled with `seed` (the same
    /// seed gives the same subset on every machine), validation images are drawn first, and both
    /// parts keep the original order of the images. The test set is untouched. A class with too
    /// few images is an error naming it.
    pub fn carve(&self, train_per_class: usize, val_per_class: usize, seed: u64) -> anyhow::Result<Dataset> {
        if train_per_class == 0 && val_per_class == 0 {
            return Ok(self.clone());
        }
        if self.stream.is_some() {
            anyhow::bail!(
                "{}: train_subset and val_per_class are not supported for image folders under transform=imagenet (their images are not held as one split); make a smaller folder instead",
                self.name
            );
        }
        let mut by_class: Vec<Vec<usize>> = vec![vec![]; self.classes];
        for (i, &y) in self.train.labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        let (mut train_idx, mut val_idx) = (vec![], vec![]);
        for (c, idx) in by_class.iter_mut().enumerate() {
            let want = val_per_class + train_per_class.max(1); // at least one training image
            if idx.len() < want {
                anyhow::bail!(
                    "{}: class {c} ({}) has {} training images, fewer than the {} asked for (train_subset = {train_per_class}, val_per_class = {val_per_class})",
                    self.name,
                    self.class_names.get(c).map_or("?", String::as_str),
                    idx.len(),
                    want
                );
            }
            crate::util::rng::Rng::for_stream(seed, crate::util::rng::stream::SUBSET, c as u64).shuffle(idx);
            val_idx.extend_from_slice(&idx[..val_per_class]);
            let rest = &idx[val_per_class..];
            train_idx.extend_from_slice(if train_per_class == 0 { rest } else { &rest[..train_per_class] });
        }
        train_idx.sort_unstable();
        val_idx.sort_unstable();
        let val = (val_per_class > 0).then(|| self.train.select(&val_idx));
        Ok(Dataset { train: self.train.select(&train_idx), val, ..self.clone() })
    }
}

// Checksums live in util (the sealed files below data use them too); re-exported for data's readers.
pub use crate::util::hash::{hex, sha256_hex};

/// Checks that every label is below `classes`, naming the file and the first bad sample.
pub(crate) fn check_labels(labels: &[u16], classes: usize, file: &std::path::Path) -> anyhow::Result<()> {
    if let Some((i, y)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= classes) {
        anyhow::bail!(
            "{}: label {y} at sample {i} is out of range (this data set has {classes} classes, 0..{})",
            file.display(),
            classes - 1
        );
    }
    Ok(())
}
