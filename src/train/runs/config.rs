//! Run configuration: a TOML file and command-line flags merged into one validated struct. Unknown
//! keys are an error that names them (and suggests the nearest valid key), wrong types name the key
//! and the file, and out-of-range values say what range is allowed.
use crate::train::schedule::Schedule;
pub use crate::util::text::nearest;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A run's training settings. Each field is a key of a config file and, through `clap::Args`,
/// a flag of `kdlab train` and `kdlab distill` (`batch_size` is `--batch-size`) whose help is the
/// field's comment: the keys are listed once, here. The CLI reads only the flags given
/// (`cli::train_cmd::ConfigFlags`) and overlays them on the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct TrainConfig {
    /// Architecture (`kdlab models` lists them).
    #[arg(long)]
    pub model: String,
    /// Data set: fashion-mnist-mini (embedded), fashion-mnist, mnist, cifar10, cifar100, a
    /// directory (IDX or CIFAR files), or an image folder
    /// DIR[:size=HxW,channels=1|3,bad=skip,flip=true,pad=N,cache=off].
    #[arg(long)]
    pub data: String,
    /// Epochs to train.
    #[arg(long)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long)]
    pub batch_size: usize,
    /// Base learning rate.
    #[arg(long)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: f64,
    /// Nesterov momentum (true/false).
    #[arg(long, action = clap::ArgAction::Set)]
    pub nesterov: bool,
    /// L2 weight decay (on every parameter).
    #[arg(long)]
    pub weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    pub schedule: Schedule,
    /// Epochs after which the rate is multiplied by `gamma` (step schedule), e.g. 150,180,210;
    /// empty = 62.5%, 75% and 87.5% of `epochs`.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<usize>,
    /// The step schedule's decay factor. (A method's key of the same name, DIST's γ, is given
    /// with -p gamma=….)
    #[arg(long)]
    pub gamma: f64,
    /// Epochs of linear warm-up of the rate.
    #[arg(long)]
    pub warmup_epochs: usize,
    /// Scale each step's gradient down to this global L2 norm when it is larger (0: never).
    #[arg(long)]
    pub clip_grad_norm: f64,
    /// Random crops and flips with the data set's defaults (true/false).
    #[arg(long, action = clap::ArgAction::Set)]
    pub augment: bool,
    /// Seed of the weights' initialisation and the batch order.
    #[arg(long)]
    pub seed: u64,
    /// Keep a checkpoint every this many epochs (0: only `last` and `best`).
    #[arg(long)]
    pub save_every: usize,
    /// Train on this many images per class (0: all), a class-balanced subset drawn with
    /// `subset_seed`; the test set stays whole. Teachers and students given the same subset
    /// settings see the same images, so the students' transfer set is the teachers' training set.
    #[arg(long)]
    pub train_subset: usize,
    /// Hold this many images per class out of the training images as a validation split (0: none),
    /// evaluated every epoch (`val_acc`) for choosing hyper-parameters without the test set.
    #[arg(long)]
    pub val_per_class: usize,
    /// Seed of the subset and validation draws (independent of `seed`, so every seed of a study
    /// trains on the same images).
    #[arg(long)]
    pub subset_seed: u64,
    /// Mixed precision of the forward pass: off, bf16 or fp16 (fp16 with loss scaling); weights,
    /// losses and evaluation stay float32 (`src/train/engine/amp.rs`).
    #[arg(long, value_enum)]
    pub amp: crate::train::amp::Amp,
    /// The optimiser: sgd, or dot (the Distillation-Oriented Trainer, Zhao et al., ICCV 2023: the
    /// task term `ce` and the distillation terms each with its own momentum, momentum ∓ dot_delta;
    /// `src/train/engine/sgd.rs`).
    #[arg(long, value_enum)]
    pub optimizer: crate::train::sgd::Optimizer,
    /// DOT's Δ (default 0.075, the authors' CIFAR-100 setting; read only with optimizer = dot).
    #[arg(long)]
    pub dot_delta: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: String::new(),
            data: crate::data::embedded::NAME.to_string(),
            epochs: 30,
            batch_size: 128,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: Schedule::Step,
            milestones: vec![],
            gamma: 0.1,
            warmup_epochs: 0,
            clip_grad_norm: 5.0,
            augment: true,
            seed: 0,
            save_every: 5,
            train_subset: 0,
            val_per_class: 0,
            subset_seed: 0,
            amp: crate::train::amp::Amp::Off,
            optimizer: crate::train::sgd::Optimizer::Sgd,
            dot_delta: crate::train::sgd::DOT_DELTA,
        }
    }
}

impl TrainConfig {
    /// Checks every value's range, naming the key.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.model.is_empty() {
            bail!("no model given: set `model` (e.g. --model resnet20; `kdlab models` lists them)");
        }
        crate::models::parse(&self.model)?;
        check(self.epochs >= 1, "epochs", "must be at least 1")?;
        check(self.batch_size >= 2, "batch_size", "must be at least 2 (BatchNorm needs two samples)")?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", "must be a positive number")?;
        check((0.0..1.0).contains(&self.momentum), "momentum", "must be in [0, 1)")?;
        check(!self.nesterov || self.momentum > 0.0, "nesterov", "needs momentum > 0")?;
        check(self.weight_decay >= 0.0 && self.weight_decay.is_finite(), "weight_decay", "must be ≥ 0")?;
        check(self.gamma > 0.0 && self.gamma <= 1.0, "gamma", "must be in (0, 1]")?;
        check(self.warmup_epochs < self.epochs, "warmup_epochs", "must be less than epochs")?;
        check(
            self.clip_grad_norm >= 0.0 && self.clip_grad_norm.is_finite(),
            "clip_grad_norm",
            "must be ≥ 0 (0: no clipping)",
        )?;
        check(self.dot_delta >= 0.0 && self.dot_delta.is_finite(), "dot_delta", "must be ≥ 0")?;
        if self.optimizer == crate::train::sgd::Optimizer::Dot {
            check(!self.nesterov, "nesterov", "is not defined for optimizer = \"dot\"")?;
            check(
                self.dot_delta <= self.momentum && self.momentum + self.dot_delta < 1.0,
                "dot_delta",
                "must keep both of DOT's momenta, momentum − dot_delta and momentum + dot_delta, in [0, 1)",
            )?;
        }
        if let Some(m) = self.milestones.iter().find(|&&m| m == 0 || m >= self.epochs) {
            bail!("milestones: {m} is outside 1..{} (epochs = {})", self.epochs - 1, self.epochs);
        }
        if self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            bail!("milestones: {:?} must be increasing", self.milestones);
        }
        Ok(())
    }

    /// The run's data: the data set `data` with its training subset and validation split carved.
    pub fn load_data(&self) -> Result<crate::data::Dataset> {
        self.carve(crate::data::source::load(&self.data)?)
    }

    /// `data` carved as this configuration says (see `Dataset::carve`).
    pub fn carve(&self, data: crate::data::Dataset) -> Result<crate::data::Dataset> {
        data.carve(self.train_subset, self.val_per_class, self.subset_seed)
    }

    /// The configuration as it identifies a run (study ids, the resume check): the keys added after
    /// the first runs were recorded (`ADDED_KEYS`) are left out while they are 0, their "off"
    /// value, so runs recorded before those keys existed keep their identity.
    pub fn identity(&self) -> serde_json::Value {
        identity_of(serde_json::to_value(self).expect("config serialises"))
    }

    /// The milestones in effect (the defaults when none are given).
    pub(crate) fn effective_milestones(&self) -> Vec<usize> {
        if self.milestones.is_empty() {
            crate::train::schedule::LrSchedule::default_milestones(self.epochs)
        } else {
            self.milestones.clone()
        }
    }

    pub(crate) fn lr_schedule(&self) -> crate::train::schedule::LrSchedule {
        crate::train::schedule::LrSchedule {
            base: self.lr,
            kind: self.schedule,
            milestones: self.effective_milestones(),
            gamma: self.gamma,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
        }
    }
}

/// The keys that carve a data set into a training subset and a validation split.
pub(crate) const CARVING_KEYS: [&str; 3] = ["train_subset", "val_per_class", "subset_seed"];

/// Keys added to `TrainConfig` after runs had been recorded without them; 0 is their "off" value.
/// (The carving keys, and the training keys added after them.)
pub(crate) const ADDED_KEYS: [&str; 4] = {
    let [a, b, c] = CARVING_KEYS;
    [a, b, c, "clip_grad_norm"]
};

/// See [`TrainConfig::identity`]; also applied to configurations read back from run records.
pub fn identity_of(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        for key in ADDED_KEYS {
            if o.get(key).and_then(serde_json::Value::as_f64) == Some(0.0) {
                o.remove(key);
            }
        }
        // `amp` came later still; "off" is the float32 every earlier run trained in.
        if o.get("amp").and_then(serde_json::Value::as_str) == Some("off") {
            o.remove("amp");
        }
        // `optimizer` later again: "sgd" is what every earlier run trained with, and DOT's Δ means
        // nothing without DOT (so an SGD run's id does not depend on it).
        if o.get("optimizer").and_then(serde_json::Value::as_str).is_none_or(|v| v == "sgd") {
            o.remove("optimizer");
            o.remove("dot_delta");
        }
    }
    v
}

pub fn check(ok: bool, key: &str, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("{key} {what}")
    }
}

/// Reads a TOML file into a table (an empty table when `path` is None).
pub(crate) fn read_table(path: Option<&Path>) -> Result<toml::Table> {
    let Some(path) = path else { return Ok(toml::Table::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    text.parse::<toml::Table>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Builds `T` from a table: unknown keys are refused with a suggestion, each value is checked for
/// its type under its own name. `origin` names the source (a file, or "command line").
pub fn from_table<T: DeserializeOwned + Serialize + Default>(table: toml::Table, origin: &str) -> Result<T> {
    let allowed = keys_of(&T::default());
    for key in table.keys() {
        if !allowed.iter().any(|a| a == key) {
            let hint = crate::util::text::did_you_mean(key, &allowed);
            bail!("{origin}: unknown key '{key}'{hint}; valid keys: {}", allowed.join(", "));
        }
    }
    // Check each value on its own against the default's type, so the error names the key.
    let defaults = toml::Table::try_from(T::default()).expect("config serialises");
    for (key, value) in &table {
        if let Some(default) = defaults.get(key) {
            if !same_type(default, value) {
                bail!("{origin}: key '{key}' should be {}, found {} ({value})", type_name(default), type_name(value));
            }
        }
    }
    let mut merged = defaults;
    merged.extend(table);
    toml::Value::Table(merged).try_into::<T>().map_err(|e| anyhow::anyhow!("{origin}: {e}"))
}

/// The top-level keys a config type accepts.
pub fn keys_of<T: Serialize>(value: &T) -> Vec<String> {
    toml::Table::try_from(value).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

fn same_type(default: &toml::Value, value: &toml::Value) -> bool {
    use toml::Value::*;
    match (default, value) {
        (Float(_), Integer(_)) => true, // `lr = 1` means 1.0
        (Array(d), Array(v)) => d.first().is_none_or(|d0| v.iter().all(|x| same_type(d0, x))),
        (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn reads_values_and_keeps_defaults() {
        let c: TrainConfig =
            from_table(table("model = 'resnet8'\nlr = 1\nmilestones = [5, 8]\nschedule = 'cosine'"), "t.toml").unwrap();
        assert_eq!(c.model, "resnet8");
        assert_eq!(c.lr, 1.0);
        assert_eq!(c.milestones, vec![5, 8]);
        assert_eq!(c.schedule, Schedule::Cosine);
        assert_eq!(c.batch_size, 128);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = format!("{:#}", from_table::<TrainConfig>(table("lrr = 0.1"), "run.toml").unwrap_err());
        assert!(e.contains("run.toml") && e.contains("'lrr'") && e.contains("did you mean 'lr'"), "{e}");
        let e = format!("{:#}", from_table::<TrainConfig>(table("epochs = 'ten'"), "run.toml").unwrap_err());
        assert!(e.contains("'epochs'") && e.contains("an integer"), "{e}");
        let e = format!("{:#}", from_table::<TrainConfig>(table("schedule = 'linear'"), "run.toml").unwrap_err());
        assert!(e.contains("linear"), "{e}");
    }

    /// `optimizer` and `dot_delta` came after runs were recorded: a record without them reads back
    /// as SGD with the same identity, an SGD run's id ignores Δ, and a DOT run's id names both.
    #[test]
    fn the_optimizer_keys_leave_earlier_identities_alone() {
        let base = TrainConfig { model: "resnet8".into(), ..Default::default() };
        let mut old = serde_json::to_value(&base).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "optimizer" && k != "dot_delta");
        let read: TrainConfig = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(read, base);
        assert_eq!(identity_of(old), base.identity());
        assert!(base.identity().get("optimizer").is_none() && base.identity().get("dot_delta").is_none());
        let sgd_other_delta = TrainConfig { dot_delta: 0.2, ..base.clone() };
        assert_eq!(sgd_other_delta.identity(), base.identity());
        let dot = TrainConfig { optimizer: crate::train::sgd::Optimizer::Dot, ..base.clone() };
        assert_eq!(dot.identity()["optimizer"], "dot");
        assert_eq!(dot.identity()["dot_delta"], 0.075);
        let dot2 = TrainConfig { dot_delta: 0.05, ..dot.clone() };
        assert_ne!(dot.identity(), base.identity());
        assert_ne!(dot.identity(), dot2.identity());
        let c: TrainConfig = from_table(table("model = 'resnet8'\noptimizer = 'dot'\ndot_delta = 0.09"), "t").unwrap();
        assert_eq!((c.optimizer, c.dot_delta), (crate::train::sgd::Optimizer::Dot, 0.09));
        let e = format!("{:#}", from_table::<TrainConfig>(table("optimizer = 'adam'"), "t").unwrap_err());
        assert!(e.contains("adam"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = TrainConfig { model: "resnet8".into(), ..Default::default() };
        base.validate().unwrap();
        for (cfg, key) in [
            (TrainConfig { lr: -0.1, ..base.clone() }, "lr"),
            (TrainConfig { epochs: 0, ..base.clone() }, "epochs"),
            (TrainConfig { momentum: 1.0, ..base.clone() }, "momentum"),
            (TrainConfig { milestones: vec![40], ..base.clone() }, "milestones"),
            (TrainConfig { model: "resnet9".into(), ..base.clone() }, "resnet9"),
            (TrainConfig { dot_delta: -0.1, ..base.clone() }, "dot_delta"),
            (TrainConfig { optimizer: crate::train::sgd::Optimizer::Dot, dot_delta: 0.2, ..base.clone() }, "dot_delta"),
            (TrainConfig { optimizer: crate::train::sgd::Optimizer::Dot, nesterov: true, ..base.clone() }, "nesterov"),
        ] {
            let e = format!("{:#}", cfg.validate().unwrap_err());
            assert!(e.contains(key), "{e}");
        }
    }
}
