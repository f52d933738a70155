//! The capacity-mismatch curves: student accuracy along each family's ladder of teachers, one
//! panel per family on a shared y axis, for the featured series; the student alone is a band.
use super::{stat_from, Output, StudentView, ACCURACIES};
use crate::report::doc::Block;
use crate::report::results::{Stat, StudyResults};
use crate::util::svg::{Band, Panel, PanelPlot, Series};
use anyhow::Result;

/// A teacher's x label: its name over its size.
fn tick(t: &crate::report::results::Teacher) -> String {
    format!("{}\n{}", t.name, crate::util::fmt::count(t.params))
}

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let sm = &v.model;
    let featured: Vec<&(String, Vec<&crate::report::results::Student>)> =
        v.featured.iter().filter_map(|f| v.curve_series.iter().find(|(name, _)| name == f)).collect();
    let mut heading = false;
    for (label, pick) in ACCURACIES {
        // A panel per family with a curve: two teachers or more (a single teacher has no ladder).
        let panels: Vec<Panel> = v
            .families
            .iter()
            .filter(|(_, ts)| ts.len() > 1)
            .map(|(fam, ts)| Panel {
                title: format!("{fam} ({} teachers)", ts.len()),
                ticks: ts.iter().map(|t| tick(t)).collect(),
                series: featured
                    .iter()
                    .filter_map(|(name, runs)| {
                        let pts: Vec<(f64, f64, f64)> = ts
                            .iter()
                            .enumerate()
                            .filter_map(|(i, t)| {
                                let st = stat_from(runs, &t.name, pick)?;
                                Some((i as f64, 100.0 * st.mean, 100.0 * st.std))
                            })
                            .collect();
                        (!pts.is_empty()).then(|| Series {
                            name: name.clone(),
                            points: pts.iter().map(|p| (p.0, p.1)).collect(),
                            errors: Some(pts.iter().map(|p| p.2).collect()),
                        })
                    })
                    .collect(),
            })
            .filter(|p| p.series.iter().any(|s| s.points.len() > 1))
            .collect();
        if panels.is_empty() {
            continue;
        }
        if !heading {
            out.push(Block::Heading(3, "Capacity mismatch curves".into()));
            heading = true;
        }
        let band = (!v.baseline.is_empty()).then(|| {
            let st = Stat::of(&v.baseline.iter().map(|s| pick(s)).collect::<Vec<_>>());
            Band { name: "ce (no teacher)".into(), mean: 100.0 * st.mean, std: 100.0 * st.std }
        });
        let rest = v.curve_series.len() - featured.len();
        let plot = PanelPlot {
            title: format!("{sm}: student accuracy ({label} epoch) along each family's ladder of teachers"),
            x_label: "teacher (by size within its family)".into(),
            y_label: format!("student test accuracy, {label} (%)"),
            panels,
            band,
        };
        let mut caption = format!("Capacity mismatch for student {sm}: {label}-epoch accuracy against teacher size within each family (one panel per family, same y axis; teachers evenly spaced by size), mean ± std over seeds; the grey band is the student trained alone (mean ± std). Points of different series are shifted a few pixels apart so that their error bars stay visible.");
        if rest > 0 {
            caption += &format!(
                " The {} featured series are drawn; the other {rest} are in the tables below.",
                featured.len()
            );
        }
        out.figure(&format!("mismatch_{sm}_{label}.svg"), plot.to_svg(), &caption)?;
    }
    Ok(())
}
