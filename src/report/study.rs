//! `kdlab report`: the study's results as `report.md`, a self-contained `report.html`, SVG plots
//! and CSV files. Everything in it is a function of the finished runs (no timestamps, no wall
//! times: those go to `timing.csv`), so the report of a resumed study equals an uninterrupted one.
use super::doc::{self, Block};
use super::svg::{Heatmap, LinePlot, Series};
use crate::probe::ProbeReport;
use crate::study::plan::{Kind, RunSpec};
use crate::study::store::{Status, Store, StoredRun};
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
    /// The last epoch's validation accuracy (runs with a validation split).
    val_acc: Option<f64>,
    /// The last epoch's objective statistics (ATS flip rates, ISATS's τ2 summary).
    extra: Option<serde_json::Value>,
}

/// A teacher probe the report reads: the file stem and how its columns are labelled.
const PROBES: [(&str, &str); 3] =
    [("probe", "test set"), ("probe-train", "transfer set"), ("probe-train-aug", "transfer set, augmented views")];

/// Reads a probe result the study wrote; a missing file is None, an unreadable one an error.
fn read_probe(dir: &Path, stem: &str) -> Result<Option<ProbeReport>> {
    let p = dir.join(format!("{stem}.json"));
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not a kdlab probe result", p.display()))?))
}

/// One teacher's numbers at the temperature nearest `tau` in a probe.
fn probe_at(probe: &ProbeReport, name: &str, tau: f64) -> Option<(f64, crate::probe::TauReport)> {
    let t = probe.teachers.iter().find(|t| t.name == name)?;
    let i = crate::probe::nearest_tau(&t.per_tau.iter().map(|t| t.tau).collect::<Vec<_>>(), tau);
    Some((t.accuracy, t.per_tau[i].clone()))
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

/// Per method with several settings (series) for the same teachers, the setting whose runs have
/// the highest mean final validation accuracy, per teacher: method → teacher → (series, val acc).
/// ESKD, TAKD and relabelled series are not candidates (they change the teacher, not a setting).
#[allow(clippy::type_complexity)]
fn tuned_on_validation(
    series: &[(&String, &Vec<&Student>)],
    teachers: &[&Teacher],
) -> Vec<(String, BTreeMap<String, (String, f64)>)> {
    let mut by_method: BTreeMap<String, Vec<(&String, &Vec<&Student>)>> = BTreeMap::new();
    for (name, runs) in series {
        let tunable = !name.contains("(ESKD") && !name.contains("(TAKD") && runs.iter().all(|s| s.val_acc.is_some());
        if let (true, Some(first)) = (tunable, runs.first()) {
            by_method.entry(first.method.clone()).or_default().push((name, runs));
        }
    }
    by_method
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(m, candidates)| {
            let mut choice = BTreeMap::new();
            for t in teachers {
                let best = candidates
                    .iter()
                    .filter_map(|(name, runs)| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()))
                            .filter_map(|s| s.val_acc)
                            .collect();
                        (!v.is_empty()).then(|| ((*name).clone(), Stat::of(&v).mean))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                if let Some(b) = best {
                    choice.insert(t.name.clone(), b);
                }
            }
            (m, choice)
        })
        .collect()
}

/// Rows of the capacity-mismatch table: per series and teacher family (with at least two
/// teachers), the best-teaching teacher against the family's largest, on final accuracy.
fn mismatch_rows(series: &[(&String, &Vec<&Student>)], teachers: &[&Teacher]) -> Vec<Vec<String>> {
    let families: BTreeSet<&str> = teachers.iter().map(|t| t.family.as_str()).collect();
    let mut rows = vec![];
    for (name, runs) in series {
        for fam in &families {
            let stats: Vec<(&Teacher, Stat)> = teachers
                .iter()
                .filter(|t| t.family == *fam)
                .filter_map(|t| stat_from(runs, &t.name, |s| s.final_acc).map(|s| (*t, s)))
                .collect();
            if stats.len() < 2 {
                continue;
            }
            let best = stats.iter().max_by(|a, b| a.1.mean.total_cmp(&b.1.mean)).expect("two or more");
            let largest = stats.iter().max_by_key(|(t, _)| t.params).expect("two or more");
            let drop = best.1.mean - largest.1.mean;
            let cell = |s: &Stat| format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std);
            rows.push(vec![
                (*name).clone(),
                fam.to_string(),
                best.0.name.clone(),
                cell(&best.1),
                largest.0.name.clone(),
                cell(&largest.1),
                format!("{:.2}", 100.0 * drop),
                if drop > 2.0 * best.1.std.max(largest.1.std) { "yes".into() } else { "no".into() },
            ]);
        }
    }
    rows
}

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
                mean(["isats_tau2", "fallback"], 100.0, 1),
            ]);
        }
    }
    rows
}

/// A written report: its files and its content.
pub struct Report {
    pub files: Vec<PathBuf>,
    pub blocks: Vec<Block>,
}

/// Writes the report of the study in `dir` into `out`.
pub fn write(dir: &Path, out: &Path) -> Result<Report> {
    if !dir.join("study.sqlite").exists() {
        anyhow::bail!("{} is not a study directory (it has no study.sqlite)", dir.display());
    }
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
    let probes: Vec<(&str, ProbeReport)> = PROBES
        .iter()
        .map(|(stem, label)| Ok(read_probe(dir, stem)?.map(|p| (*label, p))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let probe: Option<ProbeReport> = read_probe(dir, "probe")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    // Teachers: study runs, then existing runs known through the probe.
    let mut teachers: Vec<Teacher> = runs
        .iter()
        .filter(|r| r.kind == Kind::Teacher && r.status == Status::Done)
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
        .filter(|r| r.kind == Kind::Student && r.status == Status::Done)
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
                val_acc: None,
                extra: None,
            }
        })
        .map(|mut s| {
            let rec = crate::train::run::read_record(&crate::study::plan::run_dir(dir, &s.id))?;
            if let Some(rec) = rec {
                s.val_acc = rec.final_val_acc;
                s.extra = rec.final_extra;
            }
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let planned = runs.len();
    let done = runs.iter().filter(|r| r.status == Status::Done).count();
    let failed: Vec<&StoredRun> = runs.iter().filter(|r| r.status == Status::Failed).collect();

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
            .into_iter()
            .chain(probes.iter().filter(|(label, _)| *label != PROBES[0].1).flat_map(|(_, p)| {
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
    for (label, _) in probes.iter().filter(|(label, _)| *label != PROBES[0].1) {
        header.extend([
            format!("acc ({label})"),
            format!("loss ({label})"),
            format!("nongt_std@τ={probe_tau} ({label})"),
        ]);
    }
    blocks.push(Block::Para(format!(
        "Test accuracy in %; p_true, nongt_std and nongt_entropy of the teachers' softened outputs on the test set{}.",
        if probes.len() > 1 {
            ", and on the transfer set (the training images the students learn from): accuracy in %, cross-entropy at τ = 1, nongt_std"
        } else {
            ""
        }
    )));
    blocks.push(Block::Table(header, rows));
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
        let tuned = tuned_on_validation(&curve_series, &tnames);
        if !tuned.is_empty() {
            blocks.push(Block::Para(format!("Hyper-parameters tuned per teacher: for each method with several settings, the setting with the highest mean final **validation** accuracy (images held out of the training set, never the test set) for each teacher; its test accuracy is drawn as the curve '<method> (tuned on val)'. Student `{sm}`, chosen setting (mean validation accuracy in %):")));
            blocks.push(Block::Table(
                std::iter::once("method".to_string()).chain(tnames.iter().map(|t| t.name.clone())).collect(),
                tuned
                    .iter()
                    .map(|(m, choice)| {
                        std::iter::once(format!("{m} (tuned on val)"))
                            .chain(tnames.iter().map(|t| {
                                choice
                                    .get(&t.name)
                                    .map_or("-".into(), |(series, val)| format!("{series} ({:.2})", 100.0 * val))
                            }))
                            .collect()
                    })
                    .collect(),
            ));
        }
        // The tuned curves as series of runs: per teacher, the chosen setting's runs.
        let tuned_runs: Vec<(String, Vec<&Student>)> = tuned
            .iter()
            .map(|(m, choice)| {
                let runs = curve_series
                    .iter()
                    .flat_map(|(name, runs)| {
                        runs.iter()
                            .copied()
                            .filter(|s| s.teacher.as_ref().and_then(|t| choice.get(t)).is_some_and(|(c, _)| c == *name))
                    })
                    .collect();
                (format!("{m} (tuned on val)"), runs)
            })
            .collect();
        let curve_series: Vec<(&String, &Vec<&Student>)> =
            curve_series.into_iter().chain(tuned_runs.iter().map(|(n, r)| (n, r))).collect();
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

        // Dark knowledge next to the mismatch curve: nongt_std of each teacher, on the test set and
        // on the transfer set, and its correlation with the students' accuracy across teachers.
        if !probes.is_empty() && tnames.len() > 1 {
            let stds: Vec<(&str, Vec<f64>)> = probes
                .iter()
                .filter_map(|(label, p)| {
                    let v: Vec<f64> = tnames
                        .iter()
                        .filter_map(|t| probe_at(p, &t.name, probe_tau).map(|(_, r)| r.nongt_std))
                        .collect();
                    (v.len() == tnames.len()).then_some((*label, v))
                })
                .collect();
            if !stds.is_empty() {
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
                svg(
                    &format!("nongt_std_{sm}.svg"),
                    plot.to_svg(),
                    &format!("The probe's nongt_std at τ = {probe_tau} for the teachers of the curve above (same x axis), on each probed set."),
                    &mut blocks,
                )?;
                let mut rows = vec![];
                for (name, runs) in &curve_series {
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
                                (*name).clone(),
                                label.to_string(),
                                xs.len().to_string(),
                                f(pearson(&xs, &ys)),
                                f(crate::probe::stats::spearman(&xs, &ys)),
                            ]);
                        }
                    }
                }
                if !rows.is_empty() {
                    blocks.push(Block::Para(format!("Correlation across teachers between the teacher's nongt_std at τ = {probe_tau}, measured on the set named, and student `{sm}`'s final accuracy (Pearson r and Spearman ρ; positive: more distinct dark knowledge, better student).")));
                    blocks.push(Block::Table(
                        ["method", "nongt_std measured on", "teachers", "Pearson r", "Spearman ρ"]
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                        rows,
                    ));
                }
            }
        }

        // Capacity mismatch per family: how much worse the largest teacher teaches than the best.
        let mm_rows = mismatch_rows(&curve_series, &tnames);
        if !mm_rows.is_empty() {
            blocks.push(Block::Para(format!("Capacity mismatch for student `{sm}`, per method and teacher family (final-epoch accuracy, mean ± std over seeds): the teacher that teaches best, the family's largest teacher, and the **drop** from the first to the second; **mismatch** marks a drop larger than twice the larger of the two standard deviations. A remedy flattens the curve where its drop is smaller than KD's.")));
            blocks.push(Block::Table(
                ["method", "family", "best teacher", "acc", "largest teacher", "acc", "drop", "mismatch"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                mm_rows,
            ));
        }

        // ATS-family targets: how often the target ranks a wrong class first, and ISATS's τ2.
        let target_rows = target_statistics(&by_series, &tnames);
        if !target_rows.is_empty() {
            blocks.push(Block::Para(format!("ATS-family targets for student `{sm}` (last epoch, mean over seeds): the share of transfer-set samples the teacher gets wrong, the share where the teacher is right but the ATS target ranks a wrong class first (**flipped**), and, for ISATS, the median chosen τ2 and the shares at the lower bound τ2_min, at the order constraint's floor, and given τ1 by the fallback.")));
            blocks.push(Block::Table(
                [
                    "series",
                    "teacher",
                    "teacher wrong %",
                    "flipped %",
                    "τ2 median",
                    "at τ2_min %",
                    "at floor %",
                    "fallback %",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                target_rows,
            ));
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
    let mut results = String::from(
        "id,kind,student,teacher,teacher_params,series,method,hyper,seed,final_acc,best_acc,best_epoch,final_val_acc\n",
    );
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
            "{},teacher,,{},{},teacher,ce,,{},{},{},,\n",
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
            "{},student,{},{},{tp},{},{},\"{}\",{},{},{},{},{}\n",
            s.id,
            s.student,
            s.teacher.clone().unwrap_or_default(),
            s.series,
            s.method,
            s.hyper.to_string().replace('"', "'"),
            s.seed,
            s.final_acc,
            s.best_acc,
            s.best_epoch,
            s.val_acc.map(|v| v.to_string()).unwrap_or_default()
        );
    }
    // The teachers' probe numbers, one row per teacher and probed set, for re-analysis.
    let mut teachers_csv = String::from(
        "teacher,params,probed_on,samples,accuracy,nll_at_tau1,tau,p_true,nongt_mean,nongt_std,nongt_entropy\n",
    );
    for t in &teachers {
        for (label, p) in &probes {
            if let (Some((acc, at1)), Some((_, at)), Some(tr)) = (
                probe_at(p, &t.name, 1.0),
                probe_at(p, &t.name, probe_tau),
                p.teachers.iter().find(|x| x.name == t.name),
            ) {
                teachers_csv += &format!(
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
    for (name, text) in
        [("results.csv", results), ("summary.csv", summary_csv), ("timing.csv", timing), ("teachers.csv", teachers_csv)]
    {
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
