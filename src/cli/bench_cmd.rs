//! `kdlab bench`: one benchmark as one JSON line (the flags and keys of pytorch_ref.py), or, with
//! `--pytorch`, kdlab and the PyTorch reference alternately in one invocation, with their ratio.
use crate::bench::{self, BenchResult, BenchSpec, Mode};
use crate::data::Shape;
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct BenchArgs {
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
    /// Compare against PyTorch: the python to run pytorch_ref.py with (timed in both its layouts,
    /// contiguous and channels-last; the ratio is against the faster).
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "../shared/bench/pytorch_ref.py")]
    pub reference: PathBuf,
    /// With --pytorch: alternate kdlab and PyTorch this many times each (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Run the standard suite (resnet20/resnet8 training and resnet20/resnet56 inference on
    /// 3x32x32 with 100 classes, the Fashion-MNIST ladder nets on 1x28x28 with 10 classes)
    /// instead of one model; with --pytorch, print the ratio for each.
    #[arg(long)]
    pub suite: bool,
    /// Where kdlab runs (cpu, cuda, auto). The PyTorch reference script runs on the CPU, so
    /// --pytorch needs the CPU.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::util::device::DeviceChoice,
    /// kdlab's memory layout for convolutions (auto: channels-last on the CPU when every convolution has at least 16 channels).
    #[arg(long, value_enum, default_value = "auto")]
    pub memory_format: crate::util::device::MemoryFormat,
    /// Mixed precision of the forward pass (off, bf16, fp16), on both sides of a comparison.
    #[arg(long, value_enum, default_value = "off")]
    pub amp: crate::train::amp::Amp,
    /// With --suite: also write the results as a Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Time the data loader on this data set instead of a model: images decoded and transformed
    /// per second, for training and evaluation views (`--batch` images a batch, `--steps`
    /// batches after one warm-up batch, `--threads` decoding threads; default: every core), e.g.
    /// `kdlab bench --data imgs:transform=imagenet,store=stream --batch 64 --threads 2`.
    #[arg(long)]
    pub data: Option<String>,
}

/// The standard suite: (model, mode, input, classes).
const SUITE: &[(&str, Mode, &str, usize)] = &[
    ("resnet20", Mode::Train, "3x32x32", 100),
    ("resnet8", Mode::Train, "3x32x32", 100),
    ("resnet20", Mode::Infer, "3x32x32", 100),
    ("resnet56", Mode::Infer, "3x32x32", 100),
    ("cnn_w1", Mode::Train, "1x28x28", 10),
    ("cnn_w2", Mode::Train, "1x28x28", 10),
    ("cnn_w4", Mode::Train, "1x28x28", 10),
    ("cnn_w8", Mode::Train, "1x28x28", 10),
    ("mlp_256x1", Mode::Train, "1x28x28", 10),
    ("resnet20", Mode::Train, "1x28x28", 10),
];

pub fn run(a: BenchArgs) -> Result<()> {
    crate::util::device::set_memory_format(a.memory_format);
    let device = crate::util::device::resolve(a.device)?;
    if a.pytorch.is_some() && device != tch::Device::Cpu {
        anyhow::bail!("--pytorch compares with ../shared/bench/pytorch_ref.py, which runs on the CPU: drop --pytorch to time kdlab alone on {device:?}");
    }
    if a.suite {
        return suite(&a);
    }
    if let Some(data) = &a.data {
        return bench_loader(data, &a);
    }
    let threads = crate::util::device::set_threads(a.threads);
    let spec = BenchSpec {
        model: a.model.clone(),
        mode: a.mode,
        teacher: a.teacher.clone(),
        batch: a.batch,
        input: a.input,
        classes: a.classes,
        steps: a.steps,
        warmup: a.warmup,
        threads,
        seed: a.seed,
        amp: a.amp,
    };
    let Some(python) = a.pytorch.clone() else {
        let r = bench::run(&spec, device)?;
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
    let (ours, theirs) = compare(&spec, &a, Some(&python))?;
    let theirs = theirs.expect("PyTorch was run");
    let (k, krss, p, prss, framework, layout) =
        (ours.img_per_s, ours.peak_mb, theirs.img_per_s, theirs.peak_mb, theirs.framework, theirs.layout);
    let summary = serde_json::json!({
        "model": spec.model, "mode": spec.mode, "teacher": spec.teacher, "batch": spec.batch,
        "input": spec.input.to_string(), "classes": spec.classes, "threads": threads, "rounds": a.rounds,
        "kdlab_img_per_s": k, "pytorch_img_per_s": p, "ratio": k / p, "pytorch": framework, "pytorch_layout": layout,
        "kdlab_peak_rss_mb": krss, "pytorch_peak_rss_mb": prss,
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "{} {:?} batch {} {} {} classes, {} threads: kdlab {:.1} img/s, PyTorch {:.1} img/s ({layout}, the faster of its two layouts), ratio {:.2} (median of {} alternating rounds)",
            spec.model, spec.mode, spec.batch, spec.input, spec.classes, threads, k, p, k / p, a.rounds
        );
    }
    Ok(())
}

/// Median images/s and peak memory of one side of a comparison.
struct Side {
    img_per_s: f64,
    peak_mb: f64,
    framework: String,
    /// PyTorch's memory layout on this side: the faster of the two it was timed in.
    layout: &'static str,
}

/// PyTorch eager's two layouts, timed each round: a ratio is taken against the faster, PyTorch's
/// best eager configuration, since which one wins depends on the model (channels-last is faster
/// from `cnn_w2` up and for the ResNets on this CPU, slower for `cnn_w1`; docs/performance.md).
const PYTORCH_LAYOUTS: [(&str, &[&str]); 2] = [("contiguous", &[]), ("channels-last", &["--channels-last"])];

/// Medians over rounds of kdlab (and PyTorch, when given) for one spec, each side in a fresh process.
fn compare(spec: &BenchSpec, a: &BenchArgs, python: Option<&Path>) -> Result<(Side, Option<Side>)> {
    let (reference, rounds) = (&a.reference, a.rounds);
    let me = std::env::current_exe()?;
    let own = vec![
        "bench".to_string(),
        "--json".to_string(),
        "--memory-format".to_string(),
        crate::util::fmt::flag_value(&a.memory_format),
        "--device".to_string(),
        crate::util::fmt::flag_value(&a.device),
    ];
    let mut ours = vec![];
    let mut theirs: [Vec<BenchResult>; 2] = [vec![], vec![]];
    for _ in 0..rounds.max(1) {
        ours.push(bench::run_child(&me, &own, spec)?);
        if let Some(py) = python {
            for ((_, extra), runs) in PYTORCH_LAYOUTS.iter().zip(theirs.iter_mut()) {
                let mut args = vec![reference.display().to_string()];
                args.extend(extra.iter().map(|f| f.to_string()));
                runs.push(bench::run_child(py, &args, spec)?);
            }
        }
    }
    let med = |v: &[BenchResult]| {
        let mut x: Vec<f64> = v.iter().map(|r| r.img_per_s).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let side = |v: &[BenchResult], layout: &'static str| Side {
        img_per_s: med(v),
        peak_mb: v.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
        framework: v[0].framework.clone(),
        layout,
    };
    let best = (!theirs[0].is_empty()).then(|| {
        let [a, b] = [side(&theirs[0], PYTORCH_LAYOUTS[0].0), side(&theirs[1], PYTORCH_LAYOUTS[1].0)];
        if b.img_per_s > a.img_per_s {
            b
        } else {
            a
        }
    });
    Ok((side(&ours, "kdlab"), best))
}

fn suite(a: &BenchArgs) -> Result<()> {
    let threads = if a.threads == 0 { crate::util::device::available_cores() } else { a.threads };
    let mut rows = vec![];
    let mut framework = String::new();
    for &(model, mode, input, classes) in SUITE {
        let spec = BenchSpec {
            model: model.into(),
            mode,
            teacher: None,
            batch: a.batch,
            input: input.parse()?,
            classes,
            steps: a.steps,
            warmup: a.warmup,
            threads,
            seed: a.seed,
            amp: a.amp,
        };
        let (ours, theirs) = compare(&spec, a, a.pytorch.as_deref())?;
        let (k, krss) = (ours.img_per_s, ours.peak_mb);
        let mode_s = format!("{mode:?}").to_lowercase();
        let mut row = vec![
            model.to_string(),
            mode_s,
            input.to_string(),
            classes.to_string(),
            format!("{k:.1}"),
            format!("{krss:.0}"),
        ];
        match theirs {
            Some(Side { img_per_s: p, peak_mb: prss, framework: fw, layout }) => {
                framework = fw;
                row.extend([format!("{p:.1}"), layout.to_string(), format!("{prss:.0}"), format!("{:.2}", k / p)]);
                eprintln!(
                    "{model} {input} {mode:?}: kdlab {k:.1} img/s, PyTorch {p:.1} img/s ({layout}), ratio {:.2}",
                    k / p
                );
            }
            None => eprintln!("{model} {input} {mode:?}: kdlab {k:.1} img/s"),
        }
        rows.push(row);
    }
    let mut header = vec!["model", "mode", "input", "classes", "kdlab img/s", "kdlab peak MiB"];
    if a.pytorch.is_some() {
        header.extend(["PyTorch img/s", "PyTorch layout", "PyTorch peak MiB", "ratio"]);
    }
    print!("{}", crate::util::fmt::table(&header, &rows));
    if let Some(md) = &a.markdown {
        let mut s = format!(
            "Batch {}, {threads} threads, median of {} timed steps after {} warm-up steps, median of {} alternating rounds{}; PyTorch timed in both layouts, the faster shown.\n\n| {} |\n|{}|\n",
            a.batch,
            a.steps,
            a.warmup,
            a.rounds,
            if framework.is_empty() { String::new() } else { format!("; reference {framework}") },
            header.join(" | "),
            header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in &rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        crate::util::atomic::write_bytes(md, s.as_bytes())?;
        println!("wrote {}", md.display());
    }
    Ok(())
}

/// `kdlab bench --data`: the loader's throughput on training and on evaluation views.
fn bench_loader(spec: &str, a: &BenchArgs) -> Result<()> {
    use crate::data::loader::{Feed, Loader, LoaderSpec};
    let ds = crate::data::source::load(spec)?;
    let threads = if a.threads > 0 { a.threads } else { crate::data::imagefolder::threads() };
    let mut rows = vec![];
    for (views, augment) in [("train", true), ("eval", false)] {
        let feed = match ds.feed(if augment { "train" } else { "test" }, augment)? {
            Feed::Files(f) => {
                let mut f = std::sync::Arc::try_unwrap(f).expect("a fresh feed");
                f.threads = threads;
                Feed::Files(std::sync::Arc::new(f))
            }
            memory => memory,
        };
        let loader_spec = LoaderSpec { batch_size: a.batch, shuffle: augment, seed: a.seed, drop_last: false };
        let mut loader = Loader::from_feed(feed, loader_spec, 0);
        let available = loader.batches();
        if available < 2 {
            anyhow::bail!("{spec}: {views} views give {available} batches of {}; give a smaller --batch", a.batch);
        }
        loader.next(); // warm-up: threads started, files in the page cache as in a later epoch
        let start = std::time::Instant::now();
        let images: usize = loader.by_ref().take(a.steps.min(available - 1)).map(|b| b.len()).sum();
        let secs = start.elapsed().as_secs_f64();
        loader.finish()?;
        rows.push(
            serde_json::json!({"views": views, "images": images, "seconds": secs, "img_per_s": images as f64 / secs}),
        );
    }
    let shape = ds.shape().to_string();
    let store = match &ds.stream {
        Some(s) if s.in_memory() => "memory",
        Some(_) => "stream",
        None => "fixed (decoded in memory)",
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"data": spec, "shape": shape, "store": store, "threads": threads, "batch": a.batch, "results": rows})
        );
        return Ok(());
    }
    for r in &rows {
        println!(
            "loader {spec} ({shape}, {store}), {threads} decoding threads, batch {}: {} views {:.1} images/s ({} images in {:.2} s)",
            a.batch, r["views"].as_str().unwrap_or(""), r["img_per_s"].as_f64().unwrap_or(0.0), r["images"], r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
