//! Finding and loading a data set by name or directory: the embedded subset, the catalogue's data
//! sets in kdlab's data directory (or a system package's folder), any directory holding IDX or
//! CIFAR binary files, or an image folder (`DIR/train/<class>/…`, optionally `DIR:options`).
use super::{catalog, cifar, embedded, idx, imagefolder, Dataset};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// kdlab's data directory: `$KDLAB_DATA`, else `$XDG_CACHE_HOME/kdlab/data`, else
/// `~/.cache/kdlab/data`.
pub(crate) fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KDLAB_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("kdlab").join("data")
}

/// Loads a data set given as a catalogue name, `fashion-mnist-mini`, or a directory.
pub fn load(spec: &str) -> Result<Dataset> {
    if spec == embedded::NAME || spec == "embedded" {
        return embedded::load();
    }
    if let Some(entry) = catalog::find(spec) {
        let dir = locate(&entry)?;
        return load_entry(&entry, &dir);
    }
    if let Some((dir, opts)) = imagefolder::parse_spec(spec)? {
        return imagefolder::load(&dir, &opts);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return load_dir(path);
    }
    if path.exists() {
        bail!("{spec}: a data set is a directory (holding IDX or CIFAR binary files, or train/<class>/ image folders), not a file");
    }
    bail!(
        "unknown data set '{spec}': expected one of {}, a directory holding IDX or CIFAR binary files, or an image folder (DIR with train/<class>/ and val/<class>/)",
        catalog::names_list()
    )
}

/// Where a catalogue data set's files are, or an error saying how to get them.
pub(crate) fn locate(entry: &catalog::Entry) -> Result<PathBuf> {
    locate_in(entry, &data_dir())
}

/// As `locate`, with kdlab's data directory given.
pub(crate) fn locate_in(entry: &catalog::Entry, data_dir: &Path) -> Result<PathBuf> {
    let mut tried = vec![data_dir.join(entry.name)];
    tried.extend(entry.system_dirs.iter().map(PathBuf::from));
    for dir in &tried {
        if is_complete(entry, dir) {
            return Ok(dir.clone());
        }
    }
    bail!(
        "{} is not on this machine (looked in {}). Run `kdlab data fetch {}` to download it, or \
         `kdlab data fetch {} --from DIR` with the files from {} ({}) copied to DIR on a machine \
         that has them",
        entry.name,
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        entry.name,
        entry.name,
        entry.files.iter().flat_map(|f| f.urls.first()).copied().collect::<Vec<_>>().join(", "),
        entry.files.iter().map(|f| f.name).collect::<Vec<_>>().join(", "),
    )
}

fn is_complete(entry: &catalog::Entry, dir: &Path) -> bool {
    match entry.format {
        catalog::Format::Idx => find_idx_files(dir).is_ok(),
        catalog::Format::Cifar(v) => cifar::resolve_dir(dir, v).is_ok(),
    }
}

/// Loads a catalogue data set from `dir`.
pub(crate) fn load_entry(entry: &catalog::Entry, dir: &Path) -> Result<Dataset> {
    let (train, test) = match entry.format {
        catalog::Format::Idx => read_idx_dir(dir)?,
        catalog::Format::Cifar(v) => cifar::read_dir(dir, v)?,
    };
    let classes = entry.class_names.len();
    let ds = Dataset {
        name: entry.name.to_string(),
        source: dir.display().to_string(),
        train,
        test,
        val: None,
        classes,
        class_names: entry.class_names.clone(),
        profile: entry.profile.clone(),
        stream: None,
    };
    check(&ds, dir)?;
    Ok(ds)
}

fn check(ds: &Dataset, dir: &Path) -> Result<()> {
    for (split, name) in [(&ds.train, "train"), (&ds.test, "test")] {
        super::check_labels(&split.labels, ds.classes, &dir.join(name))?;
        if split.is_empty() {
            bail!("{}: the {name} split is empty", dir.display());
        }
    }
    if ds.train.shape != ds.test.shape {
        bail!("{}: train images are {} but test images are {}", dir.display(), ds.train.shape, ds.test.shape);
    }
    Ok(())
}

/// Loads any directory: four IDX files, or CIFAR-10 / CIFAR-100 binary files.
pub(crate) fn load_dir(dir: &Path) -> Result<Dataset> {
    let dir_name =
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    if let Ok(files) = find_idx_files(dir) {
        if let Some(entry) = identify_idx(&files[1]) {
            return load_entry(&entry, dir);
        }
        let (train, test) = read_idx_split_files(&files)?;
        let classes = train.labels.iter().chain(&test.labels).map(|&y| y as usize + 1).max().unwrap_or(0);
        let profile = catalog::generic_profile(&train);
        return Ok(Dataset {
            name: dir_name,
            source: dir.display().to_string(),
            train,
            test,
            val: None,
            classes,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            profile,
            stream: None,
        });
    }
    for (variant, name) in [(cifar::Variant::Cifar10, "cifar10"), (cifar::Variant::Cifar100Fine, "cifar100")] {
        if cifar::resolve_dir(dir, variant).is_ok() {
            let entry = catalog::find(name).expect("in catalogue");
            let mut ds = load_entry(&entry, dir)?;
            ds.name = dir_name;
            return Ok(ds);
        }
    }
    // Say what is missing as precisely as we can.
    let idx_err = find_idx_files(dir).unwrap_err();
    bail!("{}: neither IDX nor CIFAR binary data here ({idx_err:#})", dir.display())
}

/// The catalogue entry whose training labels these are, if any.
fn identify_idx(train_labels: &Path) -> Option<catalog::Entry> {
    let bytes = idx::read_maybe_gzip(train_labels).ok()?;
    let sha = super::sha256_hex(&bytes);
    catalog::all().into_iter().find(|e| e.train_labels_sha256 == Some(sha.as_str()))
}

/// Finds the four IDX files in `dir`: names starting `train-images`, `train-labels`,
/// `t10k-images` (or `test-images`), `t10k-labels` (or `test-labels`), raw or gzipped.
pub(crate) fn find_idx_files(dir: &Path) -> Result<[PathBuf; 4]> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    let pick = |prefixes: &[&str]| -> Option<PathBuf> {
        let mut found: Vec<&PathBuf> = entries
            .iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                prefixes.iter().any(|pre| n.starts_with(pre)) && !n.starts_with('.')
            })
            .collect();
        // Prefer the uncompressed file when both are present (it is what a user unpacked).
        found.sort_by_key(|p| p.extension().is_some_and(|e| e == "gz"));
        found.first().map(|p| (*p).clone())
    };
    let wanted: [(&[&str], &str); 4] = [
        (&["train-images"], "train-images-idx3-ubyte[.gz]"),
        (&["train-labels"], "train-labels-idx1-ubyte[.gz]"),
        (&["t10k-images", "test-images"], "t10k-images-idx3-ubyte[.gz]"),
        (&["t10k-labels", "test-labels"], "t10k-labels-idx1-ubyte[.gz]"),
    ];
    let found: Vec<Option<PathBuf>> = wanted.iter().map(|(pre, _)| pick(pre)).collect();
    let missing: Vec<&str> = wanted.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|((_, n), _)| *n).collect();
    if !missing.is_empty() {
        bail!("{}: missing IDX file(s) {}", dir.display(), missing.join(", "));
    }
    Ok(found.into_iter().map(Option::unwrap).collect::<Vec<_>>().try_into().unwrap())
}

fn read_idx_split_files(files: &[PathBuf; 4]) -> Result<(super::Split, super::Split)> {
    let (train, _) = idx::read_pair(&files[0], &files[1])?;
    let (test, _) = idx::read_pair(&files[2], &files[3])?;
    if train.shape != test.shape {
        bail!("{} holds {} images but {} holds {}", files[0].display(), train.shape, files[2].display(), test.shape);
    }
    Ok((train, test))
}

fn read_idx_dir(dir: &Path) -> Result<(super::Split, super::Split)> {
    read_idx_split_files(&find_idx_files(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a tiny IDX data set (gzipped or raw) with the given labels.
    pub fn write_idx_dir(dir: &Path, train: &[u8], test: &[u8], gz: bool) {
        let write = |name: &str, bytes: Vec<u8>| {
            if gz {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&bytes).unwrap();
                std::fs::write(dir.join(format!("{name}.gz")), e.finish().unwrap()).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        };
        for (prefix, labels) in [("train", train), ("t10k", test)] {
            let px: Vec<u8> = (0..labels.len() * 16).map(|i| i as u8).collect();
            write(&format!("{prefix}-images-idx3-ubyte"), idx::encode(&[labels.len(), 4, 4], &px));
            write(&format!("{prefix}-labels-idx1-ubyte"), idx::encode(&[labels.len()], labels));
        }
    }

    #[test]
    fn any_idx_directory_loads_with_true_counts() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_idx_dir(dir.path(), &[0, 2, 2, 1, 2], &[1, 1, 0], gz);
            let ds = load_dir(dir.path()).unwrap();
            assert_eq!(ds.classes, 3);
            assert_eq!(ds.train.class_counts(3), vec![1, 1, 3]);
            assert_eq!(ds.test.class_counts(3), vec![1, 2, 0]);
            assert_eq!(ds.shape().to_string(), "1x4x4");
        }
    }

    #[test]
    fn a_directory_missing_a_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dir(dir.path(), &[0, 1], &[1], false);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let e = format!("{:#}", load_dir(dir.path()).unwrap_err());
        assert!(e.contains("t10k-labels-idx1-ubyte"), "{e}");
    }

    #[test]
    fn unknown_names_list_the_choices() {
        let e = format!("{:#}", load("no-such-data").unwrap_err());
        assert!(e.contains("fashion-mnist") && e.contains("cifar100"), "{e}");
    }

    #[test]
    fn missing_catalogue_data_says_how_to_fetch() {
        let entry = catalog::find("cifar10").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", locate_in(&entry, dir.path()).unwrap_err());
        assert!(e.contains("kdlab data fetch cifar10") && e.contains("cifar-10-binary.tar.gz"), "{e}");
    }
}
