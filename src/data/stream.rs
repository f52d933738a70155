//! Image folders under the ImageNet recipe (`DIR:transform=imagenet`): each batch's images are
//! decoded (or taken from memory) and transformed on a pool of threads when the loader asks for
//! the batch, so a folder far larger than memory trains with bounded memory: the batches in the
//! loader's channel (`KDLAB_LOADER_PREFETCH`, default 2), the one being built, and the one in use.
//!
//! Where the pixels come from (`store=`):
//! - `stream`: every epoch decodes each file again (only names, sizes and class folders are read
//!   when indexing, never an image's body);
//! - `memory`: every image decoded once at its own size and held in RAM;
//! - `auto` (the default): `memory` when the folder has at most [`MEMORY_MAX_FILES`] images and
//!   their decoded pixels (from the files' headers) take at most [`MEMORY_MAX_BYTES`] and a
//!   quarter of the available memory, else `stream`.
//!
//! The results do not depend on the store or the number of threads: each sample's crop comes from
//! the run's seed, the epoch and the sample's index ([`transform::sample_rng`]).
use super::batch::Batch;
use super::decode::luma601;
use super::pool::{bad_file_error, par_each_on};
use super::transform::{self, CropBox, Decoded, Recipe};
use super::{Profile, Shape};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `store=auto` keeps a folder in memory only up to this many images…
pub(crate) const MEMORY_MAX_FILES: usize = 50_000;
/// …and this many bytes of decoded pixels (2 GiB).
pub(crate) const MEMORY_MAX_BYTES: u64 = 2 << 30;

/// Where the images of a continuous-view folder are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Auto,
    Memory,
    Stream,
}

/// One split's images: files and labels, and the decoded images when held in memory.
#[derive(Debug)]
pub struct FolderImages {
    pub files: Vec<PathBuf>,
    pub labels: Vec<u16>,
    /// Each image at its own size (store=memory); None: decoded from its file for every batch.
    pub decoded: Option<Vec<Decoded>>,
}

impl FolderImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A data set whose samples are continuous views of images of any size (the ImageNet recipe).
#[derive(Debug)]
pub struct Streamed {
    pub train: Arc<FolderImages>,
    pub test: Arc<FolderImages>,
    pub recipe: Recipe,
    pub channels: usize,
    pub skip_bad: bool,
    /// The most pixels an image may declare (`max_pixels=`).
    pub max_pixels: u64,
    /// Identifies the files and options (see `imagefolder`): a run on this data records it.
    pub fingerprint: String,
}

impl Streamed {
    /// Whether the images are held decoded in memory.
    pub fn in_memory(&self) -> bool {
        self.train.decoded.is_some()
    }
}

/// Decodes an image file to `channels` (1 or 3) interleaved 8-bit channels at its own size:
/// colour to grey as PIL's luma, grey to colour by repetition, alpha dropped (torchvision's
/// loader converts every image to RGB the same way).
pub(crate) fn decode_file(path: &Path, channels: usize, max_pixels: u64) -> Result<Decoded> {
    let img = super::decode::decode_image(path, max_pixels)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let pixels = if channels == 1 {
        if img.color().has_color() {
            luma601(&img.to_rgb8()).into_raw()
        } else {
            img.to_luma8().into_raw()
        }
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(Decoded { h, w, c: channels, pixels })
}

/// What a loader draws continuous-view samples from: one split, its transform and normalisation.
#[derive(Debug)]
pub struct FileFeed {
    pub images: Arc<FolderImages>,
    pub recipe: Recipe,
    /// Training views (random-resized crop and flip); else evaluation (resize, centre crop).
    pub random: bool,
    pub channels: usize,
    pub skip_bad: bool,
    pub max_pixels: u64,
    /// Decoding threads ([`super::pool::threads`]).
    pub threads: usize,
    /// Per channel, a pixel value v (0..=255) becomes v · gain + bias: (v/255 − mean) / std.
    gain: Vec<f32>,
    bias: Vec<f32>,
}

impl FileFeed {
    pub fn new(images: Arc<FolderImages>, data: &Streamed, profile: &Profile, random: bool) -> FileFeed {
        let gain = profile.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let bias = profile.mean.iter().zip(&profile.std).map(|(m, s)| -m / s).collect();
        FileFeed {
            images,
            recipe: data.recipe,
            random,
            channels: data.channels,
            skip_bad: data.skip_bad,
            max_pixels: data.max_pixels,
            threads: super::pool::threads(),
            gain,
            bias,
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
    pub fn shape(&self) -> Shape {
        Shape { c: self.channels, h: self.recipe.size, w: self.recipe.size }
    }

    /// Writes sample `i`'s view in epoch `epoch` into `out`; returns its crop box (for an
    /// evaluation view, the whole source image).
    fn sample(&self, i: usize, seed: u64, epoch: u64, out: &mut [f32]) -> Result<CropBox> {
        let owned;
        let img = match &self.images.decoded {
            Some(d) => &d[i],
            None => {
                owned = decode_file(&self.images.files[i], self.channels, self.max_pixels)?;
                &owned
            }
        };
        let (resample, crop) = if self.random {
            let crop = self.recipe.train_box(img.h, img.w, &mut transform::sample_rng(seed, epoch, i as u64));
            (self.recipe.train_resample(crop), crop)
        } else {
            let whole = CropBox { y: 0, x: 0, h: img.h as u32, w: img.w as u32, flip: false };
            (self.recipe.eval_resample(img.h, img.w), whole)
        };
        transform::resample(img, &resample, &self.gain, &self.bias, out);
        Ok(crop)
    }

    /// The batch of samples `idx` in epoch `epoch`, built on the pool. An image that cannot be
    /// decoded fails the batch, naming the file; with bad=skip it is left out of the batch, with
    /// a warning.
    pub fn batch(&self, idx: &[u32], seed: u64, epoch: u64) -> Result<Batch> {
        let numel = self.shape().numel();
        let n = idx.len();
        let mut images = vec![0f32; n * numel];
        let mut crops = vec![CropBox { y: 0, x: 0, h: 0, w: 0, flip: false }; n];
        let mut errors: Vec<Option<anyhow::Error>> = (0..n).map(|_| None).collect();
        let work = images.chunks_mut(numel).zip(crops.iter_mut()).zip(errors.iter_mut()).enumerate();
        par_each_on(self.threads, work, |k, ((out, crop), error)| {
            match self.sample(idx[k] as usize, seed, epoch, out) {
                Ok(c) => {
                    *crop = c;
                    true
                }
                Err(e) => {
                    *error = Some(e);
                    self.skip_bad
                }
            }
        });
        let bad: Vec<usize> = (0..n).filter(|&k| errors[k].is_some()).collect();
        if let Some(&k) = bad.first() {
            let path = &self.images.files[idx[k] as usize];
            let e = errors[k].take().expect("listed as failed");
            if !self.skip_bad {
                return Err(bad_file_error(path, &e));
            }
            for &k in &bad {
                let e = errors[k].take().map_or_else(String::new, |e| format!("{e:#}"));
                eprintln!("warning: skipping {}: cannot decode it ({e})", self.images.files[idx[k] as usize].display());
            }
        }
        let keep: Vec<usize> = (0..n).filter(|k| !bad.contains(k)).collect();
        if keep.len() < n {
            images = keep.iter().flat_map(|&k| images[k * numel..(k + 1) * numel].to_vec()).collect();
        }
        Ok(Batch {
            images,
            labels: keep.iter().map(|&k| self.images.labels[idx[k] as usize] as i64).collect(),
            indices: keep.iter().map(|&k| idx[k]).collect(),
            views: vec![0; keep.len()],
            crops: keep.iter().map(|&k| crops[k]).collect(),
        })
    }
}

/// Decodes every file of a split into memory on the pool (store=memory), with a progress bar;
/// undecodable files fail the load naming the first, or with `skip` are left out with a warning.
/// Returns the kept files, their labels and their images.
pub(crate) fn decode_all(
    files: Vec<PathBuf>,
    labels: Vec<u16>,
    channels: usize,
    skip: bool,
    max_pixels: u64,
    bar: &indicatif::ProgressBar,
) -> Result<FolderImages> {
    let mut slots: Vec<Option<Result<Decoded>>> = (0..files.len()).map(|_| None).collect();
    par_each_on(super::pool::threads(), slots.iter_mut().enumerate(), |i, slot| {
        let r = decode_file(&files[i], channels, max_pixels);
        let ok = r.is_ok() || skip;
        *slot = Some(r);
        bar.inc(1);
        ok
    });
    let mut kept = FolderImages { files: vec![], labels: vec![], decoded: Some(vec![]) };
    for ((slot, file), label) in slots.into_iter().zip(files).zip(labels) {
        match slot {
            Some(Ok(img)) => {
                kept.decoded.as_mut().expect("in memory").push(img);
                kept.files.push(file);
                kept.labels.push(label);
            }
            Some(Err(e)) if skip => eprintln!("warning: skipping {}: cannot decode it ({e:#})", file.display()),
            Some(Err(e)) => return Err(bad_file_error(&file, &e)),
            None => {} // not reached: an earlier file failed
        }
    }
    if kept.is_empty() {
        bail!("no decodable images left");
    }
    Ok(kept)
}
