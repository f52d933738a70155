//! The decoding threads: a small pool that hands out work and stops at the first failure.
use super::*;

/// Number of decoding threads: `$KDLAB_LOADER_THREADS` when set, else every core, at most 16.
/// The thread count never changes what is decoded, only how fast.
pub fn threads() -> usize {
    let env = std::env::var("KDLAB_LOADER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    env.filter(|&n| n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(16))
}

/// Hands the items of `work` to a pool of threads, one at a time, calling `f(index, item)`; when
/// `f` returns false no further items are handed out.
pub(super) fn par_each<S: Send, I: Iterator<Item = (usize, S)> + Send>(work: I, f: impl Fn(usize, S) -> bool + Sync) {
    par_each_on(threads(), work, f)
}

/// As [`par_each`], on `threads` threads.
pub(crate) fn par_each_on<S: Send, I: Iterator<Item = (usize, S)> + Send>(
    threads: usize,
    work: I,
    f: impl Fn(usize, S) -> bool + Sync,
) {
    let work = Mutex::new(work);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let next = work.lock().expect("work queue").next();
                let Some((i, item)) = next else { break };
                if !f(i, item) {
                    stop.store(true, Ordering::Relaxed);
                }
            });
        }
    });
}

pub(crate) fn bad_file_error(path: &Path, e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: cannot decode this image ({e:#}); fix or remove it, or add bad=skip to the data spec (DIR:bad=skip) to leave undecodable images out",
        path.display()
    )
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
