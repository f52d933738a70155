//! `kdlab train`, `kdlab eval`, `kdlab logits`.
use super::Runtime;
use crate::data::{self, npy};
use crate::train::checkpoint;
use crate::train::config::{self, TrainConfig};
use crate::train::eval;
use crate::train::objective::CrossEntropy;
use crate::train::run::run_data;
use crate::train::teacher;
use crate::train::trainer::{self, RunOptions};
use crate::util::fmt;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Every key of the training configuration as a flag, made from `TrainConfig` (its fields and
/// their comments): a flag overrides the same key in --config. Only the flags given are kept.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigFlags {
    /// TOML file with any of the training keys (flags override it).
    pub config: Option<PathBuf>,
    /// The training keys given as flags, as TOML values keyed like the config file.
    given: toml::Table,
}

const CONFIG_ID: &str = "config";

/// The training keys (`TrainConfig`'s fields, which are also the flags' ids).
fn training_keys() -> Vec<String> {
    config::keys_of(&TrainConfig::default())
}

impl clap::Args for ConfigFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.arg(
            clap::Arg::new(CONFIG_ID)
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML file with any of the training keys below (flags override it)"),
        );
        let mut cmd = <TrainConfig as clap::Args>::augment_args(cmd);
        // Every key has a default (or comes from --config): none is required on the command line.
        for key in training_keys() {
            cmd = cmd.mut_arg(key, |a| a.required(false));
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ConfigFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        let defaults = toml::Table::try_from(TrainConfig::default()).expect("config serialises");
        let mut given = toml::Table::new();
        for key in training_keys() {
            if m.value_source(&key) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let raw: Vec<String> =
                m.get_raw(&key).into_iter().flatten().map(|v| v.to_string_lossy().into_owned()).collect();
            // clap has checked each value against the field's type; `config::from_table` reads them.
            let value = if defaults.get(&key).is_some_and(toml::Value::is_array) {
                toml::Value::Array(raw.iter().map(|v| toml_value(v)).collect())
            } else {
                toml_value(raw.last().map_or("true", String::as_str))
            };
            given.insert(key, value);
        }
        Ok(ConfigFlags { config: m.get_one::<PathBuf>(CONFIG_ID).cloned(), given })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// A value as typed on the command line, read as TOML (`4`, `0.5`, `true`, `[1, 2]`); anything else
/// is a string (`step`, `order`).
pub(super) fn toml_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

impl ConfigFlags {
    /// The flags that were given, as TOML values keyed like the config file.
    pub fn overrides(&self) -> toml::Table {
        self.given.clone()
    }

    /// Whether training key `key` was given as a flag.
    pub fn has(&self, key: &str) -> bool {
        self.given.contains_key(key)
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
pub(crate) struct TrainArgs {
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
pub(crate) struct EvalArgs {
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
pub(crate) struct LogitsArgs {
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
pub(crate) struct TeacherNormFlags {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: ConfigFlags,
    }

    /// Each training key is a flag made from `TrainConfig`, and reaches the configuration: every
    /// value below differs from its default, so a key the flags missed would fail the comparison.
    #[test]
    fn every_training_key_is_a_flag_that_reaches_the_config() {
        let want = TrainConfig {
            model: "resnet20".into(),
            data: "fashion-mnist".into(),
            epochs: 12,
            batch_size: 32,
            lr: 0.2,
            momentum: 0.5,
            nesterov: true,
            weight_decay: 1e-3,
            schedule: crate::train::schedule::Schedule::Cosine,
            milestones: vec![3, 7],
            gamma: 0.5,
            warmup_epochs: 2,
            clip_grad_norm: 0.0,
            augment: false,
            seed: 9,
            save_every: 3,
            train_subset: 100,
            val_per_class: 10,
            subset_seed: 4,
            amp: crate::train::amp::Amp::Bf16,
            optimizer: crate::train::sgd::Optimizer::Dot,
            dot_delta: 0.05,
        };
        let (defaults, values) =
            (serde_json::to_value(TrainConfig::default()).unwrap(), serde_json::to_value(&want).unwrap());
        let mut args = vec!["kdlab".to_string()];
        for key in training_keys() {
            assert_ne!(defaults[&key], values[&key], "{key}: the test must give a value other than the default");
            args.push(format!("--{}", key.replace('_', "-")));
            args.push(match &values[&key] {
                serde_json::Value::Array(a) => a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            });
        }
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        // Read, not validated: no one configuration can differ from every default and be valid
        // (Nesterov momentum does not combine with DOT).
        assert_eq!(config::from_table::<TrainConfig>(cli.cfg.overrides(), "flags").unwrap(), want);
        // Flags not given overlay nothing on --config.
        assert!(Cli::try_parse_from(["kdlab"]).unwrap().cfg.overrides().is_empty());
        let e = Cli::try_parse_from(["kdlab", "--epochs", "x"]).err().unwrap().to_string();
        assert!(e.contains("--epochs"), "{e}");
    }
}
