//! What `kdlab watch` shows of a study while it runs: a snapshot read from the study's index and
//! the run directories of the runs in flight (their event files have the step-by-step loss), and
//! its rendering as at most `height` lines of at most `width` characters, plain text (no colour,
//! no terminal capability beyond what the caller does), so that it fits an 80×24 terminal.
use super::plan::{self, Kind};
use super::store::{Status, Store, StoredRun};
use crate::train::events;
use crate::train::run;
use crate::util::{fmt, tensorboard};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A run in flight, as its directory shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Worker {
    pub id: String,
    pub name: String,
    /// The epoch being trained (1-based) and the run's epochs.
    pub epoch: usize,
    pub epochs: usize,
    /// The last step's training loss, and the run's per-step loss so far (its curve).
    pub loss: Option<f64>,
    pub curve: Vec<f64>,
    /// Seconds since the sweep started it (its spec was written).
    pub running_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub id: String,
    pub name: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub dir: PathBuf,
    pub done: usize,
    pub running: usize,
    pub failed: usize,
    pub queued: usize,
    /// Seconds left at the current parallelism, from the mean time of the finished runs of each
    /// kind; None before any run of a kind still to run has finished.
    pub eta_s: Option<f64>,
    pub workers: Vec<Worker>,
    /// Most recent first.
    pub failures: Vec<Failure>,
}

/// Reads the study in `dir` as it stands (read-only: a running sweep is not disturbed).
pub(crate) fn snapshot(dir: &Path) -> Result<Snapshot> {
    let db = dir.join("study.sqlite");
    if !db.exists() {
        bail!(
            "{} is not a study directory, or its sweep has not started (no study.sqlite); start it with `kdlab sweep`",
            dir.display()
        );
    }
    let runs = Store::open_to_read(&db)?.planned_runs()?;
    let n = |s: Status| runs.iter().filter(|r| r.status == s).count();
    let (done, running, failed, queued) = (n(Status::Done), n(Status::Running), n(Status::Failed), n(Status::Queued));
    let workers: Vec<Worker> = runs.iter().filter(|r| r.status == Status::Running).map(|r| worker(dir, r)).collect();
    let mut failures: Vec<(std::time::SystemTime, Failure)> = runs
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| {
            let rdir = plan::run_dir(dir, &r.id);
            // When it failed: its log's last write (a run failed before it started has none).
            let when = std::fs::metadata(rdir.join("log.txt"))
                .or_else(|_| std::fs::metadata(&rdir))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let error = r.error.clone().unwrap_or_else(|| "failed (no error recorded)".into());
            (when, Failure { id: r.id.clone(), name: r.name.clone(), error })
        })
        .collect();
    failures.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        done,
        running,
        failed,
        queued,
        eta_s: eta(&runs),
        workers,
        failures: failures.into_iter().map(|(_, f)| f).collect(),
    })
}

/// The time left: for each kind, its finished runs' mean time × its runs still to run, over the
/// runs in flight (the sweep's workers; at least one).
fn eta(runs: &[StoredRun]) -> Option<f64> {
    let parallel = runs.iter().filter(|r| r.status == Status::Running).count().max(1) as f64;
    let mut total = 0.0;
    for kind in [Kind::Teacher, Kind::Assistant, Kind::Student] {
        let of: Vec<&StoredRun> = runs.iter().filter(|r| r.kind == kind).collect();
        let left = of.iter().filter(|r| matches!(r.status, Status::Queued | Status::Running)).count();
        if left == 0 {
            continue;
        }
        let walls: Vec<f64> = of.iter().filter(|r| r.status == Status::Done).filter_map(|r| r.wall_time_s).collect();
        if walls.is_empty() {
            return None;
        }
        total += walls.iter().sum::<f64>() / walls.len() as f64 * left as f64;
    }
    Some(total / parallel)
}

fn worker(dir: &Path, r: &StoredRun) -> Worker {
    let rdir = plan::run_dir(dir, &r.id);
    let done = run::read_record(&rdir).ok().flatten().map_or(0, |rec| rec.epochs_done);
    let epochs = r.spec.train.epochs;
    // The event file is read as it is being written: a torn last record is normal here.
    let curve: Vec<f64> = tensorboard::read_events(&rdir.join(events::FILE))
        .map(|(evs, _)| {
            evs.iter()
                .filter_map(|(e, _)| e.summary.as_ref()?.value.iter().find(|v| v.tag == "step/loss")?.simple_value)
                .map(f64::from)
                .collect()
        })
        .unwrap_or_default();
    let running_s = std::fs::metadata(rdir.join("spec.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs_f64());
    Worker {
        id: r.id.clone(),
        name: r.name.clone(),
        epoch: (done + 1).min(epochs.max(1)),
        epochs,
        loss: curve.last().copied(),
        curve,
        running_s,
    }
}

/// Cuts `s` to `width` characters, ending a cut line with `more`.
fn fit(s: &str, width: usize, more: char) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push(more);
    out.chars().take(width).collect()
}

/// `s` in ASCII, for a terminal whose locale is not UTF-8 (run names hold arrows and Greek).
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            c if c.is_ascii() => c.to_string(),
            '←' => "<-".into(),
            'τ' => "tau".into(),
            'λ' => "lambda".into(),
            _ => "?".into(),
        })
        .collect()
}

/// `values` as a one-line chart `width` characters wide: the last values, averaged into columns
/// when there are more than fit, each column's height one of eight levels between the extremes.
pub(crate) fn sparkline(values: &[f64], width: usize, utf8: bool) -> String {
    let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let per = values.len().div_ceil(width);
    let cols: Vec<f64> = values.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
    let (lo, hi) = cols.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let levels: Vec<char> =
        if utf8 { "▁▂▃▄▅▆▇█".chars().collect() } else { "._-~=+*#".chars().collect() };
    cols.iter()
        .map(|v| {
            let x = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            levels[((x * 7.0).round() as usize).min(7)]
        })
        .collect()
}

/// The screen: at most `height` lines of at most `width` characters.
pub(crate) fn render(s: &Snapshot, width: usize, height: usize, utf8: bool) -> Vec<String> {
    let total = s.done + s.running + s.failed + s.queued;
    let rule = if utf8 { "─" } else { "-" }.repeat(width);
    let mut lines = vec![];
    let title = format!("kdlab watch  {}", s.dir.display());
    let keys = "q quits";
    let pad = width.saturating_sub(title.chars().count() + keys.len()).max(1);
    lines.push(format!("{title}{}{keys}", " ".repeat(pad)));
    let eta = if s.running == 0 && s.queued == 0 {
        "finished".to_string()
    } else {
        match s.eta_s {
            Some(t) => format!("ETA {} ({} in flight)", fmt::duration(t), s.running.max(1)),
            None => "ETA -".to_string(), // no run of a kind still to run has finished
        }
    };
    lines.push(format!(
        "done {}  running {}  failed {}  queued {}  of {total}   {eta}",
        s.done, s.running, s.failed, s.queued
    ));
    lines.push(rule.clone());
    lines.push(format!("{:<3} {:<16} {:>7} {:>9} {:>8}  run", "#", "id", "epoch", "loss", "time"));
    if s.workers.is_empty() {
        lines.push("    (no run in flight)".into());
    }
    for (i, w) in s.workers.iter().enumerate() {
        lines.push(format!(
            "{:<3} {:<16} {:>7} {:>9} {:>8}  {}",
            i + 1,
            w.id,
            format!("{}/{}", w.epoch, w.epochs),
            w.loss.map_or("-".into(), |l| format!("{l:.4}")),
            w.running_s.map_or("-".into(), fmt::duration),
            w.name
        ));
    }
    if !s.workers.is_empty() {
        lines.push(rule.clone());
        lines.push("training loss per step, runs in flight".into());
        for (i, w) in s.workers.iter().enumerate() {
            let range = match (w.curve.iter().copied().reduce(f64::min), w.curve.iter().copied().reduce(f64::max)) {
                (Some(lo), Some(hi)) => format!(" {lo:.3}..{hi:.3}"),
                _ => " (no step yet)".into(),
            };
            let room = width.saturating_sub(4 + range.chars().count());
            lines.push(format!("{:<3} {}{range}", i + 1, sparkline(&w.curve, room, utf8)));
        }
    }
    lines.push(rule);
    if s.failures.is_empty() {
        lines.push("no failures".into());
    } else {
        lines.push(format!("last failures ({} in all)", s.failed));
        for f in &s.failures {
            lines.push(format!("{} {}: {}", f.id, f.name, f.error.replace('\n', " ")));
        }
    }
    lines.truncate(height);
    if utf8 {
        lines.iter().map(|l| fit(l, width, '…')).collect()
    } else {
        lines.iter().map(|l| fit(&ascii(l), width, '~')).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(workers: usize, failures: usize) -> Snapshot {
        Snapshot {
            dir: "studies/a-rather-long-study-directory-name-that-goes-on".into(),
            done: 7,
            running: workers,
            failed: failures,
            queued: 3,
            eta_s: Some(125.0),
            workers: (0..workers)
                .map(|i| Worker {
                    id: format!("{i:016x}"),
                    name: "student mlp_32x1 ← resnet56 isats (ts_order, margin 0.001) seed 2".into(),
                    epoch: 3,
                    epochs: 60,
                    loss: Some(0.5),
                    curve: (0..500).map(|k| 2.0 / (1.0 + k as f64)).collect(),
                    running_s: Some(61.0),
                })
                .collect(),
            failures: (0..failures)
                .map(|i| Failure {
                    id: format!("f{i}"),
                    name: "student".into(),
                    error: "the loss became NaN\nat".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_frame_fits_the_terminal_and_says_what_stands() {
        for (w, f) in [(0, 0), (2, 3), (8, 30)] {
            for utf8 in [true, false] {
                let lines = render(&snap(w, f), 80, 24, utf8);
                assert!(lines.len() <= 24, "{w} workers, {f} failures: {} lines", lines.len());
                assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
                assert!(lines[1].starts_with(&format!("done 7  running {w}  failed {f}  queued 3  of {}", 10 + w + f)));
                assert!(lines[1].contains("ETA 2m05s"), "{}", lines[1]);
                assert!(utf8 || lines.iter().all(|l| l.is_ascii()), "{lines:#?}");
            }
        }
        let lines = render(&snap(2, 3), 80, 24, true);
        // A falling loss draws a falling curve, from the top level to the bottom one.
        let curve = lines.iter().find(|l| l.starts_with("1   ") && l.contains('█')).expect("a curve line");
        assert!(curve.contains("█") && curve.contains("▁"), "{curve}");
        assert!(curve.find('█') < curve.find('▁'));
        assert!(lines.iter().any(|l| l == "f0 student: the loss became NaN at"), "{lines:#?}");
    }

    #[test]
    fn sparkline_averages_into_the_columns_it_has() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8, true), "▁▂▃▄▅▆▇█");
        // 8 values in 4 columns: the pairs' means 0.5, 2.5, 4.5, 6.5, at 0, 1/3, 2/3 and 1 of the
        // range: levels 0, 2, 5 and 7.
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 4, false), ".-+#");
        assert_eq!(sparkline(&[1.0, f64::NAN, 1.0], 10, true), "▅▅");
    }
}
