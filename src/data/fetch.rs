//! `kdlab data fetch`: downloads a catalogue data set from its official location into kdlab's data
//! directory with sha256 checks, or imports the same files from a local directory.
use super::{catalog, idx, sha256_hex, source};
use crate::util::atomic;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Fetches `name` into `dest_root/name` (from `from` when given, else from the network) and
/// returns the directory the data now lives in.
pub fn fetch(name: &str, from: Option<&Path>, dest_root: &Path) -> Result<PathBuf> {
    let entry = catalog::find(name)
        .with_context(|| format!("unknown data set '{name}': `kdlab data fetch` knows {}", catalog::names_list()))?;
    if from.is_none() {
        if let Ok(dir) = source::locate_in(&entry, dest_root) {
            eprintln!("{name} is already here: {}", dir.display());
            return Ok(dir);
        }
    }
    let dest = dest_root.join(entry.name);
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    for file in &entry.files {
        let bytes = match from {
            Some(dir) => import_file(&entry, file, dir, &dest)?,
            None => download(file)?,
        };
        if let Some(bytes) = bytes {
            store(&entry, file, &bytes, &dest)?;
        }
    }
    // Read everything back once: a fetch is only done when the reader accepts the files.
    let ds = source::load_entry(&entry, &dest)?;
    eprintln!(
        "{name}: {} train + {} test images of {} in {}",
        ds.train.len(),
        ds.test.len(),
        ds.shape(),
        dest.display()
    );
    Ok(dest)
}

/// Verifies a downloaded or imported file against the checksums it is known to have.
fn verify(file: &catalog::RemoteFile, bytes: &[u8], origin: &str) -> Result<()> {
    let got = sha256_hex(bytes);
    if !file.sha256.contains(&got.as_str()) {
        bail!(
            "{origin}: sha256 {got} does not match the known checksum of {} ({}); the file is corrupt \
             or a different version",
            file.name,
            file.sha256.join(" or ")
        );
    }
    Ok(())
}

fn store(entry: &catalog::Entry, file: &catalog::RemoteFile, bytes: &[u8], dest: &Path) -> Result<()> {
    if entry.archive {
        let variant = match entry.format {
            catalog::Format::Cifar(v) => v,
            catalog::Format::Idx => unreachable!("IDX data sets are not archives"),
        };
        unpack_cifar(bytes, variant, dest, file.name)
    } else {
        atomic::write_bytes(&dest.join(file.name), bytes)
    }
}

/// Extracts the binary batch files (and label-name lists) of a CIFAR archive into `dest`.
fn unpack_cifar(archive: &[u8], variant: super::cifar::Variant, dest: &Path, origin: &str) -> Result<()> {
    let (train, test) = variant.files();
    let wanted: Vec<&str> = train.iter().chain(test.iter()).copied().collect();
    let mut found = vec![];
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    for item in tar.entries().with_context(|| format!("{origin}: not a tar.gz archive"))? {
        let mut item = item.with_context(|| format!("{origin}: corrupt archive"))?;
        let path = item.path()?.into_owned();
        let Some(base) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if wanted.contains(&base.as_str()) || base.ends_with(".txt") {
            let mut data = vec![];
            item.read_to_end(&mut data).with_context(|| format!("{origin}: reading {}", path.display()))?;
            atomic::write_bytes(&dest.join(&base), &data)?;
            found.push(base);
        }
    }
    let missing: Vec<&&str> = wanted.iter().filter(|w| !found.iter().any(|f| f == *w)).collect();
    if !missing.is_empty() {
        bail!("{origin}: the archive lacks {missing:?}");
    }
    Ok(())
}

fn download(file: &catalog::RemoteFile) -> Result<Option<Vec<u8>>> {
    let mut errors = vec![];
    for url in &file.urls {
        eprintln!("downloading {url}");
        match get(url) {
            Ok(bytes) => {
                verify(file, &bytes, url)?;
                return Ok(Some(bytes));
            }
            Err(e) => errors.push(format!("{url}: {e:#}")),
        }
    }
    bail!(
        "could not download {} ({}). Without network access: get the file on a machine that has it, \
         copy it into a directory DIR here, and run `kdlab data fetch --from DIR`; or put the \
         unpacked files in {}",
        file.name,
        errors.join("; "),
        source::data_dir().display()
    )
}

fn get(url: &str) -> Result<Vec<u8>> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_connect(Some(std::time::Duration::from_secs(15))).build().into();
    let mut resp = agent.get(url).call()?;
    let total = resp.body().content_length();
    let bar = crate::util::progress::bytes_bar(total, url);
    let mut reader = resp.body_mut().with_config().limit(2 << 30).reader();
    let mut out = vec![];
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Takes one catalogue file from a local directory. IDX files may be there gzipped (verified
/// against the known checksums) or already unpacked (verified by the IDX reader); a CIFAR archive
/// may be there as the tar.gz or already unpacked. Returns None when the files were copied in
/// unpacked form directly.
fn import_file(entry: &catalog::Entry, file: &catalog::RemoteFile, dir: &Path, dest: &Path) -> Result<Option<Vec<u8>>> {
    if !dir.is_dir() {
        bail!("--from {}: not a directory", dir.display());
    }
    let packed = dir.join(file.name);
    if packed.is_file() {
        let bytes = std::fs::read(&packed).with_context(|| format!("reading {}", packed.display()))?;
        verify(file, &bytes, &packed.display().to_string())?;
        return Ok(Some(bytes));
    }
    match entry.format {
        catalog::Format::Idx => {
            let raw_name = file.name.trim_end_matches(".gz");
            let raw = dir.join(raw_name);
            if !raw.is_file() {
                bail!("--from {}: neither {} nor {raw_name} is there", dir.display(), file.name);
            }
            idx::read(&raw)?;
            let bytes = std::fs::read(&raw)?;
            atomic::write_bytes(&dest.join(raw_name), &bytes)?;
            Ok(None)
        }
        catalog::Format::Cifar(variant) => {
            let src = super::cifar::resolve_dir(dir, variant).with_context(|| {
                format!("--from {}: neither {} nor the unpacked binary files are there", dir.display(), file.name)
            })?;
            let (train, test) = variant.files();
            for f in train.iter().chain(test.iter()) {
                let bytes = std::fs::read(src.join(f))?;
                atomic::write_bytes(&dest.join(f), &bytes)?;
            }
            Ok(None)
        }
    }
}
