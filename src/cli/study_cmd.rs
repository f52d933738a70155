//! `kdlab sweep`, `kdlab status`, `kdlab report`, and the hidden `kdlab sweep-run` a sweep's
//! workers (and Slurm jobs) execute.
use super::Runtime;
use crate::study::{self, runner};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SweepArgs {
    /// The study file (TOML).
    pub study: PathBuf,
    /// Study directory (default: a directory named after the study).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs trained at once, each in its own process.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
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

pub fn sweep(a: SweepArgs) -> Result<()> {
    if let Some(dir) = &a.emit_slurm {
        let (_, sdir, specs, store) = runner::open(&a.study, a.out.as_deref(), a.retry_failed)?;
        let files = study::emit_slurm(&sdir, &specs, &store, dir)?;
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
    let opts = runner::SweepOptions {
        workers: a.workers,
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
