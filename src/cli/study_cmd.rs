//! `kdlab sweep`, `kdlab status`, `kdlab report`, and the hidden `kdlab sweep-run` a sweep's
//! workers (and Slurm jobs) execute.
use super::Runtime;
use crate::study::devices::{DevicePlan, SweepDevice};
use crate::study::{self, runner};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SweepArgs {
    /// The study file (TOML).
    pub study: PathBuf,
    /// Study directory (default: a directory named after the study).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs trained at once, each in its own process (on the CPU).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Where the runs train: cpu, cuda (every GPU LibTorch sees), cuda:N, or auto (default: the
    /// study file's `device`, else cpu). Every run of a study trains on the same kind of device.
    #[arg(long)]
    pub device: Option<String>,
    /// GPUs to place workers on, by index: `0,1,3` or `cuda:0,cuda:1` (implies --device cuda).
    #[arg(long)]
    pub devices: Option<String>,
    /// Workers at once on each GPU (default 1).
    #[arg(long)]
    pub workers_per_device: Option<usize>,
    /// Threads per run (default: the study's `threads`, else the cores shared among the workers;
    /// with --emit-slurm, else --cpus-per-task, else 1). Written into each run's spec.json.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run failed runs again.
    #[arg(long)]
    pub retry_failed: bool,
    /// List what would run, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write Slurm job arrays for the runs left into this directory instead of running them.
    #[arg(long)]
    pub emit_slurm: Option<PathBuf>,
    /// One line per finished run only.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// What the arrays of `--emit-slurm` ask for; each flag overrides the study's `[slurm]` key of
/// the same name (sbatch's own option names).
#[derive(Args)]
#[command(next_help_heading = "Slurm (with --emit-slurm; override the study's [slurm] table)")]
pub(crate) struct SlurmArgs {
    /// sbatch --partition.
    #[arg(long, requires = "emit_slurm")]
    pub partition: Option<String>,
    /// sbatch --account.
    #[arg(long, requires = "emit_slurm")]
    pub account: Option<String>,
    /// sbatch --qos.
    #[arg(long, requires = "emit_slurm")]
    pub qos: Option<String>,
    /// sbatch --time, per run (e.g. 30, 2:00:00, 1-00:00:00).
    #[arg(long, requires = "emit_slurm")]
    pub time: Option<String>,
    /// sbatch --mem, per run (e.g. 4G).
    #[arg(long, requires = "emit_slurm")]
    pub mem: Option<String>,
    /// sbatch --cpus-per-task (default: the runs' thread count).
    #[arg(long, requires = "emit_slurm")]
    pub cpus_per_task: Option<i64>,
    /// GPUs per run (sbatch --gres=gpu:N; the runs then train on CUDA).
    #[arg(long, requires = "emit_slurm")]
    pub gpus: Option<i64>,
    /// At most this many tasks of an array at once (sbatch --array=1-N%M).
    #[arg(long, requires = "emit_slurm")]
    pub max_running: Option<i64>,
    /// A further sbatch option, given as --sbatch-arg=--name=value (repeatable).
    #[arg(long = "sbatch-arg", requires = "emit_slurm")]
    pub extra: Vec<String>,
}

impl SlurmArgs {
    /// The flags given, checked as the study's `[slurm]` table is.
    fn options(&self) -> Result<study::slurm::SlurmOptions> {
        let mut t = toml::Table::new();
        let strings = [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("time", &self.time),
            ("mem", &self.mem),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                t.insert(k.into(), toml::Value::String(v.clone()));
            }
        }
        for (k, v) in [("cpus_per_task", self.cpus_per_task), ("gpus", self.gpus), ("max_running", self.max_running)] {
            if let Some(v) = v {
                t.insert(k.into(), toml::Value::Integer(v));
            }
        }
        if !self.extra.is_empty() {
            t.insert("extra".into(), toml::Value::Array(self.extra.iter().cloned().map(toml::Value::String).collect()));
        }
        study::slurm::SlurmOptions::parse(Some(&toml::Value::Table(t)), "the command line")
    }
}

/// The sweep's devices from its flags and the study file's `device`.
fn device_plan(a: &SweepArgs, cfg: &study::config::StudyConfig) -> Result<DevicePlan> {
    let flag = a.device.as_deref().map(|d| d.parse::<SweepDevice>().context("--device")).transpose()?;
    DevicePlan::resolve(flag.or(cfg.device), a.devices.as_deref(), a.workers_per_device, a.workers, || {
        if crate::util::device::cuda_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        }
    })
}

pub fn sweep(a: SweepArgs) -> Result<()> {
    if let Some(dir) = &a.emit_slurm {
        let cli = a.slurm.options()?;
        // Emitting writes the index and the runs' specs: not while a sweep runs the study.
        let sdir0 = runner::study_dir(&crate::study::config::StudyConfig::load(&a.study)?, a.out.as_deref());
        std::fs::create_dir_all(&sdir0)?;
        let _lock = runner::lock(
            &sdir0.join(".sweep.lock"),
            &format!("a sweep is running on {}; emit Slurm arrays when it is done", sdir0.display()),
        )?;
        let (cfg, sdir, specs, store) = runner::open(&a.study, a.out.as_deref(), a.retry_failed)?;
        let mut opts = cfg.slurm.clone().overridden_by(cli);
        // A Slurm job gets its GPU from Slurm, not from a list here: only the kind counts, and
        // `cuda` is taken at its word (the submitting host usually has no GPU).
        let flag = a.device.as_deref().map(|d| d.parse::<SweepDevice>().context("--device")).transpose()?;
        if a.devices.is_some() || matches!(flag.or(cfg.device), Some(SweepDevice::Cuda(_))) {
            opts.gres = Some(cfg.gres.clone().unwrap_or_else(|| "gpu:1".into()));
        }
        let e = study::slurm::emit(&sdir, &specs, &store, dir, &opts, a.threads.or(cfg.threads))?;
        for f in &e.files {
            println!("wrote {}", f.display());
        }
        println!(
            "{} runs, each with {} thread(s) on {} CPU(s); a local `kdlab sweep` gives the same numbers with \
             `threads = {}` in the study file (or --threads {})",
            e.runs, e.threads, e.cpus, e.threads, e.threads
        );
        println!(
            "submit with {}/submit.sh; afterwards `kdlab sweep {}{}` (or `kdlab report {}`) imports the finished runs",
            dir.display(),
            a.study.display(),
            a.out.as_ref().map(|o| format!(" --out {}", o.display())).unwrap_or_default(),
            sdir.display()
        );
        return Ok(());
    }
    let cfg = study::config::StudyConfig::load(&a.study)?;
    let opts = runner::SweepOptions {
        devices: device_plan(&a, &cfg)?,
        threads: a.threads,
        retry_failed: a.retry_failed,
        dry_run: a.dry_run,
        quiet: a.quiet,
    };
    runner::sweep(&a.study, a.out.as_deref(), &opts)?;
    Ok(())
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The study directory.
    pub dir: PathBuf,
}

pub fn status(a: StatusArgs) -> Result<()> {
    print!("{}", study::status(&a.dir)?);
    Ok(())
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// The study directory.
    pub dir: PathBuf,
    /// Where the report goes (default: <study>/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// DIR is a report directory, not a study: render its results (results.csv, timing.csv, the
    /// probes, report.md's study file) again with this kdlab, for a study whose runs are gone.
    #[arg(long, requires = "out")]
    pub from_report: bool,
}

pub fn report(a: ReportArgs) -> Result<()> {
    if a.from_report {
        let out = a.out.expect("clap requires --out");
        let results = crate::report::results::StudyResults::from_report(&a.dir)?;
        let report = crate::report::study::write_results(&results, &out)?;
        println!("wrote {} files in {}: {}", report.files.len(), out.display(), out.join("report.md").display());
        return Ok(());
    }
    // Import runs finished outside a sweep (e.g. by Slurm jobs) first.
    let study_file = a.dir.join("study.toml");
    if study_file.exists() {
        let _lock = runner::lock(
            &a.dir.join(".sweep.lock"),
            &format!("a sweep is running on {}; report when it is done", a.dir.display()),
        )?;
        runner::open(&study_file, Some(&a.dir), false)?;
    }
    let out = a.out.unwrap_or_else(|| a.dir.join("report"));
    let report = crate::report::study::write(&a.dir, &out)?;
    println!("wrote {} files in {}: {}", report.files.len(), out.display(), out.join("report.md").display());
    Ok(())
}

#[derive(Args)]
pub(crate) struct SweepRunArgs {
    /// A run's spec.json inside a study.
    pub spec: PathBuf,
    #[command(flatten)]
    pub rt: Runtime,
}

pub(crate) fn sweep_run(a: SweepRunArgs) -> Result<()> {
    let device = a.rt.init()?;
    runner::run_one(&a.spec, device)
}
