//! The top-k teacher cache, after FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for
//! Visual Recognition", ECCV 2022): for data sets whose augmentation views cannot all be
//! enumerated (random-resized crops) or whose full logits per view would not fit on disk
//! (ImageNet: 1.28 M images × 1,000 classes), it stores, for each epoch e in 0..E and each training
//! sample, the crop the student's loader draws and the teacher's k largest logits on it. A student
//! run replays the recorded crops (the loader takes them from the cache instead of drawing them, so
//! the student sees exactly the crops the teacher saw) and never runs the teacher.
//!
//! **The rebuilt target.** Each record keeps the k largest logits (f16, with their classes) and one
//! *fill* logit (f16) that every other class gets. The fill is the one that gives the C − k missing
//! classes, in the softmax at τ = `FILL_TAU` (4), exactly their true total probability, spread
//! evenly: fill = τ·(log Σ_missing e^(l/τ) − log(C − k)). FKD spreads the missing probability at
//! τ = 1 instead; at the temperatures kdlab's methods distil at (KD τ = 4, ATS τ1 = 4, τ2 = 2–3)
//! τ = 4 keeps the rebuilt target closer to the full one (`scripts/topk_fidelity.py`, measured in
//! docs/topk-cache.md). The fill is never above the k-th logit (a power mean is at most the
//! maximum), so the top-k order is kept; with k = C nothing is filled and the logits are the full
//! cache's f16 logits. Every method then consumes the rebuilt logits as it would the teacher's.
//!
//! **Crop records** are boxes in the source image's pixels (y, x, h, w; y and x negative where the
//! window reaches into the zero padding) and a flip. For decoded data the loader draws discrete
//! pad-and-crop views (`Augment`), whose boxes are (dy − pad, dx − pad, H, W); a box that is not
//! such a view is refused when replayed. For streamed image folders (`transform=imagenet`) the
//! records are the random-resized-crop boxes ([`CropBox`]) the file feed draws from the seed, the
//! epoch and the sample; the student's loader draws the same ones, and the distiller checks every
//! batch's crops against the records, refusing a cache that does not match.
//!
//! File layout: `KDLTOPK1`, a little-endian u32 header length, a JSON header (teacher and data
//! checksums, seed, epochs, k, the fill rule), zero padding to a 64-byte boundary, then E × N rows,
//! epoch-major (row e·N + i holds sample i in epoch e), each `RECORD_BYTES` + 4k bytes:
//! y i16, x i16, h u16, w u16, flip u8, fill f16, k × class u16 (largest logit first), k × logit
//! f16; then the checksum table as in the logit cache (`crate::train::cache`): a CRC-32 per block of
//! rows and one over the head and the table, all verified on open.
use crate::data::augment::{Augment, View};
use crate::data::loader::{epoch_plan, Loader, LoaderSpec};
use crate::data::transform::CropBox;
use crate::data::{Dataset, Shape};
use crate::train::cache::{
    free_bytes, header_difference, lock_cache_dir, map_with_header, teacher_logits, verify_blocks, write_cache_file,
    BLOCK_BYTES,
};
use crate::train::checkpoint::CheckpointMeta;
use crate::train::model::Infer;
use anyhow::{bail, Context, Result};
use half::f16;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const MAGIC: &[u8; 8] = b"KDLTOPK1";
pub(crate) const FORMAT: &str = "kdlab-topk-cache/1";
/// The temperature at which the fill logit keeps the missing classes' total probability.
pub(crate) const FILL_TAU: f64 = 4.0;
/// Bytes of a row before its k entries: the crop record (9) and the fill logit (2).
pub(crate) const RECORD_BYTES: usize = 11;
/// Images per teacher batch when building from a streamed folder (ImageNet-size inputs).
const STREAM_BATCH: usize = 128;

/// A crop as the loader sampled it: a box in the source image's pixels and a horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropRecord {
    pub y: i16,
    pub x: i16,
    pub h: u16,
    pub w: u16,
    pub flip: bool,
}

impl CropRecord {
    /// The box of a pad-and-crop view of an image of `shape` with padding `pad`.
    pub fn of_view(v: View, pad: usize, shape: Shape) -> CropRecord {
        CropRecord {
            y: v.dy as i16 - pad as i16,
            x: v.dx as i16 - pad as i16,
            h: shape.h as u16,
            w: shape.w as u16,
            flip: v.flip,
        }
    }

    /// The pad-and-crop view this box is, if it is one.
    pub fn to_view(self, pad: usize, shape: Shape) -> Option<View> {
        let p = pad as i16;
        let inside = |o: i16| (-p..=p).contains(&o);
        (self.h as usize == shape.h && self.w as usize == shape.w && inside(self.y) && inside(self.x)).then(|| View {
            dy: (self.y + p) as u16,
            dx: (self.x + p) as u16,
            flip: self.flip,
        })
    }

    /// The record of a streamed sample's crop box; None if the box does not fit a record's
    /// fields (an image side beyond 32,767 pixels).
    pub fn of_box(b: CropBox) -> Option<CropRecord> {
        Some(CropRecord {
            y: i16::try_from(b.y).ok()?,
            x: i16::try_from(b.x).ok()?,
            h: u16::try_from(b.h).ok()?,
            w: u16::try_from(b.w).ok()?,
            flip: b.flip,
        })
    }

    /// The record of a sample the file feed skipped (bad=skip): no box, never matched.
    const SKIPPED: CropRecord = CropRecord { y: 0, x: 0, h: 0, w: 0, flip: false };

    fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.y.to_le_bytes());
        out.extend_from_slice(&self.x.to_le_bytes());
        out.extend_from_slice(&self.h.to_le_bytes());
        out.extend_from_slice(&self.w.to_le_bytes());
        out.push(self.flip as u8);
    }

    fn decode(b: &[u8]) -> CropRecord {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        CropRecord { y: u(0) as i16, x: u(2) as i16, h: u(4), w: u(6), flip: b[8] != 0 }
    }
}

/// A teacher's k largest logits on one crop, and the fill logit of the other classes.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// Classes by descending logit (ties: the lower class first).
    pub classes: Vec<u16>,
    pub logits: Vec<f32>,
    /// The logit every class not in `classes` gets (0 when k = C: nothing is missing).
    pub fill: f32,
}

/// The k largest of `logits` and the fill for the rest (see the module's documentation).
pub fn top_k(logits: &[f32], k: usize) -> TopK {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let missing = &order[k.min(logits.len())..];
    let fill = if missing.is_empty() {
        0.0
    } else {
        let scaled: Vec<f64> = missing.iter().map(|&c| logits[c] as f64 / FILL_TAU).collect();
        let top = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = top + scaled.iter().map(|s| (s - top).exp()).sum::<f64>().ln();
        (FILL_TAU * (lse - (missing.len() as f64).ln())) as f32
    };
    let kept = &order[..k.min(logits.len())];
    TopK { classes: kept.iter().map(|&c| c as u16).collect(), logits: kept.iter().map(|&c| logits[c]).collect(), fill }
}

/// The teacher's logits rebuilt from a record: its k logits where stored, the fill elsewhere.
pub fn rebuild(top: &TopK, out: &mut [f32]) {
    out.fill(top.fill);
    for (&c, &l) in top.classes.iter().zip(&top.logits) {
        out[c as usize] = l;
    }
}

/// The teacher cache a distillation reads: none (the teacher runs), every view's full logits, or
/// the sampled crops with top-k logits. In TOML: `false`, `true` (or "logits"), "topk:K".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeacherCache {
    #[default]
    Off,
    Logits,
    TopK(usize),
}

impl TeacherCache {
    pub fn is_on(self) -> bool {
        self != TeacherCache::Off
    }

    /// Reads the key's value (`key` and `origin` name it in errors).
    pub(crate) fn from_toml(v: &toml::Value, key: &str, origin: &str) -> Result<TeacherCache> {
        match v {
            toml::Value::Boolean(b) => Ok(if *b { TeacherCache::Logits } else { TeacherCache::Off }),
            toml::Value::String(s) => s.parse().map_err(|e| anyhow::anyhow!("{origin}: key '{key}': {e:#}")),
            v => bail!("{origin}: key '{key}' should be true, false, \"logits\" or \"topk:K\", found {v}"),
        }
    }
}

impl std::str::FromStr for TeacherCache {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<TeacherCache> {
        let bad = || anyhow::anyhow!("'{s}' is not a teacher cache: give off, logits or topk:K (K ≥ 1, e.g. topk:5)");
        match s {
            "off" | "false" => Ok(TeacherCache::Off),
            "logits" | "true" => Ok(TeacherCache::Logits),
            _ => {
                let k = s.strip_prefix("topk:").ok_or_else(bad)?.parse::<usize>().map_err(|_| bad())?;
                if k == 0 || k > u16::MAX as usize {
                    return Err(bad());
                }
                Ok(TeacherCache::TopK(k))
            }
        }
    }
}

impl std::fmt::Display for TeacherCache {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            TeacherCache::Off => write!(f, "off"),
            TeacherCache::Logits => write!(f, "logits"),
            TeacherCache::TopK(k) => write!(f, "topk:{k}"),
        }
    }
}

/// Off and Logits are written as the booleans they were before top-k existed, so the run records
/// and study ids of those runs do not change.
impl Serialize for TeacherCache {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            TeacherCache::Off => s.serialize_bool(false),
            TeacherCache::Logits => s.serialize_bool(true),
            TeacherCache::TopK(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for TeacherCache {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Mode(String),
        }
        match Given::deserialize(d)? {
            Given::Flag(b) => Ok(if b { TeacherCache::Logits } else { TeacherCache::Off }),
            Given::Mode(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: String,
    pub teacher_model: String,
    pub teacher_weights_sha256: String,
    pub data_name: String,
    pub data_fingerprint: String,
    pub split: String,
    pub samples: usize,
    pub classes: usize,
    /// The source images' size, which crop boxes refer to (decoded data; for a streamed folder,
    /// whose images differ in size, the network input's).
    pub height: usize,
    pub width: usize,
    pub k: usize,
    /// Epochs recorded; a run of up to this many epochs with the same seed replays them.
    pub epochs: usize,
    /// The seed whose loader draws the crops (the student run's seed).
    pub seed: u64,
    pub augment: bool,
    pub pad: usize,
    pub flip: bool,
    pub crop_draw: String,
    pub fill_tau: f64,
    pub layout: String,
    pub block_bytes: usize,
}

impl Header {
    pub fn row_bytes(&self) -> usize {
        RECORD_BYTES + 4 * self.k
    }

    fn data_bytes(&self) -> usize {
        self.epochs * self.samples * self.row_bytes()
    }

    /// [`Header::data_bytes`] when the header's numbers make sense — k in 1..=classes, classes
    /// that a u16 can name, sizes whose product fits — else what is wrong. A header read from a
    /// file is checked with it before any size is computed from it.
    fn checked_data_bytes(&self) -> std::result::Result<usize, String> {
        if self.k == 0 || self.k > self.classes || self.classes > u16::MAX as usize + 1 {
            return Err(format!("k = {} of {} classes", self.k, self.classes));
        }
        if self.block_bytes == 0 {
            return Err("a block size of 0".into());
        }
        // kdlab never builds a cache without records; one that claims none would let a reader
        // loop over any number of empty epochs.
        if self.samples == 0 || self.epochs == 0 {
            return Err(format!("{} epochs of {} samples", self.epochs, self.samples));
        }
        self.k
            .checked_mul(4)
            .and_then(|b| b.checked_add(RECORD_BYTES))
            .and_then(|r| r.checked_mul(self.samples))
            .and_then(|r| r.checked_mul(self.epochs))
            .ok_or_else(|| {
                format!(
                    "{} epochs × {} samples × top-{}: more bytes than can be addressed",
                    self.epochs, self.samples, self.k
                )
            })
    }

    /// Whether a cache with this header serves a run that wants `want`: the same in everything,
    /// and at least as many epochs.
    fn serves(&self, want: &Header) -> bool {
        self.epochs >= want.epochs && *self == Header { epochs: self.epochs, ..want.clone() }
    }
}

/// What a top-k cache is built for: the teacher, the data, the student's augmentation, seed and
/// epochs, and k.
pub struct Request<'a> {
    pub meta: &'a CheckpointMeta,
    pub data: &'a Dataset,
    pub augment: bool,
    pub seed: u64,
    pub epochs: usize,
    pub k: usize,
}

impl Request<'_> {
    fn header(&self) -> Header {
        let aug = Augment::new(&self.data.profile, self.augment);
        Header {
            format: FORMAT.into(),
            teacher_model: self.meta.model.clone(),
            teacher_weights_sha256: self.meta.weights_sha256.clone(),
            data_name: self.data.name.clone(),
            data_fingerprint: self.data.fingerprint(),
            split: "train".into(),
            samples: self.data.train.len(),
            classes: self.meta.classes,
            height: self.data.train.shape.h,
            width: self.data.train.shape.w,
            k: self.k,
            epochs: self.epochs,
            seed: self.seed,
            augment: self.augment,
            pad: aug.pad,
            flip: aug.flip,
            crop_draw: match &self.data.stream {
                None => "kdlab's training loader (loader::epoch_plan) with this seed, per epoch".into(),
                Some(s) => format!(
                    "the file feed's crops (transform::sample_rng) with this seed, per epoch and sample; recipe {:?}",
                    s.recipe
                ),
            },
            fill_tau: FILL_TAU,
            layout: "epoch-major rows e*samples + i: y i16, x i16, h u16, w u16, flip u8, fill f16, k x class u16, k x logit f16".into(),
            block_bytes: BLOCK_BYTES,
        }
    }

    /// The file, in the teacher's `logit-cache/` directory.
    pub fn path(&self, teacher_dir: &Path) -> PathBuf {
        let key = crate::data::sha256_hex(
            format!(
                "{}|{}|{}|{}|{}|{}|{}",
                self.meta.weights_sha256,
                self.data.fingerprint(),
                self.data.profile.pad,
                self.data.profile.flip,
                self.augment,
                self.seed,
                self.k
            )
            .as_bytes(),
        );
        teacher_dir.join("logit-cache").join(format!("train-topk{}-s{}-{}.kdlk", self.k, self.seed, &key[..16]))
    }
}

/// A top-k cache opened for reading (memory-mapped, verified).
pub struct TopKCache {
    pub header: Header,
    pub path: PathBuf,
    map: memmap2::Mmap,
    offset: usize,
}

/// Opens the top-k cache for `req`, building it first if it is missing, damaged, built for other
/// settings or for fewer epochs.
pub fn open_or_build(teacher_dir: &Path, model: &impl Infer, req: &Request, quiet: bool) -> Result<TopKCache> {
    if req.k == 0 || req.k > req.meta.classes {
        bail!("teacher_cache topk:{}: k must be in 1..={} (the teacher's classes)", req.k, req.meta.classes);
    }
    let path = req.path(teacher_dir);
    let want = req.header();
    let lock = lock_cache_dir(path.parent().expect("in logit-cache/"))?;
    if path.exists() {
        match TopKCache::open(&path) {
            Ok(c) if c.header.serves(&want) => return Ok(c),
            Ok(c) if c.header.epochs < want.epochs && Header { epochs: want.epochs, ..c.header.clone() } == want => {
                eprintln!(
                    "note: the top-k teacher cache {} records {} epochs, this run needs {}; rebuilding it",
                    path.display(),
                    c.header.epochs,
                    want.epochs
                )
            }
            Ok(c) => eprintln!(
                "note: the top-k teacher cache {} was built for other settings ({}); rebuilding it",
                path.display(),
                header_difference(&c.header, &want)
            ),
            Err(e) => eprintln!("warning: {e:#}; rebuilding it"),
        }
    }
    build(&path, model, req.data, &want, quiet)?;
    drop(lock);
    TopKCache::open(&path)
}

/// One epoch's rows, as the builder writes them.
fn encode_rows(crops: &[CropRecord], tops: &[TopK], out: &mut Vec<u8>) {
    for (c, t) in crops.iter().zip(tops) {
        c.encode(out);
        out.extend_from_slice(&f16::from_f32(t.fill).to_le_bytes());
        t.classes.iter().for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
        t.logits.iter().for_each(|l| out.extend_from_slice(&f16::from_f32(*l).to_le_bytes()));
    }
}

/// The teacher's top-k on every sample of an epoch, each seen through its view `views[i]`.
fn epoch_top_k(model: &impl Infer, data: &Dataset, aug: &Augment, views: &[u32], k: usize) -> Result<Vec<TopK>> {
    let mut tops = Vec::with_capacity(data.train.len());
    teacher_logits(
        model,
        &data.train,
        aug,
        |i| aug.view(views[i] as usize),
        |lo, hi, logits| {
            tops.extend(logits.chunks_exact(logits.len() / (hi - lo)).map(|row| top_k(row, k)));
            Ok(())
        },
    )?;
    Ok(tops)
}

fn build(path: &Path, model: &impl Infer, data: &Dataset, header: &Header, quiet: bool) -> Result<()> {
    let (n, epochs) = (header.samples, header.epochs);
    let bytes = header.data_bytes() as u64;
    let dir = path.parent().expect("has a parent");
    if let Some(free) = free_bytes(dir) {
        if free < bytes + (64 << 20) {
            bail!(
                "the top-k teacher cache {} would need {:.1} MiB ({epochs} epochs × {n} samples × {} bytes) but {} has {:.1} MiB free",
                path.display(),
                bytes as f64 / (1 << 20) as f64,
                header.row_bytes(),
                dir.display(),
                free as f64 / (1 << 20) as f64
            );
        }
    }
    let started = std::time::Instant::now();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        crate::util::progress::items_bar(n * epochs, "top-k teacher cache")
    };
    write_cache_file(path, MAGIC, header, header.block_bytes, |emit| match data.stream {
        None => memory_epochs(model, data, header, emit, &bar),
        Some(_) => streamed_epochs(model, data, header, emit, &bar),
    })?;
    bar.finish_and_clear();
    if !quiet {
        println!(
            "built the top-k teacher cache {} ({epochs} epochs × {n} samples, top-{} of {}, {:.1} MiB) in {}",
            path.display(),
            header.k,
            header.classes,
            bytes as f64 / (1 << 20) as f64,
            crate::util::fmt::duration(started.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

/// Every epoch's rows of a decoded split, each sample seen through the view the seed draws.
fn memory_epochs(
    model: &impl Infer,
    data: &Dataset,
    header: &Header,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let n = header.samples;
    let aug = Augment::new(&data.profile, header.augment);
    let spec = LoaderSpec { batch_size: 1, shuffle: true, seed: header.seed, drop_last: false };
    // Without augmentation every epoch sees the identity view: the teacher runs once.
    let mut single_view: Option<Vec<TopK>> = None;
    for epoch in 0..header.epochs {
        let (_, views) = epoch_plan(n, &spec, &aug, epoch as u64);
        let tops = match &single_view {
            Some(t) => t.clone(),
            None => epoch_top_k(model, data, &aug, &views, header.k)?,
        };
        if aug.view_count() == 1 {
            single_view = Some(tops.clone());
        }
        let crops: Vec<CropRecord> =
            views.iter().map(|&v| CropRecord::of_view(aug.view(v as usize), aug.pad, data.train.shape)).collect();
        let mut out = Vec::with_capacity(n * header.row_bytes());
        encode_rows(&crops, &tops, &mut out);
        emit(&out)?;
        bar.inc(n as u64);
    }
    Ok(())
}

/// Every epoch's rows of a streamed folder, written batch by batch: the file feed's batches for
/// the seed, in sample order (a sample's crop depends on the seed, the epoch and its index only,
/// not on the order, so these are the crops the student's shuffled loader draws), the teacher run
/// on each.
fn streamed_epochs(
    model: &impl Infer,
    data: &Dataset,
    header: &Header,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let (n, k) = (header.samples, header.k);
    let feed = data.feed("train", header.augment)?;
    let shape = data.shape();
    let spec = LoaderSpec { batch_size: STREAM_BATCH, shuffle: false, seed: header.seed, drop_last: false };
    let skipped = TopK { classes: vec![0; k], logits: vec![0.0; k], fill: 0.0 };
    let mut out = Vec::with_capacity(STREAM_BATCH * header.row_bytes());
    for epoch in 0..header.epochs {
        let mut loader = Loader::from_feed(feed.clone(), spec, epoch as u64);
        let mut next = 0usize;
        for batch in loader.by_ref() {
            let (x, _) = crate::train::eval::to_tensors(&batch, shape, model.device());
            let logits = Vec::<f32>::try_from(model.infer(&x).to_device(Device::Cpu).to_kind(Kind::Float).view(-1))?;
            out.clear();
            for ((&i, &crop), row) in batch.indices.iter().zip(&batch.crops).zip(logits.chunks_exact(header.classes)) {
                // A sample left out as undecodable (bad=skip) keeps an empty record: the student's
                // loader leaves it out too.
                for _ in next..i as usize {
                    encode_rows(&[CropRecord::SKIPPED], std::slice::from_ref(&skipped), &mut out);
                }
                let record = CropRecord::of_box(crop).with_context(|| {
                    format!("{}: sample {i}'s crop {crop:?} is too large for a top-k cache record", data.name)
                })?;
                encode_rows(&[record], &[top_k(row, k)], &mut out);
                next = i as usize + 1;
            }
            emit(&out)?;
            bar.inc(batch.len() as u64);
        }
        loader.finish()?;
        out.clear();
        for _ in next..n {
            encode_rows(&[CropRecord::SKIPPED], std::slice::from_ref(&skipped), &mut out);
        }
        emit(&out)?;
    }
    Ok(())
}

impl TopKCache {
    /// Opens and verifies a cache file: format, size, and every checksum.
    pub fn open(path: &Path) -> Result<TopKCache> {
        let what = "top-k teacher cache";
        let (map, value, offset) = map_with_header(path, MAGIC, FORMAT, what)?;
        let header: Header = serde_json::from_value(value)
            .with_context(|| format!("the {what} {} has a damaged header", path.display()))?;
        let data = header
            .checked_data_bytes()
            .map_err(|e| anyhow::anyhow!("the {what} {} has a damaged header ({e})", path.display()))?;
        let epoch_bytes = (header.samples * header.row_bytes()).max(1);
        verify_blocks(&map, offset, data, header.block_bytes, (path, what), |lo, hi| {
            format!("epochs {}..={}", lo / epoch_bytes, (hi.max(1) - 1) / epoch_bytes)
        })?;
        let cache = TopKCache { header, path: path.to_path_buf(), map, offset };
        cache.check_classes()?;
        Ok(cache)
    }

    /// Every record's classes name one of the header's classes (the checksums only say that the
    /// file is as it was written, not that what wrote it was kdlab): a class beyond them would
    /// index past a row of rebuilt logits.
    fn check_classes(&self) -> Result<()> {
        let (k, c, rb) = (self.header.k, self.header.classes, self.header.row_bytes());
        let rows = self.header.epochs * self.header.samples;
        let data = &self.map[self.offset..self.offset + rows * rb];
        for (r, row) in data.chunks_exact(rb).enumerate() {
            let classes = &row[RECORD_BYTES..RECORD_BYTES + 2 * k];
            if let Some(bad) =
                classes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).find(|&x| x as usize >= c)
            {
                bail!(
                    "the top-k teacher cache {} is damaged: sample {} of epoch {} records class {bad} of {c}",
                    self.path.display(),
                    r % self.header.samples.max(1),
                    r / self.header.samples.max(1) + 1
                );
            }
        }
        Ok(())
    }

    fn row(&self, epoch: usize, i: usize) -> &[u8] {
        let rb = self.header.row_bytes();
        let at = self.offset + (epoch * self.header.samples + i) * rb;
        &self.map[at..at + rb]
    }

    fn check_epoch(&self, epoch: usize) -> Result<()> {
        if epoch >= self.header.epochs {
            bail!(
                "the top-k teacher cache {} records {} epochs; epoch {} is not in it",
                self.path.display(),
                self.header.epochs,
                epoch + 1
            );
        }
        Ok(())
    }

    fn check_samples(&self, indices: &[u32]) -> Result<()> {
        if let Some(i) = indices.iter().find(|&&i| i as usize >= self.header.samples) {
            bail!(
                "the top-k teacher cache {} records {} samples; sample {i} is not in it",
                self.path.display(),
                self.header.samples
            );
        }
        Ok(())
    }

    /// A header of this format for `epochs` × `samples` records of the top `k` of `classes`, with
    /// placeholder identities (teacher, data, seed): for tests and the fuzzers, with
    /// [`TopKCache::write_raw`].
    pub fn synthetic_header(samples: usize, classes: usize, k: usize, epochs: usize, block_bytes: usize) -> Header {
        Header {
            format: FORMAT.into(),
            teacher_model: "synthetic".into(),
            teacher_weights_sha256: "0".into(),
            data_name: "synthetic".into(),
            data_fingerprint: "0".into(),
            split: "train".into(),
            samples,
            classes,
            height: 8,
            width: 8,
            k,
            epochs,
            seed: 1,
            augment: true,
            pad: 2,
            flip: true,
            crop_draw: "synthetic".into(),
            fill_tau: FILL_TAU,
            layout: "synthetic".into(),
            block_bytes,
        }
    }

    /// Writes a cache file of `header` whose rows are `rows` as they are (the layout's bytes,
    /// unchecked), with valid checksums: for tests and the fuzzers, which hand [`TopKCache::open`]
    /// files that pass their checksums but hold anything.
    pub fn write_raw(path: &Path, header: &Header, rows: &[u8]) -> Result<()> {
        write_cache_file(path, MAGIC, header, header.block_bytes.max(1), |emit| emit(rows))
    }

    /// The crop and top-k of sample `i` in `epoch` (0-based).
    pub fn record(&self, epoch: usize, i: usize) -> (CropRecord, TopK) {
        let (row, k) = (self.row(epoch, i), self.header.k);
        let u = |at: usize| [row[at], row[at + 1]];
        let entries = &row[RECORD_BYTES..];
        let top = TopK {
            fill: f16::from_le_bytes(u(9)).to_f32(),
            classes: (0..k).map(|j| u16::from_le_bytes([entries[2 * j], entries[2 * j + 1]])).collect(),
            logits: (0..k)
                .map(|j| f16::from_le_bytes([entries[2 * (k + j)], entries[2 * (k + j) + 1]]).to_f32())
                .collect(),
        };
        (CropRecord::decode(row), top)
    }

    /// The rebuilt teacher logits of samples `indices` in `epoch`, as (N, C) f32.
    pub fn lookup(&self, epoch: usize, indices: &[u32]) -> Result<Tensor> {
        self.check_epoch(epoch)?;
        self.check_samples(indices)?;
        let c = self.header.classes;
        let mut out = vec![0f32; indices.len() * c];
        for (row, &i) in out.chunks_exact_mut(c).zip(indices) {
            rebuild(&self.record(epoch, i as usize).1, row);
        }
        Ok(Tensor::from_slice(&out).view([indices.len() as i64, c as i64]))
    }

    /// Checks that a streamed batch's crops (samples `indices` in `epoch`) are the recorded ones:
    /// the stored logits are the teacher's on those crops and on no others.
    pub fn check_crops(&self, epoch: usize, indices: &[u32], crops: &[CropBox]) -> Result<()> {
        self.check_epoch(epoch)?;
        self.check_samples(indices)?;
        for (&i, &drawn) in indices.iter().zip(crops) {
            let recorded = self.record(epoch, i as usize).0;
            if CropRecord::of_box(drawn) != Some(recorded) {
                bail!(
                    "the top-k teacher cache {} recorded the crop {recorded:?} for sample {i} in epoch {}, but this run's loader drew {drawn:?}: \
                     the cache holds the teacher's logits on other crops (built for another seed or recipe, or altered); delete it to rebuild it",
                    self.path.display(),
                    epoch + 1
                );
            }
        }
        Ok(())
    }

    /// The recorded crop of every sample in `epoch` as a view of `aug` (what the loader replays).
    pub fn view_ids(&self, epoch: usize, aug: &Augment, shape: Shape) -> Result<Vec<u32>> {
        self.check_epoch(epoch)?;
        if (aug.pad, aug.flip) != (self.header.pad, self.header.flip) {
            bail!(
                "the top-k teacher cache {} records crops with padding {} and flips {}, this run augments with padding {} and flips {}",
                self.path.display(),
                self.header.pad,
                self.header.flip,
                aug.pad,
                aug.flip
            );
        }
        (0..self.header.samples)
            .map(|i| {
                let crop = self.record(epoch, i).0;
                let view = crop.to_view(aug.pad, shape).with_context(|| {
                    format!(
                        "the top-k teacher cache {}: sample {i} of epoch {} has the crop {crop:?}, which is not a pad-and-crop view of a {}×{} image",
                        self.path.display(),
                        epoch + 1,
                        shape.h,
                        shape.w
                    )
                })?;
                Ok(aug.view_id(view) as u32)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_cache_modes_parse_and_keep_the_old_booleans() {
        assert_eq!("topk:5".parse::<TeacherCache>().unwrap(), TeacherCache::TopK(5));
        assert_eq!("logits".parse::<TeacherCache>().unwrap(), TeacherCache::Logits);
        for bad in ["topk:0", "topk:", "top5", "topk:x"] {
            let e = format!("{:#}", bad.parse::<TeacherCache>().unwrap_err());
            assert!(e.contains(bad) && e.contains("topk:K"), "{e}");
        }
        assert_eq!(serde_json::to_value(TeacherCache::Off).unwrap(), serde_json::json!(false));
        assert_eq!(serde_json::to_value(TeacherCache::Logits).unwrap(), serde_json::json!(true));
        assert_eq!(serde_json::to_value(TeacherCache::TopK(3)).unwrap(), serde_json::json!("topk:3"));
        for m in [TeacherCache::Off, TeacherCache::Logits, TeacherCache::TopK(7)] {
            let back: TeacherCache = serde_json::from_value(serde_json::to_value(m).unwrap()).unwrap();
            assert_eq!(back, m);
        }
        let e = TeacherCache::from_toml(&toml::Value::Integer(5), "teacher_cache", "s.toml").unwrap_err();
        assert!(format!("{e}").contains("s.toml") && format!("{e}").contains("'teacher_cache'"), "{e}");
    }

    #[test]
    fn crop_records_round_trip_views() {
        let shape = Shape { c: 1, h: 28, w: 28 };
        for (dy, dx, flip) in [(0u16, 0u16, false), (2, 2, true), (4, 1, false)] {
            let v = View { dy, dx, flip };
            let r = CropRecord::of_view(v, 2, shape);
            assert_eq!((r.y, r.x, r.h, r.w), (dy as i16 - 2, dx as i16 - 2, 28, 28));
            assert_eq!(r.to_view(2, shape), Some(v));
            let mut bytes = vec![];
            r.encode(&mut bytes);
            assert_eq!(bytes.len(), 9);
            assert_eq!(CropRecord::decode(&bytes), r);
        }
        let off = CropRecord { y: 3, x: 0, h: 28, w: 28, flip: false };
        assert_eq!(off.to_view(2, shape), None, "an offset beyond the padding is no view");
        assert_eq!(CropRecord { h: 20, ..off }.to_view(4, shape), None, "a smaller box is no view");
        let b = CropBox { y: 30_000, x: 7, h: 65_535, w: 3, flip: true };
        assert_eq!(CropRecord::of_box(b), Some(CropRecord { y: 30_000, x: 7, h: 65_535, w: 3, flip: true }));
        assert_eq!(CropRecord::of_box(CropBox { y: 40_000, ..b }), None, "beyond i16: no record");
        assert_eq!(CropRecord::of_box(CropBox { w: 70_000, ..b }), None, "beyond u16: no record");
    }

    /// Logits from a fixed generator with a wide spread and a few exact ties.
    fn logits(rows: usize, c: usize) -> Vec<Vec<f32>> {
        let mut rng = crate::util::rng::Rng::new(11);
        (0..rows)
            .map(|r| {
                let mut v: Vec<f32> = (0..c).map(|_| (rng.unit() as f32 - 0.5) * 24.0).collect();
                if r % 7 == 0 {
                    v[1] = v[4];
                }
                v
            })
            .collect()
    }

    /// The top-k and fill computed independently in f64: a full sort, then the tail's power mean.
    fn reference(row: &[f32], k: usize) -> (Vec<u16>, f64) {
        let mut idx: Vec<(f64, u16)> = row.iter().enumerate().map(|(c, &l)| (l as f64, c as u16)).collect();
        idx.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        let tail = &idx[k..];
        let mean_exp = tail.iter().map(|(l, _)| (l / FILL_TAU).exp()).sum::<f64>() / tail.len().max(1) as f64;
        (idx[..k].iter().map(|p| p.1).collect(), if tail.is_empty() { 0.0 } else { FILL_TAU * mean_exp.ln() })
    }

    #[test]
    fn top_k_matches_a_float64_reference() {
        for row in logits(200, 10) {
            for k in [1, 2, 3, 5, 9, 10] {
                let got = top_k(&row, k);
                let (classes, fill) = reference(&row, k);
                assert_eq!(got.classes, classes, "{row:?} k={k}");
                let values: Vec<f32> = classes.iter().map(|&c| row[c as usize]).collect();
                assert_eq!(got.logits, values);
                assert!((got.fill as f64 - fill).abs() <= 1e-5 * fill.abs().max(1.0), "{} vs {fill}", got.fill);
            }
        }
    }

    fn softmax(x: &[f32], tau: f64) -> Vec<f64> {
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = x.iter().map(|&v| ((v as f64 - m) / tau).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// A record as the cache stores it: f16 logits and fill.
    fn stored(t: &TopK) -> TopK {
        let r = |x: f32| f16::from_f32(x).to_f32();
        TopK { classes: t.classes.clone(), logits: t.logits.iter().map(|&l| r(l)).collect(), fill: r(t.fill) }
    }

    #[test]
    fn the_rebuilt_target_keeps_order_mass_and_is_exact_at_full_k() {
        for row in logits(200, 10) {
            for k in [1, 2, 3, 5, 10] {
                let t = stored(&top_k(&row, k));
                let mut rebuilt = vec![0f32; 10];
                rebuild(&t, &mut rebuilt);
                for tau in [1.0, 4.0] {
                    let p = softmax(&rebuilt, tau);
                    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                }
                // The stored classes are the rebuilt target's top-k, in order; the rest are equal.
                let (classes, _) = reference(&rebuilt, k);
                let tied = |a: u16, b: u16| rebuilt[a as usize] == rebuilt[b as usize];
                assert!(classes.iter().zip(&t.classes).all(|(&a, &b)| a == b || tied(a, b)), "{rebuilt:?}");
                assert!(rebuilt.iter().enumerate().all(|(c, &l)| t.classes.contains(&(c as u16)) || l == t.fill));
                // At τ = FILL_TAU the missing classes keep their total probability (up to f16).
                let (full, part) = (softmax(&row, FILL_TAU), softmax(&rebuilt, FILL_TAU));
                let missing =
                    |p: &[f64]| (0..10).filter(|c| !t.classes.contains(&(*c as u16))).map(|c| p[c]).sum::<f64>();
                assert!((missing(&full) - missing(&part)).abs() < 2e-3, "{} vs {}", missing(&full), missing(&part));
                if k == 10 {
                    let f16_row: Vec<f32> = row.iter().map(|&l| f16::from_f32(l).to_f32()).collect();
                    assert_eq!(rebuilt, f16_row, "k = C: the full cache's f16 logits exactly");
                }
            }
        }
    }
}
