//! `kdlab import`: a PyTorch checkpoint into a kdlab run directory.
use crate::data::Shape;
use crate::train::pth::{Limits, MAX_PICKLE_DEPTH};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// A torch.save checkpoint: a state dict, or a dict holding one under state_dict, model, …
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The zoo architecture it is (kdlab models lists them), e.g. resnet56.
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub classes: usize,
    /// Input shape CxHxW, e.g. 3x32x32.
    #[arg(long)]
    pub input: Shape,
    /// The run directory to write (last.json, best.json, their weights, import.json).
    #[arg(long)]
    pub out: PathBuf,
    /// A data set to check the import on: its test accuracy is printed and recorded.
    #[arg(long)]
    pub data: Option<String>,
    /// Refuse a checkpoint whose zip entries unpack to more than this many MiB in all (a zip
    /// bomb's defence; raise it for a larger checkpoint you trust).
    #[arg(long, default_value_t = Limits::default().archive_bytes >> 20, value_name = "MIB")]
    pub max_archive_mib: u64,
    /// Refuse a pickle whose containers nest deeper than this (state dicts nest a few levels;
    /// at most 10000).
    #[arg(long, default_value_t = Limits::default().pickle_depth, value_name = "LEVELS")]
    pub max_pickle_depth: usize,
    /// Refuse a pickle whose values (tensors as float32 included) would take more than this many
    /// MiB of memory.
    #[arg(long, default_value_t = Limits::default().pickle_bytes >> 20, value_name = "MIB")]
    pub max_pickle_mib: u64,
    /// (The import and its check run on the CPU; --threads applies.)
    #[command(flatten)]
    pub rt: super::Runtime,
}

pub fn run(a: ImportArgs) -> Result<()> {
    a.rt.init()?;
    if a.max_pickle_depth == 0 || a.max_pickle_depth > MAX_PICKLE_DEPTH {
        anyhow::bail!(
            "--max-pickle-depth must be in 1..={MAX_PICKLE_DEPTH} (deeper values would overflow the stack), got {}",
            a.max_pickle_depth
        );
    }
    let limits = Limits {
        archive_bytes: a.max_archive_mib.saturating_mul(1 << 20),
        pickle_depth: a.max_pickle_depth,
        pickle_bytes: a.max_pickle_mib.saturating_mul(1 << 20),
    };
    let data = a.data.as_deref().map(crate::data::source::load).transpose()?;
    let (json, acc) =
        crate::train::import::import_with(&a.checkpoint, &a.model, a.classes, a.input, &a.out, data.as_ref(), &limits)?;
    println!(
        "imported {} as {} ({} classes, {} inputs) into {}{}",
        a.checkpoint.display(),
        a.model,
        a.classes,
        a.input,
        json.display(),
        acc.map(|a| format!("; test accuracy {:.2}%", 100.0 * a)).unwrap_or_default()
    );
    Ok(())
}
