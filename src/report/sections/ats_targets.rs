//! ATS-family targets: how often the target ranks a wrong class first, and ISATS's τ2.
use super::{strings, Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::{Student, StudyResults, Teacher};
use anyhow::Result;
use std::collections::BTreeMap;

/// Rows of the ATS-family target table: per series and teacher, the seeds' mean of the last
/// epoch's target statistics (`ats_target`, `isats_tau2` in the run's `final_extra`).
fn target_statistics(by_series: &BTreeMap<String, Vec<&Student>>, teachers: &[&Teacher]) -> Vec<Vec<String>> {
    let mut rows = vec![];
    for (name, runs) in by_series {
        for t in teachers {
            let extras: Vec<&serde_json::Value> = runs
                .iter()
                .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()))
                .filter_map(|s| s.extra.as_ref())
                .filter(|e| e.get("ats_target").is_some_and(|v| !v.is_null()))
                .collect();
            if extras.is_empty() {
                continue;
            }
            let mean = |path: [&str; 2], scale: f64, digits: usize| -> String {
                let v: Vec<f64> = extras.iter().filter_map(|e| e[path[0]][path[1]].as_f64()).collect();
                if v.is_empty() {
                    "-".into()
                } else {
                    format!("{:.*}", digits, scale * v.iter().sum::<f64>() / v.len() as f64)
                }
            };
            rows.push(vec![
                name.clone(),
                t.name.clone(),
                mean(["ats_target", "teacher_wrong"], 100.0, 2),
                mean(["ats_target", "flipped_where_teacher_right"], 100.0, 2),
                mean(["isats_tau2", "p50"], 1.0, 3),
                mean(["isats_tau2", "at_tau2_min"], 100.0, 1),
                mean(["isats_tau2", "at_floor"], 100.0, 1),
                mean(["isats_tau2", "at_tau1"], 100.0, 1),
                mean(["isats_tau2", "fallback"], 100.0, 1),
                mean(["isats_tau2", "interior"], 100.0, 1),
            ]);
        }
    }
    rows
}

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let rows = target_statistics(&v.by_series, &v.tnames);
    if !rows.is_empty() {
        out.push(Block::Heading(3, "ATS-family targets".into()));
        out.push(Block::Para(format!("ATS-family targets for student `{}` (last epoch, mean over seeds): the share of transfer-set samples the teacher gets wrong, the share where the teacher is right but the ATS target ranks a wrong class first (**flipped**), and, for ISATS, the median chosen τ2 and where it lies, each sample counted once: at the lower bound τ2_min, at the order constraint's floor, at τ1 (the search's upper bound), given τ1 by the fallback (the teacher is wrong, or right by less than the margin), or strictly inside.", v.model)));
        out.push(Block::Table(
            strings(&[
                "series",
                "teacher",
                "teacher wrong %",
                "flipped %",
                "τ2 median",
                "at τ2_min %",
                "at floor %",
                "at τ1 %",
                "fallback %",
                "interior %",
            ]),
            rows,
        ));
    }
    Ok(())
}
