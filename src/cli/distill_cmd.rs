//! `kdlab distill` (KD, ATS, ISATS, NCKD, DKD, DIST, LS; ESKD via an earlier teacher checkpoint;
//! TAKD via --assistant) and `kdlab loss` (one method's loss terms on saved logits).
use super::train_cmd::{toml_value, ConfigFlags, TeacherNormFlags};
use super::Runtime;
use crate::data::npy;
use crate::methods::{self, LossInput, MethodSpec};
use crate::train::config;
use crate::train::distill::{self, DistillConfig};
use crate::train::takd;
use crate::train::teacher;
use crate::train::topk_cache;
use crate::util::fmt;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A method and its hyper-parameters: `--method`, `-p KEY=VALUE` (repeatable), and one flag per
/// key that some method takes (`--tau 4` is `-p tau=4`). The flags are made from the methods'
/// `Params` structs, so a new method's keys need no line here. Keys not given take the method's
/// defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct MethodFlags {
    pub method: Option<String>,
    /// (key, value as typed) from the per-key flags, then from `-p`.
    given: Vec<(String, String)>,
}

const PARAM_ID: &str = "param";
/// The id prefix of the per-key flags (an id apart from the command's other flags).
const KEY_FLAG: &str = "method-key:";

impl MethodFlags {
    /// The hyper-parameters given, as a table; a key given twice is an error.
    pub fn params(&self) -> Result<methods::Table> {
        let mut t = methods::Table::new();
        for (k, v) in &self.given {
            if t.insert(k.clone(), toml_value(v)).is_some() {
                bail!("the hyper-parameter {k} is given twice (by --{} and -p, or -p twice)", k.replace('_', "-"));
            }
        }
        Ok(t)
    }
}

/// A default as the help shows it: TOML-like, whole numbers without ".0", "(optional)" where the
/// method decides when the key is not given (kd's student_tau follows tau).
fn shown_default(d: &serde_json::Value) -> String {
    match d.as_f64() {
        _ if d.is_null() => "(optional)".to_string(),
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => d.to_string(),
    }
}

/// The methods that take `key`, each with its default.
fn takers(key: &str) -> Vec<(&'static str, String)> {
    methods::REGISTRY
        .iter()
        .filter(|e| e.keys().contains(&key))
        .map(|e| (e.name, shown_default(&e.defaults()[key])))
        .collect()
}

/// `-p`'s long help: every method's keys with their defaults.
fn param_long_help() -> String {
    let mut s = String::from(
        "A hyper-parameter of the method, KEY=VALUE (repeatable). VALUE is read as TOML (4, 0.5, true), \
         else as a string (order). The methods' keys, with their defaults:",
    );
    for e in methods::REGISTRY {
        let d = e.defaults();
        let keys: Vec<String> = e.keys().iter().map(|k| format!("{k}={}", shown_default(&d[*k]))).collect();
        s += &format!("\n  {}: {}", e.name, if keys.is_empty() { "(none)".to_string() } else { keys.join(" ") });
    }
    s
}

impl clap::Args for MethodFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        let names: Vec<&str> = methods::REGISTRY.iter().map(|e| e.name).collect();
        let about: Vec<String> = methods::REGISTRY.iter().map(|e| format!("  {}: {}", e.name, e.about)).collect();
        let mut cmd = cmd
            .arg(
                Arg::new("method")
                    .long("method")
                    .value_name("NAME")
                    .help(format!("{}.", names.join(", ")))
                    .long_help(format!("The distillation method, one of:\n{}", about.join("\n"))),
            )
            .arg(
                Arg::new(PARAM_ID)
                    .short('p')
                    .long("param")
                    .value_name("KEY=VALUE")
                    .action(ArgAction::Append)
                    .help("A hyper-parameter of the method, e.g. -p tau=4 (repeatable; --help lists the keys)")
                    .long_help(param_long_help()),
            );
        for key in methods::all_keys() {
            let long = key.replace('_', "-");
            // A training key of the same name (--gamma, the learning rate's decay) keeps its flag:
            // the method's key is given with -p (see `DistillConfig`'s namespaces).
            if cmd.get_arguments().any(|a| a.get_long() == Some(long.as_str())) {
                continue;
            }
            let takers = takers(key);
            let who: Vec<String> = takers.iter().map(|(m, d)| format!("{m} {d}")).collect();
            let arg = Arg::new(format!("{KEY_FLAG}{key}")).long(long);
            cmd = cmd.arg(if takers.iter().all(|(_, d)| d == "false") {
                let who: Vec<&str> = takers.iter().map(|(m, _)| *m).collect();
                arg.action(ArgAction::SetTrue)
                    .help(format!("Sets {key} = true ({}); the same as -p {key}=true", who.join(", ")))
            } else {
                arg.value_name("VALUE")
                    .allow_hyphen_values(true)
                    .help(format!("{key}: {} (defaults); the same as -p {key}=VALUE", who.join(", ")))
            });
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for MethodFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> std::result::Result<Self, clap::Error> {
        let present = |id: &str| m.ids().any(|i| i.as_str() == id);
        let mut given = vec![];
        for key in methods::all_keys() {
            let id = format!("{KEY_FLAG}{key}");
            if present(&id) && m.value_source(&id) == Some(clap::parser::ValueSource::CommandLine) {
                let raw = m.get_raw(&id).into_iter().flatten().next_back();
                given.push((key.to_string(), raw.map_or("true".into(), |v| v.to_string_lossy().into_owned())));
            }
        }
        for pair in m.get_many::<String>(PARAM_ID).into_iter().flatten() {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!("-p takes KEY=VALUE (e.g. -p tau=4), got '{pair}'\n"),
                ));
            };
            given.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(MethodFlags { method: m.get_one::<String>("method").cloned(), given })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// Distillation-only switches.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct CacheFlag {
    /// Read the teacher's outputs from a cache (built on first use) instead of running the teacher
    /// at each step: `logits` (the default when given without a value) stores every augmentation
    /// view of every training image; `topk:K` stores, per epoch, the crop each image drew and the
    /// teacher's K largest logits (FKD; for data sets too large for the first).
    #[arg(long, num_args = 0..=1, default_missing_value = "logits", value_name = "MODE")]
    pub teacher_cache: Option<String>,
    /// Temperature-scale the teacher: divide its logits by the one T that minimises its NLL on the
    /// validation split (needs val_per_class), for any method; T is printed and kept in run.json.
    #[arg(long)]
    pub teacher_calibrate: bool,
}

#[derive(Args)]
pub(crate) struct DistillArgs {
    /// The teacher: a run (optionally @epochN for an early-stopped teacher, ESKD), or a
    /// TorchScript file (torch.jit.trace/script, then .save()). A TorchScript file is a program:
    /// loading it runs its code inside kdlab, with your permissions. Use only files you trust;
    /// for a downloaded model, `kdlab import` its state dict instead, which executes nothing.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Student architecture (same as --model).
    #[arg(long)]
    pub student: Option<String>,
    /// TAKD: train this architecture from the teacher first, then teach the student with it.
    /// DGKD (--method dgkd): several, largest first (a,b), each taught by the teacher and the
    /// assistants above it, the student by all of them.
    #[arg(long, value_name = "ARCH[,ARCH…]")]
    pub assistant: Option<String>,
    #[command(flatten)]
    pub cache: CacheFlag,
    #[command(flatten)]
    pub norm: TeacherNormFlags,
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
    /// Last: its per-key flags leave out names the command's other flags already have.
    #[command(flatten)]
    pub method: MethodFlags,
}

fn resolve(a: &DistillArgs) -> Result<DistillConfig> {
    let origin = a.cfg.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
    let mut table = config::read_table(a.cfg.config.as_deref())?;
    table.extend(a.cfg.overrides());
    if let Some(m) = &a.method.method {
        table.insert("method".into(), toml::Value::String(m.clone()));
    }
    // The flags' hyper-parameters go to the `params` table, which overrides the file's flat keys.
    let given = a.method.params()?;
    if !given.is_empty() {
        let params = table.entry("params").or_insert_with(|| toml::Value::Table(methods::Table::new()));
        let Some(params) = params.as_table_mut() else {
            bail!("{origin}: 'params' should be a table of the method's hyper-parameters, found {params}");
        };
        params.extend(given);
    }
    for (k, v) in [("teacher", &a.teacher), ("student", &a.student), ("assistant", &a.assistant)] {
        if let Some(v) = v {
            table.insert(k.into(), toml::Value::String(v.clone()));
        }
    }
    if let Some(mode) = &a.cache.teacher_cache {
        table.insert("teacher_cache".into(), toml::Value::String(mode.clone()));
    }
    if a.cache.teacher_calibrate {
        table.insert("teacher_calibrate".into(), toml::Value::Boolean(true));
    }
    for (k, v) in [("teacher_mean", &a.norm.teacher_mean), ("teacher_std", &a.norm.teacher_std)] {
        if let Some(v) = v {
            table.insert(k.into(), toml::Value::Array(v.iter().map(|&x| toml::Value::Float(x)).collect()));
        }
    }
    if a.student.is_some() && a.cfg.has("model") {
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
            cfg.method.name(),
            teacher.name().replace('@', "-"),
            cfg.train.seed
        ))
    });
    let links = takd::links(cfg.method.name(), cfg.method.entry().guided, &cfg.assistants, &cfg.train.model)?;
    let r = if links.is_empty() {
        distill::run(&cfg, &cfg.teacher, &out, device, a.quiet, a.trace_steps, serde_json::json!({}))?
    } else {
        // An assistant chain (TAKD, DGKD): each link a full distillation run, taught by the chain's
        // teacher or the assistant above it, and guided (DGKD) by the trained assistants above it.
        let mut trained: Vec<String> = vec![];
        let mut last = None;
        for link in &links {
            let dir = out.join(link.dir_name());
            let teacher = match link.taught_by {
                takd::TaughtBy::Teacher => cfg.teacher.clone(),
                takd::TaughtBy::Assistant => trained.last().expect("an assistant comes first").clone(),
            };
            let guides: Vec<String> = link.guides.iter().map(|&i| trained[i].clone()).collect();
            let role = takd::role_record(link, &cfg.teacher, &cfg.assistants);
            let r = distill::run(
                &cfg.link_config(link, &teacher, &guides),
                &teacher,
                &dir,
                device,
                a.quiet,
                a.trace_steps,
                role,
            )?;
            if link.role == takd::Role::Assistant {
                println!(
                    "assistant {}: final test accuracy {:.2}% ({})",
                    link.model,
                    100.0 * r.final_test_acc,
                    dir.display()
                );
            }
            trained.push(dir.display().to_string());
            last = Some(r);
        }
        last.expect("a chain ends with its student")
    };
    println!(
        "done: {} ({} params) by {} — final test accuracy {:.2}%, best {:.2}% at epoch {}, {} of training; {}",
        cfg.train.model,
        fmt::count(r.params),
        cfg.method.name(),
        100.0 * r.final_test_acc,
        100.0 * r.best_test_acc,
        r.best_epoch,
        fmt::duration(r.wall_time_s),
        r.dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub(crate) struct LossArgs {
    /// (N, C) student logits (.npy, float32 or float64).
    #[arg(long)]
    pub student: PathBuf,
    /// (N, C) teacher logits.
    #[arg(long)]
    pub teacher: PathBuf,
    /// (N,) integer labels.
    #[arg(long)]
    pub labels: PathBuf,
    /// The 1-based epoch (DKD's warm-up, a temperature curriculum; default: the first epoch at
    /// which the method's loss no longer changes with the epoch).
    #[arg(long)]
    pub epoch: Option<f64>,
    /// Add per-sample values (ISATS: the chosen τ2 of each sample).
    #[arg(long)]
    pub per_sample: bool,
    /// Add the gradient of the total loss with respect to the student's logits ("grad": N rows of
    /// C values), in the logits' dtype (float64 for a float64 file), for reference checks; and,
    /// for a feature method, with respect to each student tap ("tap_grad": NAME → N rows) and
    /// each trainable module's parameters ("var_grad": NAME → values, row-major).
    #[arg(long)]
    pub grad: bool,
    #[arg(long)]
    pub json: bool,
    /// A student tap a feature method reads, NAME=FILE.npy (float, batch first: FitNet's
    /// `--student-tap stage2=s2.npy`); `kdlab models --taps MODEL` lists the names.
    #[arg(long = "student-tap", value_name = "NAME=FILE")]
    pub student_taps: Vec<String>,
    /// A teacher tap a feature method reads, NAME=FILE.npy.
    #[arg(long = "teacher-tap", value_name = "NAME=FILE")]
    pub teacher_taps: Vec<String>,
    /// The seed a feature method's modules (FitNet's regressor) are initialised from, as a run
    /// with this seed initialises them.
    #[arg(long = "modules-seed", default_value_t = 0)]
    pub modules_seed: u64,
    /// (N,) integer: each sample's index in the training set, the rows of a memory bank that are
    /// the batch's (CRD); default 0..N.
    #[arg(long)]
    pub indices: Option<PathBuf>,
    /// The training set's size, a memory bank's rows (default: N, or the largest index + 1).
    /// Rows no batch sample covers have no label: give --negatives then.
    #[arg(long)]
    pub samples: Option<usize>,
    /// (N, K) integer: each sample's negatives (CRD), given instead of drawn.
    #[arg(long)]
    pub negatives: Option<PathBuf>,
    /// The seed of the method's random draws (CRD's negatives, DGKD's dropped guides), where they
    /// are not given.
    #[arg(long = "draw-seed", default_value_t = 0)]
    pub draw_seed: u64,
    /// A guided method's other guides (DGKD: the assistants, largest first), each (N, C) logits:
    /// a.npy,b.npy. The teacher's logits stay --teacher.
    #[arg(long, value_name = "FILE[,FILE…]", value_delimiter = ',')]
    pub guides: Vec<PathBuf>,
    /// Which guides the step keeps, 1 or 0 for the teacher then each of --guides (DGKD: 1,0,1),
    /// given instead of drawn from --draw-seed.
    #[arg(long, value_name = "B[,B…]", value_delimiter = ',')]
    pub keep: Vec<u8>,
    /// Sets a method variable after setup, NAME=FILE.npy (CRD's `bank_s`, `embed_s.weight`, `z`;
    /// the names `--grad`'s "var_grad" lists, and any state), for reference checks.
    #[arg(long = "method-var", value_name = "NAME=FILE")]
    pub method_vars: Vec<String>,
    /// Add the method's modules as initialised ("modules": each variable's name → {shape, values}),
    /// for a reference computation outside kdlab.
    #[arg(long)]
    pub modules: bool,
    /// Last: its per-key flags leave out names the command's other flags already have.
    #[command(flatten)]
    pub method: MethodFlags,
}

/// The taps as a method reads them, their shapes, and each tap's tensor by name (for its gradient).
type ReadTaps = (crate::models::Taps, crate::models::taps::TapShapes, Vec<(String, Tensor)>);

/// Taps given as NAME=FILE.npy, each with `n` rows, in the dtype of the logits (f64).
/// With `grad`, the tensors require gradients (the student's, for `--grad`); they are returned
/// too, by name, to read the gradients back.
fn read_taps(given: &[String], n: usize, flag: &str, grad: bool) -> Result<ReadTaps> {
    let mut names = vec![];
    let mut tensors = vec![];
    for g in given {
        let Some((name, file)) = g.split_once('=') else { bail!("{flag} {g}: write NAME=FILE.npy") };
        let a = npy::read(Path::new(file))?;
        let v = a.to_f64(Path::new(file))?;
        if a.shape.first() != Some(&n) {
            bail!("{file}: tap {name} has shape {:?}; its first dimension must be the {n} samples", a.shape);
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("{file}: element {i} is not finite ({})", v[i]);
        }
        let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
        names.push(name.to_string());
        tensors.push((name.to_string(), Tensor::from_slice(&v).view(shape.as_slice()).set_requires_grad(grad)));
    }
    let mut taps = crate::models::Taps::only(&names);
    let shapes = tensors.iter().map(|(n, t)| (n.clone(), t.size()[1..].to_vec())).collect();
    for (name, t) in &tensors {
        taps.put(name, t);
    }
    Ok((taps, shapes, tensors))
}

/// An integer .npy file of `rows` rows (indices, negatives), as an int64 tensor of its shape.
fn read_index_file(p: &Path, rows: usize, what: &str) -> Result<Tensor> {
    let a = npy::read(p)?;
    let v = a.to_i64(p)?;
    if a.shape.first() != Some(&rows) {
        bail!("{}: {what} has shape {:?}; its first dimension must be the {rows} samples", p.display(), a.shape);
    }
    if let Some(i) = v.iter().position(|&x| x < 0) {
        bail!("{}: {what} holds {} at element {i}; indices are ≥ 0", p.display(), v[i]);
    }
    let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&v).view(shape.as_slice()))
}

/// The bank's size and each row's label, from the batch's indices and labels: None where a row is
/// not one of the batch's samples (then the negatives must be given).
fn bank_labels(indices: &[i64], labels: &[i64], samples: Option<usize>) -> Result<(usize, Option<Vec<u16>>)> {
    let need = indices.iter().map(|&i| i as usize + 1).max().unwrap_or(0).max(indices.len());
    let samples = samples.unwrap_or(need);
    if samples < need {
        bail!("--samples {samples}: the indices need a bank of at least {need} rows");
    }
    let mut row = vec![None; samples];
    for (&i, &y) in indices.iter().zip(labels) {
        if row[i as usize].is_some_and(|c| c != y as u16) {
            bail!("index {i} appears twice with different labels");
        }
        row[i as usize] = Some(y as u16);
    }
    Ok((samples, row.into_iter().collect()))
}

/// Sets method variables from NAME=FILE.npy (shapes must match), after setup.
fn set_method_vars(vars: &tch::nn::VarStore, given: &[String]) -> Result<()> {
    let all = vars.variables();
    for g in given {
        let Some((name, file)) = g.split_once('=') else { bail!("--method-var {g}: write NAME=FILE.npy") };
        let Some(var) = all.get(name) else {
            let mut names: Vec<&String> = all.keys().collect();
            names.sort();
            bail!("--method-var {name}: the method has no variable {name} (it has: {names:?})")
        };
        let a = npy::read(Path::new(file))?;
        let v = a.to_f64(Path::new(file))?;
        let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            bail!("{file}: method variable {name} has shape {:?}, the file {shape:?}", var.size());
        }
        tch::no_grad(|| var.shallow_clone().copy_(&Tensor::from_slice(&v).view(shape.as_slice())));
    }
    Ok(())
}

fn logits_tensor(p: &Path) -> Result<(usize, usize, Tensor)> {
    let (n, c, v) = npy::read_logits(p)?;
    Ok((n, c, Tensor::from_slice(&v).view([n as i64, c as i64])))
}

/// A guided method's other guides (`--guides`), each the student's shape; refused for a method
/// that learns from one teacher.
fn read_guides(a: &LossArgs, spec: &MethodSpec, (n, c): (usize, usize)) -> Result<Vec<Tensor>> {
    let given = !a.guides.is_empty() || !a.keep.is_empty();
    if given && !spec.entry().guided {
        bail!("method '{}' learns from one teacher: --guides and --keep are for a guided method (dgkd)", spec.name());
    }
    let mut guides = vec![];
    for p in &a.guides {
        let (ng, cg, g) = logits_tensor(p)?;
        if (ng, cg) != (n, c) {
            bail!("{} is {ng} x {cg} but the student's logits are {n} x {c}", p.display());
        }
        guides.push(g);
    }
    Ok(guides)
}

/// `--keep`: one 0 or 1 for the teacher and each guide, or None (drawn from `--draw-seed`).
fn read_keep(a: &LossArgs, guides: usize) -> Result<Option<Vec<bool>>> {
    if a.keep.is_empty() {
        return Ok(None);
    }
    if a.keep.len() != guides + 1 || a.keep.iter().any(|&b| b > 1) {
        bail!(
            "--keep takes a 0 or 1 for the teacher and for each of the {guides} guides ({} values), got {:?}",
            guides + 1,
            a.keep
        );
    }
    Ok(Some(a.keep.iter().map(|&b| b == 1).collect()))
}

pub fn loss(a: LossArgs) -> Result<()> {
    let names: Vec<&str> = methods::REGISTRY.iter().map(|e| e.name).collect();
    let name = a.method.method.clone().with_context(|| format!("--method is required ({})", names.join(", ")))?;
    let spec = MethodSpec::parse(&name, a.method.params()?)?;
    let mut method = spec.build()?;
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
    let guides = read_guides(&a, &spec, (ns, cs))?;
    let keep = read_keep(&a, guides.len())?;
    let epoch = a.epoch.unwrap_or_else(|| method.settled_epoch());
    // A feature method reads taps and may own modules: built here as a run builds them (in f64,
    // the dtype of the inputs), from the seed a run would use.
    let (student_taps, s_shapes, s_tensors) = read_taps(&a.student_taps, ns, "--student-tap", a.grad)?;
    let (teacher_taps, t_shapes, _) = read_taps(&a.teacher_taps, ns, "--teacher-tap", false)?;
    let needs = method.taps();
    distill::check_taps(&name, "--student-tap", &s_shapes, &needs.student)?;
    distill::check_taps(&name, "--teacher-tap", &t_shapes, &needs.teacher)?;
    // A memory bank's rows: the batch's samples by default (indices 0..N), labelled by the batch.
    let indices = match &a.indices {
        Some(p) => read_index_file(p, ns, "--indices")?.view(-1),
        None => Tensor::arange(ns as i64, (Kind::Int64, tch::Device::Cpu)),
    };
    let (samples, bank_labels) = bank_labels(&Vec::<i64>::try_from(&indices)?, &y, a.samples)?;
    let negatives = a.negatives.as_ref().map(|p| read_index_file(p, ns, "--negatives")).transpose()?;
    if let Some(i) = negatives.as_ref().map(|t| t.max().int64_value(&[])).filter(|&i| i as usize >= samples) {
        bail!("--negatives: index {i} is outside the bank's {samples} rows (--samples)");
    }
    if bank_labels.is_none() && negatives.is_none() && !needs.is_empty() {
        bail!("--samples {samples}: bank rows that no sample of the batch covers have no label, and negatives are drawn by label: give --negatives");
    }
    let mut vars = tch::nn::VarStore::new(tch::Device::Cpu);
    crate::train::model::seeded(a.modules_seed, crate::util::rng::stream::METHOD_INIT, || {
        method.setup(&methods::Setup {
            vars: vars.root(),
            student: &s_shapes,
            teacher: &t_shapes,
            classes: cs,
            samples,
            labels: bank_labels.as_deref(),
        })
    })?;
    vars.double();
    set_method_vars(&vars, &a.method_vars)?;
    let modules = a.modules.then(|| {
        let mut vars: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
        vars.sort_by(|x, y| x.0.cmp(&y.0));
        vars.into_iter()
            .map(|(k, v)| {
                let values = Vec::<f64>::try_from(v.flatten(0, -1)).unwrap_or_default();
                (k, serde_json::json!({ "shape": v.size(), "values": values }))
            })
            .collect::<serde_json::Map<String, serde_json::Value>>()
    });
    let s = s.set_requires_grad(a.grad);
    let input = LossInput {
        student_taps: Some(&student_taps),
        teacher_taps: Some(&teacher_taps),
        indices: Some(&indices),
        draw_seed: a.draw_seed,
        negatives: negatives.as_ref(),
        guides: spec.entry().guided.then_some(guides.as_slice()),
        keep: keep.as_deref(),
        ..LossInput::logits(&s, &t, &labels, epoch)
    };
    let terms = method.terms(&input);
    let values: Vec<(String, f64)> =
        terms.iter().map(|(k, v)| (k.clone(), v.to_kind(Kind::Double).double_value(&[]))).collect();
    let total: f64 = values.iter().map(|(_, v)| v).sum();
    let mut out = serde_json::json!({
        "method": name,
        "hyper": spec.hyper(),
        "terms": values.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
        "total": total,
    });
    if let Some(m) = modules {
        out["modules"] = serde_json::Value::Object(m);
    }
    if a.per_sample {
        if let Some((k, v)) = method.per_sample() {
            out["per_sample"] = serde_json::json!({ k: v });
        }
    }
    if a.grad {
        let total = terms.iter().map(|(_, v)| v.shallow_clone()).reduce(|x, y| x + y).context("no loss terms")?;
        total.backward();
        let g = Vec::<f64>::try_from(s.grad().to_kind(Kind::Double).view(-1))?;
        out["grad"] = serde_json::json!(g.chunks(cs.max(1)).collect::<Vec<_>>());
        let values = |t: &Tensor| -> Result<Vec<f64>> {
            // A tensor the loss does not reach has no gradient: zeros.
            let g = t.grad();
            let g = if g.defined() { g } else { t.zeros_like() };
            Ok(Vec::<f64>::try_from(g.to_kind(Kind::Double).view(-1))?)
        };
        let mut taps = serde_json::Map::new();
        for (k, t) in &s_tensors {
            let g = values(t)?;
            let row = g.len() / ns.max(1);
            taps.insert(k.clone(), serde_json::json!(g.chunks(row.max(1)).collect::<Vec<_>>()));
        }
        let mut var_grads = serde_json::Map::new();
        for (k, t) in vars.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            var_grads.insert(k, serde_json::json!(values(&t)?));
        }
        if !taps.is_empty() {
            out["tap_grad"] = taps.into();
        }
        if !var_grads.is_empty() {
            out["var_grad"] = var_grads.into();
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
        println!("{name} {}", spec.hyper());
        print!("{}", fmt::table(&["term", "value"], &rows));
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// Compute a teacher's logits for every training image and augmentation view, once; or, with
    /// --topk K, the crop each image draws in each epoch of a run with --seed and --epochs and the
    /// teacher's K largest logits on it (what `--teacher-cache topk:K` reads).
    Build {
        /// The teacher run (optionally @best, @last or @epochN), or a TorchScript file (the cache
        /// then lives in the file's directory, under logit-cache/). A TorchScript file is a
        /// program that runs inside kdlab: use only files you trust (see `kdlab import`).
        #[arg(long, alias = "teacher")]
        run: String,
        /// The data set (default: the run's own; required for a TorchScript file).
        #[arg(long)]
        data: Option<String>,
        /// Cache the views of the students' augmentation (true) or the plain images only (false).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        augment: bool,
        /// Build the top-k cache (FKD) with this K instead of every view's logits.
        #[arg(long, requires = "epochs")]
        topk: Option<usize>,
        /// With --topk: the student run's seed, whose loader draws the crops.
        #[arg(long, default_value_t = 0, requires = "topk")]
        seed: u64,
        /// With --topk: the epochs to record (the student run's `epochs`).
        #[arg(long, requires = "topk")]
        epochs: Option<usize>,
        #[command(flatten)]
        norm: TeacherNormFlags,
        #[command(flatten)]
        rt: Runtime,
    },
}

pub fn cache(c: CacheCommand) -> Result<()> {
    let CacheCommand::Build { run, data, augment, topk, seed, epochs, norm, rt } = c;
    let device = rt.init()?;
    let ds = teacher::teacher_data(&run, data.as_deref())?;
    let teacher = teacher::Teacher::open(&run, device, &ds, &norm.norm())?;
    if let (Some(k), Some(epochs)) = (topk, epochs) {
        let req = topk_cache::Request { meta: &teacher.meta, data: &ds, augment, seed, epochs, k };
        let c = topk_cache::open_or_build(&teacher.cache_dir(), &teacher.model, &req, false)?;
        let h = &c.header;
        println!(
            "{}: {} epochs × {} samples, top-{} of {} classes ({} bytes a record, seed {})",
            c.path.display(),
            h.epochs,
            h.samples,
            h.k,
            h.classes,
            h.row_bytes(),
            h.seed
        );
        return Ok(());
    }
    let c =
        crate::train::cache::open_or_build(&teacher.cache_dir(), &teacher.model, &teacher.meta, &ds, augment, false)?;
    println!(
        "{}: {} samples × {} views × {} classes (f16)",
        c.path.display(),
        c.header.samples,
        c.header.views,
        c.header.classes
    );
    Ok(())
}
