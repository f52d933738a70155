//! The method × teacher tables, one per accuracy.
use super::{stat_from, Output, StudentView, ACCURACIES};
use crate::report::doc::Block;
use crate::report::results::{Stat, StudyResults};
use anyhow::Result;

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let tnames = &v.tnames;
    for (label, pick) in ACCURACIES {
        let header: Vec<String> = std::iter::once("method".to_string())
            .chain(tnames.iter().map(|t| format!("{} ({})", t.name, crate::util::fmt::count(t.params))))
            .collect();
        let mut cells: Vec<(String, Vec<Option<Stat>>)> = v
            .curve_series
            .iter()
            .map(|(name, runs)| (name.clone(), tnames.iter().map(|t| stat_from(runs, &t.name, pick)).collect()))
            .collect();
        if !v.baseline.is_empty() {
            let st = Stat::of(&v.baseline.iter().map(|s| pick(s)).collect::<Vec<_>>());
            cells.insert(0, ("ce (no teacher)".into(), vec![Some(st); tnames.len()]));
        }
        let best_per_col: Vec<f64> = (0..tnames.len())
            .map(|j| cells.iter().filter_map(|(_, c)| c[j].map(|s| s.mean)).fold(f64::NEG_INFINITY, f64::max))
            .collect();
        let rows: Vec<Vec<String>> = cells
            .iter()
            .map(|(name, c)| {
                std::iter::once(name.clone())
                    .chain(c.iter().enumerate().map(|(j, s)| match s {
                        Some(s) if s.mean == best_per_col[j] => format!("**{}**", s.cell()),
                        Some(s) => s.cell(),
                        None => "-".into(),
                    }))
                    .collect()
            })
            .collect();
        if !rows.is_empty() && !tnames.is_empty() {
            if label == ACCURACIES[0].0 {
                out.push(Block::Heading(3, "Accuracy by method and teacher".into()));
            }
            out.push(Block::Para(format!("Student `{}`, **{label}**-epoch accuracy by method (rows) and teacher (columns); the best per teacher in bold (the student trained alone included).", v.model)));
            out.push(Block::Table(header, rows));
        }
    }
    Ok(())
}
