//! The image-folder reader's use of the decoding pool: every core, and bad files skipped or refused.
use super::*;

/// [`par_each_on`] on [`threads`] threads.
pub(super) fn par_each<S: Send, I: Iterator<Item = (usize, S)> + Send>(work: I, f: impl Fn(usize, S) -> bool + Sync) {
    par_each_on(threads(), work, f)
}

/// Applies `bad` (index, error) to `files`: with `skip`, warns and returns the files without them;
/// otherwise fails naming the first.
pub(super) fn drop_bad(
    files: Vec<FileEntry>,
    mut bad: Vec<(usize, anyhow::Error)>,
    skip: bool,
) -> Result<Vec<FileEntry>> {
    if bad.is_empty() {
        return Ok(files);
    }
    bad.sort_by_key(|(i, _)| *i);
    if !skip {
        let (i, e) = &bad[0];
        return Err(bad_file_error(&files[*i].path, e));
    }
    for (i, e) in &bad {
        eprintln!("warning: skipping {}: cannot decode it ({e:#})", files[*i].path.display());
    }
    let drop: std::collections::HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    Ok(files.into_iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, f)| f).collect())
}
