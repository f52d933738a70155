//! Size versus fit (issue 23): the student against teacher size at each matched fit level, and
//! against the teacher's fit (NLL, accuracy, ECE, σ(q) on the transfer set) across every teacher
//! and checkpoint the study distilled from, with the student's cross-entropy against the teacher's
//! (the distillation-scaling view). Drawn from the runs that recorded `teacher_stats`.
use super::{strings, Output, StudentView};
use crate::methods;
use crate::probe::stats::spearman;
use crate::report::doc::Block;
use crate::report::results::{Stat, Student, StudyResults};
use crate::util::svg::{LinePlot, Series};
use anyhow::Result;
use std::collections::BTreeMap;

/// The level a run's teacher sits at: its fit rule's label, or `final`; `, calibrated` added.
pub fn level(s: &Student) -> String {
    let base = s.teacher_fit.as_ref().and_then(|f| f["label"].as_str()).unwrap_or("final").to_string();
    if s.series.contains("(calibrated)") {
        base + ", calibrated"
    } else {
        base
    }
}

/// A run's series without its teacher's level: the method and its setting.
pub fn setting(s: &Student) -> String {
    let mut name = s.series.replace(" (calibrated)", "");
    if let Some(i) = name.find(" (fit ") {
        name.truncate(i);
    }
    name
}

/// A teacher's number from a run's `teacher_stats`.
fn stat_of(s: &Student, key: &str) -> f64 {
    s.teacher_stats.as_ref().and_then(|t| t[key].as_f64()).unwrap_or(f64::NAN)
}

/// σ(q) on the transfer set at the recorded τ nearest `tau`.
fn sigma_of(s: &Student, tau: f64) -> f64 {
    let Some(m) = s.teacher_stats.as_ref().and_then(|t| t["transfer_nongt_std"].as_object()) else { return f64::NAN };
    m.iter()
        .filter_map(|(k, v)| Some((k.parse::<f64>().ok()?, v.as_f64()?)))
        .min_by(|a, b| (a.0.ln() - tau.ln()).abs().total_cmp(&(b.0.ln() - tau.ln()).abs()))
        .map_or(f64::NAN, |(_, v)| v)
}

/// One teacher checkpoint the study distilled from, and one method's runs from it.
struct Point<'a> {
    teacher: String,
    params: u64,
    level: String,
    runs: Vec<&'a Student>,
}

impl Point<'_> {
    fn first(&self) -> &Student {
        self.runs[0]
    }
    fn stat(&self, f: fn(&Student) -> f64) -> Stat {
        Stat::of(&self.runs.iter().map(|s| f(s)).collect::<Vec<_>>())
    }
}

/// Per method row (`kd (tuned on val)` and every other setting), the points: per (teacher, level),
/// the runs. KD's τ is chosen per point on mean final validation accuracy.
fn method_points<'a>(r: &StudyResults, runs: &[&'a Student]) -> Vec<(String, Vec<Point<'a>>)> {
    let mut groups: BTreeMap<(String, String, String), Vec<&'a Student>> = BTreeMap::new();
    for s in runs {
        let Some(t) = &s.teacher else { continue };
        groups.entry((setting(s), t.clone(), level(s))).or_default().push(*s);
    }
    let params = |t: &str| r.teachers.iter().find(|x| x.name == t).map_or(0, |x| x.params);
    let mut by_method: BTreeMap<String, BTreeMap<(String, String), Vec<&'a Student>>> = BTreeMap::new();
    for ((set, teacher, lvl), v) in &groups {
        // The baseline's settings, tuned per point; a labelled block of it (its own series) stays apart.
        let is_kd = methods::is_baseline(&v[0].method) && set.starts_with(v[0].method.as_str());
        if is_kd {
            let key = (teacher.clone(), lvl.clone());
            let val = |v: &[&Student]| Stat::of(&v.iter().filter_map(|s| s.val_acc).collect::<Vec<_>>()).mean;
            let slot = by_method.entry(format!("{} (tuned on val)", v[0].method)).or_default();
            let better = slot.get(&key).is_none_or(|cur| val(v) > val(cur));
            if better && v.iter().all(|s| s.val_acc.is_some()) {
                slot.insert(key, v.clone());
            }
        } else {
            by_method.entry(set.clone()).or_default().insert((teacher.clone(), lvl.clone()), v.clone());
        }
    }
    by_method
        .into_iter()
        .map(|(m, pts)| {
            let mut v: Vec<Point> = pts
                .into_iter()
                .map(|((teacher, level), runs)| Point { params: params(&teacher), teacher, level, runs })
                .collect();
            v.sort_by(|a, b| a.level.cmp(&b.level).then(a.params.cmp(&b.params)));
            (m, v)
        })
        .collect()
}

fn pct(s: &Stat) -> String {
    format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std)
}

fn rho(x: &[f64], y: &[f64]) -> String {
    spearman(x, y).map_or("n/a".into(), |r| format!("{r:+.2}"))
}

pub fn write(r: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let mine: Vec<&Student> = r.students.iter().filter(|s| s.student == v.model && s.teacher_stats.is_some()).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let sm = &v.model;
    let methods = method_points(r, &mine);
    out.push(Block::Heading(3, format!("Size versus fit, student `{sm}`")));
    teachers_table(&methods, out);
    ladders(&methods, out);
    correlations(r, &methods, out);
    scaling_plot(sm, &methods, out)?;
    csv(r, sm, &mine, out)
}

/// The teachers' checkpoints: per level and teacher, the epoch chosen and the teacher's fit.
fn teachers_table(methods: &[(String, Vec<Point>)], out: &mut Output) {
    let mut seen: BTreeMap<(String, u64, String), Vec<String>> = BTreeMap::new();
    for p in methods.iter().flat_map(|(_, p)| p) {
        let s = p.first();
        let fit = s.teacher_fit.as_ref();
        let epoch = fit.and_then(|f| f["epoch"].as_u64()).map_or("last".into(), |e| e.to_string());
        let value = fit.and_then(|f| f["value"].as_f64()).map_or("-".into(), |v| format!("{v:.4}"));
        let t = stat_of(s, "temperature");
        seen.entry((p.level.clone(), p.params, p.teacher.clone())).or_insert_with(|| {
            vec![
                p.level.clone(),
                p.teacher.clone(),
                epoch,
                value,
                format!("{t:.3}"),
                format!("{:.2}", 100.0 * stat_of(s, "test_acc")),
                format!("{:.4}", stat_of(s, "test_nll")),
                format!("{:.4}", stat_of(s, "test_ece")),
                format!("{:.4}", stat_of(s, "val_nll")),
            ]
        });
    }
    out.push(Block::Para("The teachers distilled from: per fit level, the kept epoch the level's rule chose on the **validation** split (and the metric's value there), the temperature T the teacher's logits are divided by (1: not calibrated), and the teacher's test accuracy (%), test NLL and ECE and validation NLL, of the teacher as the methods saw it.".into()));
    out.push(Block::Table(
        strings(&["level", "teacher", "epoch", "fit value", "T", "test acc", "test NLL", "test ECE", "val NLL"]),
        seen.into_values().collect(),
    ));
}

/// The student against teacher size at each level: per method and level, one row across teachers.
fn ladders(methods: &[(String, Vec<Point>)], out: &mut Output) {
    let mut teachers: Vec<(u64, String)> =
        methods.iter().flat_map(|(_, p)| p.iter().map(|p| (p.params, p.teacher.clone()))).collect();
    teachers.sort();
    teachers.dedup();
    for (label, acc) in super::ACCURACIES {
        let mut rows = vec![];
        for (m, pts) in methods {
            let mut levels: Vec<&String> = pts.iter().map(|p| &p.level).collect();
            levels.dedup();
            for lvl in levels {
                let at: Vec<&Point> = pts.iter().filter(|p| &p.level == lvl).collect();
                let stats: Vec<(u64, Stat)> = at.iter().map(|p| (p.params, p.stat(acc))).collect();
                let mut row = vec![m.clone(), lvl.clone()];
                for (_, t) in &teachers {
                    row.push(at.iter().find(|p| &p.teacher == t).map_or("-".into(), |p| pct(&p.stat(acc))));
                }
                let (x, y): (Vec<f64>, Vec<f64>) = stats.iter().map(|(p, s)| (*p as f64, s.mean)).unzip();
                row.push(rho(&x, &y));
                // The largest teacher against the best one at this level, in units of their std.
                let worse = match (
                    stats.iter().max_by_key(|(p, _)| *p),
                    stats.iter().max_by(|a, b| a.1.mean.total_cmp(&b.1.mean)),
                ) {
                    (Some(l), Some(b)) if stats.len() > 1 => {
                        let drop = b.1.mean - l.1.mean;
                        let yes = drop > 2.0 * b.1.std.max(l.1.std);
                        format!("{:.2}{}", 100.0 * drop, if yes { " (yes)" } else { "" })
                    }
                    _ => "-".into(),
                };
                row.push(worse);
                rows.push(row);
            }
        }
        let mut head = strings(&["method", "level"]);
        head.extend(teachers.iter().map(|(_, t)| t.clone()));
        head.extend(strings(&["ρ(size)", "largest's drop"]));
        out.push(Block::Para(format!("Student accuracy ({label} epoch, %, mean ± std over seeds) against teacher size at each fit level: ρ(size) is the Spearman correlation of the mean with the teacher's parameter count within the row; **largest's drop** is the best teacher's mean minus the largest teacher's, marked (yes) where it exceeds twice the larger of their standard deviations (a larger teacher teaching worse at matched fit).")));
        out.push(Block::Table(head, rows));
    }
}

/// Spearman correlations of the student's mean final accuracy with each teacher number, across
/// every (teacher, level) point of each method.
fn correlations(r: &StudyResults, methods: &[(String, Vec<Point>)], out: &mut Output) {
    let tau = r.probe_tau;
    let names = ["test NLL", "val NLL", "test acc", "test ECE", "σ(q) transfer", "params"];
    let mut rows = vec![];
    for (m, pts) in methods {
        if pts.len() < 3 {
            continue;
        }
        let y: Vec<f64> = pts.iter().map(|p| p.stat(|s| s.final_acc).mean).collect();
        let of = |f: &dyn Fn(&Point) -> f64| pts.iter().map(f).collect::<Vec<f64>>();
        let xs = [
            of(&|p| stat_of(p.first(), "test_nll")),
            of(&|p| stat_of(p.first(), "val_nll")),
            of(&|p| stat_of(p.first(), "test_acc")),
            of(&|p| stat_of(p.first(), "test_ece")),
            of(&|p| sigma_of(p.first(), tau)),
            of(&|p| p.params as f64),
        ];
        let mut row = vec![m.clone(), pts.len().to_string()];
        row.extend(xs.iter().map(|x| rho(x, &y)));
        rows.push(row);
    }
    if rows.is_empty() {
        return;
    }
    let mut head = strings(&["method", "points"]);
    head.extend(names.iter().map(|n| format!("ρ {n}")));
    out.push(Block::Para(format!("Spearman ρ across every teacher checkpoint the method distilled from (each (teacher, level) a point: its mean final accuracy over seeds against the teacher's number; σ(q) at τ = {tau} on the transfer set). A number that predicts the student whatever the teacher's size has |ρ| near 1 here; |ρ| ≥ 0.8 would make it a probe worth ranking teachers by.")));
    out.push(Block::Table(head, rows));
}

/// The student's test cross-entropy against the teacher's, one line per teacher through its levels.
fn scaling_plot(sm: &str, methods: &[(String, Vec<Point>)], out: &mut Output) -> Result<()> {
    let Some((m, pts)) = methods.iter().find(|(m, _)| m.ends_with(" (tuned on val)")).or(methods.first()) else {
        return Ok(());
    };
    let mut by_teacher: BTreeMap<(u64, String), Vec<(f64, f64)>> = BTreeMap::new();
    let (mut xs, mut ys) = (vec![], vec![]);
    for p in pts {
        let x = stat_of(p.first(), "test_nll");
        let y = p.stat(|s| s.final_test_loss.unwrap_or(f64::NAN)).mean;
        by_teacher.entry((p.params, p.teacher.clone())).or_default().push((x, y));
        xs.push(x);
        ys.push(y);
    }
    let series = by_teacher
        .into_iter()
        .map(|((_, t), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: t, points, errors: None }
        })
        .collect();
    let plot = LinePlot {
        title: format!("Student {sm} ({m}): its test cross-entropy against the teacher's"),
        x_label: "teacher test NLL".into(),
        y_label: "student test cross-entropy (final epoch)".into(),
        x_log: false,
        series,
    };
    out.figure(
        &format!("fit_ce_{sm}.svg"),
        plot.to_svg(),
        &format!("The distillation-scaling view: each point a teacher checkpoint (a fit level or the final one, calibrated or not), the student's mean final test cross-entropy over seeds against the teacher's test NLL; one line per teacher architecture through its checkpoints. Spearman ρ over the {} points: {}.", xs.len(), rho(&xs, &ys)),
    )
}

/// `fit_<student>.csv`: one row per run with its teacher's checkpoint and fit, for re-analysis.
fn csv(r: &StudyResults, sm: &str, runs: &[&Student], out: &mut Output) -> Result<()> {
    let mut text = String::from("run_id,student,series,setting,method,teacher,teacher_params,level,teacher_epoch,fit_value,temperature,teacher_test_acc,teacher_test_nll,teacher_test_ece,teacher_val_acc,teacher_val_nll,teacher_val_ece,sigma_transfer_tau1,sigma_transfer_tau2,sigma_transfer_tau4,sigma_transfer_tau8,seed,final_acc,best_acc,best_epoch,val_acc,final_test_loss\n");
    let f = |x: f64| if x.is_finite() { format!("{x:.6}") } else { String::new() };
    for s in runs {
        let t = s.teacher.clone().unwrap_or_default();
        let params = r.teachers.iter().find(|x| x.name == t).map_or(0, |x| x.params);
        let fit = s.teacher_fit.as_ref();
        let q = |name: &str| name.replace('"', "\"\"");
        text += &format!(
            "{},{},\"{}\",\"{}\",{},{},{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            s.id,
            s.student,
            q(&s.series),
            q(&setting(s)),
            s.method,
            t,
            params,
            q(&level(s)),
            fit.and_then(|f| f["epoch"].as_u64()).map_or(String::new(), |e| e.to_string()),
            f(fit.and_then(|f| f["value"].as_f64()).unwrap_or(f64::NAN)),
            f(stat_of(s, "temperature")),
            f(stat_of(s, "test_acc")),
            f(stat_of(s, "test_nll")),
            f(stat_of(s, "test_ece")),
            f(stat_of(s, "val_acc")),
            f(stat_of(s, "val_nll")),
            f(stat_of(s, "val_ece")),
            f(sigma_of(s, 1.0)),
            f(sigma_of(s, 2.0)),
            f(sigma_of(s, 4.0)),
            f(sigma_of(s, 8.0)),
            s.seed,
            f(s.final_acc),
            f(s.best_acc),
            s.best_epoch,
            f(s.val_acc.unwrap_or(f64::NAN)),
            f(s.final_test_loss.unwrap_or(f64::NAN)),
        );
    }
    out.file(&format!("fit_{sm}.csv"), &text)?;
    out.push(Block::Para(format!("Every run above with its teacher's checkpoint and fit: `fit_{sm}.csv`.")));
    Ok(())
}
