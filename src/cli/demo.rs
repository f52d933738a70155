//! `kdlab demo`: the main job in miniature, on the embedded Fashion-MNIST subset — a capacity
//! ladder of three teachers of growing size and a small student, then a table.
use super::Runtime;
use crate::data;
use crate::train::config::TrainConfig;
use crate::train::objective::CrossEntropy;
use crate::train::trainer::{self, RunOptions};
use crate::util::fmt;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct DemoArgs {
    /// Where the runs go (started again, finished runs are reused).
    #[arg(long, default_value = "demo-runs")]
    pub out: PathBuf,
    /// Teacher ladder, smallest first.
    #[arg(long, value_delimiter = ',', default_value = "resnet8,resnet14,resnet20")]
    pub teachers: Vec<String>,
    /// The student trained without a teacher, as the reference the later steps distil into.
    #[arg(long, default_value = "cnn_w1")]
    pub student: String,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub rt: Runtime,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let device = a.rt.init()?;
    let started = Instant::now();
    let ds = data::embedded::load()?;
    println!(
        "kdlab demo: {} ({} train / {} test images, {}), {} epochs per model, on {}",
        ds.name,
        ds.train.len(),
        ds.test.len(),
        ds.shape(),
        a.epochs,
        crate::util::device::describe(device)
    );
    let mut rows = vec![];
    let models: Vec<(&str, &String)> =
        a.teachers.iter().map(|t| ("teacher", t)).chain(std::iter::once(("student", &a.student))).collect();
    for (role, name) in models {
        let cfg = TrainConfig {
            model: name.clone(),
            data: ds.name.clone(),
            epochs: a.epochs,
            seed: a.seed,
            save_every: 0,
            ..Default::default()
        };
        let out = a.out.join(name);
        println!("\n[{role}] {name} → {}", out.display());
        let opts = RunOptions::new(out, device, "train");
        let r = trainer::train(&cfg, &ds, &mut CrossEntropy, &opts)?;
        rows.push(vec![
            name.clone(),
            role.to_string(),
            fmt::count(r.params),
            format!("{:.2}%", 100.0 * r.final_test_acc),
            format!("{:.2}%", 100.0 * r.best_test_acc),
            fmt::duration(r.wall_time_s),
        ]);
    }
    println!("\nCapacity ladder on {} ({} epochs each, seed {}):", ds.name, a.epochs, a.seed);
    print!("{}", fmt::table(&["model", "role", "params", "test acc", "best", "train time"], &rows));
    println!("demo finished in {}; runs in {}", fmt::duration(started.elapsed().as_secs_f64()), a.out.display());
    Ok(())
}
