//! `kdlab import`: a PyTorch checkpoint into a kdlab run directory.
use crate::data::Shape;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportArgs {
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
    /// (The import and its check run on the CPU; --threads applies.)
    #[command(flatten)]
    pub rt: super::Runtime,
}

pub fn run(a: ImportArgs) -> Result<()> {
    a.rt.init()?;
    let data = a.data.as_deref().map(crate::data::source::load).transpose()?;
    let (json, acc) = crate::train::import::import(&a.checkpoint, &a.model, a.classes, a.input, &a.out, data.as_ref())?;
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
