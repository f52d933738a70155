//! `kdlab import`: a PyTorch checkpoint (a state dict, or a training script's wrapper around one)
//! into a kdlab run directory, so that the model is a teacher like any trained run. The zoo's
//! parameter names follow RepDistiller's and mdistiller's: a CIFAR ResNet's `layerS.B.conv1`,
//! `bn1`, …, `fc` are the same; only the projection shortcut differs (`downsample.0/1` there,
//! `shortcut.0/1` here), and BatchNorm's `num_batches_tracked` counters are not kept.
use super::checkpoint::{self, CheckpointMeta};
use super::model::Model;
use super::pth::{self, PthTensor};
use crate::data::Shape;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The zoo's name for a checkpoint key, or None for a key that carries no weight kdlab keeps.
pub fn zoo_name(key: &str) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    Some(key.replace(".downsample.", ".shortcut."))
}

/// Tensors listed per kind of mismatch (the rest are counted).
const SHOWN: usize = 16;

/// What an import found: the tensors it could not place.
#[derive(Debug, Default)]
pub struct Mismatch {
    pub missing: Vec<(String, Vec<i64>)>,
    pub unexpected: Vec<(String, Vec<usize>)>,
    pub misshaped: Vec<(String, Vec<usize>, Vec<i64>)>,
}

impl Mismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misshaped.is_empty()
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let list = |s: &mut String, title: &str, rows: Vec<String>| {
            if !rows.is_empty() {
                s.push_str(&format!("\n  {title} ({}):", rows.len()));
                for r in rows.iter().take(SHOWN) {
                    s.push_str(&format!("\n    {r}"));
                }
                if rows.len() > SHOWN {
                    s.push_str(&format!("\n    … and {} more", rows.len() - SHOWN));
                }
            }
        };
        list(
            &mut s,
            "missing (the model has them, the checkpoint does not)",
            self.missing.iter().map(|(n, sh)| format!("{n} {sh:?}")).collect(),
        );
        list(
            &mut s,
            "unexpected (in the checkpoint, not in the model)",
            self.unexpected.iter().map(|(n, sh)| format!("{n} {sh:?}")).collect(),
        );
        list(
            &mut s,
            "misshaped",
            self.misshaped.iter().map(|(n, have, want)| format!("{n}: checkpoint {have:?}, model {want:?}")).collect(),
        );
        s
    }
}

/// Copies `tensors` (checkpoint keys) into `model`, or lists every tensor that does not fit.
pub fn load_into(model: &Model, tensors: &BTreeMap<String, PthTensor>, origin: &Path) -> Result<()> {
    let mut by_zoo: BTreeMap<String, (&String, &PthTensor)> = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(z) = zoo_name(k) {
            by_zoo.insert(z, (k, t));
        }
    }
    let vars = model.named_variables();
    let mut m = Mismatch::default();
    for (name, var) in &vars {
        match by_zoo.get(name) {
            None => m.missing.push((name.clone(), var.size())),
            Some((k, t)) if t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>() != var.size() => {
                m.misshaped.push(((*k).clone(), t.shape.clone(), var.size()))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::BTreeSet<&String> = vars.iter().map(|(n, _)| n).collect();
    for (z, (k, t)) in &by_zoo {
        if !known.contains(z) {
            m.unexpected.push(((*k).clone(), t.shape.clone()));
        }
    }
    if !m.is_empty() {
        bail!(
            "{}: does not fit kdlab's {} ({} classes, {} inputs):{}",
            origin.display(),
            model.arch,
            model.classes,
            model.input,
            m.describe()
        );
    }
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vars {
        let (_, t) = by_zoo[&name];
        let src = Tensor::from_slice(&t.data).view(var.size().as_slice()).to_device(var.device());
        var.copy_(&src);
    }
    Ok(())
}

/// Imports `checkpoint` as a `arch` model into the run directory `out` (its `last.json` and
/// `best.json`), returning the sidecar's path and, given `data`, the test accuracy (recorded
/// as the checkpoint's; 0 without data).
pub fn import(
    checkpoint: &Path,
    arch: &str,
    classes: usize,
    input: Shape,
    out: &Path,
    data: Option<&crate::data::Dataset>,
) -> Result<(PathBuf, Option<f64>)> {
    let tensors = pth::read_state_dict(checkpoint)?;
    let mut model = Model::new(arch, input, classes, Device::Cpu, 0)?;
    model.to_contiguous();
    load_into(&model, &tensors, checkpoint)?;
    let test_acc = match data {
        Some(d) if d.shape() != input || d.classes != classes => bail!(
            "--data {} has {} inputs with {} classes, the import is for {input} with {classes}",
            d.name,
            d.shape(),
            d.classes
        ),
        Some(d) => {
            let split = std::sync::Arc::new(d.test.clone());
            Some(super::eval::evaluate(&model, split, super::eval::plain_augment(d)).acc)
        }
        None => None,
    };
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    let meta = CheckpointMeta {
        format: String::new(),
        model: arch.to_string(),
        input,
        classes,
        epoch: 0,
        weights_file: String::new(),
        weights_sha256: String::new(),
        params: model.params(),
        test_acc: test_acc.unwrap_or(0.0),
        best_test_acc: test_acc.unwrap_or(0.0),
        best_epoch: 0,
        optimizer: super::teacher::no_optimizer("imported"),
        history: vec![],
    };
    checkpoint::save(out, "best", &model, None, meta.clone())?;
    let json = checkpoint::save(out, "last", &model, None, meta)?;
    let source = std::fs::read(checkpoint).map(|b| crate::data::sha256_hex(&b)).unwrap_or_default();
    crate::util::atomic::write_json(
        &out.join("import.json"),
        &serde_json::json!({
            "checkpoint": checkpoint.display().to_string(),
            "checkpoint_sha256": source,
            "model": arch,
            "classes": classes,
            "input": input,
            "tensors": tensors.len(),
            "data": data.map(|d| d.name.clone()),
            "test_acc": test_acc,
            "kdlab_version": crate::VERSION,
        }),
    )?;
    Ok((json, test_acc))
}
