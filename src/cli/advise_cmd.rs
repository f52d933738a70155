//! `kdlab advise`: teachers and checkpoints ranked, without training a student, by the probe
//! number that predicted the KD student in the size-versus-fit study (issue 23): the teacher's NLL
//! on the **validation** split (Spearman −0.96 with the student's accuracy across 25 checkpoints on
//! Fashion-MNIST; docs/fashion-mnist-fit). The test set is never read. Given a study's report
//! (`--study`), it also says how well this ranking matched the KD students that study measured.
use super::Runtime;
use crate::probe::stats;
use crate::report::from_files::read_csv;
use crate::study::fit::{self, Candidate};
use crate::train::checkpoint::{self, RunRef, Which};
use crate::train::{run, teacher};
use crate::util::fmt;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct AdviseArgs {
    /// A teacher run (its last checkpoint) or one of its checkpoints (`runs/NAME@epochN`,
    /// `@best`); repeat for several. Each must have a validation split (trained with
    /// --val-per-class), the same for all.
    #[arg(long = "run", alias = "teacher", required = true)]
    pub runs: Vec<String>,
    /// Every kept checkpoint of each --run given without `@` (its checkpoints/epoch-N and its last).
    #[arg(long)]
    pub all_epochs: bool,
    /// The student architecture to distil (checked against the teachers' data; the study's
    /// measured ranking is that of this student's KD runs).
    #[arg(long)]
    pub student: String,
    /// A study's report directory (or its results.csv / fit_STUDENT.csv): how well the ranking
    /// matches the KD students the study trained from the same checkpoints.
    #[arg(long)]
    pub study: Option<PathBuf>,
    /// The ranking (and the study's match) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub rt: Runtime,
}

/// One ranked checkpoint.
struct Ranked {
    spec: String,
    name: String,
    model: String,
    params: u64,
    /// The study's id of the teacher run (run.json's `study_run`, else the directory's name).
    run_id: String,
    is_last: bool,
    fit: Candidate,
}

pub fn run(a: AdviseArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let device = a.rt.init()?;
    let specs = expand(&a.runs, a.all_epochs)?;
    // Every checkpoint is measured on one validation split: the one its run was carved with
    // (a split carved afterwards could hold images the teacher trained on).
    let mut first: Option<(String, String)> = None;
    let mut records = vec![];
    for spec in &specs {
        if teacher::is_torchscript(spec) {
            bail!("{spec}: advise ranks kdlab runs on the validation split they were carved with; a TorchScript file has none")
        }
        let json = checkpoint::resolve(spec)?;
        let dir = checkpoint::run_dir_of(&json);
        let rec = run::read_record(&dir)?
            .with_context(|| format!("{spec}: no run.json, so no record of its validation split"))?;
        let val = rec.config.get("val_per_class").and_then(|v| v.as_u64()).unwrap_or(0);
        if val == 0 {
            bail!(
                "{spec} has no validation split (trained with val_per_class = 0), and advise ranks on the \
                 validation split only, never the test set: retrain it with --val-per-class N (the study used 100)"
            );
        }
        match &first {
            Some((f, fp)) if *fp != rec.data.fingerprint => {
                bail!("{spec} and {f} were trained on different data or carvings: advise compares teachers on one validation split")
            }
            None => first = Some((spec.clone(), rec.data.fingerprint.clone())),
            _ => {}
        }
        let run_id = rec
            .extra
            .get("study_run")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        records.push((json, dir, run_id));
    }
    let (first_spec, _) = first.expect("--run is required");
    let data = teacher::teacher_data(&first_spec, None)?;
    let val = data.val.as_ref().context("the validation split was not carved")?;
    let student_params = crate::models::param_count(&a.student, data.shape(), data.classes)
        .with_context(|| format!("--student {}", a.student))?;
    let mut ranked = vec![];
    for (spec, (json, dir, run_id)) in specs.iter().zip(records) {
        let meta = checkpoint::read_meta(&json)?;
        let last = checkpoint::read_meta(&dir.join("last.json"))?.epoch;
        let fit = fit::checkpoint_fit(spec, &data, device)?;
        let name = spec.parse::<RunRef>()?.name();
        ranked.push(Ranked {
            spec: spec.clone(),
            name,
            model: meta.model,
            params: meta.params,
            run_id,
            is_last: meta.epoch == last,
            fit,
        });
    }
    ranked.sort_by(|x, y| x.fit.val_nll.total_cmp(&y.fit.val_nll));

    let study = a.study.as_deref().map(|p| Study::read(p, &a.student)).transpose()?;
    let measured: Vec<Option<&Measured>> =
        ranked.iter().map(|r| study.as_ref().and_then(|s| s.lookup(r).ok())).collect();

    println!(
        "{} teacher checkpoints ranked by NLL on the validation split of {} ({} images; lower first), \
         for the student {} ({} parameters)",
        ranked.len(),
        data.name,
        val.len(),
        a.student,
        fmt::count(student_params)
    );
    let mut header = vec!["rank", "checkpoint", "model", "params", "epoch", "val NLL", "val acc %", "val ECE"];
    if study.is_some() {
        header.push("study: KD student %");
    }
    let rows: Vec<Vec<String>> = ranked
        .iter()
        .zip(&measured)
        .enumerate()
        .map(|(i, (r, m))| {
            let mut row = vec![
                (i + 1).to_string(),
                r.name.clone(),
                r.model.clone(),
                fmt::count(r.params),
                format!("{}{}", r.fit.epoch, if r.is_last { " (last)" } else { "" }),
                format!("{:.4}", r.fit.val_nll),
                format!("{:.2}", 100.0 * r.fit.val_acc),
                format!("{:.4}", r.fit.val_ece),
            ];
            if study.is_some() {
                row.push(m.map_or("–".into(), |m| format!("{:.2} ({}, n = {})", 100.0 * m.acc, m.setting, m.runs)));
            }
            row
        })
        .collect();
    print!("{}", fmt::table(&header, &rows));

    let mut out = serde_json::json!({
        "metric": "val_nll",
        "split": "val",
        "data": data.name,
        "val_samples": val.len(),
        "student": a.student,
        "ranking": ranked.iter().zip(&measured).enumerate().map(|(i, (r, m))| serde_json::json!({
            "rank": i + 1, "spec": r.spec, "name": r.name, "model": r.model, "params": r.params,
            "epoch": r.fit.epoch, "last": r.is_last, "val_nll": r.fit.val_nll, "val_acc": r.fit.val_acc,
            "val_ece": r.fit.val_ece, "study_student_acc": m.map(|m| m.acc),
        })).collect::<Vec<_>>(),
    });
    if let Some(s) = &study {
        println!("\nthe study: {}", s.describe());
        // The first few reasons, then a count: with --all-epochs most checkpoints have no student.
        let unmatched: Vec<&Ranked> =
            ranked.iter().zip(&measured).filter(|(_, m)| m.is_none()).map(|(r, _)| r).collect();
        for r in unmatched.iter().take(3) {
            println!("  {}: not matched ({:#})", r.name, s.lookup(r).err().expect("unmatched"));
        }
        if unmatched.len() > 3 {
            println!("  … and {} more checkpoints without a KD student in the study (– above)", unmatched.len() - 3);
        }
        let (nll, acc): (Vec<f64>, Vec<f64>) =
            ranked.iter().zip(&measured).filter_map(|(r, m)| m.map(|m| (r.fit.val_nll, m.acc))).unzip();
        // The ranking is by -NLL; its agreement with the measured ranking is ρ(-NLL, accuracy).
        let neg: Vec<f64> = nll.iter().map(|x| -x).collect();
        let rho = stats::spearman(&neg, &acc);
        match rho {
            Some(r) => println!(
                "Spearman ρ between this ranking and the study's measured KD-student ranking: {r:+.2} \
                 (n = {} checkpoints matched of {}; +1: the same order)",
                acc.len(),
                ranked.len()
            ),
            None => println!(
                "Spearman ρ undefined: {} checkpoint(s) matched of {} (at least 2 with distinct values needed)",
                acc.len(),
                ranked.len()
            ),
        }
        out["study"] = serde_json::json!({ "source": s.describe(), "n": acc.len(), "spearman": rho });
    }
    println!(
        "note: validation NLL was chosen as advise's metric on one study only (Fashion-MNIST, 500 images \
         per class, student mlp_32x1: ρ = -0.96 over 25 checkpoints); on another data set the KD student did \
         not follow its teacher's accuracy (ρ = -0.38). Check it on yours before trusting the ranking."
    );
    if let Some(p) = &a.json {
        crate::util::atomic::write_json(p, &out)?;
        println!("wrote {}", p.display());
    }
    eprintln!("ranked {} checkpoints in {}", ranked.len(), fmt::duration(started.elapsed().as_secs_f64()));
    Ok(())
}

/// The checkpoints to rank: each --run as given, or with --all-epochs every kept epoch of a run
/// given without `@` (its last once, under its plain name).
fn expand(runs: &[String], all_epochs: bool) -> Result<Vec<String>> {
    let mut out = vec![];
    for spec in runs {
        let r: RunRef = spec.parse()?;
        if !all_epochs || r.at.is_some() || teacher::is_torchscript(spec) {
            out.push(spec.clone());
            continue;
        }
        let last = checkpoint::read_meta(&checkpoint::resolve(spec)?)?.epoch;
        for e in checkpoint::list_epochs(&r.dir).into_iter().filter(|&e| e != last) {
            out.push(RunRef { dir: r.dir.clone(), at: Some(Which::Epoch(e)) }.to_string());
        }
        out.push(spec.clone());
    }
    Ok(out)
}

/// What a study measured from one teacher checkpoint: its KD students' mean final test accuracy,
/// for the KD setting (τ) with the best mean validation accuracy, as the study's report tunes τ.
struct Measured {
    acc: f64,
    runs: usize,
    setting: String,
}

/// A study's KD students of one architecture, keyed by teacher architecture and checkpoint epoch
/// (None: the teacher's final checkpoint).
struct Study {
    files: Vec<PathBuf>,
    student: String,
    points: BTreeMap<(String, Option<usize>), Measured>,
    /// The study's teacher runs (id → architecture), where its results.csv lists them.
    teachers: BTreeMap<String, String>,
    /// KD rows at a fit level whose checkpoint epoch the file does not give.
    unplaced: usize,
}

impl Study {
    /// `path`: a report directory (or a study directory with report/), its results.csv, or a
    /// fit_STUDENT.csv. A results.csv names a fit level's checkpoint only by its series, so
    /// the fit_STUDENT.csv beside it (which has `teacher_epoch`) is read for the KD rows when present.
    fn read(path: &Path, student: &str) -> Result<Study> {
        let fit_name = format!("fit_{student}.csv");
        let (results, rows_file) = if path.is_dir() {
            let found = [path.to_path_buf(), path.join("report")].into_iter().find_map(|d| {
                let (r, f) = (d.join("results.csv"), d.join(&fit_name));
                let r = r.is_file().then_some(r);
                let rows = if f.is_file() { Some(f) } else { r.clone() };
                rows.map(|rows| (r, rows))
            });
            found.with_context(|| {
                format!(
                    "{}: no results.csv or {fit_name} in it or in its report/ folder (`kdlab report` writes them)",
                    path.display()
                )
            })?
        } else {
            let rows = read_csv(path, &[])?;
            let sibling = path.with_file_name(&fit_name);
            if !rows.first().is_some_and(|r| r.contains_key("teacher_epoch")) && sibling.is_file() && sibling != path {
                (Some(path.to_path_buf()), sibling)
            } else {
                (Some(path.to_path_buf()), path.to_path_buf())
            }
        };
        let mut teachers = BTreeMap::new();
        if let Some(r) = &results {
            for row in read_csv(r, &[])? {
                if row.get("kind").map(String::as_str) == Some("teacher") {
                    if let (Some(id), Some(t)) = (row.get("id"), row.get("teacher")) {
                        teachers.insert(id.clone(), t.clone());
                    }
                }
            }
        }
        let rows = read_csv(&rows_file, &["student", "teacher", "method", "final_acc"])?;
        let num = |row: &BTreeMap<String, String>, k: &str, line: usize| -> Result<Option<f64>> {
            match row.get(k).map(|s| s.trim()) {
                None | Some("") => Ok(None),
                Some(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("{} line {line}: '{k}' is not a number: {s:?}", rows_file.display())),
            }
        };
        let field = |row: &BTreeMap<String, String>, k: &str| row.get(k).cloned().unwrap_or_default();
        // (teacher, epoch) → setting → (final accuracy, validation accuracy) per run.
        type Runs = Vec<(f64, Option<f64>)>;
        let mut groups: BTreeMap<(String, Option<usize>), BTreeMap<String, Runs>> = BTreeMap::new();
        let mut unplaced = 0;
        for (i, row) in rows.iter().enumerate() {
            let line = i + 2;
            let kind_ok = row.get("kind").is_none_or(|k| k == "student");
            if !kind_ok || row["student"] != student || row["method"] != "kd" {
                continue;
            }
            let (series, level, setting) = (field(row, "series"), field(row, "level"), field(row, "setting"));
            // The temperature-scaled teacher is another teacher than its checkpoint.
            if [&series, &level, &setting].iter().any(|s| s.contains("calibrated")) {
                continue;
            }
            let epoch = match num(row, "teacher_epoch", line)? {
                Some(e) if e >= 0.0 && e.fract() == 0.0 => Some(e as usize),
                Some(e) => bail!("{} line {line}: teacher_epoch {e} is not an epoch", rows_file.display()),
                None => None,
            };
            if epoch.is_none() && (series.contains("(fit ") || !(level.is_empty() || level == "final")) {
                unplaced += 1;
                continue;
            }
            let acc = num(row, "final_acc", line)?
                .with_context(|| format!("{} line {line}: no final_acc", rows_file.display()))?;
            let val = match num(row, "val_acc", line)? {
                Some(v) => Some(v),
                None => num(row, "final_val_acc", line)?,
            };
            let name = [setting, series, field(row, "hyper")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
            groups.entry((row["teacher"].clone(), epoch)).or_default().entry(name).or_default().push((acc, val));
        }
        let mean = |v: &mut dyn Iterator<Item = f64>| {
            let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
            s / n as f64
        };
        let points = groups
            .into_iter()
            .map(|(key, settings)| {
                let tuned = settings.values().flatten().all(|(_, v)| v.is_some());
                let m = if tuned {
                    let (name, runs) = settings
                        .iter()
                        .max_by(|a, b| {
                            let va = mean(&mut a.1.iter().map(|r| r.1.expect("tuned")));
                            let vb = mean(&mut b.1.iter().map(|r| r.1.expect("tuned")));
                            // On a tie, the first setting by name (max_by keeps the last).
                            va.total_cmp(&vb).then(b.0.cmp(a.0))
                        })
                        .expect("a group has a setting");
                    Measured { acc: mean(&mut runs.iter().map(|r| r.0)), runs: runs.len(), setting: name.clone() }
                } else {
                    let all: Vec<f64> = settings.values().flatten().map(|r| r.0).collect();
                    let setting = "every KD setting, no validation accuracy".to_string();
                    Measured { acc: mean(&mut all.iter().copied()), runs: all.len(), setting }
                };
                (key, m)
            })
            .collect();
        let mut files: Vec<PathBuf> = results.into_iter().collect();
        if !files.contains(&rows_file) {
            files.push(rows_file);
        }
        Ok(Study { files, student: student.to_string(), points, teachers, unplaced })
    }

    fn describe(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let mut s = format!(
            "{} ({} teacher checkpoints with KD students of {}, plain teachers only",
            files.join(" + "),
            self.points.len(),
            self.student
        );
        if self.unplaced > 0 {
            s += &format!("; {} KD runs at a fit level with no teacher_epoch left out", self.unplaced);
        }
        s + ")"
    }

    /// The study's measurement for a checkpoint: the same teacher run (where the study lists its
    /// teacher runs; else the same architecture) at the same epoch, or its final checkpoint.
    fn lookup(&self, r: &Ranked) -> Result<&Measured> {
        let model = if self.teachers.is_empty() {
            r.model.clone()
        } else {
            let m = self
                .teachers
                .get(&r.run_id)
                .with_context(|| format!("run {} is not a teacher of the study", r.run_id))?;
            let same: BTreeSet<&String> = self.teachers.iter().filter(|(_, t)| *t == m).map(|(id, _)| id).collect();
            if same.len() > 1 {
                bail!("the study has {} teacher runs of {m}, and its CSV does not say which taught", same.len());
            }
            m.clone()
        };
        let exact = self.points.get(&(model.clone(), Some(r.fit.epoch)));
        let last = if r.is_last { self.points.get(&(model.clone(), None)) } else { None };
        exact
            .or(last)
            .with_context(|| format!("no KD student of {} from {model} at epoch {}", self.student, r.fit.epoch))
    }
}
