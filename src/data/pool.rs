//! The decoding threads: a small pool that hands out work and stops at the first failure.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Number of decoding threads: `$KDLAB_LOADER_THREADS` when set, else every core, at most 16.
/// The thread count never changes what is decoded, only how fast.
pub fn threads() -> usize {
    let env = std::env::var("KDLAB_LOADER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    env.filter(|&n| n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(16))
}

/// Hands the items of `work` to `threads` threads, one at a time, calling `f(index, item)`; when
/// `f` returns false no further items are handed out.
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
