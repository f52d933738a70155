//! A run's TensorBoard curves: `events.out.tfevents.kdlab` beside `metrics.csv`, written as the
//! run goes (`util::tensorboard` has the format).
//!
//! Tags: `step/…` per optimiser step (x = the run-wide step, 1-based): `loss`, `term_<name>`,
//! `lr`, `grad_norm`, `batch_acc`; `epoch/…` per epoch (x = the 1-based epoch): every column of
//! `metrics.csv` under its own name, and a histogram of each per-sample value a method reports
//! (ISATS: `epoch/tau2`, every training sample's τ2); `final/…` once the run is done. The
//! hyper-parameters (the run record's configuration, objective and identity, flattened) go to
//! the HParams plugin, which shows the runs of `tensorboard --logdir <study>/runs` side by side.
//!
//! Resume: the epoch block (`epoch/…` events) is written and flushed before the epoch's
//! checkpoint, so whenever `last.json` says epoch k, the file holds the complete block of epoch
//! k. A resumed run cuts the file right after the block of the epoch it resumes from — dropping
//! the steps of the epoch that was interrupted, which it trains again — so each step is in the
//! file once. Epochs whose block is missing (a run older than event files, or writes lost with a
//! power cut) get their epoch scalars back from the checkpoint's history; their step curves stay
//! missing.
use crate::train::objective::Objective;
use crate::train::run::{EpochMetrics, RunRecord};
use crate::util::tensorboard::{self, EventWriter, HParam, SessionStatus};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The file's name: TensorBoard reads the files of a directory whose name contains `tfevents`.
pub const FILE: &str = "events.out.tfevents.kdlab";

/// Buckets of a per-sample histogram.
const BUCKETS: usize = 30;

/// Steps are flushed at least this often, for TensorBoard and `kdlab watch` to see them live.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct RunEvents {
    w: EventWriter,
    /// The epoch's per-sample values by name, in step order.
    samples: BTreeMap<String, Vec<f64>>,
    last_flush: Instant,
    /// The first write error of a step, reported at the epoch's end (a step cannot fail).
    error: Option<anyhow::Error>,
}

/// The tag of an epoch-level value.
fn epoch_tag(name: &str) -> String {
    format!("epoch/{name}")
}

/// The end of the last complete epoch block at or before `epoch`: (that epoch, byte offset).
fn last_block(events: &[(tensorboard::Event, u64)], epoch: usize) -> Option<(usize, u64)> {
    let mut found: Option<(usize, u64)> = None;
    for (e, end) in events {
        let in_block =
            e.summary.as_ref().is_some_and(|s| s.value.iter().any(|v| v.tag.starts_with("epoch/"))) && e.step >= 1;
        if in_block && e.step as usize <= epoch && found.is_none_or(|(k, _)| e.step as usize >= k) {
            found = Some((e.step as usize, *end));
        }
    }
    found
}

/// The end of the header (file version and session start), where a run with no epoch resumes.
fn header_end(events: &[(tensorboard::Event, u64)]) -> Option<u64> {
    let start = |e: &tensorboard::Event| {
        e.summary.as_ref().is_some_and(|s| s.value.iter().any(|v| v.tag == tensorboard::SESSION_START_TAG))
    };
    events.iter().find(|(e, _)| start(e)).map(|(_, end)| *end)
}

impl RunEvents {
    /// Opens the run's event file for training after the `history` epochs already done: a new
    /// file for a new run, else the file cut after the last epoch kept (see the module's note).
    pub fn open(dir: &Path, record: &RunRecord, history: &[EpochMetrics]) -> Result<RunEvents> {
        let path = dir.join(FILE);
        let done = history.len();
        let existing = if done > 0 && path.exists() { Some(tensorboard::read_events(&path)?.0) } else { None };
        let cut = existing.as_ref().and_then(|ev| last_block(ev, done).or_else(|| header_end(ev).map(|end| (0, end))));
        let (mut w, kept) = match cut {
            Some((k, end)) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.set_len(end).with_context(|| format!("cutting {} back to epoch {k}", path.display()))?;
                (EventWriter::append(&path)?, k)
            }
            None => {
                let mut w = EventWriter::create(&path)?;
                w.session_start(&hparams(record))?;
                (w, 0)
            }
        };
        for m in &history[kept..] {
            write_epoch_scalars(&mut w, m)?;
        }
        w.flush()?;
        Ok(RunEvents { w, samples: BTreeMap::new(), last_flush: Instant::now(), error: None })
    }

    /// One optimiser step's values; `step` is run-wide and 1-based.
    pub fn step(&mut self, step: usize, lr: f64, loss: f64, terms: &[(String, f64)], batch_acc: f64, grad_norm: f64) {
        let mut values = vec![("step/loss".to_string(), loss)];
        values.extend(terms.iter().map(|(name, v)| (format!("step/term_{name}"), *v)));
        values.push(("step/lr".into(), lr));
        values.push(("step/grad_norm".into(), grad_norm));
        values.push(("step/batch_acc".into(), batch_acc));
        let mut put = |w: &mut EventWriter| -> Result<()> {
            w.scalars(step as i64, &values)?;
            if Instant::now() >= self.last_flush + FLUSH_EVERY {
                w.flush()?;
                self.last_flush = Instant::now();
            }
            Ok(())
        };
        if self.error.is_none() {
            if let Err(e) = put(&mut self.w) {
                self.error = Some(e);
            }
        }
    }

    /// Keeps the per-sample values the objective reports for the step it just computed.
    pub fn sample(&mut self, objective: &dyn Objective) {
        if let Some((name, values)) = objective.per_sample() {
            self.samples.entry(name).or_default().extend(values);
        }
    }

    /// The epoch's block, flushed: written before the epoch's checkpoint.
    pub fn epoch(&mut self, m: &EpochMetrics) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        write_epoch_scalars(&mut self.w, m)?;
        for (name, values) in std::mem::take(&mut self.samples) {
            self.w.histogram(&epoch_tag(&name), m.epoch as i64, &values, BUCKETS)?;
        }
        self.w.flush()?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The run's final metrics and its end, for the HParams dashboard.
    pub fn finish(&mut self, history: &[EpochMetrics]) -> Result<()> {
        let Some(last) = history.last() else { return Ok(()) };
        let best = crate::train::trainer::best_epoch(history);
        let step = last.epoch as i64;
        self.w.scalar("final/test_acc", step, last.test_acc)?;
        self.w.scalar("final/best_test_acc", step, best.test_acc)?;
        self.w.scalar("final/best_epoch", step, best.epoch as f64)?;
        if let Some(v) = last.val_acc {
            self.w.scalar("final/val_acc", step, v)?;
        }
        self.w.session_end(SessionStatus::Success)?;
        self.w.flush()
    }

    /// A failed run's end (best effort: the failure itself is what matters). A resumed run cuts
    /// it away with the interrupted epoch.
    pub fn fail(&mut self) {
        let _ = self.w.session_end(SessionStatus::Failure);
        let _ = self.w.flush();
    }
}

/// An epoch's scalars: each column of `metrics.csv` (`run::write_metrics_csv`) under its name.
fn write_epoch_scalars(w: &mut EventWriter, m: &EpochMetrics) -> Result<()> {
    let e = m.epoch as i64;
    let mut values: Vec<(String, f64)> = vec![
        ("lr".into(), m.lr),
        ("train_loss".into(), m.train_loss),
        ("train_acc".into(), m.train_acc),
        ("test_loss".into(), m.test_loss),
        ("test_acc".into(), m.test_acc),
        ("time_s".into(), m.time_s),
        ("images_per_s".into(), m.images_per_s),
    ];
    let optional = [
        ("val_loss", m.val_loss),
        ("val_acc", m.val_acc),
        ("grad_norm_mean", m.grad_norm_mean),
        ("grad_norm_max", m.grad_norm_max),
    ];
    values.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))));
    values.extend(m.terms.iter().map(|(k, v)| (format!("term_{k}"), *v)));
    let values: Vec<(String, f64)> = values.into_iter().map(|(name, v)| (epoch_tag(&name), v)).collect();
    w.scalars(e, &values)
}

/// The run's hyper-parameters for the HParams plugin: the run record's configuration, objective
/// and identity (`extra`), flattened to dotted keys; lists as their JSON text.
pub(crate) fn hparams(record: &RunRecord) -> BTreeMap<String, HParam> {
    let mut out = BTreeMap::new();
    out.insert("kind".into(), HParam::Text(record.kind.clone()));
    out.insert("data_name".into(), HParam::Text(record.data.name.clone()));
    out.insert("threads".into(), HParam::Number(record.threads as f64));
    for v in [&record.config, &record.objective, &record.extra] {
        flatten("", v, &mut out);
    }
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, HParam>) {
    use serde_json::Value;
    let value = match v {
        Value::Object(map) => {
            for (k, x) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, x, out);
            }
            return;
        }
        Value::Null => return,
        Value::Bool(b) => HParam::Bool(*b),
        Value::Number(n) => HParam::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => HParam::Text(s.clone()),
        Value::Array(_) => HParam::Text(v.to_string()),
    };
    if !prefix.is_empty() {
        out.insert(prefix.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_parameters_flatten_to_dotted_keys() {
        let mut out = BTreeMap::new();
        let v = serde_json::json!({"method": "isats", "hyper": {"tau1": 4, "search": {"grid": [1, 2]}, "c": true, "n": null}});
        flatten("", &v, &mut out);
        assert_eq!(out["method"], HParam::Text("isats".into()));
        assert_eq!(out["hyper.tau1"], HParam::Number(4.0));
        assert_eq!(out["hyper.search.grid"], HParam::Text("[1,2]".into()));
        assert_eq!(out["hyper.c"], HParam::Bool(true));
        assert!(!out.contains_key("hyper.n"));
    }
}
