//! The CSV files: `results.csv` (one row per run), `summary.csv` (per student, series and
//! teacher), `timing.csv` (wall times) and `teachers.csv` (the teachers' probe numbers).
use super::{probe_at, Output, StudentView};
use crate::report::results::{Stat, Student, StudyResults};
use anyhow::Result;
use std::collections::BTreeMap;

/// A text field as CSV writes it: quoted (quotes doubled) where it holds a comma or a quote, as
/// a series label may (`label = "ats control (4, 4)"`); unchanged otherwise, so files whose
/// fields never needed it are written as before.
pub(crate) fn field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn results_csv(r: &StudyResults) -> String {
    let mut results = String::from(
        "id,kind,student,teacher,teacher_params,series,method,hyper,seed,final_acc,best_acc,best_epoch,final_val_acc,teacher_family\n",
    );
    for t in &r.teachers {
        results += &format!(
            "{},teacher,,{},{},teacher,ce,,{},{},{},,,{}\n",
            t.id.clone().unwrap_or_default(),
            t.name,
            t.params,
            t.seed.map(|s| s.to_string()).unwrap_or_default(),
            t.final_acc,
            if t.best_acc.is_nan() { String::new() } else { t.best_acc.to_string() },
            t.family.replace(',', ";")
        );
    }
    let tparams: BTreeMap<&str, (u64, &str)> =
        r.teachers.iter().map(|t| (t.name.as_str(), (t.params, t.family.as_str()))).collect();
    let mut sorted: Vec<&Student> = r.students.iter().collect();
    sorted
        .sort_by(|a, b| (&a.student, &a.series, &a.teacher, a.seed).cmp(&(&b.student, &b.series, &b.teacher, b.seed)));
    for s in sorted {
        let (tp, fam) = s
            .teacher
            .as_deref()
            .and_then(|t| tparams.get(t))
            .map(|(p, f)| (p.to_string(), f.replace(',', ";")))
            .unwrap_or_default();
        results += &format!(
            "{},student,{},{},{tp},{},{},\"{}\",{},{},{},{},{},{fam}\n",
            s.id,
            s.student,
            s.teacher.clone().unwrap_or_default(),
            field(&s.series),
            s.method,
            s.hyper.to_string().replace('"', "'"),
            s.seed,
            s.final_acc,
            s.best_acc,
            s.best_epoch,
            s.val_acc.map(|v| v.to_string()).unwrap_or_default()
        );
    }
    results
}

fn summary_csv(r: &StudyResults) -> String {
    let mut summary =
        String::from("student,series,method,teacher,teacher_params,n,final_mean,final_std,best_mean,best_std\n");
    for model in r.student_models() {
        let v = StudentView::new(r, model);
        let sm = &v.model;
        // By size, as the file always listed them (the view groups teachers by family).
        let mut by_size = v.tnames.clone();
        by_size.sort_by_key(|t| t.params);
        for (name, runs) in &v.by_series {
            for t in &by_size {
                let mine: Vec<&&Student> =
                    runs.iter().filter(|s| s.teacher.as_deref() == Some(t.name.as_str())).collect();
                if mine.is_empty() {
                    continue;
                }
                let (f, b) = (
                    Stat::of(&mine.iter().map(|s| s.final_acc).collect::<Vec<_>>()),
                    Stat::of(&mine.iter().map(|s| s.best_acc).collect::<Vec<_>>()),
                );
                summary += &format!(
                    "{sm},{},{},{},{},{},{},{},{},{}\n",
                    field(name),
                    mine[0].method,
                    t.name,
                    t.params,
                    f.n,
                    f.mean,
                    f.std,
                    b.mean,
                    b.std
                );
            }
        }
        if !v.baseline.is_empty() {
            let (f, b) = (
                Stat::of(&v.baseline.iter().map(|s| s.final_acc).collect::<Vec<_>>()),
                Stat::of(&v.baseline.iter().map(|s| s.best_acc).collect::<Vec<_>>()),
            );
            summary += &format!("{sm},ce,ce,,,{},{},{},{},{}\n", f.n, f.mean, f.std, b.mean, b.std);
        }
    }
    summary
}

fn timing_csv(r: &StudyResults) -> String {
    let mut timing = String::from("id,name,status,wall_time_s\n");
    for run in &r.runs {
        timing += &format!(
            "{},{},{},{}\n",
            run.id,
            run.name.replace(',', ";"),
            run.status,
            run.wall_time_s.map(|w| w.to_string()).unwrap_or_default()
        );
    }
    timing
}

/// The teachers' probe numbers, one row per teacher and probed set, for re-analysis.
fn teachers_csv(r: &StudyResults) -> String {
    let mut teachers = String::from(
        "teacher,params,probed_on,samples,accuracy,nll_at_tau1,tau,p_true,nongt_mean,nongt_std,nongt_entropy\n",
    );
    for t in &r.teachers {
        for (label, p) in &r.probes {
            if let (Some((acc, at1)), Some((_, at)), Some(tr)) = (
                probe_at(p, &t.name, 1.0),
                probe_at(p, &t.name, r.probe_tau),
                p.teachers.iter().find(|x| x.name == t.name),
            ) {
                // A set's name may hold a comma ("transfer set, augmented views").
                let label = field(label);
                teachers += &format!(
                    "{},{},{label},{},{acc},{},{},{},{},{},{}\n",
                    t.name,
                    t.params,
                    tr.samples,
                    at1.nll,
                    at.tau,
                    at.p_true,
                    at.nongt_mean,
                    at.nongt_std,
                    at.nongt_entropy
                );
            }
        }
    }
    teachers
}

pub fn write(r: &StudyResults, out: &mut Output) -> Result<()> {
    out.file("results.csv", &results_csv(r))?;
    out.file("summary.csv", &summary_csv(r))?;
    out.file("timing.csv", &timing_csv(r))?;
    out.file("teachers.csv", &teachers_csv(r))?;
    Ok(())
}

#[cfg(test)]
mod field_tests {
    use super::field;

    /// A label with a comma or a quote is quoted, and reads back whole with the report's reader.
    #[test]
    fn fields_that_need_quotes_are_quoted_and_read_back() {
        assert_eq!(field("kd τ=4"), "kd τ=4");
        let labels = ["ats control (4, 4)", "say \"hi\", twice"];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let rows: Vec<String> = labels.iter().map(|l| format!("{},1", field(l))).collect();
        std::fs::write(&p, format!("series,n\n{}\n", rows.join("\n"))).unwrap();
        let back = crate::report::from_files::read_csv(&p, &["series", "n"]).unwrap();
        let got: Vec<&str> = back.iter().map(|r| r["series"].as_str()).collect();
        assert_eq!(got, labels);
    }
}
