//! Dark knowledge next to the mismatch curve: each teacher's nongt_std on the probed sets, and its
//! correlation with the student's accuracy across teachers.
use super::{probe_at, stat_from, strings, Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::StudyResults;
use crate::util::svg::{Panel, PanelPlot, Series};
use anyhow::Result;

pub fn write(r: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let (sm, tnames, probe_tau) = (&v.model, &v.tnames, r.probe_tau);
    if r.probes.is_empty() || tnames.len() < 2 {
        return Ok(());
    }
    let stds: Vec<(&str, Vec<f64>)> = r
        .probes
        .iter()
        .filter_map(|(label, p)| {
            let v: Vec<f64> =
                tnames.iter().filter_map(|t| probe_at(p, &t.name, probe_tau).map(|(_, r)| r.nongt_std)).collect();
            (v.len() == tnames.len()).then_some((*label, v))
        })
        .collect();
    if stds.is_empty() {
        return Ok(());
    }
    out.push(Block::Heading(3, "Dark knowledge and the student".into()));
    // σ(q) along each family's ladder: across families it mixes architecture with size.
    let panels: Vec<Panel> = v
        .families
        .iter()
        .filter(|(_, ts)| ts.len() > 1)
        .map(|(fam, ts)| Panel {
            title: format!("{fam} ({} teachers)", ts.len()),
            ticks: ts.iter().map(|t| format!("{}\n{}", t.name, crate::util::fmt::count(t.params))).collect(),
            series: stds
                .iter()
                .map(|(label, v)| Series {
                    name: label.to_string(),
                    points: ts
                        .iter()
                        .enumerate()
                        .filter_map(|(i, t)| tnames.iter().position(|x| x.name == t.name).map(|j| (i as f64, v[j])))
                        .collect(),
                    errors: None,
                })
                .collect(),
        })
        .collect();
    if !panels.is_empty() {
        let plot = PanelPlot {
            title: format!("Teachers' non-GT spread σ(q) at τ = {probe_tau}"),
            x_label: "teacher (by size within its family)".into(),
            y_label: "nongt_std".into(),
            panels,
            band: None,
        };
        out.figure(
            &format!("nongt_std_{sm}.svg"),
            plot.to_svg(),
            &format!("The probe's nongt_std at τ = {probe_tau} for the teachers of the curves above, one panel per family (same y axis), on each probed set."),
        )?;
    }
    // Per family (three teachers or more: fewer give no rank correlation worth reading), then
    // across every teacher, labelled as the cross-family comparison it is.
    let mut groups: Vec<(String, Vec<usize>)> = v
        .families
        .iter()
        .filter(|(_, ts)| ts.len() > 2)
        .map(|(fam, ts)| {
            (fam.clone(), ts.iter().filter_map(|t| tnames.iter().position(|x| x.name == t.name)).collect())
        })
        .collect();
    if v.families.len() > 1 {
        groups.push(("all, across families".into(), (0..tnames.len()).collect()));
    }
    let mut rows = vec![];
    for (name, runs) in &v.curve_series {
        for (label, v) in &stds {
            for (group, members) in &groups {
                let (mut xs, mut ys) = (vec![], vec![]);
                for &j in members {
                    if let Some(st) = stat_from(runs, &tnames[j].name, |s| s.final_acc) {
                        xs.push(v[j]);
                        ys.push(st.mean);
                    }
                }
                if xs.len() > 2 {
                    let f = |r: Option<f64>| r.map_or("n/a".into(), |r| format!("{r:+.3}"));
                    rows.push(vec![
                        name.clone(),
                        label.to_string(),
                        group.clone(),
                        xs.len().to_string(),
                        f(crate::probe::stats::pearson(&xs, &ys)),
                        f(crate::probe::stats::spearman(&xs, &ys)),
                    ]);
                }
            }
        }
    }
    if !rows.is_empty() {
        out.push(Block::Para(format!("Correlation across teachers between the teacher's nongt_std at τ = {probe_tau}, measured on the set named, and student `{sm}`'s final accuracy (Pearson r and Spearman ρ; positive: more distinct dark knowledge, better student), within each family of three teachers or more, and across all teachers (**across families**: architecture changes with size there).")));
        out.push(Block::Table(
            strings(&["method", "nongt_std measured on", "family", "teachers", "Pearson r", "Spearman ρ"]),
            rows,
        ));
    }
    Ok(())
}
