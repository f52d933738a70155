//! `kdlab distill` (KD, ATS, ISATS, NCKD, DKD, DIST, LS; ESKD via an earlier teacher checkpoint;
//! TAKD via --assistant) and `kdlab loss` (one method's loss terms on saved logits).
use super::train_cmd::ConfigFlags;
use super::Runtime;
use crate::data::npy;
use crate::methods::{self, LossInput, MethodParams};
use crate::train::config;
use crate::train::distill::{self, DistillConfig};
use crate::util::fmt;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A method and its hyper-parameters; flags not given take the method's defaults.
#[derive(Args, Clone, Debug, Default)]
pub struct MethodFlags {
    /// ce, kd, ats, isats, nckd, dkd or dist.
    #[arg(long)]
    pub method: Option<String>,
    /// Temperature (kd, nckd, dkd, dist).
    #[arg(long)]
    pub tau: Option<f64>,
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long)]
    pub beta: Option<f64>,
    #[arg(long)]
    pub gamma: Option<f64>,
    /// The student's temperature s_τ (kd: defaults to tau; ats, isats: 1).
    #[arg(long)]
    pub student_tau: Option<f64>,
    /// ATS/ISATS: temperature of the true class.
    #[arg(long)]
    pub tau1: Option<f64>,
    /// ATS: temperature of the other classes.
    #[arg(long)]
    pub tau2: Option<f64>,
    /// ISATS: lower bound of the per-sample τ2 search.
    #[arg(long)]
    pub tau2_min: Option<f64>,
    /// ISATS: how τ2 is chosen per sample: order (default), ts or bounded.
    #[arg(long)]
    pub rule: Option<String>,
    /// ISATS rule order: the least log-probability gap kept between the true class and the next.
    #[arg(long)]
    pub margin: Option<f64>,
    /// ATS/ISATS: subtract each sample's mean teacher logit before scaling.
    #[arg(long)]
    pub center_logits: bool,
    /// ATS/ISATS: weight of the KD term (CE gets 1 − λ).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// DKD: epochs of linear warm-up of the KD terms.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Logit standardisation (LS) before the temperature softmax (kd, nckd, dkd).
    #[arg(long)]
    pub standardize: bool,
}

/// Distillation-only switches.
#[derive(Args, Clone, Debug, Default)]
pub struct CacheFlag {
    /// Read the teacher's logits from its logit cache (built on first use: every augmentation view
    /// of every training image) instead of running the teacher at each step.
    #[arg(long)]
    pub teacher_cache: bool,
}

impl MethodFlags {
    fn table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v {
                t.insert(k.into(), toml::Value::Float(v));
            }
        };
        put("tau", self.tau);
        put("alpha", self.alpha);
        put("beta", self.beta);
        put("gamma", self.gamma);
        put("student_tau", self.student_tau);
        put("tau1", self.tau1);
        put("tau2", self.tau2);
        put("tau2_min", self.tau2_min);
        put("lambda", self.lambda);
        put("warmup", self.warmup);
        put("margin", self.margin);
        if self.standardize {
            t.insert("standardize".into(), toml::Value::Boolean(true));
        }
        if let Some(r) = &self.rule {
            t.insert("rule".into(), toml::Value::String(r.clone()));
        }
        if self.center_logits {
            t.insert("center_logits".into(), toml::Value::Boolean(true));
        }
        if let Some(m) = &self.method {
            t.insert("method".into(), toml::Value::String(m.clone()));
        }
        t
    }

    fn params(&self) -> MethodParams {
        MethodParams {
            tau: self.tau,
            alpha: self.alpha,
            beta: self.beta,
            gamma: self.gamma,
            student_tau: self.student_tau,
            tau1: self.tau1,
            tau2: self.tau2,
            tau2_min: self.tau2_min,
            lambda: self.lambda,
            warmup: self.warmup,
            standardize: self.standardize.then_some(true),
            rule: self.rule.clone(),
            center_logits: self.center_logits.then_some(true),
            margin: self.margin,
        }
    }
}

#[derive(Args)]
pub struct DistillArgs {
    /// The teacher run (optionally @epochN for an early-stopped teacher, ESKD).
    #[arg(long)]
    pub teacher: Option<String>,
    /// Student architecture (same as --model).
    #[arg(long)]
    pub student: Option<String>,
    /// TAKD: train this architecture from the teacher first, then teach the student with it.
    #[arg(long)]
    pub assistant: Option<String>,
    #[command(flatten)]
    pub method: MethodFlags,
    #[command(flatten)]
    pub cache: CacheFlag,
    #[command(flatten)]
    pub cfg: ConfigFlags,
    /// Run directory (default: runs/<student>-<method>-from-<teacher>-s<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
    /// Write steps.csv with the loss, each term, the gradient norm and the rate of the first N
    /// steps (to see how a run starts: a diverging or collapsing student shows there).
    #[arg(long, default_value_t = 0)]
    pub trace_steps: usize,
    #[command(flatten)]
    pub rt: Runtime,
}

fn resolve(a: &DistillArgs) -> Result<DistillConfig> {
    let origin = a.cfg.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
    let mut table = config::read_table(a.cfg.config.as_deref())?;
    table.extend(a.cfg.overrides());
    table.extend(a.method.table());
    for (k, v) in [("teacher", &a.teacher), ("student", &a.student), ("assistant", &a.assistant)] {
        if let Some(v) = v {
            table.insert(k.into(), toml::Value::String(v.clone()));
        }
    }
    if a.cache.teacher_cache {
        table.insert("teacher_cache".into(), toml::Value::Boolean(true));
    }
    if a.student.is_some() && a.cfg.model.is_some() {
        bail!("give the student once: --student or --model");
    }
    DistillConfig::from_table(table, &origin)
}

pub fn distill(a: DistillArgs) -> Result<()> {
    let cfg = resolve(&a)?;
    let device = a.rt.init()?;
    let teacher: crate::train::checkpoint::RunRef = cfg.teacher.parse()?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/{}-{}-from-{}-s{}",
            cfg.train.model,
            cfg.method,
            teacher.name().replace('@', "-"),
            cfg.train.seed
        ))
    });
    let r = match &cfg.assistant {
        None => distill::run(&cfg, &cfg.teacher, &out, device, a.quiet, a.trace_steps, serde_json::json!({}))?,
        Some(assistant) => {
            // TAKD: teacher → assistant → student, each a full distillation run.
            let a_cfg = DistillConfig {
                train: crate::train::config::TrainConfig { model: assistant.clone(), ..cfg.train.clone() },
                assistant: None,
                ..cfg.clone()
            };
            let a_out = out.join("assistant");
            let ar = distill::run(
                &a_cfg,
                &cfg.teacher,
                &a_out,
                device,
                a.quiet,
                a.trace_steps,
                serde_json::json!({"takd_role": "assistant"}),
            )?;
            println!(
                "assistant {assistant}: final test accuracy {:.2}% ({})",
                100.0 * ar.final_test_acc,
                a_out.display()
            );
            let spec = a_out.display().to_string();
            distill::run(
                &cfg,
                &spec,
                &out.join("student"),
                device,
                a.quiet,
                a.trace_steps,
                serde_json::json!({"takd_role": "student", "takd_teacher": cfg.teacher, "takd_assistant": assistant}),
            )?
        }
    };
    println!(
        "done: {} ({} params) by {} — final test accuracy {:.2}%, best {:.2}% at epoch {}, {} of training; {}",
        cfg.train.model,
        fmt::count(r.params),
        cfg.method,
        100.0 * r.final_test_acc,
        100.0 * r.best_test_acc,
        r.best_epoch,
        fmt::duration(r.wall_time_s),
        r.dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct LossArgs {
    #[command(flatten)]
    pub method: MethodFlags,
    /// (N, C) student logits (.npy, float32 or float64).
    #[arg(long)]
    pub student: PathBuf,
    /// (N, C) teacher logits.
    #[arg(long)]
    pub teacher: PathBuf,
    /// (N,) integer labels.
    #[arg(long)]
    pub labels: PathBuf,
    /// The 1-based epoch (DKD's warm-up; default: the end of the warm-up).
    #[arg(long)]
    pub epoch: Option<f64>,
    /// Add per-sample values (ISATS: the chosen τ2 of each sample).
    #[arg(long)]
    pub per_sample: bool,
    #[arg(long)]
    pub json: bool,
}

fn logits_tensor(p: &Path) -> Result<(usize, usize, Tensor)> {
    let (n, c, v) = npy::read_logits(p)?;
    Ok((n, c, Tensor::from_slice(&v).view([n as i64, c as i64])))
}

pub fn loss(a: LossArgs) -> Result<()> {
    let name = a.method.method.clone().context("--method is required (ce, kd, ats, isats, nckd, dkd, dist)")?;
    let params = a.method.params();
    let mut method = methods::build(&name, &params)?;
    if let Some(e) = a.epoch.filter(|e| !(*e >= 0.0 && e.is_finite())) {
        bail!("--epoch must be a number ≥ 0 (epochs are 1-based), got {e}");
    }
    let (ns, cs, s) = logits_tensor(&a.student)?;
    let (nt, ct, t) = logits_tensor(&a.teacher)?;
    let y = npy::read_labels(&a.labels)?;
    if (ns, cs) != (nt, ct) {
        bail!("{} is {ns} x {cs} but {} is {nt} x {ct}", a.student.display(), a.teacher.display());
    }
    if y.len() != ns {
        bail!("{} holds {} labels for {ns} samples", a.labels.display(), y.len());
    }
    if let Some((i, v)) = y.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= cs) {
        bail!("{}: label {v} at index {i} is out of range for {cs} classes", a.labels.display());
    }
    let labels = Tensor::from_slice(&y);
    let epoch = a.epoch.unwrap_or_else(|| params.warmup.unwrap_or(20.0));
    let terms = method.terms(&LossInput { student: &s, teacher: &t, labels: &labels, epoch });
    let values: Vec<(String, f64)> =
        terms.iter().map(|(k, v)| (k.clone(), v.to_kind(Kind::Double).double_value(&[]))).collect();
    let total: f64 = values.iter().map(|(_, v)| v).sum();
    let mut out = serde_json::json!({
        "method": name,
        "hyper": method.hyper(),
        "terms": values.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "total": total,
    });
    if a.per_sample {
        if let Some((k, v)) = method.per_sample() {
            out["per_sample"] = serde_json::json!({ k: v });
        }
    }
    if a.json {
        println!("{out}");
    } else {
        let rows: Vec<Vec<String>> = values
            .iter()
            .map(|(k, v)| vec![k.clone(), format!("{v:.8}")])
            .chain(std::iter::once(vec!["total".into(), format!("{total:.8}")]))
            .collect();
        println!("{name} {}", method.hyper());
        print!("{}", fmt::table(&["term", "value"], &rows));
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Compute a teacher's logits for every training image and augmentation view, once.
    Build {
        /// The teacher run (optionally @best, @last or @epochN).
        #[arg(long)]
        run: String,
        /// The data set (default: the run's own).
        #[arg(long)]
        data: Option<String>,
        /// Cache the views of the students' augmentation (true) or the plain images only (false).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        augment: bool,
        #[command(flatten)]
        rt: Runtime,
    },
}

pub fn cache(c: CacheCommand) -> Result<()> {
    let CacheCommand::Build { run, data, augment, rt } = c;
    let device = rt.init()?;
    let teacher = crate::train::distill::Teacher::load(&run, device)?;
    let ds = crate::train::run::run_data(&teacher.checkpoint, data.as_deref())?;
    let dir = crate::train::checkpoint::run_dir_of(&teacher.checkpoint);
    let c = crate::train::cache::open_or_build(&dir, &teacher.model, &teacher.meta, &ds, augment, false)?;
    println!(
        "{}: {} samples × {} views × {} classes (f16)",
        c.path.display(),
        c.header.samples,
        c.header.views,
        c.header.classes
    );
    Ok(())
}
