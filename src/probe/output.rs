//! What a person reads: the stdout table, JSON and CSV files, and SVG plots.
use super::{nearest_tau, Probe, ProbeReport};
use crate::util::svg::{Heatmap, LinePlot, Series};
use crate::util::{atomic, fmt};
use anyhow::Result;
use std::path::{Path, PathBuf};

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

/// The table printed after a probe, at the τ nearest `tau`.
pub fn table(report: &ProbeReport, taus: &[f64], tau: f64) -> String {
    let ti = nearest_tau(taus, tau);
    let t = taus[ti];
    let rows: Vec<Vec<String>> = report
        .teachers
        .iter()
        .map(|r| {
            let p = &r.per_tau[ti];
            vec![
                r.name.clone(),
                r.params.map_or("-".into(), fmt::count),
                format!("{:.2}%", 100.0 * r.accuracy),
                format!("{:.4}", p.p_true),
                format!("{:.5}", p.nongt_mean),
                format!("{:.5}", p.nongt_std),
                format!("{:.4}", p.nongt_entropy),
                format!("{:.4}", p.ece),
                format!("{}", r.best_tau_nll),
            ]
        })
        .collect();
    let mut out = format!("teachers at tau = {t} ({} samples):\n", report.teachers.first().map_or(0, |r| r.samples));
    out += &fmt::table(
        &["teacher", "params", "accuracy", "p_true", "nongt_mean", "nongt_std", "nongt_entropy", "ece", "best_tau_nll"],
        &rows,
    );
    if !report.pairs.is_empty() {
        let rows: Vec<Vec<String>> = report
            .pairs
            .iter()
            .map(|p| {
                vec![
                    format!("{} vs {}", p.a, p.b),
                    opt(p.spearman),
                    opt(p.kendall),
                    format!("{:.4}", p.top1_agree),
                    format!("{:.4}", p.top5_overlap),
                    opt(p.per_tau[ti].affinity_corr),
                ]
            })
            .collect();
        out += &format!("\npairs (rank agreement on the non-GT classes; affinity_corr at tau = {t}):\n");
        out += &fmt::table(&["pair", "spearman", "kendall", "top1_agree", "top5_overlap", "affinity_corr"], &rows);
    }
    out
}

pub fn write_json(path: &Path, report: &ProbeReport) -> Result<()> {
    atomic::write_json(path, report)
}

/// One row per (teacher, τ); the pairs go to `<stem>_pairs.csv` beside it. Returns both paths.
pub(crate) fn write_csv(path: &Path, report: &ProbeReport) -> Result<(PathBuf, PathBuf)> {
    let mut s = String::from("teacher,params,classes,samples,accuracy,logit_gap,logit_nongt_std,best_tau_nll,tau,p_true,nongt_mean,nongt_std,nongt_var,nongt_entropy,nll,ece\n");
    for r in &report.teachers {
        for p in &r.per_tau {
            s += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                r.name,
                r.params.map_or(String::new(), |p| p.to_string()),
                r.classes,
                r.samples,
                r.accuracy,
                r.logit_gap,
                r.logit_nongt_std,
                r.best_tau_nll,
                p.tau,
                p.p_true,
                p.nongt_mean,
                p.nongt_std,
                p.nongt_var,
                p.nongt_entropy,
                p.nll,
                p.ece
            );
        }
    }
    atomic::write_bytes(path, s.as_bytes())?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "probe".into());
    let pairs_path = path.with_file_name(format!("{stem}_pairs.csv"));
    let mut s = String::from("a,b,spearman,kendall,top1_agree,top5_overlap,tau,affinity_corr\n");
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for p in &report.pairs {
        for t in &p.per_tau {
            s += &format!(
                "{},{},{},{},{},{},{},{}\n",
                p.a,
                p.b,
                cell(p.spearman),
                cell(p.kendall),
                p.top1_agree,
                p.top5_overlap,
                t.tau,
                cell(t.affinity_corr)
            );
        }
    }
    atomic::write_bytes(&pairs_path, s.as_bytes())?;
    Ok((path.to_path_buf(), pairs_path))
}

/// Writes the plots into `dir` and returns their paths. `class_names` label the affinity maps.
pub(crate) fn write_plots(dir: &Path, probe: &Probe, tau: f64, class_names: Option<&[String]>) -> Result<Vec<PathBuf>> {
    let r = &probe.report;
    let ti = nearest_tau(&probe.taus, tau);
    let t = probe.taus[ti];
    let mut written = vec![];
    let mut save = |name: &str, svg: String| -> Result<()> {
        let p = dir.join(name);
        crate::util::svg::write_svg(&p, &svg)?;
        written.push(p);
        Ok(())
    };
    for (key, title, get) in [
        (
            "nongt_mean",
            "e(q): mean non-GT probability vs temperature",
            (|p: &super::TauReport| p.nongt_mean) as fn(&super::TauReport) -> f64,
        ),
        ("nongt_std", "σ(q): spread of the non-GT probabilities vs temperature", |p: &super::TauReport| p.nongt_std),
    ] {
        let plot = LinePlot {
            title: title.into(),
            x_label: "temperature τ (log scale)".into(),
            y_label: key.into(),
            x_log: true,
            series: r
                .teachers
                .iter()
                .map(|tr| Series {
                    name: tr.name.clone(),
                    points: tr.per_tau.iter().map(|p| (p.tau, get(p))).collect(),
                    errors: None,
                })
                .collect(),
        };
        save(&format!("{key}_vs_tau.svg"), plot.to_svg())?;
    }
    if r.teachers.iter().all(|t| t.params.is_some()) && r.teachers.len() > 1 {
        let plot = LinePlot {
            title: format!("σ(q) at τ = {t} vs teacher size"),
            x_label: "parameters (log scale)".into(),
            y_label: "nongt_std".into(),
            x_log: true,
            series: vec![Series {
                name: "teachers".into(),
                points: r.teachers.iter().map(|tr| (tr.params.unwrap() as f64, tr.per_tau[ti].nongt_std)).collect(),
                errors: None,
            }],
        };
        save("nongt_std_vs_params.svg", plot.to_svg())?;
    }
    if r.teachers.len() > 1 {
        let names: Vec<String> = r.teachers.iter().map(|t| t.name.clone()).collect();
        let k = names.len();
        let mut m = vec![1.0; k * k];
        for p in &r.pairs {
            let (a, b) = (names.iter().position(|n| *n == p.a).unwrap(), names.iter().position(|n| *n == p.b).unwrap());
            let v = p.spearman.unwrap_or(f64::NAN);
            m[a * k + b] = v;
            m[b * k + a] = v;
        }
        let hm = Heatmap {
            title: "Spearman agreement of non-GT rankings".into(),
            rows: names.clone(),
            cols: names,
            values: m,
            annotate: true,
        };
        save("agreement_spearman.svg", hm.to_svg())?;
    }
    for (tr, aff) in r.teachers.iter().zip(&probe.affinity) {
        if tr.classes > 100 {
            continue; // an unreadable picture at this size; the numbers are in the JSON/CSV
        }
        let labels: Vec<String> = match class_names {
            Some(n) if n.len() == tr.classes => n.to_vec(),
            _ => (0..tr.classes).map(|c| c.to_string()).collect(),
        };
        let hm = Heatmap {
            title: format!("{}: class affinity at τ = {t} (row: true class, column: q̂)", tr.name),
            rows: labels.clone(),
            cols: labels,
            values: aff[ti].clone(),
            annotate: tr.classes <= 20,
        };
        let safe: String =
            tr.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        save(&format!("affinity_{safe}.svg"), hm.to_svg())?;
    }
    Ok(written)
}
