//! Teachers: a kdlab run (a checkpoint of the zoo's models), or any model exported with
//! `torch.jit.trace` / `torch.jit.script` (a TorchScript file, run by LibTorch through tch's
//! `CModule`). Both give logits for kdlab's batches behind the same [`TeacherModel::infer`].
//!
//! kdlab's loader normalises images with the data set's profile (per-channel mean and standard
//! deviation of pixels in [0, 1]). A TorchScript teacher is fed the same inputs unless its own
//! normalisation is given (`--teacher-mean`, `--teacher-std`); then each batch is mapped
//! per channel from the profile's normalisation to the teacher's (an affine map, exact up to
//! rounding). The profile is the default because it is what kdlab's own teachers see, and the
//! profiles are the standard recipes' (CIFAR-100's mean and std are RepDistiller's and
//! mdistiller's), so a teacher trained on the same data set the usual way needs no flag.
use crate::data::{Dataset, Shape};
use crate::train::checkpoint::{self, CheckpointMeta, OptimizerMeta};
use crate::train::model::{Infer, Model};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A TorchScript teacher's input normalisation, where it differs from the data set's profile:
/// per-channel mean and standard deviation of pixels scaled to [0, 1] (one value: every channel).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InputNorm {
    #[serde(default, rename = "teacher_mean", skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(default, rename = "teacher_std", skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
}

impl InputNorm {
    pub(crate) fn is_given(&self) -> bool {
        self.mean.is_some() || self.std.is_some()
    }

    /// The per-channel (mean, std) the teacher wants for `data`: the flags, or the profile's.
    pub fn resolve(&self, data: &Dataset) -> Result<(Vec<f64>, Vec<f64>)> {
        let c = data.shape().c;
        let (Some(mean), Some(std)) = (&self.mean, &self.std) else {
            if self.is_given() {
                bail!("give the teacher's input normalisation as both --teacher-mean and --teacher-std");
            }
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect();
            return Ok((f(&data.profile.mean), f(&data.profile.std)));
        };
        let per_channel = |v: &[f64], flag: &str| -> Result<Vec<f64>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.to_vec()),
                n => bail!("--{flag} has {n} values but {} has {c} channels (give 1 or {c})", data.name),
            }
        };
        let (mean, std) = (per_channel(mean, "teacher-mean")?, per_channel(std, "teacher-std")?);
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            bail!("--teacher-mean: every value must be a finite number, got {m}");
        }
        if let Some(s) = std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            bail!("--teacher-std: every value must be a positive number, got {s}");
        }
        Ok((mean, std))
    }
}

/// Whether a teacher spec names a TorchScript file (any file but a checkpoint sidecar `.json`).
pub(crate) fn is_torchscript(spec: &str) -> bool {
    let p = Path::new(spec);
    p.is_file() && p.extension().is_none_or(|e| e != "json")
}

/// A TorchScript model in eval mode, checked against a data set.
pub struct ScriptModel {
    module: tch::CModule,
    pub path: PathBuf,
    pub sha256: String,
    pub input: Shape,
    pub classes: usize,
    pub params: u64,
    /// The normalisation the teacher is fed, and whether it came from flags (else the profile).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub norm_from_flags: bool,
    /// Per-channel (scale, shift) from the profile's normalisation to the teacher's; None when
    /// they are the same.
    renorm: Option<(Tensor, Tensor)>,
    device: Device,
}

impl ScriptModel {
    /// Loads `path` onto `device` and checks, with a forward pass on two blank images, that it
    /// takes `data`'s input shape and gives one logit per class.
    pub fn load(path: &Path, device: Device, data: &Dataset, norm: &InputNorm) -> Result<ScriptModel> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading the TorchScript teacher {}", path.display()))?;
        let sha256 = crate::data::sha256_hex(&bytes);
        let mut module = tch::CModule::load_on_device(path, device).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a TorchScript model (save one with torch.jit.trace or torch.jit.script, then .save()): {}",
                path.display(),
                first_line(&e.to_string())
            )
        })?;
        module.set_eval();
        let params = module.named_parameters().map(|v| v.iter().map(|(_, t)| t.numel() as u64).sum()).unwrap_or(0);
        let (mean, std) = norm.resolve(data)?;
        let profile: Vec<(f64, f64)> =
            data.profile.mean.iter().zip(&data.profile.std).map(|(&m, &s)| (m as f64, s as f64)).collect();
        let same = profile.iter().zip(mean.iter().zip(&std)).all(|((pm, ps), (m, s))| pm == m && ps == s);
        let renorm = (!same).then(|| {
            let c = data.shape().c as i64;
            // (x·s_p + m_p − m_t) / s_t for x normalised with the profile (m_p, s_p).
            let scale: Vec<f32> = profile.iter().zip(&std).map(|((_, ps), s)| (ps / s) as f32).collect();
            let shift: Vec<f32> =
                profile.iter().zip(mean.iter().zip(&std)).map(|((pm, _), (m, s))| ((pm - m) / s) as f32).collect();
            let t = |v: &[f32]| Tensor::from_slice(v).view([1, c, 1, 1]).to_device(device);
            (t(&scale), t(&shift))
        });
        let mut m = ScriptModel {
            module,
            path: path.to_path_buf(),
            sha256,
            input: data.shape(),
            classes: data.classes,
            params,
            mean,
            std,
            norm_from_flags: norm.is_given(),
            renorm,
            device,
        };
        let s = data.shape();
        let x = Tensor::zeros([2, s.c as i64, s.h as i64, s.w as i64], (Kind::Float, device));
        let y = m.try_infer(&x).map_err(|e| {
            anyhow::anyhow!(
                "{}: the TorchScript model does not take {} inputs ({}'s images, as a batch N×{}): {}",
                path.display(),
                s,
                data.name,
                s,
                first_line(&e.to_string())
            )
        })?;
        if y.dim() != 2 || y.size()[0] != 2 {
            bail!(
                "{}: the TorchScript model gives outputs of shape {:?} for a batch of 2 images; a teacher gives (N, classes) logits",
                path.display(),
                y.size()
            );
        }
        let classes = y.size()[1] as usize;
        if classes != data.classes {
            bail!(
                "{}: the TorchScript model gives {classes} logits but {} has {} classes",
                path.display(),
                data.name,
                data.classes
            );
        }
        m.classes = classes;
        Ok(m)
    }

    fn try_infer(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        tch::no_grad(|| {
            let x = match &self.renorm {
                Some((scale, shift)) => x * scale + shift,
                None => x.shallow_clone(),
            };
            self.module.forward_ts(&[x.to_kind(Kind::Float)])
        })
    }

    /// Logits (float32) in inference mode.
    pub fn infer(&self, x: &Tensor) -> Tensor {
        self.try_infer(x)
            .unwrap_or_else(|e| panic!("{}: forward failed: {}", self.path.display(), first_line(&e.to_string())))
            .to_kind(Kind::Float)
    }

    /// The stand-in checkpoint description: what the logit cache keys on (the file's sha256).
    fn meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            format: "torchscript".into(),
            model: self.model_name(),
            input: self.input,
            classes: self.classes,
            epoch: 0,
            weights_file: self.path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            weights_sha256: self.sha256.clone(),
            params: self.params,
            test_acc: f64::NAN,
            best_test_acc: f64::NAN,
            best_epoch: 0,
            optimizer: no_optimizer("none"),
            history: vec![],
        }
    }

    /// `torchscript:<file name>`.
    pub(crate) fn model_name(&self) -> String {
        format!("torchscript:{}", self.path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()))
    }
}

/// The optimiser description of weights kdlab did not train (`kind` says where they came from).
pub(crate) fn no_optimizer(kind: &str) -> OptimizerMeta {
    OptimizerMeta {
        kind: kind.into(),
        lr: 0.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        has_momentum_buffers: false,
        dot_delta: None,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

/// A teacher network of either kind.
pub enum TeacherModel {
    Run(Model),
    Script(ScriptModel),
}

impl From<Model> for TeacherModel {
    fn from(m: Model) -> TeacherModel {
        TeacherModel::Run(m)
    }
}

impl TeacherModel {
    pub fn classes(&self) -> usize {
        match self {
            TeacherModel::Run(m) => m.classes,
            TeacherModel::Script(m) => m.classes,
        }
    }
    pub fn input(&self) -> Shape {
        match self {
            TeacherModel::Run(m) => m.input,
            TeacherModel::Script(m) => m.input,
        }
    }
    pub fn params(&self) -> u64 {
        match self {
            TeacherModel::Run(m) => m.params(),
            TeacherModel::Script(m) => m.params,
        }
    }

    /// Logits in inference mode.
    pub fn infer(&self, x: &Tensor) -> Tensor {
        match self {
            TeacherModel::Run(m) => m.infer(x),
            TeacherModel::Script(m) => m.infer(x),
        }
    }
    pub fn device(&self) -> Device {
        match self {
            TeacherModel::Run(m) => m.device(),
            TeacherModel::Script(m) => m.device,
        }
    }

    /// Every tap's shape; a TorchScript teacher exposes none (its graph is a program kdlab runs,
    /// not a network whose blocks it knows).
    pub(crate) fn tap_shapes(&self) -> Vec<(String, Vec<i64>)> {
        match self {
            TeacherModel::Run(m) => m.tap_shapes(),
            TeacherModel::Script(_) => vec![],
        }
    }

    /// Logits in inference mode, recording the taps `taps` asks for (none for TorchScript).
    pub(crate) fn infer_taps(&self, x: &Tensor, taps: &mut crate::models::Taps) -> Tensor {
        match self {
            TeacherModel::Run(m) => m.infer_taps(x, taps),
            TeacherModel::Script(m) => m.infer(x),
        }
    }
}

impl Infer for TeacherModel {
    fn infer(&self, x: &Tensor) -> Tensor {
        TeacherModel::infer(self, x)
    }
    fn device(&self) -> Device {
        TeacherModel::device(self)
    }
}

/// A teacher, loaded for inference.
pub struct Teacher {
    pub model: TeacherModel,
    /// As given (`runs/r56`, `runs/r110@epoch60`, `teachers/r56.pt`).
    pub spec: String,
    /// The checkpoint sidecar of a run, or the TorchScript file.
    pub checkpoint: PathBuf,
    /// A run's checkpoint description; for a TorchScript file, a stand-in naming its sha256.
    pub meta: CheckpointMeta,
}

impl Teacher {
    /// A trained kdlab run (see [`checkpoint::resolve`]).
    pub fn load(spec: &str, device: Device) -> Result<Teacher> {
        let (model, meta, checkpoint) = checkpoint::load_model(spec, device)?;
        Ok(Teacher { model: TeacherModel::Run(model), spec: spec.to_string(), checkpoint, meta })
    }

    /// A trained kdlab run or a TorchScript file, for use on `data` (a TorchScript teacher is
    /// checked against it here; a run by the caller).
    pub fn open(spec: &str, device: Device, data: &Dataset, norm: &InputNorm) -> Result<Teacher> {
        if is_torchscript(spec) {
            let m = ScriptModel::load(Path::new(spec), device, data, norm)?;
            let meta = m.meta();
            return Ok(Teacher { checkpoint: m.path.clone(), model: TeacherModel::Script(m), spec: spec.into(), meta });
        }
        if norm.is_given() {
            bail!(
                "{spec}: --teacher-mean/--teacher-std are for TorchScript teachers; a kdlab run uses its data set's normalisation"
            );
        }
        Teacher::load(spec, device)
    }

    pub(crate) fn is_torchscript(&self) -> bool {
        matches!(self.model, TeacherModel::Script(_))
    }

    /// Where the teacher's logit cache lives: the run directory, or the TorchScript file's
    /// directory (the cache file's name keys on the file's sha256).
    pub fn cache_dir(&self) -> PathBuf {
        match &self.model {
            TeacherModel::Run(_) => checkpoint::run_dir_of(&self.checkpoint),
            TeacherModel::Script(m) => m.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        }
    }

    /// What identifies the teacher in a run record: where it is, its weights' checksum, accuracy.
    pub fn record(&self) -> serde_json::Value {
        if let TeacherModel::Script(m) = &self.model {
            return serde_json::json!({
                "spec": self.spec,
                "torchscript": m.path.display().to_string(),
                "model": m.model_name(),
                "params": m.params,
                "sha256": m.sha256,
                "weights_sha256": m.sha256,
                "input": m.input,
                "classes": m.classes,
                "input_norm": {"mean": m.mean, "std": m.std, "from": if m.norm_from_flags { "flags" } else { "data profile" }},
            });
        }
        serde_json::json!({
            "spec": self.spec,
            "checkpoint": self.checkpoint.display().to_string(),
            "model": self.meta.model,
            "params": self.meta.params,
            "epoch": self.meta.epoch,
            "weights_sha256": self.meta.weights_sha256,
            "test_acc": self.meta.test_acc,
        })
    }

    /// One line for the console: `resnet8, 78k params, 91.20% test` or `torchscript:t.pt, …`.
    pub(crate) fn describe(&self) -> String {
        let params = crate::util::fmt::count(self.model.params());
        match &self.model {
            TeacherModel::Script(m) => format!("{}, {params} params, sha256 {}", m.model_name(), &m.sha256[..12]),
            TeacherModel::Run(_) => {
                format!("{}, {params} params, {:.2}% test", self.meta.model, 100.0 * self.meta.test_acc)
            }
        }
    }
}

/// The data set a teacher is used on: a run's own (or `data`), or `data` for a TorchScript file,
/// which does not say what it was trained on.
pub(crate) fn teacher_data(spec: &str, data: Option<&str>) -> Result<Dataset> {
    if is_torchscript(spec) {
        let Some(d) = data else {
            bail!("{spec} is a TorchScript model, which does not record its data set: name it with --data (e.g. --data cifar100)")
        };
        return crate::data::source::load(d);
    }
    crate::train::run::run_data(&checkpoint::resolve(spec)?, data)
}
