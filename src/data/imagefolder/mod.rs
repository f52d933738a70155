//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/<class>/*.{png,jpg,jpeg}` and
//! `DIR/val/<class>/…` (or `DIR/test/<class>/…`), decoded in Rust into kdlab's in-memory
//! [`Dataset`] (the `val/` images are its test split).
//!
//! - **Labels** are the class folders' names in sorted order (as torchvision: Unicode code-point
//!   order), and the images of a class are in torchvision's order too (sorted by folder, then file
//!   name; sub-folders of a class folder are walked).
//! - **Size and channels**: every image is resized (bilinear with antialiasing, aspect ratio not
//!   kept, as `torchvision.transforms.Resize((h, w))`) to `size=HxW` when the spec gives one;
//!   without it every image must have the first training image's size. Channels are `channels=1|3`
//!   when given, else 3 when any image is in colour and 1 when all are grey. Colour images become
//!   grey with PIL's ITU-R 601-2 luma; grey images become colour by repeating the grey value; an
//!   alpha channel is dropped.
//! - **Options** follow the directory after a colon: `DIR:size=32x32,channels=3,bad=skip,flip=true,pad=4,cache=off`.
//!   The whole string is the run's `data` value, so a run, its evaluation and its students load the
//!   same pixels.
//! - **Decoding** runs on a pool of threads, each holding one image at a time and writing it into
//!   its place in the data set's buffer (memory: the decoded data set, which must fit in RAM).
//! - **Cache**: the decoded data set is kept in `$KDLAB_DATA/image-cache/` (a sha256-checked binary
//!   file), reused while the folder's list of files, their sizes and modification times and the
//!   options are unchanged, and rebuilt otherwise. A cache file that fails its check is rebuilt.
mod cache;
mod export;
mod index;
mod options;
mod pool;

pub use super::decode::*;
pub use super::pool::*;
use super::stream::{FolderImages, Store, Streamed};
use super::transform::Recipe;
use super::{catalog, Dataset, Profile, Shape, Split};
use anyhow::{bail, Context, Result};
pub use cache::*;
pub use export::*;
use index::*;
pub use options::*;
use pool::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name endings read as images (case-insensitive).
/// Where the decoded-image caches live: `$KDLAB_DATA/image-cache` (default
/// `~/.cache/kdlab/data/image-cache`).
pub fn cache_dir() -> PathBuf {
    super::source::data_dir().join("image-cache")
}

/// How a load was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Decoded, and the cache was off.
    Off,
    /// Decoded, and a cache file written (none existed, or it was for other files or options).
    Built,
    /// Read from a valid cache file.
    Hit,
}

/// Loads an image folder with the default cache directory, printing a summary to stderr.
pub fn load(dir: &Path, opts: &Options) -> Result<Dataset> {
    Ok(load_with(dir, opts, &cache_dir())?.0)
}

/// Loads an image folder, with the cache in `cache_root`.
pub fn load_with(dir: &Path, opts: &Options, cache_root: &Path) -> Result<(Dataset, CacheUse)> {
    if opts.transform == Transform::Imagenet {
        return Ok((load_streamed(dir, opts)?, CacheUse::Off));
    }
    let (train, val) = index(dir)?;
    let (classes, eval_folder) = (train.classes.clone(), val.folder.clone());
    let cache_file = cache_path(dir, opts, cache_root);
    let (train_split, test_split, note, cache_use) = cached_or_decoded(dir, train, val, opts, &cache_file)?;
    let mut profile = catalog::generic_profile(&train_split);
    profile.flip = opts.flip.unwrap_or(profile.flip);
    profile.pad = opts.pad.unwrap_or(profile.pad);
    let shown: Vec<String> = classes.iter().take(6).enumerate().map(|(i, n)| format!("{i} {n}")).collect();
    eprintln!(
        "image folder {}: {} classes, labelled in sorted folder-name order ({}{}); {} train images (train/) and {} test images ({eval_folder}/), {}; {}",
        dir.display(),
        classes.len(),
        shown.join(", "),
        if classes.len() > 6 { ", …" } else { "" },
        train_split.len(),
        test_split.len(),
        note,
        match cache_use {
            CacheUse::Hit => format!("read from the cache {}", cache_file.display()),
            CacheUse::Built => format!("decoded, cached in {}", cache_file.display()),
            CacheUse::Off => "decoded (cache off)".to_string(),
        }
    );
    let ds = Dataset {
        name: dir_name(dir),
        source: dir.display().to_string(),
        train: train_split,
        test: test_split,
        val: None,
        classes: classes.len(),
        class_names: classes,
        profile,
        stream: None,
    };
    Ok((ds, cache_use))
}

/// Loads an image folder under the ImageNet recipe: indexes the files (names, sizes and class
/// folders only), settles the store, and decodes into memory only for `store=memory` (or `auto`
/// on a small folder). The profile is ImageNet's normalisation.
fn load_streamed(dir: &Path, opts: &Options) -> Result<Dataset> {
    let (train, val) = index(dir)?;
    let recipe = opts.recipe();
    let channels = opts.channels.unwrap_or(3);
    let fingerprint = stream_fingerprint(&train, &val, opts);
    let (classes, eval_folder) = (train.classes.clone(), val.folder.clone());
    let (train_files, val_files, Placement { in_memory, note: store_note }) =
        choose_store(dir, train.files, val.files, opts, channels)?;
    let total = train_files.len() + val_files.len();
    let bar =
        if in_memory { crate::util::progress::items_bar(total, "decoding") } else { indicatif::ProgressBar::hidden() };
    let split_images = |files: Vec<FileEntry>| -> Result<FolderImages> {
        let labels = files.iter().map(|f| f.class).collect();
        let paths = files.into_iter().map(|f| f.path).collect();
        if in_memory {
            super::stream::decode_all(paths, labels, channels, opts.skip_bad, opts.max_pixels, &bar)
        } else {
            Ok(FolderImages { files: paths, labels, decoded: None })
        }
    };
    let train_images = split_images(train_files)?;
    let test_images = split_images(val_files)?;
    bar.finish_and_clear();
    let shape = Shape { c: channels, h: recipe.size, w: recipe.size };
    let labels_only = |f: &FolderImages| Split { images: vec![], labels: f.labels.clone(), shape };
    eprintln!(
        "image folder {}: {} classes, labelled in sorted folder-name order; {} train images (train/) and {} test images ({eval_folder}/), ImageNet recipe at {}: random-resized crops{} for training, resize to {} and centre crop for evaluation; {store_note}",
        dir.display(),
        classes.len(),
        train_images.len(),
        test_images.len(),
        shape,
        if recipe.flip { " and flips" } else { "" },
        recipe.resize,
    );
    let streamed = Streamed {
        train: std::sync::Arc::new(train_images),
        test: std::sync::Arc::new(test_images),
        recipe,
        channels,
        skip_bad: opts.skip_bad,
        max_pixels: opts.max_pixels,
        fingerprint,
    };
    Ok(Dataset {
        name: dir_name(dir),
        source: dir.display().to_string(),
        train: labels_only(&streamed.train),
        test: labels_only(&streamed.test),
        val: None,
        classes: classes.len(),
        class_names: classes,
        profile: imagenet_profile(channels, recipe.flip),
        stream: Some(std::sync::Arc::new(streamed)),
    })
}

/// ImageNet's per-channel mean and standard deviation (torchvision's models expect them); for
/// grey images, the averages of the three.
pub(crate) fn imagenet_profile(channels: usize, flip: bool) -> Profile {
    let (mean, std) =
        if channels == 1 { (vec![0.449], vec![0.226]) } else { (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]) };
    Profile { mean, std, pad: 0, flip }
}

/// Where a streamed folder's pixels are kept, and why (for the load's summary line).
struct Placement {
    in_memory: bool,
    note: String,
}

/// Settles `store=auto` (see [`super::stream`]) and returns the files to use (with bad=skip,
/// those whose headers read) and where their pixels are kept.
fn choose_store(
    dir: &Path,
    train: Vec<FileEntry>,
    val: Vec<FileEntry>,
    opts: &Options,
    channels: usize,
) -> Result<(Vec<FileEntry>, Vec<FileEntry>, Placement)> {
    use super::stream::{MEMORY_MAX_BYTES, MEMORY_MAX_FILES};
    let total = train.len() + val.len();
    let placed = |in_memory: bool, note: String| Placement { in_memory, note };
    match opts.store {
        Store::Memory => return Ok((train, val, placed(true, "in memory (store=memory)".into()))),
        Store::Stream => return Ok((train, val, placed(false, "decoded per batch (store=stream)".into()))),
        Store::Auto if total > MEMORY_MAX_FILES => {
            let note = format!("decoded per batch (store=auto: more than {MEMORY_MAX_FILES} images)");
            return Ok((train, val, placed(false, note)));
        }
        Store::Auto => {}
    }
    let (train, train_headers) = headers(train, opts.skip_bad, opts.max_pixels)?;
    let (val, val_headers) = headers(val, opts.skip_bad, opts.max_pixels)?;
    if train.is_empty() || val.is_empty() {
        bail!("{}: no decodable images left in train/ or val/", dir.display());
    }
    let bytes: u64 = train_headers.iter().chain(&val_headers).map(|h| (h.h * h.w * channels) as u64).sum();
    let limit = available_memory().map_or(MEMORY_MAX_BYTES, |a| (a / 4).min(MEMORY_MAX_BYTES));
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let place = if bytes <= limit {
        placed(true, format!("in memory (store=auto: {:.2} GiB decoded, at most {:.2} GiB)", gib(bytes), gib(limit)))
    } else {
        let note =
            format!("decoded per batch (store=auto: {:.2} GiB decoded would exceed {:.2} GiB)", gib(bytes), gib(limit));
        placed(false, note)
    };
    Ok((train, val, place))
}

/// Identifies a streamed folder: every file's path below the root, class and size, and the
/// options that change the inputs (not the store or the thread count, which do not).
fn stream_fingerprint(train: &Indexed, val: &Indexed, opts: &Options) -> String {
    use sha2::{Digest, Sha256};
    let r = opts.recipe();
    let mut h = Sha256::new();
    h.update(format!(
        "stream v1;size={};resize={};flip={};channels={:?};skip_bad={}\n",
        r.size, r.resize, r.flip, opts.channels, opts.skip_bad
    ));
    for f in train.files.iter().chain(&val.files) {
        h.update(format!("{}\t{}\t{}\n", f.rel, f.class, f.len));
    }
    super::hex(&h.finalize())
}

/// Indexes `train/` and `val/` (or `test/`), with a spinner, and checks that their classes agree.
fn index(dir: &Path) -> Result<(Indexed, Indexed)> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("indexing {}", dir.display()));
    let train = index_split(dir, "train", &bar)?;
    let eval_folder = ["val", "test"].into_iter().find(|f| dir.join(f).is_dir()).ok_or_else(|| {
        anyhow::anyhow!("{}: an image folder needs val/<class>/… (or test/<class>/…) beside train/", dir.display())
    })?;
    let val = index_split(dir, eval_folder, &bar)?;
    bar.finish_and_clear();
    check_same_classes(dir, &train, &val)?;
    if train.ignored + val.ignored > 0 {
        eprintln!(
            "note: {}: passed over {} files that are not .png, .jpg or .jpeg images or not in a class folder",
            dir.display(),
            train.ignored + val.ignored
        );
    }
    Ok((train, val))
}

/// Both splits from `cache_file` when it is valid for these files and options, else decoded (and
/// the cache written). Returns the splits, the note on their shape, and how they were obtained.
fn cached_or_decoded(
    dir: &Path,
    train: Indexed,
    val: Indexed,
    opts: &Options,
    cache_file: &Path,
) -> Result<(Split, Split, String, CacheUse)> {
    if !opts.cache {
        let (a, b, note) = decode_splits(dir, train, val, opts)?;
        return Ok((a, b, note, CacheUse::Off));
    }
    let key = cache_key(&train, &val, opts);
    if cache_file.exists() {
        match read_cache(cache_file, &key, train.classes.len()) {
            Ok(Some((a, b, note))) => return Ok((a, b, note, CacheUse::Hit)),
            Ok(None) => {} // made from other files or options: rebuilt below
            Err(e) => eprintln!("warning: {e:#}; decoding the images again"),
        }
    }
    let (a, b, note) = decode_splits(dir, train, val, opts)?;
    // A build killed part-way leaves its temporary file (named by its pid) beside the cache;
    // remove those of writers that are gone, so that caches do not leak disk.
    if let Some(dir) = cache_file.parent() {
        let removed = crate::util::atomic::remove_stale_temps(dir);
        if removed > 0 {
            eprintln!(
                "note: removed {removed} unfinished image-cache file(s) left in {} by an interrupted build",
                dir.display()
            );
        }
    }
    if let Err(e) = write_cache(cache_file, &key, &a, &b, &note) {
        eprintln!("warning: could not write the image cache ({e:#}); the images will be decoded again next time");
    }
    Ok((a, b, note, CacheUse::Built))
}

/// The cache file of `dir` loaded with `opts`: one per folder and pixel-changing options.
fn cache_path(dir: &Path, opts: &Options, cache_root: &Path) -> PathBuf {
    let id = super::sha256_hex(format!("{}\n{}", canonical(dir), opts.content_key()).as_bytes());
    cache_root.join(format!("{}-{}.kdimg", dir_name(dir), &id[..16]))
}

fn dir_name(dir: &Path) -> String {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    canon.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "images".to_string())
}

fn canonical(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).to_string_lossy().into_owned()
}

fn check_same_classes(dir: &Path, train: &Indexed, val: &Indexed) -> Result<()> {
    if train.classes == val.classes {
        return Ok(());
    }
    let only = |a: &Indexed, b: &Indexed| -> String {
        let v: Vec<&str> = a.classes.iter().filter(|c| !b.classes.contains(c)).map(String::as_str).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    bail!(
        "{}: the class folders of train/ and {}/ differ (only in train/: {}; only in {}/: {}); labels are the folder names in sorted order, so both splits need the same class folders",
        dir.display(),
        val.folder,
        only(train, val),
        val.folder,
        only(val, train)
    )
}

/// Identifies the decoded data: every file's path, size and modification time, and the options.
fn cache_key(train: &Indexed, val: &Indexed, opts: &Options) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("v{CACHE_VERSION};{}\n", opts.content_key()));
    for f in train.files.iter().chain(&val.files) {
        h.update(format!("{}\t{}\t{}\t{}\n", f.rel, f.class, f.len, f.mtime_ns));
    }
    super::hex(&h.finalize())
}

/// Reads every header, settles the shape, and decodes both splits.
fn decode_splits(dir: &Path, train: Indexed, val: Indexed, opts: &Options) -> Result<(Split, Split, String)> {
    let found = train.files.len() + val.files.len();
    let (train_files, train_headers) = headers(train.files, opts.skip_bad, opts.max_pixels)?;
    let (val_files, val_headers) = headers(val.files, opts.skip_bad, opts.max_pixels)?;
    if train_files.is_empty() || val_files.is_empty() {
        bail!("{}: no decodable images left in train/ or {}/", dir.display(), val.folder);
    }
    let first = train_headers[0];
    let (h, w, size_note) = match opts.size {
        Some((h, w)) => (h, w, format!("resized to {h}x{w} (size={h}x{w})")),
        None => {
            let files = train_files.iter().chain(&val_files);
            if let Some((f, hd)) =
                files.zip(train_headers.iter().chain(&val_headers)).find(|(_, hd)| (hd.h, hd.w) != (first.h, first.w))
            {
                bail!(
                    "{} is {}x{} but the first image ({}) is {}x{}, and no size is given: add size=HxW to the data spec (e.g. --data '{}:size={}x{}') to resize every image",
                    f.path.display(),
                    hd.h,
                    hd.w,
                    train_files[0].path.display(),
                    first.h,
                    first.w,
                    dir.display(),
                    first.h,
                    first.w
                );
            }
            (first.h, first.w, format!("{}x{} as the first image ({})", first.h, first.w, train_files[0].rel))
        }
    };
    let colour = train_headers.iter().chain(&val_headers).filter(|hd| hd.colour).count();
    let total = train_headers.len() + val_headers.len();
    let (c, channel_note) = match opts.channels {
        Some(c) => (c, format!("{c} channel{} (channels={c})", if c == 1 { "" } else { "s" })),
        None if colour > 0 => (3, format!("3 channels ({colour} of {total} images in colour)")),
        None => (1, "1 channel (every image is grey)".to_string()),
    };
    let shape = Shape { c, h, w };
    check_memory(total * shape.numel(), dir)?;
    let bar = crate::util::progress::items_bar(total, "decoding");
    let train = decode_split(train_files, shape, opts.skip_bad, opts.max_pixels, &bar)?;
    let test = decode_split(val_files, shape, opts.skip_bad, opts.max_pixels, &bar)?;
    bar.finish_and_clear();
    let skipped = found - train.len() - test.len();
    let skipped_note =
        if skipped > 0 { format!(", {skipped} undecodable images left out (bad=skip)") } else { String::new() };
    Ok((train, test, format!("{shape} (C x H x W): {size_note}, {channel_note}{skipped_note}")))
}

fn headers(files: Vec<FileEntry>, skip: bool, max_pixels: u64) -> Result<(Vec<FileEntry>, Vec<Header>)> {
    let mut slots: Vec<Option<Result<Header>>> = (0..files.len()).map(|_| None).collect();
    let bar = crate::util::progress::items_bar(files.len(), "indexing");
    par_each(slots.iter_mut().enumerate(), |i, slot| {
        let r = read_header(&files[i].path, max_pixels);
        let ok = r.is_ok() || skip;
        *slot = Some(r);
        bar.inc(1);
        ok
    });
    bar.finish_and_clear();
    let mut bad = vec![];
    let mut good = vec![];
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Some(Ok(h)) => good.push(h),
            Some(Err(e)) => bad.push((i, e)),
            None => {} // not reached: an earlier file failed
        }
    }
    let files = drop_bad(files, bad, skip)?;
    Ok((files, good))
}

fn decode_split(
    files: Vec<FileEntry>,
    shape: Shape,
    skip: bool,
    max_pixels: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Split> {
    let numel = shape.numel();
    let mut images = vec![0u8; files.len() * numel];
    let bad = Mutex::new(vec![]);
    par_each(images.chunks_mut(numel).enumerate(), |i, out| {
        let r = decode_into(&files[i].path, shape, max_pixels, out);
        bar.inc(1);
        match r {
            Ok(()) => true,
            Err(e) => {
                bad.lock().expect("errors").push((i, e));
                skip
            }
        }
    });
    let bad = bad.into_inner().expect("errors");
    let dropped: std::collections::HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    if !dropped.is_empty() && skip {
        images = images
            .chunks(numel)
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
            .flat_map(|(_, c)| c.to_vec())
            .collect();
    }
    let files = drop_bad(files, bad, skip)?;
    Ok(Split { images, labels: files.iter().map(|f| f.class).collect(), shape })
}

/// The memory the kernel says is available (Linux), in bytes.
fn available_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// Refuses a data set that would not fit in memory, before decoding it.
fn check_memory(bytes: usize, dir: &Path) -> Result<()> {
    if let Some(avail) = available_memory() {
        if bytes as u64 > avail / 10 * 8 {
            bail!(
                "{}: the decoded images need {:.1} GiB but {:.1} GiB of memory is available; give a smaller size=HxW, or stream the images from their files with the ImageNet recipe (DIR:transform=imagenet)",
                dir.display(),
                bytes as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image written into a test tree: where, the source pixels, and whether it is lossless.
    struct Written {
        rel: String,
        pixels: Vec<u8>,
        png: bool,
    }

    /// Writes an image folder from the embedded Fashion-MNIST subset: classes Sandal, Bag and Coat
    /// as folders `sandal`, `bag`, `coat` (so sorted order differs from the order of writing),
    /// `train` images per class (PNG and JPEG in turn) in train/ and `val` in val/. Returns what
    /// was written per split, in the order the reader must return it.
    fn write_tree(root: &Path, train: usize, val: usize) -> [Vec<Written>; 2] {
        let ds = crate::data::embedded::load().unwrap();
        let classes = [(5u16, "sandal"), (8, "bag"), (4, "coat")];
        let mut out: [Vec<Written>; 2] = [vec![], vec![]];
        for (k, (split, folder, per_class)) in
            [(&ds.train, "train", train), (&ds.test, "val", val)].into_iter().enumerate()
        {
            let mut by_class = vec![];
            for &(label, name) in &classes {
                std::fs::create_dir_all(root.join(folder).join(name)).unwrap();
                let idx: Vec<usize> = (0..split.len()).filter(|&i| split.labels[i] == label).take(per_class).collect();
                let files: Vec<Written> = idx
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| {
                        let png = j % 2 == 0;
                        let rel = format!("{folder}/{name}/{i:06}.{}", if png { "png" } else { "jpg" });
                        write_image(&root.join(&rel), split.image(i), split.shape, !png).unwrap();
                        Written { rel, pixels: split.image(i).to_vec(), png }
                    })
                    .collect();
                by_class.push((name, files));
            }
            by_class.sort_by_key(|(name, _)| *name);
            out[k] = by_class.into_iter().flat_map(|(_, f)| f).collect();
        }
        out
    }

    fn load_at(root: &Path, opts: &str, cache: &Path) -> Result<(Dataset, CacheUse)> {
        load_with(root, &Options::parse(opts).unwrap(), cache)
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    #[test]
    fn classes_are_sorted_folder_names_and_png_pixels_are_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("fm");
        let written = write_tree(&root, 4, 2);
        let (ds, used) = load_at(&root, "", &tmp.path().join("cache")).unwrap();
        assert_eq!(used, CacheUse::Built);
        assert_eq!(ds.class_names, vec!["bag", "coat", "sandal"]);
        assert_eq!(ds.classes, 3);
        assert_eq!(ds.shape().to_string(), "1x28x28", "grey images, the first image's size");
        assert_eq!(ds.train.class_counts(3), vec![4, 4, 4]);
        assert_eq!(ds.test.class_counts(3), vec![2, 2, 2]);
        for (split, files) in [(&ds.train, &written[0]), (&ds.test, &written[1])] {
            assert_eq!(split.len(), files.len());
            for (i, w) in files.iter().enumerate() {
                let label = ["bag", "coat", "sandal"].iter().position(|c| w.rel.contains(&format!("/{c}/"))).unwrap();
                assert_eq!(split.labels[i] as usize, label, "{}", w.rel);
                if w.png {
                    assert_eq!(split.image(i), &w.pixels[..], "{}: PNG is lossless", w.rel);
                } else {
                    let d = mean_abs_diff(split.image(i), &w.pixels);
                    assert!(d < 4.0, "{}: JPEG (quality 95) differs by {d} on average", w.rel);
                }
            }
        }
        // The profile is the training split's own statistics.
        let (mean, std) = ds.train.channel_stats();
        assert_eq!((ds.profile.mean.clone(), ds.profile.std.clone()), (mean, std));
        assert!(!ds.profile.flip);
        let (flipped, _) = load_at(&root, "flip=true,pad=3", &tmp.path().join("cache")).unwrap();
        assert!(flipped.profile.flip && flipped.profile.pad == 3);
    }

    /// `export` as PNG and the reader give back the source data set: the same classes in the same
    /// order, the same class counts, and each class's images pixel for pixel in their order.
    #[test]
    fn an_exported_png_folder_reads_back_as_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let src = crate::data::embedded::load().unwrap();
        let root = tmp.path().join("fm");
        assert_eq!(export(&src, &root, 5, 2, ImageFormat::Png).unwrap(), 70);
        let (ds, _) = load_at(&root, "", &tmp.path().join("cache")).unwrap();
        let folders: Vec<String> = (0..10).map(|c| class_folder(c, 10, &src.class_names[c])).collect();
        assert_eq!(ds.class_names, folders);
        assert_eq!(ds.train.class_counts(10), vec![5; 10]);
        assert_eq!(ds.test.class_counts(10), vec![2; 10]);
        for (got, source, per_class) in [(&ds.train, &src.train, 5), (&ds.test, &src.test, 2)] {
            for c in 0..10u16 {
                let want: Vec<&[u8]> = (0..source.len())
                    .filter(|&i| source.labels[i] == c)
                    .take(per_class)
                    .map(|i| source.image(i))
                    .collect();
                let have: Vec<&[u8]> = (0..got.len()).filter(|&i| got.labels[i] == c).map(|i| got.image(i)).collect();
                assert_eq!(have, want, "class {c}");
            }
        }
        assert!(format!("{:#}", export(&src, &root, 1, 1, ImageFormat::Png).unwrap_err()).contains("not empty"));
    }

    #[test]
    fn an_undecodable_file_is_named_and_can_be_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("fm");
        write_tree(&root, 3, 1);
        let cache = tmp.path().join("cache");
        // Not an image at all: fails while reading headers.
        std::fs::write(root.join("train/coat/broken.png"), b"this is not a PNG").unwrap();
        let e = format!("{:#}", load_at(&root, "", &cache).unwrap_err());
        assert!(e.contains("train/coat/broken.png") && e.contains("bad=skip"), "{e}");
        let (ds, _) = load_at(&root, "bad=skip", &cache).unwrap();
        assert_eq!(ds.train.class_counts(3), vec![3, 3, 3]);
        std::fs::remove_file(root.join("train/coat/broken.png")).unwrap();
        // A JPEG cut short: the header reads, the pixels do not.
        let cut = root.join("val/bag/cut.jpg");
        write_image(&cut, &[128u8; 28 * 28], Shape { c: 1, h: 28, w: 28 }, true).unwrap();
        let whole = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &whole[..200]).unwrap();
        let e = format!("{:#}", load_at(&root, "", &cache).unwrap_err());
        assert!(e.contains("val/bag/cut.jpg"), "{e}");
        let (ds, _) = load_at(&root, "bad=skip", &cache).unwrap();
        assert_eq!(ds.test.class_counts(3), vec![1, 1, 1]);
    }

    #[test]
    fn the_cache_is_reused_and_rebuilt_when_a_file_or_the_cache_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("fm");
        let written = write_tree(&root, 2, 1);
        let cache = tmp.path().join("cache");
        let (a, used) = load_at(&root, "", &cache).unwrap();
        assert_eq!(used, CacheUse::Built);
        let (b, used) = load_at(&root, "", &cache).unwrap();
        assert_eq!(used, CacheUse::Hit);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!((a.class_names.clone(), a.profile.clone()), (b.class_names.clone(), b.profile.clone()));
        // Other options: other pixels, in a cache file of their own.
        let (c, used) = load_at(&root, "size=14", &cache).unwrap();
        assert_eq!((used, c.shape().to_string()), (CacheUse::Built, "1x14x14".to_string()));
        assert_eq!(load_at(&root, "", &cache).unwrap().1, CacheUse::Hit, "each option set keeps its own cache");
        // A changed file: rebuilt, with the new pixels.
        let first = &written[0][0];
        assert!(first.png);
        let inverted: Vec<u8> = first.pixels.iter().map(|p| 255 - p).collect();
        let path = root.join(&first.rel);
        write_image(&path, &inverted, Shape { c: 1, h: 28, w: 28 }, false).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        let (d, used) = load_at(&root, "", &cache).unwrap();
        assert_eq!(used, CacheUse::Built);
        assert_eq!(d.train.image(0), &inverted[..]);
        assert_eq!(load_at(&root, "", &cache).unwrap().1, CacheUse::Hit);
        // A damaged cache file is noticed and rebuilt.
        let file = cache_path(&root, &Options::default(), &cache);
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(format!("{:#}", read_cache(&file, "any", 3).unwrap_err()).contains("checksum"));
        let (e, used) = load_at(&root, "", &cache).unwrap();
        assert_eq!(used, CacheUse::Built);
        assert_eq!(e.fingerprint(), d.fingerprint());
        assert_eq!(load_at(&root, "cache=off", &cache).unwrap().1, CacheUse::Off);
    }

    #[test]
    fn layout_errors_name_the_folder_or_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("fm");
        write_tree(&root, 2, 1);
        let cache = tmp.path().join("cache");
        let err = |opts: &str| format!("{:#}", load_at(&root, opts, &cache).unwrap_err());
        std::fs::create_dir(root.join("train/dress")).unwrap();
        let e = err("");
        assert!(e.contains("train/dress") && e.contains("empty class folder"), "{e}");
        write_image(&root.join("train/dress/a.png"), &[7; 28 * 28], Shape { c: 1, h: 28, w: 28 }, false).unwrap();
        let e = err("");
        assert!(e.contains("only in train/: dress") && e.contains("only in val/: none"), "{e}");
        std::fs::remove_dir_all(root.join("train/dress")).unwrap();
        // Mixed sizes without size=: the odd file is named; with it every image is resized.
        write_image(&root.join("val/coat/big.png"), &[9; 30 * 32], Shape { c: 1, h: 30, w: 32 }, false).unwrap();
        let e = err("");
        assert!(e.contains("val/coat/big.png is 30x32") && e.contains("size=28x28"), "{e}");
        let (ds, _) = load_at(&root, "size=28x28", &cache).unwrap();
        assert_eq!(ds.test.class_counts(3), vec![1, 2, 1]);
        assert!(
            ds.test.images.chunks(784).any(|img| img.iter().all(|&p| p == 9)),
            "resized uniform image stays uniform"
        );
        // No val/ (or test/) folder.
        std::fs::rename(root.join("val"), root.join("elsewhere")).unwrap();
        assert!(err("").contains("val/<class>"));
        std::fs::rename(root.join("elsewhere"), root.join("test")).unwrap();
        assert_eq!(load_at(&root, "size=28", &cache).unwrap().0.test.len(), 4, "test/ serves as val/");
    }

    #[test]
    fn colour_and_grey_channels() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rgb");
        let shape = Shape { c: 3, h: 2, w: 3 };
        let colour: Vec<u8> = (0..18).map(|i| (i * 13) as u8).collect();
        for split in ["train", "val"] {
            for class in ["a", "b"] {
                std::fs::create_dir_all(root.join(split).join(class)).unwrap();
                write_image(&root.join(split).join(class).join("1.png"), &colour, shape, false).unwrap();
                write_image(&root.join(split).join(class).join("2.png"), &[50; 6], Shape { c: 1, ..shape }, false)
                    .unwrap();
            }
        }
        let cache = tmp.path().join("cache");
        // Any colour image makes the set colour; grey images repeat their value in R, G and B.
        let (ds, _) = load_at(&root, "", &cache).unwrap();
        assert_eq!(ds.shape(), shape);
        assert_eq!(ds.train.image(0), &colour[..]);
        assert_eq!(ds.train.image(1), &[50; 18][..]);
        assert_eq!(ds.profile.mean.len(), 3);
        // channels=1: PIL's luma of the colour image.
        let (grey, _) = load_at(&root, "channels=1", &cache).unwrap();
        assert_eq!(grey.shape(), Shape { c: 1, ..shape });
        let (r, g, b) = (colour[0] as u32, colour[6] as u32, colour[12] as u32);
        assert_eq!(grey.train.image(0)[0] as u32, (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
        assert_eq!(grey.train.image(1), &[50; 6][..]);
    }

    #[test]
    fn specs_and_options() {
        let o = Options::parse("size=32, channels=3,bad=skip,flip=on,pad=4,cache=off").unwrap();
        assert_eq!(
            o,
            Options {
                size: Some((32, 32)),
                channels: Some(3),
                skip_bad: true,
                flip: Some(true),
                pad: Some(4),
                cache: false,
                ..Options::default()
            }
        );
        assert_eq!(Options::parse("size=24x40").unwrap().size, Some((24, 40)));
        let e = format!("{:#}", Options::parse("sise=32").unwrap_err());
        assert!(e.contains("'sise'") && e.contains("size"), "{e}");
        assert!(format!("{:#}", Options::parse("channels=2").unwrap_err()).contains("1 (grey) or 3"));
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().display().to_string();
        assert!(parse_spec(&d).unwrap().is_none(), "a directory without train/ is not an image folder");
        assert!(format!("{:#}", parse_spec(&format!("{d}:size=3")).unwrap_err()).contains("no train/ folder"));
        std::fs::create_dir(tmp.path().join("train")).unwrap();
        assert_eq!(parse_spec(&d).unwrap().unwrap().1, Options::default());
        assert_eq!(parse_spec(&format!("{d}:size=3")).unwrap().unwrap().1.size, Some((3, 3)));
        assert_eq!(class_folder(3, 100, "T-shirt/top"), "03-T-shirt-top");
        assert_eq!(class_folder(3, 10, "x"), "3-x");
    }
}
