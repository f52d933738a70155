//! Distillation methods, one file each, after mdistiller's contract: a method is a small type that
//! turns (student logits, teacher logits, labels, epoch) into named loss terms; the trainer sums
//! the terms. A registry maps each name to its constructor and the hyper-parameters it takes.
//! Adding a method is one file and one line in `REGISTRY`.
pub mod ats;
pub mod ce;
pub mod common;
pub mod dist;
pub mod dkd;
pub mod isats;
pub mod kd;
pub mod nckd;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// One batch as a method sees it. The tensors share one dtype (f32 in training, f64 in
/// `kdlab loss` checks).
pub struct LossInput<'a> {
    /// (N, C) student logits, with gradient.
    pub student: &'a Tensor,
    /// (N, C) teacher logits, without gradient.
    pub teacher: &'a Tensor,
    /// (N,) int64 labels.
    pub labels: &'a Tensor,
    /// 1-based epoch (fractional within an epoch is not used): DKD's warm-up reads it.
    pub epoch: f64,
}

pub trait Method: Send {
    fn name(&self) -> &'static str;
    /// Named loss terms, each a scalar (a mean over the batch).
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)>;
    /// Every hyper-parameter in effect (defaults filled in), for run records.
    fn hyper(&self) -> serde_json::Value;
    /// Per-sample values worth showing (ISATS: the chosen τ2 of the last batch).
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        None
    }
    /// Statistics gathered over an epoch (ISATS: the distribution of chosen τ2); resets them.
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        None
    }
}

/// Hyper-parameters as given by the user (flags or TOML); each method takes the ones it uses and
/// fills in its own defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodParams {
    pub tau: Option<f64>,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    pub gamma: Option<f64>,
    pub student_tau: Option<f64>,
    pub tau1: Option<f64>,
    pub tau2: Option<f64>,
    pub tau2_min: Option<f64>,
    pub lambda: Option<f64>,
    pub warmup: Option<f64>,
    pub standardize: Option<bool>,
    /// ISATS: how τ2 is chosen per sample (order, ts or bounded).
    pub rule: Option<String>,
    /// ATS/ISATS: subtract each sample's mean teacher logit first.
    pub center_logits: Option<bool>,
    /// ISATS rule `order`: the least log-probability gap between the true class and the next.
    pub margin: Option<f64>,
}

impl MethodParams {
    /// Keys whose values are not numbers: an integer given for them is not turned into a float
    /// (as `tau = 4` is), so that a wrong type is reported as such.
    pub const NOT_NUMBERS: [&'static str; 3] = ["standardize", "rule", "center_logits"];

    /// The configuration keys, in the spelling of TOML files (flags use dashes).
    pub const KEYS: [&'static str; 14] = [
        "tau",
        "alpha",
        "beta",
        "gamma",
        "student_tau",
        "tau1",
        "tau2",
        "tau2_min",
        "lambda",
        "warmup",
        "standardize",
        "rule",
        "center_logits",
        "margin",
    ];

    /// Which keys were given.
    pub fn given(&self) -> Vec<&'static str> {
        let v = serde_json::to_value(self).expect("serialises");
        Self::KEYS.iter().copied().filter(|k| !v[*k].is_null()).collect()
    }
}

/// A method's entry in the registry.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    /// The hyper-parameters it takes.
    pub takes: &'static [&'static str],
    pub build: fn(&MethodParams) -> Result<Box<dyn Method>>,
}

pub const REGISTRY: &[Entry] = &[
    Entry { name: "ce", about: "cross-entropy only (the student baseline)", takes: &[], build: ce::build },
    Entry {
        name: "kd",
        about: "Hinton et al.: α·CE + β·s_τ²·KL(p(t/τ) ‖ p(s/s_τ))",
        takes: &["tau", "alpha", "beta", "student_tau", "standardize"],
        build: kd::build,
    },
    Entry {
        name: "ats",
        about: "asymmetric temperature scaling: τ1 on the true class, τ2 on the others",
        takes: &["tau1", "tau2", "student_tau", "lambda", "center_logits"],
        build: ats::build,
    },
    Entry {
        name: "isats",
        about: "instance-specific ATS: τ2 per sample in [τ2_min, τ1] by a rule (order: the largest non-GT variance keeping the true class first)",
        takes: &["tau1", "tau2_min", "student_tau", "lambda", "rule", "center_logits", "margin"],
        build: isats::build,
    },
    Entry {
        name: "nckd",
        about: "DKD's non-target term alone, plus CE",
        takes: &["tau", "alpha", "beta", "standardize"],
        build: nckd::build,
    },
    Entry {
        name: "dkd",
        about: "decoupled KD (Zhao et al. 2022): CE + α·TCKD + β·NCKD with warm-up",
        takes: &["tau", "alpha", "beta", "warmup", "standardize"],
        build: dkd::build,
    },
    Entry {
        name: "dist",
        about: "DIST (Huang et al. 2022): inter- and intra-class Pearson correlation",
        takes: &["tau", "alpha", "beta", "gamma"],
        build: dist::build,
    },
];

/// Builds method `name`; hyper-parameters it does not take are an error, not silently ignored.
pub fn build(name: &str, params: &MethodParams) -> Result<Box<dyn Method>> {
    let Some(entry) = REGISTRY.iter().find(|e| e.name == name) else {
        let names: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        bail!("unknown method '{name}': choose one of {}", names.join(", "));
    };
    let stray: Vec<&str> = params.given().into_iter().filter(|k| !entry.takes.contains(k)).collect();
    if !stray.is_empty() {
        bail!(
            "method '{name}' does not take {} (it takes {})",
            stray.join(", "),
            if entry.takes.is_empty() { "no hyper-parameters".to_string() } else { entry.takes.join(", ") }
        );
    }
    (entry.build)(params)
}

/// Checks a temperature (or any quantity that must be positive).
pub fn positive(key: &str, v: f64) -> Result<f64> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{key} must be a positive number, got {v}");
    }
    Ok(v)
}

/// Checks a loss weight.
pub fn weight(key: &str, v: f64) -> Result<f64> {
    if !(v >= 0.0 && v.is_finite()) {
        bail!("{key} must be ≥ 0, got {v}");
    }
    Ok(v)
}
