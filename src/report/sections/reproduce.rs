//! How to reproduce the study: the kdlab version and the study file.
use super::Output;
use crate::report::doc::Block;
use crate::report::results::StudyResults;
use anyhow::Result;

pub fn write(r: &StudyResults, out: &mut Output) -> Result<()> {
    out.push(Block::Heading(2, "Reproduce".into()));
    out.push(Block::Para(format!("kdlab {}; `kdlab sweep study.toml` with this study file, then `kdlab report`. Per-run metrics: `results.csv` (one row per run), `summary.csv` (grouped), `timing.csv` (wall times).", r.version)));
    out.push(Block::Code(r.study_toml.clone()));
    Ok(())
}
