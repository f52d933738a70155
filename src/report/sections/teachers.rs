//! The teachers: a table of their accuracies and probe numbers, and accuracy against size.
use super::{by_family, probe_at, Output};
use crate::report::doc::Block;
use crate::report::results::{StudyResults, PROBES};
use crate::util::svg::{Panel, PanelPlot, Series};
use anyhow::Result;

pub fn write(r: &StudyResults, out: &mut Output) -> Result<()> {
    let probe_tau = r.probe_tau;
    out.push(Block::Heading(2, "Teachers".into()));
    let probe = r.test_probe();
    let ti = probe
        .and_then(|p| p.teachers.first())
        .map(|t0| crate::probe::nearest_tau(&t0.per_tau.iter().map(|t| t.tau).collect::<Vec<_>>(), probe_tau));
    let probe_of = |name: &str| {
        probe.and_then(|p| p.teachers.iter().find(|t| t.name == name)).zip(ti).map(|(t, i)| t.per_tau[i].clone())
    };
    // The columns of the probes of other sets than the test set.
    let other_probes = || r.probes.iter().filter(|(label, _)| *label != PROBES[0].1);
    let rows: Vec<Vec<String>> = by_family(&r.teachers)
        .iter()
        .flat_map(|(_, ts)| ts.iter())
        .map(|t| {
            let pr = probe_of(&t.name);
            vec![
                t.name.clone(),
                t.family.clone(),
                crate::util::fmt::count(t.params),
                format!("{:.2}", 100.0 * t.final_acc),
                if t.best_acc.is_nan() { "-".into() } else { format!("{:.2}", 100.0 * t.best_acc) },
                pr.as_ref().map_or("-".into(), |p| format!("{:.4}", p.p_true)),
                pr.as_ref().map_or("-".into(), |p| format!("{:.5}", p.nongt_std)),
                pr.as_ref().map_or("-".into(), |p| format!("{:.4}", p.nongt_entropy)),
            ]
            .into_iter()
            .chain(other_probes().flat_map(|(_, p)| {
                let at1 = probe_at(p, &t.name, 1.0);
                let at = probe_at(p, &t.name, probe_tau);
                [
                    at1.as_ref().map_or("-".into(), |(acc, _)| format!("{:.2}", 100.0 * acc)),
                    at1.as_ref().map_or("-".into(), |(_, r)| format!("{:.4}", r.nll)),
                    at.as_ref().map_or("-".into(), |(_, r)| format!("{:.5}", r.nongt_std)),
                ]
            }))
            .collect()
        })
        .collect();
    let mut header: Vec<String> = [
        "teacher",
        "family",
        "params",
        "final acc",
        "best acc",
        &format!("p_true@τ={probe_tau}"),
        &format!("nongt_std@τ={probe_tau}"),
        "nongt_entropy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (label, _) in other_probes() {
        header.extend([
            format!("acc ({label})"),
            format!("loss ({label})"),
            format!("nongt_std@τ={probe_tau} ({label})"),
        ]);
    }
    out.push(Block::Para(format!(
        "Test accuracy in %; p_true, nongt_std and nongt_entropy of the teachers' softened outputs on the test set{}.",
        if r.probes.len() > 1 {
            ", and on the transfer set (the training images the students learn from): accuracy in %, cross-entropy at τ = 1, nongt_std"
        } else {
            ""
        }
    )));
    out.push(Block::Table(header, rows));
    // Accuracy along each family's ladder: across families, size is not the only change.
    let families = by_family(&r.teachers);
    if !r.teachers.is_empty() {
        let plot = PanelPlot {
            title: "Teacher accuracy along each family's ladder".into(),
            x_label: "teacher (by size within its family)".into(),
            y_label: "test accuracy (%)".into(),
            panels: families
                .iter()
                .map(|(f, ts)| Panel {
                    title: format!("{f} ({} teacher{})", ts.len(), if ts.len() == 1 { "" } else { "s" }),
                    ticks: ts.iter().map(|t| format!("{}\n{}", t.name, crate::util::fmt::count(t.params))).collect(),
                    series: vec![Series {
                        name: "teacher test accuracy".into(),
                        points: ts.iter().enumerate().map(|(i, t)| (i as f64, 100.0 * t.final_acc)).collect(),
                        errors: None,
                    }],
                })
                .collect(),
            band: None,
        };
        out.figure(
            "teacher_accuracy.svg",
            plot.to_svg(),
            "Teacher test accuracy against size, one panel per family (same y axis; teachers evenly spaced by size).",
        )?;
    }
    Ok(())
}
