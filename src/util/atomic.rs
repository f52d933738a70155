//! Durable writes: every file that a later step reads is written to a temporary file in the same
//! directory, fsynced, and renamed into place, so a reader sees the old file or the new one, never
//! half of one — also after `kill -9` or a power cut.
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written: hidden, in the same directory (so the
/// rename stays on one file system), and unique to this process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Explains an I/O error, naming the file, and saying so plainly when the disk is full.
pub(crate) fn describe_io(err: &io::Error, action: &str, path: &Path) -> String {
    if err.raw_os_error() == Some(libc::ENOSPC) || err.kind() == io::ErrorKind::StorageFull {
        format!("no space left on device while {action} {}", path.display())
    } else {
        format!("{action} {}: {err}", path.display())
    }
}

/// Removes the temporary files in `dir` that a process killed mid-write left behind (their
/// writer, named by the pid in the name, is gone), returning how many. A teacher-logit cache's
/// temporary file can be as large as the cache.
pub(crate) fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, p)| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
        if !alive && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn sync_dir(dir: &Path) {
    // Makes the rename itself durable. Some file systems refuse to fsync a directory; the file's
    // own contents are already safe then, so the error is not worth failing over.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Fault injection for the reliability tests: when `KDLAB_FAILPOINT_ENOSPC` is set and the file
/// being written has a name containing its value, the write fails as on a full disk, after half
/// of the temporary file was written.
fn failpoint(path: &Path, tmp: &Path) -> Result<()> {
    let Some(pattern) = std::env::var_os("KDLAB_FAILPOINT_ENOSPC") else { return Ok(()) };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if pattern.is_empty() || !name.contains(&*pattern.to_string_lossy()) {
        return Ok(());
    }
    if let Ok(bytes) = fs::read(tmp) {
        let _ = fs::write(tmp, &bytes[..bytes.len() / 2]);
    }
    let err = io::Error::from_raw_os_error(libc::ENOSPC);
    Err(anyhow::anyhow!(describe_io(&err, "writing", path)))
}

/// Writes a file atomically through `fill`, which may write the temporary path in any way (tch's
/// own savers write to a path, not to a stream).
pub(crate) fn write_via_path<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| describe_dir(dir))?;
    let tmp = temp_path(path);
    let result = fill(&tmp).and_then(|()| failpoint(path, &tmp)).and_then(|()| {
        let f = File::open(&tmp).map_err(|e| anyhow::anyhow!(describe_io(&e, "reopening", &tmp)))?;
        f.sync_all().map_err(|e| anyhow::anyhow!(describe_io(&e, "syncing", path)))?;
        fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!(describe_io(&e, "renaming into", path)))
    });
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        // tch reports a failed write without the OS error; check whether the disk is the cause.
        let msg = format!("{err:#}");
        if !msg.contains("no space left") && disk_is_full(dir) {
            anyhow::bail!("no space left on device while writing {}: {msg}", path.display());
        }
        return Err(err.context(format!("writing {}", path.display())));
    }
    sync_dir(dir);
    Ok(())
}

fn describe_dir(dir: &Path) -> String {
    format!("creating directory {}", dir.display())
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_path(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| anyhow::anyhow!(describe_io(&e, "creating", tmp)))?;
        f.write_all(bytes).map_err(|e| anyhow::anyhow!(describe_io(&e, "writing", path)))?;
        f.flush().map_err(|e| anyhow::anyhow!(describe_io(&e, "writing", path)))?;
        Ok(())
    })
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

/// True when the file system holding `dir` has (almost) no free blocks left for us.
pub(crate) fn disk_is_full(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    (st.f_bavail as u128) * (st.f_frsize as u128) < 64 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_bytes(&p, b"first version, longer").unwrap();
        write_bytes(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "left behind: {names:?}");
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = temp_path(&dir.path().join("a.kdlc"));
        let dead = dir.path().join(".b.kdlc.tmp-2147483646");
        for p in [&mine, &dead, &dir.path().join("c.json")] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(mine.exists() && !dead.exists() && dir.path().join("c.json").exists());
    }

    #[test]
    fn failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ckpt.bin");
        write_bytes(&p, b"good").unwrap();
        let err = write_via_path(&p, |tmp| {
            fs::write(tmp, b"half")?;
            anyhow::bail!("simulated crash")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("ckpt.bin"));
        assert_eq!(fs::read(&p).unwrap(), b"good");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
