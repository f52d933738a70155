//! The command line. Thin by design: every command parses its flags, calls the library, and prints.
mod advise_cmd;
mod bench_cmd;
mod data_cmd;
mod demo;
mod distill_cmd;
mod import_cmd;
mod models_cmd;
mod probe_cmd;
mod study_cmd;
mod train_cmd;
mod watch_cmd;

use crate::util::device::{self, DeviceChoice};
use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kdlab",
    version,
    about = "A knowledge-distillation laboratory: train teacher ladders, probe their dark knowledge, distil, sweep, report"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to compute.
#[derive(Args, Clone, Debug)]
pub(crate) struct Runtime {
    /// cpu, cuda, or auto (CUDA when LibTorch has it and a GPU is present, else the CPU).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub device: DeviceChoice,
    /// LibTorch intra-op threads (0: every core).
    #[arg(long, default_value_t = 0, global = true)]
    pub threads: usize,
    /// Memory layout of convolution weights and activations (auto: channels-last on the CPU when every convolution has at least 16 channels).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub memory_format: device::MemoryFormat,
}

impl Runtime {
    /// Applies the thread setting and resolves the device.
    pub(crate) fn init(&self) -> Result<tch::Device> {
        device::set_threads(self.threads);
        device::set_memory_format(self.memory_format);
        device::resolve(self.device)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (a teacher, or a student without distillation).
    Train(Box<train_cmd::TrainArgs>),
    /// Distil a student from a trained teacher with a method from the registry.
    Distill(Box<distill_cmd::DistillArgs>),
    /// One method's loss terms on saved logits (the code the trainer runs), for checking.
    Loss(distill_cmd::LossArgs),
    /// The teacher-logit cache: a teacher's logits for every training image and view.
    #[command(subcommand)]
    Cache(distill_cmd::CacheCommand),
    /// Accuracy and per-class accuracy of a trained run.
    Eval(train_cmd::EvalArgs),
    /// Save a run's logits (and the labels) as NumPy .npy files.
    Logits(train_cmd::LogitsArgs),
    /// Dark-knowledge metrics of teachers (from runs or .npy logits): tables, JSON, CSV, plots.
    Probe(probe_cmd::ProbeArgs),
    /// Rank teachers and checkpoints for a student by validation NLL, without training it (and,
    /// given a study, how well that ranking matched the KD students it measured).
    Advise(advise_cmd::AdviseArgs),
    /// Run a study (teachers × students × methods × hyper-parameters × seeds), resumably.
    Sweep(study_cmd::SweepArgs),
    /// Progress of a study: done, running, failed, queued, time left.
    Status(study_cmd::StatusArgs),
    /// Live view of a running sweep: workers, counts, ETA, failures, loss curves (q quits).
    Watch(watch_cmd::WatchArgs),
    /// Write a study's report (Markdown, HTML with inline SVG plots, CSV).
    Report(study_cmd::ReportArgs),
    /// Train one run of a study (what sweep workers and Slurm jobs execute).
    #[command(hide = true)]
    SweepRun(study_cmd::SweepRunArgs),
    /// Get data sets and look at them.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// A PyTorch checkpoint (state dict) into a run directory, usable as a teacher. The safe way
    /// to use a downloaded model: nothing in the file is executed (unlike a TorchScript file).
    Import(import_cmd::ImportArgs),
    /// List the model zoo with parameter counts.
    Models(models_cmd::ModelsArgs),
    /// The main job in miniature: a teacher ladder, its probe, distilled students and the report.
    Demo(demo::DemoArgs),
    /// Training/inference throughput, alone or side by side with the PyTorch reference.
    Bench(bench_cmd::BenchArgs),
}

/// The command line, with a negative number accepted wherever a value is expected: clap would
/// otherwise take `--tau -1` for an unknown flag `-1`, and kdlab's own range check (which names
/// the flag and the valid range) would never speak. Floating-point flags and lists take any value
/// that starts with a hyphen, since clap's notion of a negative number covers neither `-1e-4`,
/// `-inf` nor `-1,2` (the price: a forgotten value, `--tau --json p.json`, makes `--json` the
/// value and `p.json` an unexpected argument — still an error); every other flag that takes a value accepts negative integers, for clap's
/// "invalid value '-1' for '--epochs <EPOCHS>'" (or kdlab's check) to speak.
pub fn command() -> clap::Command {
    fn negatives(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| {
            if !a.get_action().takes_values() {
                return a;
            }
            let float = a.get_value_parser().type_id() == std::any::TypeId::of::<f64>();
            let list = a.get_value_delimiter().is_some();
            a.allow_negative_numbers(true).allow_hyphen_values(float || list)
        })
        .mut_subcommands(negatives)
    }
    negatives(Cli::command())
}

pub fn main() -> Result<()> {
    let mut matches = command().get_matches();
    let cli = Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Train(a) => train_cmd::train(*a),
        Command::Distill(a) => distill_cmd::distill(*a),
        Command::Loss(a) => distill_cmd::loss(a),
        Command::Cache(c) => distill_cmd::cache(c),
        Command::Eval(a) => train_cmd::eval(a),
        Command::Logits(a) => train_cmd::logits(a),
        Command::Probe(a) => probe_cmd::run(a),
        Command::Advise(a) => advise_cmd::run(a),
        Command::Sweep(a) => study_cmd::sweep(a),
        Command::Status(a) => study_cmd::status(a),
        Command::Watch(a) => watch_cmd::run(a),
        Command::Report(a) => study_cmd::report(a),
        Command::SweepRun(a) => study_cmd::sweep_run(a),
        Command::Data(c) => data_cmd::run(c),
        Command::Import(a) => import_cmd::run(a),
        Command::Models(a) => models_cmd::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench_cmd::run(a),
    }
}
