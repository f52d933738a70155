//! Progress bars on stderr (hidden automatically when stderr is not a terminal, e.g. in CI logs).
use indicatif::{ProgressBar, ProgressStyle};

/// A bar over the steps of one epoch; the message carries loss, accuracy and throughput.
pub(crate) fn epoch_bar(steps: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:28}] {pos:>4}/{len:4} {msg}  {elapsed}<{eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// A bar over bytes (downloads).
pub(crate) fn bytes_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:28}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.rsplit('/').next().unwrap_or(what).to_string());
    bar
}

/// A bar over samples (evaluation, logits, probes).
pub(crate) fn items_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:28}] {pos}/{len} {per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
