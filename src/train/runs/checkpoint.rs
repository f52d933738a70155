//! Checkpoints: the weights (and SGD's or DOT's momentum) in safetensors, and a JSON sidecar saying what they
//! are — architecture, input shape, classes, epoch, optimiser settings, the metrics so far, and the
//! weights' sha256. The sidecar is written after the weights and names their checksum, so a crash
//! between the two writes is detected rather than mixing an old sidecar with new weights.
use crate::data::{sha256_hex, Shape};
use crate::train::model::Model;
use crate::train::run::EpochMetrics;
use crate::train::sgd::{Sgd, OPTIM_PREFIX};
use crate::util::{atomic, sealed};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub(crate) const FORMAT: &str = "kdlab-checkpoint/1";
const MODEL_PREFIX: &str = "model.";
/// The prefix of a method's modules and state (`Method::setup`) in a checkpoint.
pub(crate) const METHOD_PREFIX: &str = "method.";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OptimizerMeta {
    pub kind: String,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Whether the momentum buffers are in the weights file (under `optim.momentum.`, and DOT's
    /// second set under `optim.momentum_distill.`).
    pub has_momentum_buffers: bool,
    /// DOT's Δ (`kind` "dot"); absent for SGD, so earlier sidecars read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dot_delta: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub model: String,
    pub input: Shape,
    pub classes: usize,
    /// Epochs completed when this was saved.
    pub epoch: usize,
    pub weights_file: String,
    pub weights_sha256: String,
    pub params: u64,
    pub test_acc: f64,
    pub best_test_acc: f64,
    pub best_epoch: usize,
    pub optimizer: OptimizerMeta,
    /// Every epoch's metrics up to this one, so a resumed run continues its history.
    pub history: Vec<EpochMetrics>,
}

/// Saves weights and optimiser state as `<stem>.safetensors` and the sidecar as `<stem>.json`.
pub fn save(dir: &Path, stem: &str, model: &Model, opt: Option<&Sgd>, meta: CheckpointMeta) -> Result<PathBuf> {
    save_with(dir, stem, model, opt, None, meta)
}

/// `save`, with a method's modules and state (`method`, stored under `method.`).
pub(crate) fn save_with(
    dir: &Path,
    stem: &str,
    model: &Model,
    opt: Option<&Sgd>,
    method: Option<&VarStore>,
    mut meta: CheckpointMeta,
) -> Result<PathBuf> {
    let weights = dir.join(format!("{stem}.safetensors"));
    let mut named: Vec<(String, Tensor)> =
        model.named_variables().into_iter().map(|(n, t)| (format!("{MODEL_PREFIX}{n}"), t)).collect();
    if let Some(vs) = method {
        named.extend(vs.variables().into_iter().map(|(n, t)| (format!("{METHOD_PREFIX}{n}"), t)));
    }
    if let Some(opt) = opt {
        named.extend(opt.state());
    }
    let named: Vec<(String, Tensor)> =
        named.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())).collect();
    let mut sha = String::new();
    atomic::remove_stale_temps(dir);
    atomic::write_via_path(&weights, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(|e| anyhow::anyhow!("{e}"))?;
        let bytes = std::fs::read(tmp).with_context(|| format!("reading back {}", tmp.display()))?;
        sha = sha256_hex(&bytes);
        Ok(())
    })?;
    meta.format = FORMAT.to_string();
    meta.weights_file = format!("{stem}.safetensors");
    meta.weights_sha256 = sha;
    meta.optimizer.has_momentum_buffers = opt.is_some_and(|o| !o.state().is_empty());
    let json = dir.join(format!("{stem}.json"));
    sealed::write_json(&json, &meta)?;
    Ok(json)
}

/// Reads a sidecar.
pub fn read_meta(json: &Path) -> Result<CheckpointMeta> {
    let meta: CheckpointMeta = sealed::read_json(json, "a kdlab checkpoint sidecar")?;
    if meta.format != FORMAT {
        bail!("{}: checkpoint format '{}' is not {FORMAT}", json.display(), meta.format);
    }
    Ok(meta)
}

/// Reads the weights file of a sidecar, verifying its checksum, as a name → tensor map.
pub fn read_tensors(json: &Path, meta: &CheckpointMeta) -> Result<BTreeMap<String, Tensor>> {
    let weights = json.with_file_name(&meta.weights_file);
    let bytes = std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let sha = sha256_hex(&bytes);
    if sha != meta.weights_sha256 {
        bail!(
            "{}: checksum {sha} differs from the one recorded in {} ({}); the weights are damaged or \
             belong to another save",
            weights.display(),
            json.display(),
            meta.weights_sha256
        );
    }
    let tensors = Tensor::read_safetensors(&weights).map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
    Ok(tensors.into_iter().collect())
}

/// Copies the saved weights into `model`, checking that names and shapes agree.
pub(crate) fn load_weights(model: &Model, tensors: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in model.named_variables() {
        let key = format!("{MODEL_PREFIX}{name}");
        let Some(src) = tensors.get(&key) else {
            bail!("{}: no tensor {key} for this {} model", origin.display(), model.arch)
        };
        if src.size() != var.size() {
            bail!(
                "{}: {key} has shape {:?}, the {} model expects {:?}",
                origin.display(),
                src.size(),
                model.arch,
                var.size()
            );
        }
        var.copy_(src);
    }
    Ok(())
}

/// Restores model, a method's modules and state, and optimiser from a checkpoint sidecar.
pub fn restore(json: &Path, model: &Model, method: &VarStore, opt: &mut Sgd) -> Result<CheckpointMeta> {
    let meta = read_meta(json)?;
    let tensors = read_tensors(json, &meta)?;
    load_weights(model, &tensors, json)?;
    let _guard = tch::no_grad_guard();
    for (name, mut var) in method.variables() {
        let key = format!("{METHOD_PREFIX}{name}");
        let Some(src) = tensors.get(&key) else {
            bail!("{}: no tensor {key} for the method's modules (saved by another method?)", json.display())
        };
        if src.size() != var.size() {
            bail!("{}: {key} has shape {:?}, the method expects {:?}", json.display(), src.size(), var.size());
        }
        var.copy_(src);
    }
    let optim: BTreeMap<String, Tensor> = tensors.into_iter().filter(|(k, _)| k.starts_with(OPTIM_PREFIX)).collect();
    opt.load_state(&optim, &json.display().to_string())?;
    Ok(meta)
}

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Last,
    Best,
    Epoch(usize),
}

/// A checkpoint of a run as users write it: `runs/r56` (the last), `runs/r56@best`,
/// `runs/r56@last`, `runs/r56@epoch40` (ESKD's early-stopped teacher). `at` is None when no
/// `@` was written (the last checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunRef {
    pub dir: PathBuf,
    pub at: Option<Which>,
}

impl std::str::FromStr for RunRef {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<RunRef> {
        let Some((dir, which)) = spec.rsplit_once('@') else {
            return Ok(RunRef { dir: PathBuf::from(spec), at: None });
        };
        let at = match which {
            "last" => Which::Last,
            "best" => Which::Best,
            w => Which::Epoch(
                w.strip_prefix("epoch")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("{spec}: after '@' write best, last or epoch<N> (e.g. {dir}@epoch40)"))?,
            ),
        };
        Ok(RunRef { dir: PathBuf::from(dir), at: Some(at) })
    }
}

impl std::fmt::Display for RunRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dir.display(), self.suffix())
    }
}

impl RunRef {
    /// `@best`, `@last`, `@epochN`, or nothing.
    pub(crate) fn suffix(&self) -> String {
        match self.at {
            None => String::new(),
            Some(Which::Last) => "@last".into(),
            Some(Which::Best) => "@best".into(),
            Some(Which::Epoch(n)) => format!("@epoch{n}"),
        }
    }

    /// A short display name: the run directory's name and the suffix (`r110@epoch60`).
    pub fn name(&self) -> String {
        let base = self.dir.file_name().map_or(self.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        base + &self.suffix()
    }
}

/// The checkpoint sidecar of a run reference (see [`RunRef`]); or a sidecar path given directly.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let r: RunRef = spec.parse()?;
    let dir = r.dir.as_path();
    if dir.extension().is_some_and(|e| e == "json") && dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    if !dir.is_dir() {
        bail!("run {}: no such directory", dir.display());
    }
    let json = match r.at.unwrap_or(Which::Last) {
        Which::Last => dir.join("last.json"),
        Which::Best => dir.join("best.json"),
        Which::Epoch(n) => dir.join("checkpoints").join(epoch_stem(n) + ".json"),
    };
    if !json.is_file() {
        let available = list_epochs(dir);
        bail!(
            "{spec}: no checkpoint {} (saved epochs: {})",
            json.display(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
            }
        );
    }
    Ok(json)
}

/// The file stem of the checkpoint kept for epoch `n`.
pub(crate) fn epoch_stem(n: usize) -> String {
    format!("epoch-{n:04}")
}

/// Epochs with a kept checkpoint in a run directory.
pub fn list_epochs(run: &Path) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("epoch-")?.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// Loads a trained model for inference from a checkpoint spec (see `resolve`).
pub fn load_model(spec: &str, device: Device) -> Result<(Model, CheckpointMeta, PathBuf)> {
    let json = resolve(spec)?;
    let meta = read_meta(&json)?;
    let model = Model::new(&meta.model, meta.input, meta.classes, device, 0)?;
    let tensors = read_tensors(&json, &meta)?;
    load_weights(&model, &tensors, &json)?;
    Ok((model, meta, json))
}

/// The run directory holding a checkpoint sidecar (`run/last.json` or `run/checkpoints/epoch-N.json`).
pub(crate) fn run_dir_of(json: &Path) -> PathBuf {
    let parent = json.parent().unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

#[cfg(test)]
mod run_ref_tests {
    use super::*;

    #[test]
    fn run_references_parse_print_and_name() {
        for (spec, at, name) in [
            ("runs/r56", None, "r56"),
            ("runs/r56@best", Some(Which::Best), "r56@best"),
            ("runs/r56@last", Some(Which::Last), "r56@last"),
            ("/abs/runs/r110@epoch60", Some(Which::Epoch(60)), "r110@epoch60"),
        ] {
            let r: RunRef = spec.parse().unwrap();
            assert_eq!(r.at, at, "{spec}");
            assert_eq!(r.to_string(), spec);
            assert_eq!(r.name(), name);
        }
        let e = format!("{:#}", "runs/r56@epochX".parse::<RunRef>().unwrap_err());
        assert!(e.contains("runs/r56@epochX") && e.contains("best, last or epoch<N>"), "{e}");
        let e = format!("{:#}", resolve("runs/r56@latest").unwrap_err());
        assert!(e.contains("after '@'"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DOT's Δ came after checkpoints were written: an SGD sidecar serialises as before (no
    /// `dot_delta`), and one written before reads back with none.
    #[test]
    fn optimizer_records_without_dot_read_back_unchanged() {
        let sgd = crate::train::teacher::no_optimizer("sgd");
        let v = serde_json::to_value(&sgd).unwrap();
        assert!(v.get("dot_delta").is_none(), "{v}");
        let old = r#"{"kind":"sgd","lr":0.05,"momentum":0.9,"nesterov":false,"weight_decay":0.0005,"has_momentum_buffers":true}"#;
        let read: OptimizerMeta = serde_json::from_str(old).unwrap();
        assert_eq!(read.dot_delta, None);
        let dot = OptimizerMeta { kind: "dot".into(), dot_delta: Some(0.075), ..read };
        assert_eq!(serde_json::to_value(&dot).unwrap()["dot_delta"], 0.075);
    }
}
