//! `kdlab report`: the study's results as `report.md`, a self-contained `report.html`, SVG plots
//! and CSV files. Everything in it is a function of the finished runs (no timestamps, no wall
//! times: those go to `timing.csv`), so the report of a resumed study equals an uninterrupted one.
use super::doc::{self, Block};
use super::svg::{Heatmap, LinePlot, Series};
use crate::probe::ProbeReport;
use crate::study::plan::RunSpec;
use crate::study::store::{Store, StoredRun};
use crate::util::atomic;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Mean, sample standard deviation (n − 1) and count of a group of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Stat {
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n.max(1) as f64;
        let std = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Stat { mean, std, n }
    }
    fn cell(&self) -> String {
        format!("{:.2} ± {:.2} ({})", 100.0 * self.mean, 100.0 * self.std, self.n)
    }
}

struct Teacher {
    /// The study run, or None for an existing run known through the probe.
    id: Option<String>,
    seed: Option<u64>,
    name: String,
    params: u64,
    final_acc: f64,
    best_acc: f64,
    family: String,
}

/// One finished student run, as the report needs it.
#[derive(Clone)]
struct Student {
    id: String,
    student: String,
    teacher: Option<String>,
    series: String,
    method: String,
    hyper: serde_json::Value,
    seed: u64,
    final_acc: f64,
    best_acc: f64,
    best_epoch: usize,
}

fn family(arch: &str) -> String {
    use crate::models::Arch;
    match crate::models::parse(arch) {
        Ok(Arch::ResNet { wide4: false, .. }) => "resnet",
        Ok(Arch::ResNet { wide4: true, .. }) => "resnet x4",
        Ok(Arch::Wrn { .. }) => "wrn",
        Ok(Arch::Vgg { .. }) => "vgg",
        Ok(Arch::MobileNetV2 { .. }) => "mobilenetv2",
        Ok(Arch::Cnn { .. }) => "cnn",
        Ok(Arch::Mlp { .. }) => "mlp",
        Err(_) => "other",
    }
    .to_string()
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    crate::probe::stats::pearson(a, b)
}

/// One of a student run's accuracies.
type Accuracy = fn(&Student) -> f64;

/// The two accuracies every student table and curve is drawn for, labelled.
const ACCURACIES: [(&str, Accuracy); 2] = [("final", |s| s.final_acc), ("best", |s| s.best_acc)];

/// Mean and spread over seeds of one accuracy of the runs taught by `teacher`; None if none was.
fn stat_from(runs: &[&Student], teacher: &str, pick: Accuracy) -> Option<Stat> {
    let v: Vec<f64> = runs.iter().filter(|s| s.teacher.as_deref() == Some(teacher)).map(|s| pick(s)).collect();
    (!v.is_empty()).then(|| Stat::of(&v))
}

/// A written report: its files and its content.
pub struct Report {
    pub files: Vec<PathBuf>,
    pub blocks: Vec<Block>,
}

/// Writes the report of the study in `dir` into `out`.
pub fn write(dir: &Path, out: &Path) -> Result<Report> {
    let store = Store::open(&dir.join("study.sqlite"))
        .with_context(|| format!("{} is not a study directory", dir.display()))?;
    let plan: Vec<String> = store.meta("plan")?.map(|p| serde_json::from_str(&p)).transpose()?.unwrap_or_default();
    let runs: Vec<StoredRun> = store.runs()?.into_iter().filter(|r| plan.is_empty() || plan.contains(&r.id)).collect();
    let study_toml = store.meta("study_toml")?.unwrap_or_default();
    let version = store.meta("kdlab_version")?.unwrap_or_default();
    let study_name = toml::from_str::<toml::Table>(&study_toml)
        .ok()
        .and_then(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let probe_tau = toml::from_str::<toml::Table>(&study_toml)
        .ok()
        .and_then(|t| t.get("probe_tau").and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64))))
        .unwrap_or(4.0);
    let probe: Option<ProbeReport> =
        std::fs::read_to_string(dir.join("probe.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    // Teachers: study runs, then existing runs known through the probe.
    let mut teachers: Vec<Teacher> = runs
        .iter()
        .filter(|r| r.kind == "teacher" && r.status == "done")
        .map(|r| Teacher {
            id: Some(r.id.clone()),
            seed: Some(r.spec.train.seed),
            name: r.spec.train.model.clone(),
            params: r.params.unwrap_or(0),
            final_acc: r.final_acc.unwrap_or(f64::NAN),
            best_acc: r.best_acc.unwrap_or(f64::NAN),
            family: family(&r.spec.train.model),
        })
        .collect();
    if let Some(p) = &probe {
        for t in &p.teachers {
            if !teachers.iter().any(|x| x.name == t.name) {
                teachers.push(Teacher {
                    id: None,
                    seed: None,
                    name: t.name.clone(),
                    params: t.params.unwrap_or(0),
                    final_acc: t.accuracy,
                    best_acc: f64::NAN,
                    family: "existing runs".into(),
                });
            }
        }
    }
    // External teachers' sizes come from the students' teacher records when the probe lacks them.
    teachers.sort_by_key(|t| t.params);
    let tparams: BTreeMap<String, u64> = teachers.iter().map(|t| (t.name.clone(), t.params)).collect();

    let students: Vec<Student> = runs
        .iter()
        .filter(|r| r.kind == "student" && r.status == "done")
        .map(|r| {
            let s: &RunSpec = &r.spec;
            Student {
                id: r.id.clone(),
                student: s.train.model.clone(),
                teacher: s.teacher.as_ref().map(|t| t.root.clone()),
                series: s.series.clone(),
                method: s.method.clone(),
                hyper: s.hyper.clone(),
                seed: s.train.seed,
                final_acc: r.final_acc.unwrap_or(f64::NAN),
                best_acc: r.best_acc.unwrap_or(f64::NAN),
                best_epoch: r.best_epoch.unwrap_or(0),
            }
        })
        .collect();
    let planned = runs.len();
    let done = runs.iter().filter(|r| r.status == "done").count();
    let failed: Vec<&StoredRun> = runs.iter().filter(|r| r.status == "failed").collect();

    let mut files = vec![];
    let mut blocks = vec![Block::Heading(1, format!("Study `{study_name}`"))];
    blocks.push(Block::Para(format!(
        "{done} of {planned} runs done ({} failed). Student accuracies are test top-1 in %, mean ± sample standard deviation over seeds (number of seeds in brackets). **final** = after the last epoch; **best** = the best epoch's (an optimistic choice on the test set, reported separately because papers mix the two).",
        failed.len()
    )));
    let mut svg = |name: &str, content: String, caption: &str, blocks: &mut Vec<Block>| -> Result<()> {
        let p = out.join(name);
        super::svg::write_svg(&p, &content)?;
        files.push(p);
        blocks.push(Block::Figure(name.to_string(), content, caption.to_string()));
        Ok(())
    };

    // Teachers.
    blocks.push(Block::Heading(2, "Teachers".into()));
    let ti = probe.as_ref().map(|p| {
        crate::probe::nearest_tau(&p.teachers[0].per_tau.iter().map(|t| t.tau).collect::<Vec<_>>(), probe_tau)
    });
    let probe_of = |name: &str| {
        probe
            .as_ref()
            .and_then(|p| p.teachers.iter().find(|t| t.name == name))
            .zip(ti)
            .map(|(t, i)| t.per_tau[i].clone())
    };
    let rows: Vec<Vec<String>> = teachers
        .iter()
        .map(|t| {
            let pr = probe_of(&t.name);
            vec![
                t.name.clone(),
                crate::util::fmt::count(t.params),
                format!("{:.2}", 100.0 * t.final_acc),
                if t.best_acc.is_nan() { "-".into() } else { format!("{:.2}", 100.0 * t.best_acc) },
                pr.as_ref().map_or("-".into(), |p| format!("{:.4}", p.p_true)),
                pr.as_ref().map_or("-".into(), |p| format!("{:.5}", p.nongt_std)),
                pr.as_ref().map_or("-".into(), |p| format!("{:.4}", p.nongt_entropy)),
            ]
        })
        .collect();
    blocks.push(Block::Table(
        [
            "teacher",
            "params",
            "final acc",
            "best acc",
            &format!("p_true@τ={probe_tau}"),
            &format!("nongt_std@τ={probe_tau}"),
            "nongt_entropy",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows,
    ));
    let fams: BTreeSet<String> = teachers.iter().map(|t| t.family.clone()).collect();
    let plot = LinePlot {
        title: "Teacher accuracy vs size".into(),
        x_label: "parameters (log scale)".into(),
        y_label: "test accuracy (%)".into(),
        x_log: true,
        series: fams
            .iter()
            .map(|f| Series {
                name: f.clone(),
                points: teachers
                    .iter()
                    .filter(|t| &t.family == f)
                    .map(|t| (t.params as f64, 100.0 * t.final_acc))
                    .collect(),
                errors: None,
            })
            .collect(),
    };
    if !teachers.is_empty() {
        svg("teacher_accuracy.svg", plot.to_svg(), "Teacher test accuracy against size, per family.", &mut blocks)?;
    }

    // Per student: the capacity-mismatch curves and the method × teacher tables.
    let student_models: BTreeSet<String> = students.iter().map(|s| s.student.clone()).collect();
    let mut summary_csv =
        String::from("student,series,method,teacher,teacher_params,n,final_mean,final_std,best_mean,best_std\n");
    for sm in &student_models {
        let mine: Vec<&Student> = students.iter().filter(|s| &s.student == sm).collect();
        blocks.push(Block::Heading(2, format!("Student `{sm}`")));
        let baseline: Vec<&Student> = mine.iter().copied().filter(|s| s.teacher.is_none()).collect();
        let by_series: BTreeMap<String, Vec<&Student>> =
            mine.iter().filter(|s| s.teacher.is_some()).fold(BTreeMap::new(), |mut m, s| {
                m.entry(s.series.clone()).or_default().push(*s);
                m
            });
        // The ATS τ1×τ2 grid gets its own heat-map; the curves show one line per other series.
        let is_grid = |series: &str| series.starts_with("ats τ1=") && series.contains(" τ2=");
        let curve_series: Vec<(&String, &Vec<&Student>)> = by_series.iter().filter(|(k, _)| !is_grid(k)).collect();
        let tnames: Vec<&Teacher> =
            teachers.iter().filter(|t| mine.iter().any(|s| s.teacher.as_deref() == Some(t.name.as_str()))).collect();
        for (label, pick) in ACCURACIES {
            let mut series: Vec<Series> = curve_series
                .iter()
                .map(|(name, runs)| {
                    let pts: Vec<(f64, f64, f64)> = tnames
                        .iter()
                        .filter_map(|t| {
                            let st = stat_from(runs, &t.name, pick)?;
                            Some((t.params as f64, 100.0 * st.mean, 100.0 * st.std))
                        })
                        .collect();
                    Series {
                        name: (*name).clone(),
                        points: pts.iter().map(|p| (p.0, p.1)).collect(),
                        errors: Some(pts.iter().map(|p| p.2).collect()),
                    }
                })
                .collect();
            if !baseline.is_empty() && !tnames.is_empty() {
                let st = Stat::of(&baseline.iter().map(|s| pick(s)).collect::<Vec<_>>());
                series.push(Series {
                    name: "ce (no teacher)".into(),
                    points: tnames.iter().map(|t| (t.params as f64, 100.0 * st.mean)).collect(),
                    errors: Some(vec![100.0 * st.std; tnames.len()]),
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
                svg(&format!("mismatch_{sm}_{label}.svg"), plot.to_svg(), &format!("Capacity mismatch for student {sm}: {label}-epoch accuracy against teacher size, mean ± std over seeds; the line 'ce (no teacher)' is the student trained alone."), &mut blocks)?;
            }
        }
        // Table: series × teacher.
        for (label, pick) in ACCURACIES {
            let header: Vec<String> = std::iter::once("method".to_string())
                .chain(tnames.iter().map(|t| format!("{} ({})", t.name, crate::util::fmt::count(t.params))))
                .collect();
            let mut cells: Vec<(String, Vec<Option<Stat>>)> = curve_series
                .iter()
                .map(|(name, runs)| ((*name).clone(), tnames.iter().map(|t| stat_from(runs, &t.name, pick)).collect()))
                .collect();
            if !baseline.is_empty() {
                let st = Stat::of(&baseline.iter().map(|s| pick(s)).collect::<Vec<_>>());
                cells.insert(0, ("ce (no teacher)".into(), vec![Some(st); tnames.len()]));
            }
            let best_per_col: Vec<f64> = (0..tnames.len())
                .map(|j| cells.iter().filter_map(|(_, c)| c[j].map(|s| s.mean)).fold(f64::NEG_INFINITY, f64::max))
                .collect();
            let rows: Vec<Vec<String>> = cells
                .iter()
                .map(|(name, c)| {
                    std::iter::once(name.clone())
                        .chain(c.iter().enumerate().map(|(j, s)| match s {
                            Some(s) if s.mean == best_per_col[j] => format!("**{}**", s.cell()),
                            Some(s) => s.cell(),
                            None => "-".into(),
                        }))
                        .collect()
                })
                .collect();
            if !rows.is_empty() && !tnames.is_empty() {
                blocks.push(Block::Para(format!("Student `{sm}`, **{label}**-epoch accuracy by method (rows) and teacher (columns); the best per teacher in bold (the student trained alone included).")));
                blocks.push(Block::Table(header, rows));
            }
        }
        for (name, runs) in &by_series {
            for t in &tnames {
                let v: Vec<&&Student> = runs.iter().filter(|s| s.teacher.as_deref() == Some(t.name.as_str())).collect();
                if v.is_empty() {
                    continue;
                }
                let (f, b) = (
                    Stat::of(&v.iter().map(|s| s.final_acc).collect::<Vec<_>>()),
                    Stat::of(&v.iter().map(|s| s.best_acc).collect::<Vec<_>>()),
                );
                summary_csv += &format!(
                    "{sm},{name},{},{},{},{},{},{},{},{}\n",
                    v[0].method, t.name, t.params, f.n, f.mean, f.std, b.mean, b.std
                );
            }
        }
        if !baseline.is_empty() {
            let (f, b) = (
                Stat::of(&baseline.iter().map(|s| s.final_acc).collect::<Vec<_>>()),
                Stat::of(&baseline.iter().map(|s| s.best_acc).collect::<Vec<_>>()),
            );
            summary_csv += &format!("{sm},ce,ce,,,{},{},{},{},{}\n", f.n, f.mean, f.std, b.mean, b.std);
        }

        // Dark knowledge next to the mismatch curve: nongt_std of each teacher and its correlation
        // with the students' accuracy across teachers.
        if let (Some(_), true) = (&probe, tnames.len() > 1) {
            let stds: Vec<(String, f64)> =
                tnames.iter().filter_map(|t| probe_of(&t.name).map(|p| (t.name.clone(), p.nongt_std))).collect();
            if stds.len() == tnames.len() {
                let plot = LinePlot {
                    title: format!("Teachers' non-GT spread σ(q) at τ = {probe_tau}"),
                    x_label: "teacher parameters (log scale)".into(),
                    y_label: "nongt_std".into(),
                    x_log: true,
                    series: vec![Series {
                        name: "nongt_std".into(),
                        points: tnames.iter().zip(&stds).map(|(t, s)| (t.params as f64, s.1)).collect(),
                        errors: None,
                    }],
                };
                svg(
                    &format!("nongt_std_{sm}.svg"),
                    plot.to_svg(),
                    &format!(
                        "The probe's nongt_std at τ = {probe_tau} for the teachers of the curve above (same x axis)."
                    ),
                    &mut blocks,
                )?;
                let mut rows = vec![];
                for (name, runs) in &curve_series {
                    let (mut xs, mut ys) = (vec![], vec![]);
                    for (t, s) in tnames.iter().zip(&stds) {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter(|r| r.teacher.as_deref() == Some(t.name.as_str()))
                            .map(|r| r.final_acc)
                            .collect();
                        if !v.is_empty() {
                            xs.push(s.1);
                            ys.push(Stat::of(&v).mean);
                        }
                    }
                    if xs.len() > 2 {
                        rows.push(vec![
                            (*name).clone(),
                            xs.len().to_string(),
                            pearson(&xs, &ys).map_or("n/a".into(), |r| format!("{r:+.3}")),
                        ]);
                    }
                }
                if !rows.is_empty() {
                    blocks.push(Block::Para(format!("Correlation across teachers between the teacher's nongt_std at τ = {probe_tau} and student `{sm}`'s final accuracy (Pearson r; positive: more distinct dark knowledge, better student).")));
                    blocks.push(Block::Table(vec!["method".into(), "teachers".into(), "r".into()], rows));
                }
            }
        }

        // ATS τ1 × τ2 heat-maps.
        for t in &tnames {
            let grid: Vec<&&Student> = by_series
                .iter()
                .filter(|(k, _)| is_grid(k))
                .flat_map(|(_, v)| v.iter())
                .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()))
                .collect();
            if grid.is_empty() {
                continue;
            }
            let val = |s: &Student, k: &str| s.hyper[k].as_f64().unwrap_or(f64::NAN);
            let t1: BTreeSet<i64> = grid.iter().map(|s| (val(s, "tau1") * 1000.0).round() as i64).collect();
            let t2: BTreeSet<i64> = grid.iter().map(|s| (val(s, "tau2") * 1000.0).round() as i64).collect();
            if t1.len() < 2 || t2.len() < 2 {
                continue;
            }
            for (label, pick) in ACCURACIES {
                let mut values = vec![];
                for a in &t1 {
                    for b in &t2 {
                        let v: Vec<f64> = grid
                            .iter()
                            .filter(|s| {
                                (val(s, "tau1") * 1000.0).round() as i64 == *a
                                    && (val(s, "tau2") * 1000.0).round() as i64 == *b
                            })
                            .map(|s| 100.0 * pick(s))
                            .collect();
                        values.push(if v.is_empty() { f64::NAN } else { Stat::of(&v).mean });
                    }
                }
                let hm = Heatmap {
                    title: format!("ATS {sm} ← {}: {label} accuracy (%)", t.name),
                    rows: t1.iter().map(|a| format!("τ1={}", *a as f64 / 1000.0)).collect(),
                    cols: t2.iter().map(|b| format!("τ2={}", *b as f64 / 1000.0)).collect(),
                    values,
                    annotate: true,
                };
                svg(&format!("ats_grid_{sm}_{}_{label}.svg", t.name), hm.to_svg(), &format!("ATS grid, student {sm} from teacher {}: {label}-epoch accuracy, mean over seeds (empty cells: τ1 < τ2 is not ATS).", t.name), &mut blocks)?;
            }
        }
    }

    if !failed.is_empty() {
        blocks.push(Block::Heading(2, "Failed runs".into()));
        blocks.push(Block::Table(
            vec!["run".into(), "error".into()],
            failed
                .iter()
                .map(|r| vec![r.name.clone(), r.error.clone().unwrap_or_default().replace('|', "/")])
                .collect(),
        ));
    }
    blocks.push(Block::Heading(2, "Reproduce".into()));
    blocks.push(Block::Para(format!("kdlab {version}; `kdlab sweep study.toml` with this study file, then `kdlab report`. Per-run metrics: `results.csv` (one row per run), `summary.csv` (grouped), `timing.csv` (wall times).")));
    blocks.push(Block::Code(study_toml.clone()));

    // CSVs.
    let mut results =
        String::from("id,kind,student,teacher,teacher_params,series,method,hyper,seed,final_acc,best_acc,best_epoch\n");
    let mut timing = String::from("id,name,status,wall_time_s\n");
    for r in &runs {
        timing += &format!(
            "{},{},{},{}\n",
            r.id,
            r.name.replace(',', ";"),
            r.status,
            r.wall_time_s.map(|w| w.to_string()).unwrap_or_default()
        );
    }
    for t in &teachers {
        results += &format!(
            "{},teacher,,{},{},teacher,ce,,{},{},{},\n",
            t.id.clone().unwrap_or_default(),
            t.name,
            t.params,
            t.seed.map(|s| s.to_string()).unwrap_or_default(),
            t.final_acc,
            if t.best_acc.is_nan() { String::new() } else { t.best_acc.to_string() }
        );
    }
    let mut sorted = students.clone();
    sorted
        .sort_by(|a, b| (&a.student, &a.series, &a.teacher, a.seed).cmp(&(&b.student, &b.series, &b.teacher, b.seed)));
    for s in &sorted {
        let tp = s.teacher.as_ref().and_then(|t| tparams.get(t)).map(|p| p.to_string()).unwrap_or_default();
        results += &format!(
            "{},student,{},{},{tp},{},{},\"{}\",{},{},{},{}\n",
            s.id,
            s.student,
            s.teacher.clone().unwrap_or_default(),
            s.series,
            s.method,
            s.hyper.to_string().replace('"', "'"),
            s.seed,
            s.final_acc,
            s.best_acc,
            s.best_epoch
        );
    }
    for (name, text) in [("results.csv", results), ("summary.csv", summary_csv), ("timing.csv", timing)] {
        let p = out.join(name);
        atomic::write_bytes(&p, text.as_bytes())?;
        files.push(p);
    }
    let md = out.join("report.md");
    atomic::write_bytes(&md, doc::markdown(&blocks).as_bytes())?;
    let html = out.join("report.html");
    atomic::write_bytes(&html, doc::html(&format!("kdlab study {study_name}"), &blocks).as_bytes())?;
    files.push(md);
    files.push(html);
    Ok(Report { files, blocks })
}
