//! `kdlab sweep`, `kdlab status`, `kdlab report`, and the hidden `kdlab sweep-run` a sweep's
//! workers (and Slurm jobs) execute.
use super::Runtime;
use crate::study::devices::{DevicePlan, SweepDevice};
use crate::study::{self, runner};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SweepArgs {
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
    /// Threads per worker (default: the cores shared among the workers).
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
        let (cfg, sdir, specs, store) = runner::open(&a.study, a.out.as_deref(), a.retry_failed)?;
        // A Slurm job gets its GPU from Slurm, not from a list here: only the kind counts, and
        // `cuda` is taken at its word (the submitting host usually has no GPU).
        let flag = a.device.as_deref().map(|d| d.parse::<SweepDevice>().context("--device")).transpose()?;
        let gpu = a.devices.is_some() || matches!(flag.or(cfg.device), Some(SweepDevice::Cuda(_)));
        let gres = gpu.then(|| cfg.gres.clone().unwrap_or_else(|| "gpu:1".into()));
        let files = study::emit_slurm(&sdir, &specs, &store, dir, gres.as_deref())?;
        for f in files {
            println!("wrote {}", f.display());
        }
        println!(
            "submit with {}/submit.sh; afterwards `kdlab sweep {}` (or `kdlab report`) imports the finished runs",
            dir.display(),
            a.study.display()
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
pub struct StatusArgs {
    /// The study directory.
    pub dir: PathBuf,
}

pub fn status(a: StatusArgs) -> Result<()> {
    print!("{}", study::status(&a.dir)?);
    Ok(())
}

#[derive(Args)]
pub struct ReportArgs {
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
pub struct SweepRunArgs {
    /// A run's spec.json inside a study.
    pub spec: PathBuf,
    #[command(flatten)]
    pub rt: Runtime,
}

pub fn sweep_run(a: SweepRunArgs) -> Result<()> {
    let device = a.rt.init()?;
    runner::run_one(&a.spec, device)
}
