//! Dark knowledge next to the mismatch curve: each teacher's nongt_std on the probed sets, and its
//! correlation with the student's accuracy across teachers.
use super::{probe_at, stat_from, strings, Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::StudyResults;
use crate::util::svg::{LinePlot, Series};
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
    let plot = LinePlot {
        title: format!("Teachers' non-GT spread σ(q) at τ = {probe_tau}"),
        x_label: "teacher parameters (log scale)".into(),
        y_label: "nongt_std".into(),
        x_log: true,
        series: stds
            .iter()
            .map(|(label, v)| Series {
                name: label.to_string(),
                points: tnames.iter().zip(v).map(|(t, s)| (t.params as f64, *s)).collect(),
                errors: None,
            })
            .collect(),
    };
    out.figure(
        &format!("nongt_std_{sm}.svg"),
        plot.to_svg(),
        &format!("The probe's nongt_std at τ = {probe_tau} for the teachers of the curve above (same x axis), on each probed set."),
    )?;
    let mut rows = vec![];
    for (name, runs) in &v.curve_series {
        for (label, v) in &stds {
            let (mut xs, mut ys) = (vec![], vec![]);
            for (t, s) in tnames.iter().zip(v) {
                if let Some(st) = stat_from(runs, &t.name, |s| s.final_acc) {
                    xs.push(*s);
                    ys.push(st.mean);
                }
            }
            if xs.len() > 2 {
                let f = |r: Option<f64>| r.map_or("n/a".into(), |r| format!("{r:+.3}"));
                rows.push(vec![
                    name.clone(),
                    label.to_string(),
                    xs.len().to_string(),
                    f(crate::probe::stats::pearson(&xs, &ys)),
                    f(crate::probe::stats::spearman(&xs, &ys)),
                ]);
            }
        }
    }
    if !rows.is_empty() {
        out.push(Block::Para(format!("Correlation across teachers between the teacher's nongt_std at τ = {probe_tau}, measured on the set named, and student `{sm}`'s final accuracy (Pearson r and Spearman ρ; positive: more distinct dark knowledge, better student).")));
        out.push(Block::Table(
            strings(&["method", "nongt_std measured on", "teachers", "Pearson r", "Spearman ρ"]),
            rows,
        ));
    }
    Ok(())
}
