//! The teacher-logit cache. For a fixed teacher and data set, the teacher's logits depend only on
//! the sample and its augmentation view, so they are computed once for every (sample, view) —
//! e.g. 25 crop offsets × 2 flips = 50 views of a 28×28 image with padding 2, or just the identity
//! view when students train without augmentation — and stored as f16 in a memory-mapped file in
//! the teacher's run directory. Distillation then looks up the view each sample drew and never
//! runs the teacher.
//!
//! File layout: `KDLCACHE`, a little-endian u32 header length, a JSON header (teacher checksum,
//! data checksum, view enumeration, dtype, shape), zero padding to a 64-byte boundary, then
//! V × N × C f16 values, view-major (row `v·N + i` holds sample i seen through view v), so that
//! building writes each view's logits as one contiguous block; then the checksum table: a CRC-32
//! (little-endian u32) of each `block_bytes`-byte block of the logits (the last one shorter), and
//! a CRC-32 of everything before the logits (magic, header length, header, padding) followed by
//! the block table.
//!
//! Opening a cache verifies every checksum before any logit is used (the whole file is read once:
//! CRC-32 runs at several GB/s, so a 1.6 GB CIFAR-100 cache costs well under a second once it is
//! in the page cache). `open_or_build` rebuilds a cache that fails the check — or that an older
//! kdlab wrote in another format — and says so on stderr. The map is not re-verified afterwards:
//! damage that happens to the file while a run reads it is not caught.
use crate::data::augment::{Augment, View};
use crate::data::{Dataset, Split};
use crate::train::checkpoint::CheckpointMeta;
use crate::train::model::Infer;
use crate::util::atomic;
use anyhow::{bail, Context, Result};
use half::f16;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const MAGIC: &[u8; 8] = b"KDLCACHE";
pub(crate) const FORMAT: &str = "kdlab-logit-cache/2";
/// Bytes of logits per checksummed block.
pub(crate) const BLOCK_BYTES: usize = 1 << 20;

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
    pub views: usize,
    /// The view enumeration: crop padding and flips as in `Augment` (views off: identity only).
    pub pad: usize,
    pub flip: bool,
    pub augment: bool,
    pub view_order: String,
    pub dtype: String,
    pub layout: String,
    /// Bytes of logits per CRC-32 in the checksum table after the logits.
    pub block_bytes: usize,
}

/// A cache opened for reading (memory-mapped).
pub struct LogitCache {
    pub header: Header,
    pub path: PathBuf,
    map: memmap2::Mmap,
    offset: usize,
}

/// The cache file for a teacher, data set and view enumeration.
pub fn cache_path(teacher_dir: &Path, meta: &CheckpointMeta, data: &Dataset, augment: bool) -> PathBuf {
    let key = crate::data::sha256_hex(
        format!(
            "{}|{}|{}|{}|{}",
            meta.weights_sha256,
            data.fingerprint(),
            data.profile.pad,
            data.profile.flip,
            augment
        )
        .as_bytes(),
    );
    teacher_dir.join("logit-cache").join(format!("train-{}.kdlc", &key[..16]))
}

fn expected_header(meta: &CheckpointMeta, data: &Dataset, augment: bool) -> Header {
    let aug = Augment::new(&data.profile, augment);
    Header {
        format: FORMAT.into(),
        teacher_model: meta.model.clone(),
        teacher_weights_sha256: meta.weights_sha256.clone(),
        data_name: data.name.clone(),
        data_fingerprint: data.fingerprint(),
        split: "train".into(),
        samples: data.train.len(),
        classes: meta.classes,
        views: aug.view_count(),
        pad: aug.pad,
        flip: aug.flip,
        augment,
        view_order: "crop offset (dy, dx) row-major, flip fastest; as kdlab's Augment::view".into(),
        dtype: "f16".into(),
        layout: "view-major: row v*samples + i".into(),
        block_bytes: BLOCK_BYTES,
    }
}

/// Free bytes on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Opens the cache for this teacher and data, building it first if it is missing or stale.
pub fn open_or_build(
    teacher_dir: &Path,
    model: &impl Infer,
    meta: &CheckpointMeta,
    data: &Dataset,
    augment: bool,
    quiet: bool,
) -> Result<LogitCache> {
    let path = cache_path(teacher_dir, meta, data, augment);
    let want = expected_header(meta, data, augment);
    let lock = lock_cache_dir(path.parent().expect("in logit-cache/"))?;
    if path.exists() {
        match LogitCache::open(&path) {
            Ok(c) if c.header == want => return Ok(c),
            Ok(c) => eprintln!(
                "note: the teacher-logit cache {} was built for other settings ({}); rebuilding it",
                path.display(),
                header_difference(&c.header, &want)
            ),
            Err(e) => eprintln!("warning: {e:#}; rebuilding it"),
        }
    }
    build(&path, model, data, &want, augment, quiet)?;
    drop(lock);
    LogitCache::open(&path)
}

/// Creates the cache directory `dir` and locks it: one builder at a time per teacher (sweep
/// workers may share a teacher); the others wait until the returned file is dropped. Removes the
/// temporary files of interrupted builds.
pub(crate) fn lock_cache_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = std::fs::File::options().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    }
    // A build killed mid-write (kill -9, a power cut) leaves its temporary file, as large as the
    // cache; the finished file was never replaced, so only the temporary needs removing.
    let stale = atomic::remove_stale_temps(dir);
    if stale > 0 {
        eprintln!(
            "note: removed {stale} unfinished teacher-logit cache file(s) left in {} by an interrupted build",
            dir.display()
        );
    }
    Ok(lock)
}

/// The first header field that differs, for the message.
pub(crate) fn header_difference<H: Serialize>(have: &H, want: &H) -> String {
    let (a, b) = (serde_json::to_value(have).unwrap_or_default(), serde_json::to_value(want).unwrap_or_default());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return String::new() };
    b.iter()
        .find(|(k, v)| a.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {} → {v}", a.get(k).map_or("-".into(), |x| x.to_string())))
        .unwrap_or_default()
}

/// CRC-32s of consecutive `block`-byte blocks of a byte stream fed in pieces of any size.
pub(crate) struct BlockSums {
    block: usize,
    filled: usize,
    hasher: crc32fast::Hasher,
    sums: Vec<u32>,
}

impl BlockSums {
    pub(crate) fn new(block: usize) -> BlockSums {
        BlockSums { block, filled: 0, hasher: crc32fast::Hasher::new(), sums: vec![] }
    }

    pub(crate) fn add(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.block - self.filled).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.block {
                self.sums.push(std::mem::replace(&mut self.hasher, crc32fast::Hasher::new()).finalize());
                self.filled = 0;
            }
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.sums.push(self.hasher.finalize());
        }
        self.sums
    }
}

/// Blocks of `block` bytes in `data` bytes of logits.
pub(crate) fn block_count(data: usize, block: usize) -> usize {
    data.div_ceil(block)
}

/// The CRC-32 over the file's head (magic … padding) and its block table.
pub(crate) fn table_sum(head: &[u8], table: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(table);
    h.finalize()
}

/// The teacher's logits on every sample of `split`, sample i seen through `view_of(i)`, in
/// batches of `EVAL_BATCH`: `each(lo, hi, logits)` gets samples lo..hi's (hi − lo) × C logits.
pub(crate) fn teacher_logits(
    model: &impl Infer,
    split: &Split,
    aug: &Augment,
    view_of: impl Fn(usize) -> View,
    mut each: impl FnMut(usize, usize, &[f32]) -> Result<()>,
) -> Result<()> {
    teacher_inputs(split, aug, view_of, model.device(), |lo, hi, x| {
        let logits = model.infer(x).to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        each(lo, hi, &Vec::<f32>::try_from(logits.view(-1))?)
    })
}

/// The teacher's inputs for every sample of `split`, sample i seen through `view_of(i)`, in
/// batches of `EVAL_BATCH` on `device`: `each(lo, hi, x)` gets samples lo..hi's.
pub(crate) fn teacher_inputs(
    split: &Split,
    aug: &Augment,
    view_of: impl Fn(usize) -> View,
    device: Device,
    mut each: impl FnMut(usize, usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let (n, numel) = (split.len(), split.shape.numel());
    let batch = crate::train::eval::EVAL_BATCH;
    let mut buf = vec![0f32; batch * numel];
    for lo in (0..n).step_by(batch) {
        let hi = (lo + batch).min(n);
        for i in lo..hi {
            aug.apply(split.image(i), split.shape, view_of(i), &mut buf[(i - lo) * numel..(i - lo + 1) * numel]);
        }
        let dims = [(hi - lo) as i64, split.shape.c as i64, split.shape.h as i64, split.shape.w as i64];
        each(lo, hi, &Tensor::from_slice(&buf[..(hi - lo) * numel]).view(dims).to_device(device))?;
    }
    Ok(())
}

/// Writes a cache file atomically: `magic`, the header's length and JSON (padded so that the data
/// starts on a 64-byte boundary), the data `body` emits, then a CRC-32 per `block_bytes` of data
/// and one over the head and that table (the layout `verify_blocks` checks).
pub(crate) fn write_cache_file<H: Serialize>(
    path: &Path,
    magic: &[u8; 8],
    header: &H,
    block_bytes: usize,
    body: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let mut head_json = serde_json::to_vec(header)?;
    let unpadded = magic.len() + 4 + head_json.len();
    head_json.extend(std::iter::repeat_n(b' ', (64 - unpadded % 64) % 64));
    atomic::write_via_path(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| anyhow::anyhow!(atomic::describe_io(&e, "creating", tmp)))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        let io = |e: std::io::Error| anyhow::anyhow!(atomic::describe_io(&e, "writing", path));
        let mut head = magic.to_vec();
        head.extend_from_slice(&(head_json.len() as u32).to_le_bytes());
        head.extend_from_slice(&head_json);
        w.write_all(&head).map_err(io)?;
        let mut sums = BlockSums::new(block_bytes);
        body(&mut |bytes: &[u8]| {
            sums.add(bytes);
            w.write_all(bytes).map_err(io)
        })?;
        let table: Vec<u8> = sums.finish().iter().flat_map(|s| s.to_le_bytes()).collect();
        w.write_all(&table).map_err(io)?;
        w.write_all(&table_sum(&head, &table).to_le_bytes()).map_err(io)?;
        w.flush().map_err(io)?;
        Ok(())
    })
}

/// A cache file mapped into memory, its magic checked and its JSON header read and of `format`:
/// the map, the header and the offset of the data after it. `what` names the kind of cache in
/// errors ("teacher-logit cache").
pub(crate) fn map_with_header(
    path: &Path,
    magic: &[u8; 8],
    format: &str,
    what: &str,
) -> Result<(memmap2::Mmap, serde_json::Value, usize)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is only ever replaced by rename, never modified in place.
    let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    if map.len() < 12 || &map[..8] != magic {
        bail!("{}: not a kdlab {what}", path.display());
    }
    let hlen = u32::from_le_bytes(map[8..12].try_into().unwrap()) as usize;
    let damaged = || format!("the {what} {} has a damaged header", path.display());
    let raw = map.get(12..12 + hlen).with_context(damaged)?;
    let value: serde_json::Value = serde_json::from_slice(raw).with_context(damaged)?;
    let found = value.get("format").and_then(|f| f.as_str()).unwrap_or("?");
    if found != format {
        bail!("the {what} {} is in format '{found}', this kdlab reads '{format}'", path.display());
    }
    Ok((map, value, 12 + hlen))
}

/// Verifies a mapped cache's layout — `data` bytes after the head at `offset`, then a CRC-32 per
/// `block` bytes and one over the head and that table — and every checksum. `rows(lo, hi)` says
/// what a damaged block's bytes hold (views, epochs) for the error.
pub(crate) fn verify_blocks(
    map: &[u8],
    offset: usize,
    data: usize,
    block: usize,
    (path, what): (&Path, &str),
    rows: impl Fn(usize, usize) -> String,
) -> Result<()> {
    let blocks = block_count(data, block);
    // Sizes come from the file's header: an overflow is a damaged (or hostile) header.
    let expected = blocks
        .checked_mul(4)
        .and_then(|t| t.checked_add(4))
        .and_then(|t| t.checked_add(data))
        .and_then(|t| t.checked_add(offset))
        .with_context(|| format!("the {what} {} has a damaged header (its sizes overflow)", path.display()))?;
    if map.len() != expected {
        bail!(
            "the {what} {} has {} bytes, its header says {expected}: the file is truncated or damaged",
            path.display(),
            map.len()
        );
    }
    let table = &map[offset + data..offset + data + 4 * blocks];
    let stored = u32::from_le_bytes(map[map.len() - 4..].try_into().unwrap());
    if table_sum(&map[..offset], table) != stored {
        bail!("the {what} {} fails its checksum: its header or checksum table is damaged", path.display());
    }
    for (k, want) in table.chunks_exact(4).enumerate() {
        let (lo, hi) = (k * block, ((k + 1) * block).min(data));
        if crc32fast::hash(&map[offset + lo..offset + hi]) != u32::from_le_bytes(want.try_into().unwrap()) {
            bail!(
                "the {what} {} fails its checksum in block {} of {blocks} (bytes {lo}..{hi}, {}): the file is damaged",
                path.display(),
                k + 1,
                rows(lo, hi)
            );
        }
    }
    Ok(())
}

fn build(path: &Path, model: &impl Infer, data: &Dataset, header: &Header, augment: bool, quiet: bool) -> Result<()> {
    let (n, c, v) = (header.samples, header.classes, header.views);
    let bytes = (n * c * v * 2) as u64;
    let dir = path.parent().expect("has a parent");
    if let Some(free) = free_bytes(dir) {
        if free < bytes + (64 << 20) {
            bail!(
                "the teacher-logit cache for {} would need {:.1} MiB ({n} samples × {v} views × {c} classes × 2 bytes) but {} has {:.1} MiB free",
                header.teacher_model,
                bytes as f64 / (1 << 20) as f64,
                dir.display(),
                free as f64 / (1 << 20) as f64
            );
        }
    }
    let aug = Augment::new(&data.profile, augment);
    let split: &Split = &data.train;
    let started = std::time::Instant::now();
    let bar =
        if quiet { indicatif::ProgressBar::hidden() } else { crate::util::progress::items_bar(n * v, "teacher cache") };
    write_cache_file(path, MAGIC, header, header.block_bytes, |emit| {
        for view in 0..v {
            let vw = aug.view(view);
            teacher_logits(
                model,
                split,
                &aug,
                |_| vw,
                |lo, hi, vals| {
                    let mut out = Vec::with_capacity(vals.len() * 2);
                    for &x in vals {
                        out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
                    }
                    emit(&out)?;
                    bar.inc((hi - lo) as u64);
                    Ok(())
                },
            )?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if !quiet {
        println!(
            "built the teacher-logit cache {} ({n} samples × {v} views, {:.1} MiB) in {}",
            path.display(),
            bytes as f64 / (1 << 20) as f64,
            crate::util::fmt::duration(started.elapsed().as_secs_f64())
        );
    }
    Ok(())
}

impl LogitCache {
    pub fn open(path: &Path) -> Result<LogitCache> {
        let what = "teacher-logit cache";
        let (map, value, offset) = map_with_header(path, MAGIC, FORMAT, what)?;
        let header: Header = serde_json::from_value(value)
            .with_context(|| format!("the {what} {} has a damaged header", path.display()))?;
        let data = header
            .samples
            .checked_mul(header.views)
            .and_then(|d| d.checked_mul(header.classes))
            .and_then(|d| d.checked_mul(2))
            .with_context(|| format!("the {what} {} has a damaged header (its sizes overflow)", path.display()))?;
        let (row_bytes, samples) = (header.classes * 2, header.samples.max(1));
        verify_blocks(&map, offset, data, header.block_bytes.max(1), (path, what), |lo, hi| {
            let rows = (lo / row_bytes, hi.div_ceil(row_bytes));
            format!("rows {}..{} = views {}..={}", rows.0, rows.1, rows.0 / samples, (rows.1.max(1) - 1) / samples)
        })?;
        Ok(LogitCache { header, path: path.to_path_buf(), map, offset })
    }

    /// The cached logits of samples `indices` seen through views `views`, as (N, C) f32.
    pub fn lookup(&self, indices: &[u32], views: &[u32]) -> Tensor {
        let (n, c) = (self.header.samples, self.header.classes);
        let mut out = Vec::with_capacity(indices.len() * c);
        for (&i, &v) in indices.iter().zip(views) {
            let row = v as usize * n + i as usize;
            let bytes = &self.map[self.offset + row * c * 2..self.offset + (row + 1) * c * 2];
            out.extend(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()));
        }
        Tensor::from_slice(&out).view([indices.len() as i64, c as i64])
    }
}
