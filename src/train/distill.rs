//! Distillation as a training objective: a frozen teacher (eval mode, no gradient) supplies logits
//! for each batch, and a method from the registry turns student and teacher logits into loss terms.
use super::config::{self, TrainConfig};
use super::objective::{Objective, StepInput};
use super::trainer::{self, Outcome, RunOptions};
use crate::methods::{self, LossInput, Method, MethodSpec};
use crate::util::device::upload;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

use super::takd;
use super::tap_store::{self, TapStore};
use super::teacher::InputNorm;
pub use super::teacher::Teacher;
use super::topk_cache::{self, TeacherCache, TopKCache};
use crate::data::augment::Augment;
use crate::data::Shape;

pub struct Distill {
    pub teacher: Teacher,
    /// Built once for the run from `hyper`'s spec.
    pub method: Box<dyn Method>,
    /// The method's hyper-parameters in effect, for the run's record.
    pub hyper: serde_json::Value,
    /// The teacher's outputs, when cached: the teacher is not run.
    pub cache: Option<Cached>,
    /// The taps the method reads (`Method::taps`).
    pub taps: methods::TapNeeds,
    /// A calibrated teacher's temperature T: the method reads the teacher's logits divided by T.
    pub teacher_temperature: Option<f64>,
    /// The teacher's taps of every training image, where they are not served live.
    pub tap_store: Option<TapStore>,
    /// A guided method's other guides (DGKD: the trained assistants above this link, largest
    /// first), run on every batch; the method reads their logits in `LossInput::guides`.
    pub guides: Vec<Teacher>,
}

impl Distill {
    /// Builds the method of `spec`, the one time a run builds it.
    pub fn new(teacher: Teacher, spec: &MethodSpec, cache: Option<Cached>) -> Result<Distill> {
        let method = spec.build()?;
        let taps = method.taps();
        Ok(Distill {
            teacher,
            method,
            hyper: spec.hyper(),
            cache,
            taps,
            teacher_temperature: None,
            tap_store: None,
            guides: vec![],
        })
    }

    /// The teacher's logits as the method reads them: divided by a calibrated teacher's T.
    fn calibrated(&self, t: Tensor) -> Tensor {
        match self.teacher_temperature {
            Some(temp) => t / temp,
            None => t,
        }
    }
}

/// Checks that a model has every tap a method needs, naming the method, the model and the taps it
/// has (a TorchScript teacher has none; an MLP has no stages).
pub fn check_taps(method: &str, model: &str, have: &[(String, Vec<i64>)], need: &[String]) -> Result<()> {
    for name in need {
        if !have.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = have.iter().map(|(n, _)| n.as_str()).collect();
            if names.is_empty() {
                bail!(
                    "method '{method}' needs tap '{name}' of {model}, which exposes no taps (a TorchScript file is run as \
                     a program; import its state dict with `kdlab import` to distil from its features)"
                );
            }
            bail!("method '{method}' needs tap '{name}' of {model}, which has: {}", names.join(", "));
        }
    }
    Ok(())
}

/// The batch's sample indices as a method reads them: (N,) int64 on the CPU.
fn sample_indices(input: &StepInput) -> Tensor {
    let v: Vec<i64> = input.batch.indices.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v)
}

/// The seed of a step's random draws: the run's seed, the epoch and the step (not a generator
/// carried across steps, so a resumed run draws what the uninterrupted one drew).
fn draw_seed(input: &StepInput) -> u64 {
    crate::util::rng::mix(&[input.seed, crate::util::rng::stream::DRAW, input.epoch as u64, input.step as u64])
}

/// A teacher cache opened for a distillation.
pub enum Cached {
    /// The logits of every (sample, view).
    Logits(super::cache::LogitCache),
    /// Each epoch's sampled crops with the teacher's top-k logits (the loader replays the crops).
    TopK(TopKCache),
}

/// Refuses a method that cannot read a top-k teacher cache with this k (`Method::min_topk`).
pub(crate) fn check_topk(method: &MethodSpec, k: usize) -> Result<()> {
    let need = method.min_topk();
    if k < need {
        bail!(
            "method '{}' cannot distil from teacher_cache = \"topk:{k}\": its loss reads the teacher's non-target classes, \
             which a top-{k} cache gives all the same logit; use topk:{need} or more, or teacher_cache = true",
            method.name()
        );
    }
    Ok(())
}

impl Objective for Distill {
    fn name(&self) -> String {
        self.method.name().to_string()
    }
    fn setup(&mut self, student: &super::model::Model, vars: tch::nn::Path, labels: &[u16]) -> Result<()> {
        let (samples, labels) = (labels.len(), Some(labels));
        if self.taps.is_empty() {
            return self.method.setup(&methods::Setup {
                vars,
                student: &[],
                teacher: &[],
                classes: student.classes,
                samples,
                labels,
            });
        }
        let name = self.method.name();
        let (s, t) = (student.tap_shapes(), self.teacher.model.tap_shapes());
        check_taps(name, &format!("student {}", student.arch), &s, &self.taps.student)?;
        check_taps(name, &format!("teacher {}", self.teacher.describe()), &t, &self.taps.teacher)?;
        self.method.setup(&methods::Setup { vars, student: &s, teacher: &t, classes: student.classes, samples, labels })
    }
    fn student_taps(&self) -> Vec<String> {
        self.taps.student.clone()
    }
    fn terms(&mut self, logits: &Tensor, input: &StepInput) -> Result<Vec<(String, Tensor)>> {
        let guides: Vec<Tensor> =
            self.guides.iter().map(|g| g.model.infer(input.images).to_kind(logits.kind())).collect();
        let guides = (!self.guides.is_empty()).then_some(guides.as_slice());
        if !self.taps.teacher.is_empty() {
            // Feature methods read the teacher's taps from the store, or run it on every batch.
            let indices = sample_indices(input);
            let (taps, t) = match &self.tap_store {
                Some(store) => store.lookup(&indices, logits.device()),
                None => {
                    let mut taps = crate::models::Taps::only(&self.taps.teacher);
                    let t = self.teacher.model.infer_taps(input.images, &mut taps);
                    (taps, t)
                }
            };
            let t = self.calibrated(t.to_kind(logits.kind()));
            let x = LossInput {
                student_taps: Some(input.taps),
                teacher_taps: Some(&taps),
                indices: Some(&indices),
                draw_seed: draw_seed(input),
                guides,
                ..LossInput::logits(logits, &t, input.labels, (input.epoch + 1) as f64)
            };
            return Ok(self.method.terms(&x));
        }
        let t = match &self.cache {
            Some(Cached::Logits(c)) => {
                upload(&c.lookup(&input.batch.indices, &input.batch.views), logits.device()).to_kind(logits.kind())
            }
            Some(Cached::TopK(c)) => {
                // Streamed data: the loader draws the crops from the seed, and they must be the
                // recorded ones (decoded data replays the recorded views and has no crop boxes).
                c.check_crops(input.epoch, &input.batch.indices, &input.batch.crops)?;
                upload(&c.lookup(input.epoch, &input.batch.indices)?, logits.device()).to_kind(logits.kind())
            }
            None => self.teacher.model.infer(input.images),
        };
        let t = self.calibrated(t);
        let indices = sample_indices(input);
        let x = LossInput {
            student_taps: Some(input.taps),
            indices: Some(&indices),
            draw_seed: draw_seed(input),
            guides,
            ..LossInput::logits(logits, &t, input.labels, (input.epoch + 1) as f64)
        };
        Ok(self.method.terms(&x))
    }
    fn replay_views(&self, epoch: usize, augment: &Augment, shape: Shape) -> Result<Option<Vec<u32>>> {
        match &self.cache {
            Some(Cached::TopK(c)) => Ok(Some(c.view_ids(epoch, augment, shape)?)),
            _ => Ok(None),
        }
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "method": self.method.name(), "hyper": self.hyper })
    }
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        self.method.per_sample()
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        self.method.end_epoch()
    }
}

/// A distillation run's settings: the student's training configuration plus teacher, method and
/// the method's hyper-parameters. In TOML the student architecture is `student` (or `model`); the
/// method's keys live in their own namespace, the `[params]` table (`-p KEY=VALUE`), and may be
/// given flat (`tau = 4`) where no training key has the name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    pub train: TrainConfig,
    pub teacher: String,
    /// TAKD: an architecture trained by distillation from the teacher first, which then teaches;
    /// DGKD (a guided method): several, largest first (`assistant = "a,b"` or `["a", "b"]`), each
    /// taught by the teacher and the assistants above it (`train::takd`).
    #[serde(rename = "assistant", default, skip_serializing_if = "Vec::is_empty")]
    pub assistants: Vec<String>,
    /// The runs that guide this link beside the teacher (DGKD's trained assistants above it,
    /// largest first), set per link by the chain; empty for every other run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guides: Vec<String>,
    /// The method and its hyper-parameters (stored as `method` and `params`).
    #[serde(flatten)]
    pub method: MethodSpec,
    /// Read the teacher's outputs from a cache (built on first use) instead of running it: every
    /// view's logits (`true`), or the sampled crops with top-k logits (`"topk:K"`).
    #[serde(default)]
    pub teacher_cache: TeacherCache,
    /// A TorchScript teacher's input normalisation (`teacher_mean`, `teacher_std`), where it is
    /// not the data set's profile.
    #[serde(flatten)]
    pub teacher_norm: InputNorm,
    /// Temperature-scale the teacher: its logits divided by the one T that minimises its NLL on
    /// the validation split (`val_per_class`), for any method. Left out of the record when false,
    /// so configurations written before it read back the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub teacher_calibrate: bool,
}

/// The keys a distillation config accepts besides the training keys.
pub const DISTILL_KEYS: [&str; 9] = [
    "student",
    "teacher",
    "assistant",
    "method",
    "teacher_cache",
    "params",
    "teacher_mean",
    "teacher_std",
    "teacher_calibrate",
];

impl DistillConfig {
    /// Splits a merged table (file overlaid with flags) into its parts, refusing unknown keys with
    /// a suggestion drawn from every valid key.
    pub fn from_table(mut table: toml::Table, origin: &str) -> Result<DistillConfig> {
        let mut allowed: Vec<String> = config::keys_of(&TrainConfig::default());
        allowed.extend(DISTILL_KEYS.iter().chain(methods::all_keys().iter()).map(|k| k.to_string()));
        for key in table.keys() {
            if !allowed.contains(key) {
                let hint = crate::util::text::did_you_mean(key, &allowed);
                bail!("{origin}: unknown key '{key}'{hint}; valid keys: {}", allowed.join(", "));
            }
        }
        if let Some(s) = table.remove("student") {
            if table.get("model").is_some_and(|m| *m != s) {
                bail!("{origin}: 'student' and 'model' name different architectures; give one");
            }
            table.insert("model".into(), s);
        }
        let teacher_cache = match table.remove("teacher_cache") {
            None => TeacherCache::Off,
            Some(v) => TeacherCache::from_toml(&v, "teacher_cache", origin)?,
        };
        let mut take_floats = |k: &str| -> Result<Option<Vec<f64>>> {
            let as_f64 = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            match table.remove(k) {
                None => Ok(None),
                Some(toml::Value::Array(a)) if !a.is_empty() && a.iter().all(|v| as_f64(v).is_some()) => {
                    Ok(Some(a.iter().filter_map(as_f64).collect()))
                }
                Some(v) if as_f64(&v).is_some() => Ok(as_f64(&v).map(|x| vec![x])),
                Some(v) => {
                    bail!("{origin}: key '{k}' should be a number or a list of numbers (one per channel), found {v}")
                }
            }
        };
        let teacher_norm = InputNorm { mean: take_floats("teacher_mean")?, std: take_floats("teacher_std")? };
        let teacher_calibrate = match table.remove("teacher_calibrate") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(v) => bail!("{origin}: key 'teacher_calibrate' should be true or false, found {v}"),
        };
        let assistants = match table.remove("assistant") {
            None => vec![],
            Some(toml::Value::String(s)) => s.split(',').map(|a| a.trim().to_string()).collect(),
            Some(toml::Value::Array(a)) if a.iter().all(|v| v.is_str()) => {
                a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
            }
            Some(v) => bail!("{origin}: key 'assistant' should be an architecture or a list of them, found {v}"),
        };
        let mut take_str = |k: &str| -> Result<Option<String>> {
            match table.remove(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(v) => bail!("{origin}: key '{k}' should be a string, found {v}"),
            }
        };
        let teacher = take_str("teacher")?;
        let method = take_str("method")?.unwrap_or_else(|| "kd".into());
        let params = method_params(&mut table, origin)?;
        let train: TrainConfig = config::from_table(table, origin)?;
        let Some(teacher) = teacher else {
            bail!("{origin}: no teacher given (--teacher runs/NAME, optionally @epochN for an early-stopped teacher)")
        };
        let method = MethodSpec::parse(&method, params).map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
        let cfg = DistillConfig {
            train,
            teacher,
            assistants,
            guides: vec![],
            method,
            teacher_cache,
            teacher_norm,
            teacher_calibrate,
        };
        cfg.validate().map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if let TeacherCache::TopK(k) = self.teacher_cache {
            check_topk(&self.method, k)?;
        }
        takd::check(self.method.name(), self.method.entry().guided, &self.assistants)?;
        for a in &self.assistants {
            crate::models::parse(a)?;
        }
        Ok(())
    }

    /// The configuration of one link of an assistant chain (`train::takd`): the link's
    /// architecture with the student's training settings, distilled from `teacher` (guided
    /// besides by the runs `guides`, DGKD) with this method. A link taught by the trained
    /// assistant reads a kdlab run, so the chain teacher's input normalisation and calibration do
    /// not carry over.
    pub(crate) fn link_config(&self, link: &takd::Link, teacher: &str, guides: &[String]) -> DistillConfig {
        let mut cfg = DistillConfig {
            train: TrainConfig { model: link.model.clone(), ..self.train.clone() },
            teacher: teacher.to_string(),
            assistants: vec![],
            guides: guides.to_vec(),
            ..self.clone()
        };
        if !link.taught_by.keeps_teacher_settings() {
            cfg.teacher_norm = InputNorm::default();
            cfg.teacher_calibrate = false;
        }
        cfg
    }
}

/// Takes the method's hyper-parameters out of a merged table: the `params` table (`-p`, the
/// per-key flags, or `[params]` in a file), and the flat keys some method takes that are not
/// training keys. A training key is always the training configuration's: a method key of the
/// same name (DIST's `gamma`) is given in `params`. A key given both ways is an error.
fn method_params(table: &mut toml::Table, origin: &str) -> Result<methods::Table> {
    let mut params = match table.remove("params") {
        None => methods::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(v) => bail!("{origin}: 'params' should be a table of the method's hyper-parameters, found {v}"),
    };
    let train_keys = config::keys_of(&TrainConfig::default());
    let flat: Vec<String> = table
        .keys()
        .filter(|k| !train_keys.contains(k) && methods::all_keys().contains(&k.as_str()))
        .cloned()
        .collect();
    for k in flat {
        let v = table.remove(&k).expect("listed");
        if params.contains_key(&k) {
            bail!(
                "{origin}: the hyper-parameter '{k}' is given twice, flat and in [params] (or by --{} and -p)",
                k.replace('_', "-")
            );
        }
        params.insert(k, v);
    }
    Ok(params)
}

/// Distils `cfg.train.model` from the teacher `teacher_spec` into `out`.
pub fn run(
    cfg: &DistillConfig,
    teacher_spec: &str,
    out: &Path,
    device: tch::Device,
    quiet: bool,
    trace_steps: usize,
    extra: serde_json::Value,
) -> Result<Outcome> {
    let data = cfg.train.load_data()?;
    let teacher = Teacher::open(teacher_spec, device, &data, &cfg.teacher_norm)?;
    if teacher.model.input() != data.shape() || teacher.model.classes() != data.classes {
        bail!(
            "teacher {teacher_spec} takes {} inputs with {} classes, but the student's data {} has {} with {}",
            teacher.model.input(),
            teacher.model.classes(),
            data.name,
            data.shape(),
            data.classes
        );
    }
    let mut record = serde_json::json!({ "teacher": teacher.record() });
    if let (Some(o), serde_json::Value::Object(e)) = (record.as_object_mut(), extra) {
        o.extend(e);
    }
    if !quiet {
        println!(
            "distil {} from {} ({}) with {} into {}",
            cfg.train.model,
            teacher_spec,
            teacher.describe(),
            cfg.method.name(),
            out.display()
        );
    }
    if cfg.teacher_cache == TeacherCache::Logits && data.stream.is_some() {
        bail!(
            "--teacher-cache stores the teacher's logits for discrete views, and {} (transform=imagenet) has continuous views (random-resized crops): use --teacher-cache topk:K, which records each epoch's crops, or leave --teacher-cache out to run the teacher on each batch",
            data.name
        );
    }
    let dir = teacher.cache_dir();
    let teacher_cache = if cfg.method.taps().teacher.is_empty() { cfg.teacher_cache } else { TeacherCache::Off };
    let cache = match teacher_cache {
        TeacherCache::Off => None,
        TeacherCache::Logits => Some(Cached::Logits(super::cache::open_or_build(
            &dir,
            &teacher.model,
            &teacher.meta,
            &data,
            cfg.train.augment,
            quiet,
        )?)),
        TeacherCache::TopK(k) => {
            check_topk(&cfg.method, k)?;
            let req = topk_cache::Request {
                meta: &teacher.meta,
                data: &data,
                augment: cfg.train.augment,
                seed: cfg.train.seed,
                epochs: cfg.train.epochs,
                k,
            };
            Some(Cached::TopK(topk_cache::open_or_build(&dir, &teacher.model, &req, quiet)?))
        }
    };
    let described = match &cache {
        None => None,
        Some(Cached::Logits(c)) => {
            Some(serde_json::json!({"file": c.path.display().to_string(), "views": c.header.views}))
        }
        Some(Cached::TopK(c)) => {
            Some(serde_json::json!({"file": c.path.display().to_string(), "mode": cfg.teacher_cache,
            "k": c.header.k, "epochs": c.header.epochs, "seed": c.header.seed, "fill_tau": c.header.fill_tau}))
        }
    };
    if let (Some(o), Some(d)) = (record.as_object_mut(), described) {
        o.insert("teacher_cache".into(), d);
    }
    let (tap_store, served) = serve_taps(cfg, &teacher, &data, quiet)?;
    if let (Some(o), Some(served)) = (record.as_object_mut(), served) {
        o.insert("teacher_cache".into(), served.into());
    }
    let teacher_temperature = if cfg.teacher_calibrate {
        let t = calibrated_temperature(&teacher, &data)?;
        if !quiet {
            println!("teacher calibrated on the validation split: T = {t:.4}");
        }
        if let Some(o) = record.as_object_mut() {
            o.insert("teacher_temperature".into(), serde_json::json!(t));
        }
        Some(t)
    } else {
        None
    };
    let guides = open_guides(cfg, &data, device, &mut record)?;
    let mut objective =
        Distill { teacher_temperature, tap_store, guides, ..Distill::new(teacher, &cfg.method, cache)? };
    let opts = RunOptions { extra: record, quiet, trace_steps, ..RunOptions::new(out, device, "distill") };
    trainer::train(&cfg.train, &data, &mut objective, &opts)
}

/// Opens a guided method's other guides (`DistillConfig::guides`: kdlab runs, read as they are,
/// run on every batch) and records them in run.json (`guides`).
fn open_guides(
    cfg: &DistillConfig,
    data: &crate::data::Dataset,
    device: tch::Device,
    record: &mut serde_json::Value,
) -> Result<Vec<Teacher>> {
    if cfg.guides.is_empty() {
        return Ok(vec![]);
    }
    if !cfg.method.entry().guided {
        bail!("method '{}' learns from one teacher; it takes no guides", cfg.method.name());
    }
    let mut guides = vec![];
    for spec in &cfg.guides {
        let g = Teacher::open(spec, device, data, &InputNorm::default())?;
        if g.model.input() != data.shape() || g.model.classes() != data.classes {
            bail!(
                "guide {spec} takes {} inputs with {} classes, but the student's data {} has {} with {}",
                g.model.input(),
                g.model.classes(),
                data.name,
                data.shape(),
                data.classes
            );
        }
        guides.push(g);
    }
    record["guides"] = guides.iter().map(Teacher::record).collect();
    Ok(guides)
}

/// How a feature method is served the teacher's taps: from a store filled once before training
/// where the run caches the teacher (`teacher_cache = true`) and the transfer set has one view per
/// image, live otherwise; with the line run.json records. A top-k cache or none keeps them live.
fn serve_taps(
    cfg: &DistillConfig,
    teacher: &Teacher,
    data: &crate::data::Dataset,
    quiet: bool,
) -> Result<(Option<TapStore>, Option<String>)> {
    let need = &cfg.method.taps().teacher;
    if need.is_empty() {
        return Ok((None, None));
    }
    let live = |why: &str| Ok((None, Some(format!("the teacher's taps served live: {why}"))));
    if cfg.teacher_cache != TeacherCache::Logits {
        return Ok((None, None));
    }
    if cfg.train.augment || data.stream.is_some() {
        return live("the transfer set is augmented (a view per step, not one per image)");
    }
    let shapes = teacher.model.tap_shapes();
    if !need.iter().all(|n| shapes.iter().any(|(s, _)| s == n)) {
        return Ok((None, None)); // the method's setup refuses the teacher, naming the tap
    }
    let bytes = tap_store::bytes(&shapes, need, data.train.len());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    if bytes > tap_store::LIMIT_BYTES {
        return live(&format!(
            "the store would take {:.0} MiB (limit {:.0} MiB)",
            mib(bytes),
            mib(tap_store::LIMIT_BYTES)
        ));
    }
    let store = TapStore::build(&teacher.model, data, need)?;
    let line =
        format!("the teacher's taps in memory ({}, logits: {:.1} MiB, filled once)", need.join(", "), mib(bytes));
    if !quiet {
        println!("{line}");
    }
    Ok((Some(store), Some(line)))
}

/// The temperature that calibrates `teacher` on `data`'s validation split (see [`super::calibrate`]).
pub(crate) fn calibrated_temperature(teacher: &Teacher, data: &crate::data::Dataset) -> Result<f64> {
    let Some(val) = &data.val else {
        bail!("teacher_calibrate fits the teacher's temperature on the validation split, and {} has none: set val_per_class", data.name)
    };
    let logits = super::eval::logits_feed(&teacher.model, data.feed("val", false)?)?;
    let labels: Vec<i64> = val.labels.iter().map(|&y| y as i64).collect();
    super::calibrate::fit_temperature(&logits, &labels, data.classes)
        .map_err(|e| anyhow::anyhow!("calibrating the teacher {}: {e:#}", teacher.spec))
}
