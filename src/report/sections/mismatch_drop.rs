//! Capacity mismatch per teacher family: how much worse the largest teacher teaches than the best.
use super::{stat_from, strings, Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::{Stat, Student, StudyResults, Teacher};
use anyhow::Result;
use std::collections::BTreeSet;

/// Rows of the capacity-mismatch table: per series and teacher family (with at least two
/// teachers), the best-teaching teacher against the family's largest, on final accuracy.
fn mismatch_rows(series: &[(String, Vec<&Student>)], teachers: &[&Teacher]) -> Vec<Vec<String>> {
    let families: BTreeSet<&str> = teachers.iter().map(|t| t.family.as_str()).collect();
    let mut rows = vec![];
    for (name, runs) in series {
        for fam in &families {
            let stats: Vec<(&Teacher, Stat)> = teachers
                .iter()
                .filter(|t| t.family == *fam)
                .filter_map(|t| stat_from(runs, &t.name, |s| s.final_acc).map(|s| (*t, s)))
                .collect();
            if stats.len() < 2 {
                continue;
            }
            let best = stats.iter().max_by(|a, b| a.1.mean.total_cmp(&b.1.mean)).expect("two or more");
            let largest = stats.iter().max_by_key(|(t, _)| t.params).expect("two or more");
            let drop = best.1.mean - largest.1.mean;
            let cell = |s: &Stat| format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std);
            rows.push(vec![
                name.clone(),
                fam.to_string(),
                best.0.name.clone(),
                cell(&best.1),
                largest.0.name.clone(),
                cell(&largest.1),
                format!("{:.2}", 100.0 * drop),
                if drop > 2.0 * best.1.std.max(largest.1.std) { "yes".into() } else { "no".into() },
            ]);
        }
    }
    rows
}

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let rows = mismatch_rows(&v.curve_series, &v.tnames);
    if !rows.is_empty() {
        out.push(Block::Heading(3, "Capacity mismatch within each family".into()));
        out.push(Block::Para(format!("Capacity mismatch for student `{}`, per method and teacher family (final-epoch accuracy, mean ± std over seeds): the teacher that teaches best, the family's largest teacher, and the **drop** from the first to the second; **mismatch** marks a drop larger than twice the larger of the two standard deviations. A remedy flattens the curve where its drop is smaller than KD's.", v.model)));
        out.push(Block::Table(
            strings(&["method", "family", "best teacher", "acc", "largest teacher", "acc", "drop", "mismatch"]),
            rows,
        ));
    }
    Ok(())
}
