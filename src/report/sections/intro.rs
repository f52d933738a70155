//! The report's title and reading guide, and each student's heading.
use super::{Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::StudyResults;
use anyhow::Result;

/// The title and how to read the numbers.
pub fn write(r: &StudyResults, out: &mut Output) -> Result<()> {
    out.push(Block::Heading(1, format!("Study `{}`", r.name)));
    out.push(Block::Para(format!(
        "{} of {} runs done ({} failed). Student accuracies are test top-1 in %, mean ± sample standard deviation over seeds (number of seeds in brackets). **final** = after the last epoch; **best** = the best epoch's (an optimistic choice on the test set, reported separately because papers mix the two).",
        r.done(),
        r.planned(),
        r.failed().len()
    )));
    Ok(())
}

/// The heading of a student's part of the report.
pub(crate) fn student_heading(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    out.push(Block::Heading(2, format!("Student `{}`", v.model)));
    Ok(())
}
