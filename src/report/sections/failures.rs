//! The runs that failed, with their errors.
use super::Output;
use crate::report::doc::Block;
use crate::report::results::StudyResults;
use anyhow::Result;

pub fn write(r: &StudyResults, out: &mut Output) -> Result<()> {
    let failed = r.failed();
    if !failed.is_empty() {
        out.push(Block::Heading(2, "Failed runs".into()));
        out.push(Block::Table(
            vec!["run".into(), "error".into()],
            failed
                .iter()
                .map(|r| vec![r.name.clone(), r.error.clone().unwrap_or_default().replace('|', "/")])
                .collect(),
        ));
    }
    Ok(())
}
