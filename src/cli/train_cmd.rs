//! `kdlab train`, `kdlab eval`, `kdlab logits`.
use super::Runtime;
use crate::data::{self, npy};
use crate::train::checkpoint;
use crate::train::config::{self, TrainConfig};
use crate::train::eval;
use crate::train::objective::CrossEntropy;
use crate::train::run::run_data;
use crate::train::schedule::Schedule;
use crate::train::teacher;
use crate::train::trainer::{self, RunOptions};
use crate::util::fmt;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Every key of the training configuration as a flag; a flag overrides the same key in --config.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigFlags {
    /// TOML file with any of the keys below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Architecture (`kdlab models` lists them).
    #[arg(long)]
    pub model: Option<String>,
    /// Data set: fashion-mnist-mini (embedded), fashion-mnist, mnist, cifar10, cifar100, a directory
    /// (IDX or CIFAR files), or an image folder DIR[:size=HxW,channels=1|3,bad=skip,flip=true,pad=N,cache=off].
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub nesterov: Option<bool>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Epochs after which the rate is multiplied by gamma, e.g. 150,180,210.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// The step schedule's decay factor. (kdlab distill --method dist: DIST's intra-class weight
    /// γ, unless -p gamma=… gives that.)
    #[arg(long)]
    pub gamma: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Scale each step's gradient down to this global L2 norm when larger (0: never).
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Mixed precision of the forward pass: off, bf16 or fp16 (fp16 with loss scaling); weights,
    /// losses and evaluation stay float32.
    #[arg(long, value_enum)]
    pub amp: Option<crate::train::amp::Amp>,
    /// The optimiser: sgd, or dot (the Distillation-Oriented Trainer, Zhao et al., ICCV 2023: the
    /// task term ce and the distillation terms each with its own momentum, momentum ∓ dot_delta).
    #[arg(long, value_enum)]
    pub optimizer: Option<crate::train::sgd::Optimizer>,
    /// DOT's Δ (default 0.075, the authors' CIFAR-100 setting).
    #[arg(long)]
    pub dot_delta: Option<f64>,
    /// Random crops and flips (true/false).
    #[arg(long)]
    pub augment: Option<bool>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep a checkpoint every N epochs (0: only last and best).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Train on N images per class (a class-balanced subset; 0: all). The test set stays whole.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Hold N images per class out of the training images as a validation split (0: none).
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Seed of the subset and validation draws (default 0, whatever --seed is).
    #[arg(long)]
    pub subset_seed: Option<u64>,
}

impl ConfigFlags {
    /// The flags that were given, as TOML values keyed like the config file.
    pub fn overrides(&self) -> toml::Table {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                t.insert(k.to_string(), v);
            }
        };
        put("model", self.model.clone().map(toml::Value::String));
        put("data", self.data.clone().map(toml::Value::String));
        put("epochs", self.epochs.map(|v| toml::Value::Integer(v as i64)));
        put("batch_size", self.batch_size.map(|v| toml::Value::Integer(v as i64)));
        put("lr", self.lr.map(toml::Value::Float));
        put("momentum", self.momentum.map(toml::Value::Float));
        put("nesterov", self.nesterov.map(toml::Value::Boolean));
        put("weight_decay", self.weight_decay.map(toml::Value::Float));
        put("schedule", self.schedule.map(|s| toml::Value::try_from(s).expect("schedule serialises")));
        put(
            "milestones",
            self.milestones
                .clone()
                .map(|m| toml::Value::Array(m.into_iter().map(|v| toml::Value::Integer(v as i64)).collect())),
        );
        put("gamma", self.gamma.map(toml::Value::Float));
        put("warmup_epochs", self.warmup_epochs.map(|v| toml::Value::Integer(v as i64)));
        put("clip_grad_norm", self.clip_grad_norm.map(toml::Value::Float));
        put("amp", self.amp.map(|a| toml::Value::String(a.as_str().into())));
        put("optimizer", self.optimizer.map(|o| toml::Value::String(o.as_str().into())));
        put("dot_delta", self.dot_delta.map(toml::Value::Float));
        put("augment", self.augment.map(toml::Value::Boolean));
        put("seed", self.seed.map(|v| toml::Value::Integer(v as i64)));
        put("save_every", self.save_every.map(|v| toml::Value::Integer(v as i64)));
        put("train_subset", self.train_subset.map(|v| toml::Value::Integer(v as i64)));
        put("val_per_class", self.val_per_class.map(|v| toml::Value::Integer(v as i64)));
        put("subset_seed", self.subset_seed.map(|v| toml::Value::Integer(v as i64)));
        t
    }

    /// The config file overlaid with the flags, validated.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let origin = self.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
        let mut table = config::read_table(self.config.as_deref())?;
        table.extend(self.overrides());
        let cfg: TrainConfig = config::from_table(table, &origin)?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
        Ok(cfg)
    }
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub cfg: ConfigFlags,
    /// Run directory (default: runs/<model>-s<seed>). Started again, an unfinished run resumes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// Write steps.csv with the loss, the gradient norm and the rate of the first N steps.
    #[arg(long, default_value_t = 0)]
    pub trace_steps: usize,
    #[command(flatten)]
    pub rt: Runtime,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let cfg = a.cfg.resolve()?;
    let device = a.rt.init()?;
    let out = a.out.unwrap_or_else(|| PathBuf::from(format!("runs/{}-s{}", cfg.model, cfg.seed)));
    let data = cfg.load_data()?;
    println!(
        "train {} on {} ({} train / {} test, {}, {} classes) for {} epochs on {} → {}",
        cfg.model,
        data.name,
        data.train.len(),
        data.test.len(),
        data.shape(),
        data.classes,
        cfg.epochs,
        crate::util::device::describe(device),
        out.display()
    );
    let opts = RunOptions { quiet: a.quiet, trace_steps: a.trace_steps, ..RunOptions::new(out, device, "train") };
    let r = trainer::train(&cfg, &data, &mut CrossEntropy, &opts)?;
    println!(
        "done: {} ({} params) final test accuracy {:.2}%, best {:.2}% at epoch {}, {} of training; {}",
        cfg.model,
        fmt::count(r.params),
        100.0 * r.final_test_acc,
        100.0 * r.best_test_acc,
        r.best_epoch,
        fmt::duration(r.wall_time_s),
        r.dir.display()
    );
    Ok(())
}

fn check_compatible(meta: &checkpoint::CheckpointMeta, ds: &data::Dataset) -> Result<()> {
    if meta.input != ds.shape() || meta.classes != ds.classes {
        bail!(
            "the model takes {} inputs with {} classes, but {} has {} inputs with {} classes",
            meta.input,
            meta.classes,
            ds.name,
            ds.shape(),
            ds.classes
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// Run directory, optionally @best, @last or @epochN (default: last).
    #[arg(long)]
    pub run: String,
    /// train or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Evaluate on this data set instead of the run's own.
    #[arg(long)]
    pub data: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rt: Runtime,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let device = a.rt.init()?;
    let (model, meta, json) = checkpoint::load_model(&a.run, device)?;
    let ds = run_data(&json, a.data.as_deref())?;
    check_compatible(&meta, &ds)?;
    let r = eval::evaluate_feed(&model, ds.feed(&a.split, false)?)?;
    if a.json {
        let per_class: Vec<serde_json::Value> = ds
            .class_names
            .iter()
            .zip(r.class_acc())
            .zip(&r.total_per_class)
            .map(|((n, acc), t)| serde_json::json!({"class": n, "accuracy": acc, "samples": t}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"run": a.run, "checkpoint": json, "epoch": meta.epoch, "split": a.split,
                "accuracy": r.acc, "loss": r.loss, "per_class": per_class})
        );
        return Ok(());
    }
    println!(
        "{} ({}, epoch {}) on {} {}: accuracy {:.2}%, loss {:.4}",
        a.run,
        meta.model,
        meta.epoch,
        ds.name,
        a.split,
        100.0 * r.acc,
        r.loss
    );
    let rows: Vec<Vec<String>> = ds
        .class_names
        .iter()
        .zip(r.class_acc())
        .zip(&r.total_per_class)
        .enumerate()
        .map(|(i, ((n, acc), t))| vec![format!("{i} {n}"), t.to_string(), format!("{:.2}%", 100.0 * acc)])
        .collect();
    print!("{}", fmt::table(&["class", "samples", "accuracy"], &rows));
    Ok(())
}

#[derive(Args)]
pub struct LogitsArgs {
    /// Run directory, optionally @best, @last or @epochN (default: last); or a TorchScript
    /// teacher file (with --data; a program that runs inside kdlab: use only files you trust).
    #[arg(long, alias = "teacher")]
    pub run: String,
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output .npy for the (N, C) float32 logits.
    #[arg(long)]
    pub out: PathBuf,
    /// Output .npy for the (N,) int64 labels (default: labels.npy beside --out).
    #[arg(long)]
    pub labels_out: Option<PathBuf>,
    /// The data set (default: the run's own; required for a TorchScript file).
    #[arg(long)]
    pub data: Option<String>,
    #[command(flatten)]
    pub norm: TeacherNormFlags,
    #[command(flatten)]
    pub rt: Runtime,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let device = a.rt.init()?;
    let ds = teacher::teacher_data(&a.run, a.data.as_deref())?;
    let t = teacher::Teacher::open(&a.run, device, &ds, &a.norm.norm())?;
    let (model, meta) = (&t.model, &t.meta);
    check_compatible(meta, &ds)?;
    let feed = ds.feed(&a.split, false)?;
    let n = feed.len();
    let labels: Vec<i64> = feed.labels().iter().map(|&y| y as i64).collect();
    let l = eval::logits_feed(model, feed)?;
    npy::write_f32(&a.out, &[n, meta.classes], &l)?;
    let labels_out = a.labels_out.unwrap_or_else(|| a.out.with_file_name("labels.npy"));
    npy::write_i64(&labels_out, &[n], &labels)?;
    println!("wrote {} ({n} x {} float32) and {} ({n} int64)", a.out.display(), meta.classes, labels_out.display());
    Ok(())
}

/// A TorchScript teacher's input normalisation, where it is not the data set's profile.
#[derive(Args, Clone, Debug, Default)]
pub struct TeacherNormFlags {
    /// A TorchScript teacher's per-channel input mean, of pixels scaled to [0, 1] (one value, or
    /// one per channel; with --teacher-std). Default: the data set's profile, which kdlab's own
    /// teachers see (CIFAR-100's is RepDistiller's 0.5071,0.4865,0.4409).
    #[arg(long, value_delimiter = ',', value_name = "MEAN,...")]
    pub teacher_mean: Option<Vec<f64>>,
    /// A TorchScript teacher's per-channel input standard deviation (with --teacher-mean).
    #[arg(long, value_delimiter = ',', value_name = "STD,...")]
    pub teacher_std: Option<Vec<f64>>,
}

impl TeacherNormFlags {
    pub fn norm(&self) -> crate::train::teacher::InputNorm {
        crate::train::teacher::InputNorm { mean: self.teacher_mean.clone(), std: self.teacher_std.clone() }
    }
}
