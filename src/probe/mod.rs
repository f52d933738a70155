//! The probe: what teachers' softened outputs say about the wrong classes, per teacher and τ
//! (observation 1: larger teachers give less distinct non-GT probabilities) and per pair of
//! teachers (observation 2: they agree on how the wrong classes rank). Pure functions of logits
//! and labels, streamed in chunks so that ImageNet-size inputs fit in bounded memory.
pub mod accumulate;
pub mod output;
pub mod source;
pub mod stats;

use accumulate::{PairAccumulator, TeacherAccumulator};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use source::LogitSource;

/// The default temperature grid: powers of two from 0.25 to 16 with their geometric midpoints.
pub(crate) fn default_taus() -> Vec<f64> {
    (0..=12).map(|i| 2f64.powf(-2.0 + 0.5 * i as f64)).map(|t| (t * 1e6).round() / 1e6).collect()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TauReport {
    pub tau: f64,
    pub p_true: f64,
    pub nongt_mean: f64,
    pub nongt_std: f64,
    pub nongt_var: f64,
    pub nongt_entropy: f64,
    pub nll: f64,
    pub ece: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TeacherReport {
    pub name: String,
    pub classes: usize,
    pub samples: usize,
    /// Trainable parameters, when the logits came from a kdlab run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    pub accuracy: f64,
    pub logit_gap: f64,
    pub logit_nongt_std: f64,
    pub best_tau_nll: f64,
    pub per_tau: Vec<TauReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairTau {
    pub tau: f64,
    /// Pearson correlation of the off-diagonal class-affinity entries; null when undefined.
    pub affinity_corr: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairReport {
    pub a: String,
    pub b: String,
    /// Mean over samples where it is defined; null when it is defined for none (e.g. C = 2).
    pub spearman: Option<f64>,
    pub kendall: Option<f64>,
    pub top1_agree: f64,
    pub top5_overlap: f64,
    pub per_tau: Vec<PairTau>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub teachers: Vec<TeacherReport>,
    pub pairs: Vec<PairReport>,
}

/// A finished probe: the report, and each teacher's class-affinity matrices for plotting.
#[derive(Debug)]
pub struct Probe {
    pub report: ProbeReport,
    pub taus: Vec<f64>,
    /// Per teacher, per τ: the C × C affinity matrix (row-major; NaN on the diagonal).
    pub affinity: Vec<Vec<Vec<f64>>>,
}

/// Samples per chunk: bounds memory at chunk × C × teachers values.
pub const CHUNK: usize = 2048;

/// Probes every source against `labels` (read from `labels_from`, named in errors), streaming
/// `chunk` samples at a time.
pub fn run(
    mut sources: Vec<Box<dyn LogitSource>>,
    labels: &[usize],
    labels_from: &str,
    taus: &[f64],
    chunk: usize,
) -> Result<Probe> {
    if sources.is_empty() {
        bail!("nothing to probe: give at least one --run or --logits");
    }
    if let Some(t) = taus.iter().find(|t| !(**t > 0.0 && t.is_finite())) {
        bail!("--tau: every temperature must be a positive number, got {t}");
    }
    let n = labels.len();
    let c = sources[0].classes();
    for s in &sources {
        if s.samples() != n {
            bail!(
                "{} has {} samples but {labels_from} has {n} labels; every teacher must be probed on the same samples",
                s.name(),
                s.samples()
            );
        }
        if s.classes() != c {
            bail!("{} has {} classes but {} has {c}", s.name(), s.classes(), sources[0].name());
        }
    }
    if c < 2 {
        bail!("{}: at least 2 classes are needed", sources[0].name());
    }
    if let Some((i, y)) = labels.iter().enumerate().find(|(_, &y)| y >= c) {
        bail!("{labels_from}: label {y} at sample {i} is out of range for {c} classes (the logits of {} have {c} columns)", sources[0].name());
    }
    let mut teachers: Vec<TeacherAccumulator> =
        sources.iter().map(|s| TeacherAccumulator::new(s.name().to_string(), s.params(), c, taus)).collect();
    let mut pairs: Vec<PairAccumulator> =
        (0..sources.len()).flat_map(|a| (a + 1..sources.len()).map(move |b| PairAccumulator::new(a, b))).collect();
    let mut start = 0;
    while start < n {
        let rows = chunk.min(n - start);
        let blocks: Vec<Vec<f64>> = sources.iter_mut().map(|s| s.next_rows(rows)).collect::<Result<_>>()?;
        for (k, &y) in labels[start..start + rows].iter().enumerate() {
            for (t, block) in teachers.iter_mut().zip(&blocks) {
                t.add(&block[k * c..(k + 1) * c], y);
            }
            for p in pairs.iter_mut() {
                p.add(&blocks[p.a][k * c..(k + 1) * c], &blocks[p.b][k * c..(k + 1) * c], y);
            }
        }
        start += rows;
    }
    let report = ProbeReport {
        teachers: teachers.iter().map(TeacherAccumulator::report).collect(),
        pairs: pairs.iter().map(|p| p.report(&teachers, taus)).collect(),
    };
    let affinity = teachers.iter().map(|t| (0..taus.len()).map(|i| t.affinity(i)).collect()).collect();
    Ok(Probe { report, taus: taus.to_vec(), affinity })
}

/// The index of the τ in `taus` closest to `want` (on a log scale).
pub(crate) fn nearest_tau(taus: &[f64], want: f64) -> usize {
    (0..taus.len())
        .min_by(|&a, &b| (taus[a].ln() - want.ln()).abs().total_cmp(&(taus[b].ln() - want.ln()).abs()))
        .unwrap_or(0)
}
