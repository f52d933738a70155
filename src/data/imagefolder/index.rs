//! Indexing a folder: its classes (sub-folders, sorted) and their image files, walked without
//! following a symbolic-link loop.
use super::*;

/// One image file found while indexing.
#[derive(Clone, Debug)]
pub(super) struct FileEntry {
    pub(super) path: PathBuf,
    /// Path below the image folder's root, e.g. `train/cat/001.png`.
    pub(super) rel: String,
    pub(super) class: u16,
    pub(super) len: u64,
    pub(super) mtime_ns: i128,
}

/// One split's classes (sorted folder names) and files (class by class, torchvision's order).
pub(super) struct Indexed {
    pub(super) folder: String,
    pub(super) classes: Vec<String>,
    pub(super) files: Vec<FileEntry>,
    pub(super) ignored: usize,
}

pub(super) fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

pub(super) fn hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut v: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// All image files below `dir`, in torchvision's order: directories by their path, the files of
/// each directory by name. Returns the files and the number of other files passed over.
pub(super) fn walk_class(dir: &Path, root: &Path, class: u16, out: &mut Vec<FileEntry>) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    // Links to folders are followed (data sets are often assembled from links), so a link back to
    // a folder above it would list the same images forever: each folder carries the identities
    // (device, inode) of the folders above it, and meeting one of them again is an error.
    let id = |p: &Path| -> Result<(u64, u64)> {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        Ok((m.dev(), m.ino()))
    };
    let mut dirs = vec![(dir.to_path_buf(), vec![(id(dir)?, dir.to_path_buf())])];
    let mut all_dirs = vec![];
    while let Some((d, above)) = dirs.pop() {
        for e in sorted_entries(&d)? {
            if !hidden(&e.file_name()) && e.path().is_dir() {
                let p = e.path();
                let me = id(&p)?;
                if let Some((_, again)) = above.iter().find(|(i, _)| *i == me) {
                    bail!(
                        "{}: a symbolic-link loop: this folder is {} again, so its images would be listed forever; remove the link",
                        p.display(),
                        again.display()
                    );
                }
                let mut chain = above.clone();
                chain.push((me, p.clone()));
                dirs.push((p, chain));
            }
        }
        all_dirs.push(d);
    }
    all_dirs.sort();
    let mut ignored = 0;
    for d in all_dirs {
        for e in sorted_entries(&d)? {
            let p = e.path();
            if hidden(&e.file_name()) || p.is_dir() {
                continue;
            }
            if !is_image(&p) {
                ignored += 1;
                continue;
            }
            let meta = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?;
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            out.push(FileEntry { path: p, rel, class, len: meta.len(), mtime_ns });
        }
    }
    Ok(ignored)
}

pub(super) fn index_split(root: &Path, folder: &str, bar: &indicatif::ProgressBar) -> Result<Indexed> {
    let dir = root.join(folder);
    let mut classes = vec![];
    let mut ignored = 0;
    for e in sorted_entries(&dir)? {
        if hidden(&e.file_name()) {
            continue;
        }
        if e.path().is_dir() {
            classes.push(e.file_name().to_string_lossy().into_owned());
        } else {
            ignored += 1;
        }
    }
    if classes.is_empty() {
        bail!("{}: no class folders (expected {folder}/<class>/<image>.png|jpg|jpeg)", dir.display());
    }
    if classes.len() > u16::MAX as usize {
        bail!("{}: {} class folders; at most {} are supported", dir.display(), classes.len(), u16::MAX);
    }
    let mut files = vec![];
    for (c, name) in classes.iter().enumerate() {
        let before = files.len();
        ignored += walk_class(&dir.join(name), root, c as u16, &mut files)?;
        if files.len() == before {
            bail!(
                "{}: an empty class folder (no .png, .jpg or .jpeg files); every class needs images — add some or remove the folder",
                dir.join(name).display()
            );
        }
        bar.set_message(format!("indexing {}: {} images", root.display(), files.len()));
        bar.tick();
    }
    Ok(Indexed { folder: folder.to_string(), classes, files, ignored })
}
