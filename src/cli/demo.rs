//! `kdlab demo`: the main job in miniature. It runs `studies/demo.toml` (compiled in) on the
//! embedded Fashion-MNIST subset: a capacity ladder of three teachers, their dark-knowledge probe,
//! a student distilled from each with KD, ATS, ISATS and DKD (and trained alone), and the report.
use crate::report::doc::{self, Block};
use crate::study::runner::{self, SweepOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

pub(crate) const DEMO_STUDY: &str = include_str!("../../studies/demo.toml");

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// The demo's study directory (started again, finished runs are reused).
    #[arg(long, default_value = "demo-study")]
    pub out: PathBuf,
    /// Runs trained at once.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let study = a.out.join("demo.toml");
    crate::util::atomic::write_bytes(&study, DEMO_STUDY.as_bytes())?;
    println!("kdlab demo: studies/demo.toml on the embedded Fashion-MNIST subset (200 training images per class of its 10,000, 2,000 test images)");
    let opts = SweepOptions {
        devices: crate::study::devices::DevicePlan::cpu(a.workers),
        threads: None,
        retry_failed: false,
        dry_run: false,
        quiet: true,
    };
    let dir = runner::sweep(&study, Some(&a.out), &opts)?;
    let report = crate::report::study::write(&dir, &dir.join("report"))?;
    let tables: Vec<Block> = report
        .blocks
        .into_iter()
        .filter(|b| matches!(b, Block::Heading(..) | Block::Table(..) | Block::Para(..)))
        .collect();
    println!("\n{}", doc::markdown(&tables).trim_end());
    println!(
        "\ndemo finished in {}; the full report with plots is {} (and report.html beside it)",
        crate::util::fmt::duration(started.elapsed().as_secs_f64()),
        dir.join("report/report.md").display()
    );
    Ok(())
}
