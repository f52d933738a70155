//! Throughput benchmarks with the same flags and JSON keys as `shared/bench/pytorch_ref.py`, so
//! kdlab and PyTorch can be run alternately on the same machine and compared as a ratio.
use crate::data::Shape;
use crate::train::amp::{self, Amp, LossScaler};
use crate::train::model::Model;
use crate::train::objective::cross_entropy;
use crate::train::sgd::Sgd;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A training step: forward, cross-entropy, backward, SGD update.
    Train,
    /// Inference: forward in eval mode without gradients.
    Infer,
    /// A distillation step: the teacher's forward (eval, no gradient) plus the student's step.
    Kd,
}

#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub model: String,
    pub mode: Mode,
    pub teacher: Option<String>,
    pub batch: usize,
    pub input: Shape,
    pub classes: usize,
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
    pub seed: u64,
    /// Mixed precision of the forward pass (pytorch_ref.py's `--amp`).
    pub amp: Amp,
}

/// One benchmark's result, with the keys pytorch_ref.py prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub framework: String,
    pub threads: usize,
    pub model: String,
    pub teacher: Option<String>,
    pub mode: Mode,
    pub batch: usize,
    pub input: String,
    pub classes: usize,
    pub params: u64,
    pub img_per_s: f64,
    pub median_step_s: f64,
    pub min_step_s: f64,
    pub max_step_s: f64,
    pub peak_rss_mb: f64,
    pub losses: Vec<f64>,
    /// "off", "bf16" or "fp16" (results written before the key existed ran in float32).
    #[serde(default = "float32")]
    pub amp: String,
    /// Median seconds of each part of a training step (forward and loss, backward, optimiser;
    /// gradient zeroing counts with the optimiser), as `scripts/step_phases.py` measures PyTorch's.
    /// On a GPU the parts are queued, not run, so only their sum means anything there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<std::collections::BTreeMap<String, f64>>,
}

fn float32() -> String {
    "off".into()
}

/// Peak resident memory of this process so far, in MiB.
pub(crate) fn peak_rss_mb() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Runs the benchmark in this process.
pub fn run(spec: &BenchSpec, device: Device) -> Result<BenchResult> {
    if spec.mode == Mode::Kd && spec.teacher.is_none() {
        bail!("--mode kd needs --teacher");
    }
    tch::manual_seed(spec.seed as i64);
    let model = Model::new(&spec.model, spec.input, spec.classes, device, spec.seed)?;
    let teacher = match &spec.teacher {
        Some(t) if spec.mode == Mode::Kd => Some(Model::new(t, spec.input, spec.classes, device, spec.seed + 1)?),
        _ => None,
    };
    let dims = [spec.batch as i64, spec.input.c as i64, spec.input.h as i64, spec.input.w as i64];
    let x = Tensor::randn(dims, (Kind::Float, device));
    let y = Tensor::randint(spec.classes as i64, [spec.batch as i64], (Kind::Int64, device));
    let mut opt = Sgd::new(&model.vs, 0.9, false, 5e-4);
    let (mut times, mut losses) = (vec![], vec![]);
    let (mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![]);
    // As the trainer (and pytorch_ref.py's GradScaler): fp16 steps scale the loss.
    let mut scaler = (spec.amp == Amp::Fp16).then(LossScaler::default);
    for i in 0..spec.warmup + spec.steps {
        let t0 = Instant::now();
        match spec.mode {
            Mode::Infer => {
                let out = amp::forward(spec.amp, device, || model.infer(&x))?;
                let _ = out.sum(Kind::Float).double_value(&[]);
            }
            Mode::Train | Mode::Kd => {
                opt.zero_grad();
                let t_zero = t0.elapsed().as_secs_f64();
                let out = amp::forward(spec.amp, device, || model.forward_train(&x))?;
                let mut loss = cross_entropy(&out, &y);
                if let Some(t) = &teacher {
                    let t_out = t.infer(&x);
                    let tau = 4.0;
                    let kl = out.g_div_scalar(tau).log_softmax(1, Kind::Float).kl_div(
                        &t_out.g_div_scalar(tau).softmax(1, Kind::Float),
                        tch::Reduction::Sum,
                        false,
                    ) / spec.batch as f64;
                    loss = 0.1 * loss + 0.9 * tau * tau * kl;
                }
                let t_fwd = t0.elapsed().as_secs_f64();
                let update = amp::backward(&loss, scaler.as_mut(), || opt.grads());
                let t_bwd = t0.elapsed().as_secs_f64();
                if update {
                    opt.step(0.05);
                }
                if i >= spec.warmup {
                    let t_end = t0.elapsed().as_secs_f64();
                    fwd.push(t_fwd - t_zero);
                    bwd.push(t_bwd - t_fwd);
                    upd.push(t_end - t_bwd + t_zero);
                }
                losses.push((loss.double_value(&[]) * 1e4).round() / 1e4);
            }
        }
        if i >= spec.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let med = median(&mut times.clone());
    Ok(BenchResult {
        framework: format!("kdlab-{} (tch 0.24, libtorch 2.11.0)", crate::VERSION),
        threads: spec.threads,
        model: spec.model.clone(),
        teacher: spec.teacher.clone(),
        mode: spec.mode,
        batch: spec.batch,
        input: spec.input.to_string(),
        classes: spec.classes,
        params: model.params(),
        img_per_s: spec.batch as f64 / med,
        median_step_s: med,
        min_step_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        max_step_s: times.iter().copied().fold(0.0, f64::max),
        peak_rss_mb: peak_rss_mb(),
        losses,
        amp: spec.amp.as_str().into(),
        phases: (!fwd.is_empty()).then(|| {
            [("forward", &mut fwd), ("backward", &mut bwd), ("optimizer", &mut upd)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), median(v)))
                .collect()
        }),
    })
}

/// The command-line flags that reproduce `spec` (for this binary and for pytorch_ref.py alike).
pub fn flags(spec: &BenchSpec) -> Vec<String> {
    let mode = match spec.mode {
        Mode::Train => "train",
        Mode::Infer => "infer",
        Mode::Kd => "kd",
    };
    let mut v: Vec<String> = vec![
        "--model".into(),
        spec.model.clone(),
        "--mode".into(),
        mode.into(),
        "--batch".into(),
        spec.batch.to_string(),
        "--input".into(),
        spec.input.to_string(),
        "--classes".into(),
        spec.classes.to_string(),
        "--steps".into(),
        spec.steps.to_string(),
        "--warmup".into(),
        spec.warmup.to_string(),
        "--threads".into(),
        spec.threads.to_string(),
        "--seed".into(),
        spec.seed.to_string(),
    ];
    if let Some(t) = &spec.teacher {
        v.extend(["--teacher".into(), t.clone()]);
    }
    if spec.amp != Amp::Off {
        v.extend(["--amp".into(), spec.amp.as_str().into()]);
    }
    v
}

/// Runs a command that prints one JSON result line, and parses it.
pub(crate) fn run_child(program: &Path, pre_args: &[String], spec: &BenchSpec) -> Result<BenchResult> {
    let out = Command::new(program)
        .args(pre_args)
        .args(flags(spec))
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON line in the output")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}
