//! The capacity-mismatch curves: student accuracy against teacher size, one line per series.
use super::{stat_from, Output, StudentView, ACCURACIES};
use crate::report::results::{Stat, StudyResults};
use crate::util::svg::{LinePlot, Series};
use anyhow::Result;

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let sm = &v.model;
    for (label, pick) in ACCURACIES {
        let mut series: Vec<Series> = v
            .curve_series
            .iter()
            .map(|(name, runs)| {
                let pts: Vec<(f64, f64, f64)> = v
                    .tnames
                    .iter()
                    .filter_map(|t| {
                        let st = stat_from(runs, &t.name, pick)?;
                        Some((t.params as f64, 100.0 * st.mean, 100.0 * st.std))
                    })
                    .collect();
                Series {
                    name: name.clone(),
                    points: pts.iter().map(|p| (p.0, p.1)).collect(),
                    errors: Some(pts.iter().map(|p| p.2).collect()),
                }
            })
            .collect();
        if !v.baseline.is_empty() && !v.tnames.is_empty() {
            let st = Stat::of(&v.baseline.iter().map(|s| pick(s)).collect::<Vec<_>>());
            series.push(Series {
                name: "ce (no teacher)".into(),
                points: v.tnames.iter().map(|t| (t.params as f64, 100.0 * st.mean)).collect(),
                errors: Some(vec![100.0 * st.std; v.tnames.len()]),
            });
        }
        if series.iter().any(|s| s.points.len() > 1) {
            let plot = LinePlot {
                title: format!("{sm}: student accuracy ({label} epoch) vs teacher size"),
                x_label: "teacher parameters (log scale)".into(),
                y_label: format!("student test accuracy, {label} (%)"),
                x_log: true,
                series,
            };
            out.figure(&format!("mismatch_{sm}_{label}.svg"), plot.to_svg(), &format!("Capacity mismatch for student {sm}: {label}-epoch accuracy against teacher size, mean ± std over seeds; the line 'ce (no teacher)' is the student trained alone."))?;
        }
    }
    Ok(())
}
