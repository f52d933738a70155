//! `kdlab import`: a PyTorch checkpoint (a state dict, or a training script's wrapper around one)
//! into a kdlab run directory, so that the model is a teacher like any trained run.
//!
//! The zoo's models compute what RepDistiller's and mdistiller's CIFAR models (and torchvision's
//! ImageNet ResNets) of the same names compute, with the same tensors; [`zoo_name`] maps their
//! parameter names where kdlab's differ. BatchNorm's `num_batches_tracked` counters are not kept.
use crate::data::Shape;
use crate::models::Arch;
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::model::Model;
use crate::train::pth::{self, PthTensor};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The zoo's name for a checkpoint key of an `arch` model, or None for a key that carries no
/// weight kdlab keeps. Names that need no change pass through (and are reported as unexpected
/// when the model has no such tensor).
///
/// - CIFAR ResNet: the projection shortcut is `downsample.0/1` there, `shortcut.0/1` here.
/// - Wide ResNet: `blockS.layer.J.…` there, `blockS.J.…` here; `convShortcut` → `shortcut`; the
///   final BatchNorm is `bn1` there, `bn` here.
/// - VGG: `blockS.K` (conv at K = 3j, BatchNorm at 3j+1, ReLUs between) there,
///   `stage{S+1}.j.conv` / `.bn` here; `classifier` → `fc`.
/// - MobileNetV2 and the ImageNet ResNets use the reference names already.
pub(crate) fn zoo_name(arch: &Arch, key: &str) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    Some(match arch {
        Arch::ResNet { .. } => key.replace(".downsample.", ".shortcut."),
        Arch::Wrn { .. } => wrn_name(key),
        Arch::Vgg { .. } => vgg_name(key),
        _ => key.to_string(),
    })
}

fn wrn_name(key: &str) -> String {
    let key = key.replacen(".layer.", ".", 1).replace(".convShortcut.", ".shortcut.");
    match key.strip_prefix("bn1.") {
        Some(rest) => format!("bn.{rest}"),
        None => key,
    }
}

fn vgg_name(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("classifier.") {
        return format!("fc.{rest}");
    }
    let mut parts = key.splitn(3, '.');
    let (Some(block), Some(k), Some(param)) = (parts.next(), parts.next(), parts.next()) else {
        return key.to_string();
    };
    let (Some(stage), Ok(k)) = (block.strip_prefix("block").and_then(|s| s.parse::<usize>().ok()), k.parse::<usize>())
    else {
        return key.to_string();
    };
    let layer = match k % 3 {
        0 => "conv",
        1 => "bn",
        _ => return key.to_string(),
    };
    format!("stage{}.{}.{layer}.{param}", stage + 1, k / 3)
}

/// Tensors listed per kind of mismatch (the rest are counted).
const SHOWN: usize = 16;

/// What an import found: the tensors it could not place.
#[derive(Debug, Default)]
pub(crate) struct Mismatch {
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
pub(crate) fn load_into(model: &Model, tensors: &BTreeMap<String, PthTensor>, origin: &Path) -> Result<()> {
    let arch = crate::models::parse(&model.arch)?;
    let mut by_zoo: BTreeMap<String, (&String, &PthTensor)> = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(z) = zoo_name(&arch, k) {
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
    import_with(checkpoint, arch, classes, input, out, data, &pth::Limits::default())
}

/// As [`import`], reading the checkpoint within `limits`. Nothing is written until the whole
/// checkpoint has been read and fits the model.
pub(crate) fn import_with(
    checkpoint: &Path,
    arch: &str,
    classes: usize,
    input: Shape,
    out: &Path,
    data: Option<&crate::data::Dataset>,
    limits: &pth::Limits,
) -> Result<(PathBuf, Option<f64>)> {
    let tensors = pth::read_state_dict_with(checkpoint, limits)?;
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
            Some(crate::train::eval::evaluate(&model, split, crate::train::eval::plain_augment(d)).acc)
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
        optimizer: crate::train::teacher::no_optimizer("imported"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(arch: &str, key: &str) -> Option<String> {
        zoo_name(&crate::models::parse(arch).unwrap(), key)
    }

    #[test]
    fn reference_names_map_to_the_zoos() {
        let cases = [
            ("resnet56", "layer2.0.downsample.1.running_var", "layer2.0.shortcut.1.running_var"),
            ("resnet56", "fc.weight", "fc.weight"),
            ("resnet18", "layer2.0.downsample.0.weight", "layer2.0.downsample.0.weight"),
            ("wrn_40_2", "block1.layer.0.convShortcut.weight", "block1.0.shortcut.weight"),
            ("wrn_40_2", "block3.layer.5.bn1.bias", "block3.5.bn1.bias"),
            ("wrn_40_2", "bn1.running_mean", "bn.running_mean"),
            ("wrn_40_2", "conv1.weight", "conv1.weight"),
            ("vgg13", "block0.0.weight", "stage1.0.conv.weight"),
            ("vgg13", "block4.4.running_var", "stage5.1.bn.running_var"),
            ("vgg13", "classifier.bias", "fc.bias"),
            ("mobilenetv2_x0_5", "blocks.6.0.conv.7.weight", "blocks.6.0.conv.7.weight"),
        ];
        for (arch, key, want) in cases {
            assert_eq!(name(arch, key).as_deref(), Some(want), "{arch}: {key}");
        }
        assert_eq!(name("wrn_40_2", "block1.layer.0.bn1.num_batches_tracked"), None);
        // A name the mapping does not know passes through, to be reported as unexpected.
        assert_eq!(name("vgg13", "block0.2.weight").as_deref(), Some("block0.2.weight"));
    }
}
