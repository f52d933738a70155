//! The CIFAR binary formats. CIFAR-10 (`cifar-10-batches-bin`): records of 1 label byte followed by
//! 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32×32 row-major), in
//! `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`. CIFAR-100 (`cifar-100-binary`):
//! records of a coarse label byte, a fine label byte, then the same 3072 pixels, in `train.bin` and
//! `test.bin`.
use super::{Shape, Split};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const SHAPE: Shape = Shape { c: 3, h: 32, w: 32 };
const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR variant, and for CIFAR-100 which label granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    /// CIFAR-100 with its 100 fine labels.
    Cifar100Fine,
    /// CIFAR-100 with its 20 coarse (super-class) labels.
    Cifar100Coarse,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            _ => 2,
        }
    }
    pub fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100Fine => 100,
            Variant::Cifar100Coarse => 20,
        }
    }
    /// The files of each split, relative to the data directory.
    pub fn files(self) -> (Vec<&'static str>, Vec<&'static str>) {
        match self {
            Variant::Cifar10 => (
                vec![
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ],
                vec!["test_batch.bin"],
            ),
            _ => (vec!["train.bin"], vec!["test.bin"]),
        }
    }
    /// The folder name inside the official archive.
    pub(crate) fn archive_dir(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar-10-batches-bin",
            _ => "cifar-100-binary",
        }
    }
}

/// Parses the records of one CIFAR binary file, appending to `split`.
pub fn parse_into(bytes: &[u8], variant: Variant, file: &Path, split: &mut Split) -> Result<()> {
    let name = file.display();
    let rec = variant.label_bytes() + PIXELS;
    if bytes.is_empty() {
        bail!("{name}: the file is empty (expected {rec}-byte CIFAR records)");
    }
    if bytes.len() % rec != 0 {
        bail!(
            "{name}: {} bytes is not a whole number of {rec}-byte {variant:?} records \
             (truncated, or not a {variant:?} file: {} whole records and {} bytes left over)",
            bytes.len(),
            bytes.len() / rec,
            bytes.len() % rec
        );
    }
    let classes = variant.classes();
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let (label, check_coarse) = match variant {
            Variant::Cifar10 => (r[0], None),
            Variant::Cifar100Fine => (r[1], Some(r[0])),
            Variant::Cifar100Coarse => (r[0], Some(r[1])),
        };
        if label as usize >= classes {
            bail!("{name}: record {i} has label {label}, out of range for {variant:?} ({classes} classes)");
        }
        if let Some(other) = check_coarse {
            let other_classes = if variant == Variant::Cifar100Fine { 20 } else { 100 };
            if other as usize >= other_classes {
                bail!("{name}: record {i} has {} label {other}, out of range ({other_classes} classes); not a CIFAR-100 file?",
                    if variant == Variant::Cifar100Fine { "coarse" } else { "fine" });
            }
        }
        split.labels.push(label as u16);
        split.images.extend_from_slice(&r[variant.label_bytes()..]);
    }
    Ok(())
}

/// Reads the train and test splits from a directory holding the binary files (or the official
/// archive's folder inside it).
pub fn read_dir(dir: &Path, variant: Variant) -> Result<(Split, Split)> {
    let base = resolve_dir(dir, variant)?;
    let (train_files, test_files) = variant.files();
    let read = |files: &[&str]| -> Result<Split> {
        let mut split = Split { images: vec![], labels: vec![], shape: SHAPE };
        for f in files {
            let path = base.join(f);
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            parse_into(&bytes, variant, &path, &mut split)?;
        }
        Ok(split)
    };
    Ok((read(&train_files)?, read(&test_files)?))
}

/// The directory that directly holds the files: `dir` itself or the archive's folder inside it.
pub(crate) fn resolve_dir(dir: &Path, variant: Variant) -> Result<PathBuf> {
    let (train, test) = variant.files();
    let all: Vec<&str> = train.iter().chain(test.iter()).copied().collect();
    for cand in [dir.to_path_buf(), dir.join(variant.archive_dir())] {
        if cand.join(all[0]).exists() {
            let missing: Vec<&str> = all.iter().copied().filter(|f| !cand.join(f).exists()).collect();
            if !missing.is_empty() {
                bail!("{}: incomplete {variant:?} data, missing {}", cand.display(), missing.join(", "));
            }
            return Ok(cand);
        }
    }
    bail!(
        "{}: no {variant:?} binary files here (expected {} or a folder {}/ holding them)",
        dir.display(),
        all.join(", "),
        variant.archive_dir()
    )
}

/// Encodes records in the binary format (tests and tools write small CIFAR files with it).
pub fn encode(variant: Variant, records: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![];
    for (a, b, px) in records {
        assert_eq!(px.len(), PIXELS);
        out.push(*a);
        if variant != Variant::Cifar10 {
            out.push(*b);
        }
        out.extend_from_slice(px);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(seed: u8) -> Vec<u8> {
        (0..PIXELS).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    #[test]
    fn reads_cifar10_files_written_in_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&d).unwrap();
        let (train, test) = Variant::Cifar10.files();
        for (k, f) in train.iter().enumerate() {
            let p1 = pixels(k as u8 + 1);
            let p2 = pixels(k as u8 + 7);
            let bytes = encode(Variant::Cifar10, &[(k as u8, 0, &p1), (9, 0, &p2)]);
            std::fs::write(d.join(f), bytes).unwrap();
        }
        let p = pixels(3);
        std::fs::write(d.join(test[0]), encode(Variant::Cifar10, &[(4, 0, &p)])).unwrap();
        let (tr, te) = read_dir(dir.path(), Variant::Cifar10).unwrap();
        assert_eq!(tr.len(), 10);
        assert_eq!(tr.labels, vec![0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(tr.image(2), &pixels(2)[..]);
        assert_eq!(te.labels, vec![4]);
        assert_eq!(te.image(0), &pixels(3)[..]);
        // A directory missing one batch names it.
        std::fs::remove_file(d.join("data_batch_3.bin")).unwrap();
        let e = format!("{:#}", read_dir(dir.path(), Variant::Cifar10).unwrap_err());
        assert!(e.contains("data_batch_3.bin"), "{e}");
    }

    #[test]
    fn reads_cifar100_fine_and_coarse() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pixels(5), pixels(6));
        let bytes = encode(Variant::Cifar100Fine, &[(3, 42, &a), (19, 99, &b)]);
        std::fs::write(dir.path().join("train.bin"), &bytes).unwrap();
        std::fs::write(dir.path().join("test.bin"), &bytes[..PIXELS + 2]).unwrap();
        let (tr, te) = read_dir(dir.path(), Variant::Cifar100Fine).unwrap();
        assert_eq!(tr.labels, vec![42, 99]);
        assert_eq!(tr.image(1), &b[..]);
        assert_eq!(te.labels, vec![42]);
        let (tr, _) = read_dir(dir.path(), Variant::Cifar100Coarse).unwrap();
        assert_eq!(tr.labels, vec![3, 19]);
    }

    #[test]
    fn truncated_and_out_of_range_files_are_named() {
        let p = Path::new("data_batch_1.bin");
        let px = pixels(1);
        let good = encode(Variant::Cifar10, &[(1, 0, &px)]);
        let mut s = Split { images: vec![], labels: vec![], shape: SHAPE };
        let e = format!("{:#}", parse_into(&good[..good.len() - 10], Variant::Cifar10, p, &mut s).unwrap_err());
        assert!(e.contains("data_batch_1.bin") && e.contains("3073-byte"), "{e}");
        let bad = encode(Variant::Cifar10, &[(10, 0, &px)]);
        let e = format!("{:#}", parse_into(&bad, Variant::Cifar10, p, &mut s).unwrap_err());
        assert!(e.contains("label 10"), "{e}");
        let e = format!("{:#}", parse_into(&[], Variant::Cifar10, p, &mut s).unwrap_err());
        assert!(e.contains("empty"), "{e}");
        let bad100 = encode(Variant::Cifar100Fine, &[(25, 3, &px)]);
        let e = format!("{:#}", parse_into(&bad100, Variant::Cifar100Fine, p, &mut s).unwrap_err());
        assert!(e.contains("coarse label 25"), "{e}");
    }
}
