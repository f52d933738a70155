//! A run directory: `run.json` (what was run, on what, and how it ended), `metrics.csv` (one row
//! per epoch), checkpoints. Every file is written atomically.
use crate::data::{Dataset, Shape};
use crate::util::{atomic, sealed};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// The rate at the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    /// On the validation split, where the run carved one (`val_per_class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    pub time_s: f64,
    pub images_per_s: f64,
    /// Mean of each named loss term over the epoch.
    #[serde(default)]
    pub terms: BTreeMap<String, f64>,
    /// The global gradient norm of the loss (before weight decay and momentum): mean and largest
    /// over the epoch's steps. Runs recorded before it existed lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_max: Option<f64>,
    /// Objective-specific statistics (e.g. ISATS's τ2 distribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataRecord {
    pub name: String,
    pub source: String,
    pub fingerprint: String,
    pub train_samples: usize,
    pub test_samples: usize,
    pub shape: Shape,
    pub classes: usize,
    pub class_names: Vec<String>,
}

impl DataRecord {
    pub fn of(d: &Dataset) -> Self {
        DataRecord {
            name: d.name.clone(),
            source: d.source.clone(),
            fingerprint: d.fingerprint(),
            train_samples: d.train.len(),
            test_samples: d.test.len(),
            shape: d.shape(),
            classes: d.classes,
            class_names: d.class_names.clone(),
        }
    }
}

/// Where a training run stands, as `run.json` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Failed,
    Done,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub kdlab_version: String,
    /// "train" or "distill".
    pub kind: String,
    pub config: serde_json::Value,
    /// The objective (method and its hyper-parameters).
    pub objective: serde_json::Value,
    /// Anything else that defines the run (e.g. the teacher).
    pub extra: serde_json::Value,
    pub data: DataRecord,
    pub model: String,
    pub params: u64,
    pub device: String,
    pub threads: usize,
    pub status: RunStatus,
    #[serde(default)]
    pub error: Option<String>,
    pub epochs_done: usize,
    pub final_test_acc: Option<f64>,
    pub best_test_acc: Option<f64>,
    pub best_epoch: Option<usize>,
    pub wall_time_s: f64,
    /// The last epoch's validation accuracy, where the run carved a validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_val_acc: Option<f64>,
    /// The last epoch's objective statistics (ATS flip rates, ISATS's τ2 summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_extra: Option<serde_json::Value>,
    /// The memory layout the model was trained in (`channels-last` or `contiguous`; absent in runs
    /// from before 2026-12-04). A run resumes only in its own: the layout changes the kernels'
    /// float rounding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_format: Option<crate::util::device::MemoryFormat>,
}

/// The data a run was trained on, loaded again (or `data` if given), checked against the record.
pub(crate) fn run_data(checkpoint_json: &Path, data: Option<&str>) -> Result<Dataset> {
    let run_dir = crate::train::checkpoint::run_dir_of(checkpoint_json);
    let record = read_record(&run_dir)?;
    let spec = match (data, &record) {
        (Some(d), _) => d.to_string(),
        (None, Some(r)) => {
            r.config.get("data").and_then(|d| d.as_str()).map(str::to_string).context("run.json has no data key")?
        }
        (None, None) => {
            anyhow::bail!("{}: no run.json beside the checkpoint; name the data with --data", run_dir.display())
        }
    };
    // A run trained on a carved subset is evaluated on the same carving (its transfer set).
    let carving: crate::train::config::TrainConfig = match &record {
        Some(r) => serde_json::from_value(r.config.clone())
            .with_context(|| format!("{}: run.json's config is not a training configuration", run_dir.display()))?,
        None => Default::default(),
    };
    let ds = carving.carve(crate::data::source::load(&spec)?)?;
    if let (None, Some(r)) = (data, &record) {
        if r.data.fingerprint != ds.fingerprint() {
            eprintln!("warning: data '{spec}' differs from what {} was trained on", run_dir.display());
        }
    }
    Ok(ds)
}

pub fn read_record(dir: &Path) -> Result<Option<RunRecord>> {
    let p = dir.join("run.json");
    if !p.exists() {
        return Ok(None);
    }
    Ok(Some(sealed::read_json(&p, "a kdlab run record")?))
}

pub fn write_record(dir: &Path, rec: &RunRecord) -> Result<()> {
    sealed::write_json(&dir.join("run.json"), rec)
}

/// Writes metrics.csv: fixed columns, then one column per loss term.
pub(crate) fn write_metrics_csv(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    let terms: Vec<String> = {
        let mut t: Vec<String> = history.iter().flat_map(|m| m.terms.keys().cloned()).collect();
        t.sort();
        t.dedup();
        t
    };
    let mut out = String::from("epoch,lr,train_loss,train_acc,test_loss,test_acc,time_s,images_per_s");
    let val = history.iter().any(|m| m.val_acc.is_some());
    if val {
        out.push_str(",val_loss,val_acc");
    }
    for t in &terms {
        out.push_str(&format!(",term_{t}"));
    }
    let grad = history.iter().any(|m| m.grad_norm_mean.is_some());
    if grad {
        out.push_str(",grad_norm_mean,grad_norm_max");
    }
    out.push('\n');
    let opt = |v: Option<f64>| v.map(|v| format!(",{v:.6}")).unwrap_or_else(|| ",".into());
    for m in history {
        out.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}",
            m.epoch, m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.time_s, m.images_per_s
        ));
        if val {
            out.push_str(&opt(m.val_loss));
            out.push_str(&opt(m.val_acc));
        }
        for t in &terms {
            out.push_str(&opt(m.terms.get(t).copied()));
        }
        if grad {
            out.push_str(&opt(m.grad_norm_mean));
            out.push_str(&opt(m.grad_norm_max));
        }
        out.push('\n');
    }
    atomic::write_bytes(&dir.join("metrics.csv"), out.as_bytes())
}
