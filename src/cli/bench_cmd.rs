//! `kdlab bench`: one benchmark as one JSON line (the flags and keys of pytorch_ref.py), or, with
//! `--pytorch`, kdlab and the PyTorch reference alternately in one invocation, with their ratio.
use crate::bench::{self, BenchResult, BenchSpec, Mode};
use crate::data::Shape;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    #[arg(long, value_enum, default_value = "train")]
    pub mode: Mode,
    /// Teacher architecture for --mode kd.
    #[arg(long)]
    pub teacher: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value = "3x32x32")]
    pub input: Shape,
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Threads (as pytorch_ref.py's --threads; default: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the JSON line only.
    #[arg(long)]
    pub json: bool,
    /// Compare against PyTorch: the python to run pytorch_ref.py with.
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "../shared/bench/pytorch_ref.py")]
    pub reference: PathBuf,
    /// With --pytorch: alternate kdlab and PyTorch this many times each (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let threads = crate::util::device::set_threads(a.threads);
    let spec = BenchSpec {
        model: a.model,
        mode: a.mode,
        teacher: a.teacher,
        batch: a.batch,
        input: a.input,
        classes: a.classes,
        steps: a.steps,
        warmup: a.warmup,
        threads,
        seed: a.seed,
    };
    let Some(python) = a.pytorch else {
        let r = bench::run(&spec, tch::Device::Cpu)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{} {:?}: {:.1} images/s (median step {:.4}s), peak RSS {:.0} MiB",
                r.model, r.mode, r.img_per_s, r.median_step_s, r.peak_rss_mb
            );
        }
        return Ok(());
    };
    // Each side runs in a fresh process, so neither inherits the other's allocator or threads.
    let me = std::env::current_exe()?;
    let (mut ours, mut theirs): (Vec<BenchResult>, Vec<BenchResult>) = (vec![], vec![]);
    for round in 0..a.rounds {
        let own = vec!["bench".to_string(), "--json".to_string()];
        ours.push(bench::run_child(&me, &own, &spec)?);
        theirs.push(bench::run_child(&python, &[a.reference.display().to_string()], &spec)?);
        eprintln!(
            "round {}: kdlab {:.1} img/s, {} {:.1} img/s",
            round + 1,
            ours[round].img_per_s,
            theirs[round].framework,
            theirs[round].img_per_s
        );
    }
    let med = |v: &[BenchResult]| {
        let mut x: Vec<f64> = v.iter().map(|r| r.img_per_s).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (k, p) = (med(&ours), med(&theirs));
    let summary = serde_json::json!({
        "model": spec.model, "mode": spec.mode, "teacher": spec.teacher, "batch": spec.batch,
        "input": spec.input.to_string(), "classes": spec.classes, "threads": threads, "rounds": a.rounds,
        "kdlab_img_per_s": k, "pytorch_img_per_s": p, "ratio": k / p,
        "pytorch": theirs[0].framework, "kdlab_peak_rss_mb": ours.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
        "pytorch_peak_rss_mb": theirs.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "{} {:?} batch {} {} {} classes, {} threads: kdlab {:.1} img/s, PyTorch {:.1} img/s, ratio {:.2} (median of {} alternating rounds)",
            spec.model, spec.mode, spec.batch, spec.input, spec.classes, threads, k, p, k / p, a.rounds
        );
    }
    Ok(())
}
