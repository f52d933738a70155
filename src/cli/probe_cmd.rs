//! `kdlab probe`: dark-knowledge metrics of one or many teachers, from trained runs (logits
//! computed on the fly) or from .npy logits.
use super::Runtime;
use crate::data::npy;
use crate::probe::{
    self, output,
    source::{LogitSource, NpySource, RunSource},
};
use crate::train::checkpoint;
use crate::train::teacher;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub(crate) struct ProbeArgs {
    /// A trained run (optionally @best, @last or @epochN), or a TorchScript teacher file (with
    /// --data; a program that runs inside kdlab: use only files you trust); repeat for several
    /// teachers.
    #[arg(long = "run", alias = "teacher")]
    pub runs: Vec<String>,
    /// An (N, C) float32/float64 .npy of logits; repeat for several teachers.
    #[arg(long = "logits")]
    pub logits: Vec<PathBuf>,
    /// (N,) integer labels for --logits.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// With --run: the split to compute logits on.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// With --run: one random augmented view per sample (the same view for every teacher).
    #[arg(long)]
    pub augment: bool,
    /// Seed for the augmented views.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --run: a data set other than the runs' own (required when the first is a TorchScript file).
    #[arg(long)]
    pub data: Option<String>,
    /// The TorchScript teachers' input normalisation (kdlab runs use their data set's).
    #[command(flatten)]
    pub norm: super::train_cmd::TeacherNormFlags,
    /// Temperatures (default: 0.25 to 16 in steps of √2).
    #[arg(long, value_delimiter = ',')]
    pub tau: Option<Vec<f64>>,
    /// The temperature of the printed table and the size/affinity plots (nearest in the grid).
    #[arg(long, default_value_t = 4.0)]
    pub table_tau: f64,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Directory for SVG plots.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Samples per chunk (memory is bounded by chunk × classes × teachers).
    #[arg(long, default_value_t = probe::CHUNK)]
    pub chunk: usize,
    #[command(flatten)]
    pub rt: Runtime,
}

/// Unique display names: the run directory's name (with its @checkpoint), or the file stem.
fn unique(mut names: Vec<String>) -> Vec<String> {
    for i in 0..names.len() {
        if names[..i].contains(&names[i]) {
            names[i] = format!("{}#{}", names[i], i + 1);
        }
    }
    names
}

/// The teachers, the labels, and the class names when known.
type Inputs = (Vec<Box<dyn LogitSource>>, Vec<usize>, String, Option<Vec<String>>);

pub fn run(a: ProbeArgs) -> Result<()> {
    let taus = a.tau.clone().unwrap_or_else(probe::default_taus);
    if !(a.table_tau > 0.0 && a.table_tau.is_finite()) {
        bail!("--table-tau must be a positive number, got {}", a.table_tau);
    }
    if a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let (sources, labels, labels_from, class_names): Inputs = match (a.runs.is_empty(), a.logits.is_empty()) {
        (true, true) => {
            bail!("nothing to probe: give --run DIR (repeatable) or --logits FILE.npy (repeatable) with --labels")
        }
        (false, false) => {
            bail!("give either --run or --logits, not both (save a run's logits with `kdlab logits` to mix them)")
        }
        (true, false) => npy_inputs(&a)?,
        (false, true) => run_inputs(&a)?,
    };
    let started = std::time::Instant::now();
    let result = probe::run(sources, &labels, &labels_from, &taus, a.chunk)?;
    write_outputs(&a, &result, class_names.as_deref())?;
    eprintln!("probed {} samples in {}", labels.len(), crate::util::fmt::duration(started.elapsed().as_secs_f64()));
    Ok(())
}

/// `--logits` files with `--labels`.
fn npy_inputs(a: &ProbeArgs) -> Result<Inputs> {
    let lp = a.labels.as_ref().context("--logits needs --labels (an (N,) integer .npy)")?;
    let raw = npy::read_labels(lp)?;
    let labels = raw
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            usize::try_from(y).map_err(|_| anyhow::anyhow!("{}: label {y} at index {i} is negative", lp.display()))
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut srcs: Vec<Box<dyn LogitSource>> = vec![];
    for p in &a.logits {
        srcs.push(Box::new(NpySource::open(p)?));
    }
    Ok((srcs, labels, lp.display().to_string(), None))
}

/// `--run` teachers (kdlab runs or TorchScript files) on a split of their data.
fn run_inputs(a: &ProbeArgs) -> Result<Inputs> {
    let device = a.rt.init()?;
    let names = unique(
        a.runs
            .iter()
            .map(|r| r.parse::<crate::train::checkpoint::RunRef>().map(|r| r.name()))
            .collect::<Result<_>>()?,
    );
    let mut srcs: Vec<Box<dyn LogitSource>> = vec![];
    let mut data = None;
    let mut fingerprint: Option<(String, String)> = None;
    for (spec, name) in a.runs.iter().zip(names) {
        let ds = match &data {
            Some(d) => std::sync::Arc::clone(d),
            None => {
                let d = Arc::new(teacher::teacher_data(spec, a.data.as_deref())?);
                data = Some(d.clone());
                d
            }
        };
        let norm = if teacher::is_torchscript(spec) { a.norm.norm() } else { Default::default() };
        let t = teacher::Teacher::open(spec, device, &ds, &norm)?;
        let meta = &t.meta;
        if !t.is_torchscript() {
            let run_dir = checkpoint::run_dir_of(&t.checkpoint);
            if let Some(rec) = crate::train::run::read_record(&run_dir)? {
                match &fingerprint {
                    Some((first, fp)) if *fp != rec.data.fingerprint && a.data.is_none() => {
                        bail!("{spec} was trained on other data than {first}; probe teachers of the same data set (or force one with --data)")
                    }
                    None => fingerprint = Some((spec.clone(), rec.data.fingerprint)),
                    _ => {}
                }
            }
        }
        if meta.input != ds.shape() || meta.classes != ds.classes {
            bail!(
                "{spec}: the model takes {} inputs with {} classes, the data has {} with {}",
                meta.input,
                meta.classes,
                ds.shape(),
                ds.classes
            );
        }
        srcs.push(Box::new(RunSource::from_feed(name, t.model, ds.feed(&a.split, a.augment)?, a.seed)));
    }
    let ds = data.expect("at least one run");
    let labels = ds.split(&a.split)?.labels.iter().map(|&y| y as usize).collect();
    Ok((srcs, labels, format!("the {} split of {}", a.split, ds.name), Some(ds.class_names.clone())))
}

/// The table on stdout, and the JSON, CSV and plots asked for.
fn write_outputs(a: &ProbeArgs, result: &probe::Probe, class_names: Option<&[String]>) -> Result<()> {
    print!("{}", output::table(&result.report, &result.taus, a.table_tau));
    if let Some(p) = &a.json {
        output::write_json(p, &result.report)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.csv {
        let (t, pairs) = output::write_csv(p, &result.report)?;
        println!("wrote {} and {}", t.display(), pairs.display());
    }
    if let Some(dir) = &a.plots {
        let files = output::write_plots(dir, result, a.table_tau, class_names)?;
        println!("wrote {} plots in {}", files.len(), dir.display());
    }
    Ok(())
}
