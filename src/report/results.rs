//! A study's results as the report reads them, loaded once from the study directory: the study
//! file's name and probe τ, the teachers, the finished students, the teacher probes and the runs'
//! states. Everything the report writes is a function of a [`StudyResults`].
use crate::probe::ProbeReport;
use crate::study::plan::Kind;
use crate::study::store::{Status, Store, StoredRun};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

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
    /// `mean ± std (n)` in %.
    pub fn cell(&self) -> String {
        format!("{:.2} ± {:.2} ({})", 100.0 * self.mean, 100.0 * self.std, self.n)
    }
}

/// A teacher: a finished study run, or an existing run known through the probe.
#[derive(Clone, Debug)]
pub struct Teacher {
    /// The study run, or None for an existing run known through the probe.
    pub id: Option<String>,
    pub seed: Option<u64>,
    pub name: String,
    pub params: u64,
    pub final_acc: f64,
    /// NaN where unknown (existing runs).
    pub best_acc: f64,
    /// The ladder it belongs to (the zoo's family of its architecture, `imported` for a teacher
    /// the zoo does not know, or the study file's `[teachers] families`): the report compares
    /// teachers' capacity within a family.
    pub family: String,
}

/// One finished student run, as the report needs it.
#[derive(Clone, Debug)]
pub struct Student {
    pub id: String,
    /// The student's architecture.
    pub student: String,
    /// The teacher at the top of the chain (None: trained alone).
    pub teacher: Option<String>,
    /// The teacher is not the plain final teacher: an early checkpoint (ESKD) or an assistant (TAKD).
    pub altered_teacher: bool,
    pub series: String,
    pub method: String,
    pub hyper: serde_json::Value,
    pub seed: u64,
    pub final_acc: f64,
    pub best_acc: f64,
    pub best_epoch: usize,
    /// The last epoch's validation accuracy (runs with a validation split).
    pub val_acc: Option<f64>,
    /// The last epoch's objective statistics (ATS flip rates, ISATS's τ2 summary).
    pub extra: Option<serde_json::Value>,
    /// The teacher's checkpoint chosen by fit (run.json's `teacher_fit`), and the teacher's fit as
    /// the method saw it (`teacher_stats`), where the run recorded them.
    pub teacher_fit: Option<serde_json::Value>,
    pub teacher_stats: Option<serde_json::Value>,
    /// The last epoch's test cross-entropy, read for runs that recorded `teacher_stats`.
    pub final_test_loss: Option<f64>,
}

/// A planned run's state, for `timing.csv` and the failures table.
#[derive(Clone, Debug)]
pub struct RunState {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub error: Option<String>,
    pub wall_time_s: Option<f64>,
}

/// A teacher probe the report reads: the file stem and how its columns are labelled.
pub(crate) const PROBES: [(&str, &str); 3] =
    [("probe", "test set"), ("probe-train", "transfer set"), ("probe-train-aug", "transfer set, augmented views")];

/// Everything the report is made of.
#[derive(Clone, Debug)]
pub struct StudyResults {
    /// The study file's `name`, else the directory's name.
    pub name: String,
    /// The study file's `probe_tau` (default 4).
    pub probe_tau: f64,
    /// The kdlab version that ran the study.
    pub version: String,
    /// The study file's text as the study stored it.
    pub study_toml: String,
    /// Sorted by size.
    pub teachers: Vec<Teacher>,
    /// The finished student runs, in the store's order.
    pub students: Vec<Student>,
    /// The probe results there are, in [`PROBES`] order, with their labels.
    pub probes: Vec<(&'static str, ProbeReport)>,
    /// The planned runs, in the store's order.
    pub runs: Vec<RunState>,
    /// The series the mismatch curves feature, as the study file names them (`[report]
    /// featured`); empty: the report's default choice.
    pub featured: Vec<String>,
}

/// Reads a probe result the study wrote; a missing file is None, an unreadable one an error.
pub(super) fn read_probe(dir: &Path, stem: &str) -> Result<Option<ProbeReport>> {
    let p = dir.join(format!("{stem}.json"));
    if !p.exists() {
        return Ok(None);
    }
    let report = crate::util::sealed::read_json(&p, "a kdlab probe result").with_context(|| {
        format!(
            "{} is derived from the teachers: delete it and run the study's sweep again to probe them anew",
            p.display()
        )
    })?;
    Ok(Some(report))
}

/// What the report takes from the study file.
#[derive(Debug)]
pub(super) struct Settings {
    pub name: String,
    pub probe_tau: f64,
    /// `[teachers] families`.
    pub families: BTreeMap<String, String>,
    /// `[report] featured`.
    pub featured: Vec<String>,
}

/// The study file's name, probe τ, teacher families and featured series; a study file that does
/// not parse, or a value of the wrong type, is an error.
pub(super) fn study_settings(study_toml: &str, dir: &Path) -> Result<Settings> {
    let t: toml::Table =
        toml::from_str(study_toml).context("the study file stored in study.sqlite is not valid TOML")?;
    let name = match t.get("name") {
        None => dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        Some(n) => n.as_str().context("the study file's `name` is not a string")?.to_string(),
    };
    let probe_tau = match t.get("probe_tau") {
        None => 4.0,
        Some(v) => v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .context("the study file's `probe_tau` is not a number")?,
    };
    let origin = "the study file stored in study.sqlite";
    let families = match t.get("teachers").and_then(|v| v.as_table()) {
        Some(teachers) => crate::study::config::teacher_families(teachers, origin)?,
        None => BTreeMap::new(),
    };
    let featured = crate::study::config::featured(&t, origin)?;
    Ok(Settings { name, probe_tau, families, featured })
}

impl StudyResults {
    /// Loads the results of the study in `dir`.
    pub fn load(dir: &Path) -> Result<StudyResults> {
        if !dir.join("study.sqlite").exists() {
            anyhow::bail!("{} is not a study directory (it has no study.sqlite)", dir.display());
        }
        let store = Store::open_to_read(&dir.join("study.sqlite"))
            .with_context(|| format!("{} is not a study directory", dir.display()))?;
        let runs: Vec<StoredRun> = store.planned_runs()?;
        let study_toml = store.meta("study_toml")?.unwrap_or_default();
        let version = store.meta("kdlab_version")?.unwrap_or_default();
        let Settings { name, probe_tau, families, featured } =
            study_settings(&study_toml, dir).with_context(|| format!("study {}", dir.display()))?;
        let family_of =
            |name: &str| families.get(name).cloned().unwrap_or_else(|| crate::models::family(name).to_string());
        let probes: Vec<(&'static str, ProbeReport)> = PROBES
            .iter()
            .map(|(stem, label)| Ok(read_probe(dir, stem)?.map(|p| (*label, p))))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();

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
                family: family_of(&r.spec.train.model),
            })
            .collect();
        if let Some((_, p)) = probes.iter().find(|(label, _)| *label == PROBES[0].1) {
            for t in &p.teachers {
                if !teachers.iter().any(|x| x.name == t.name) {
                    teachers.push(Teacher {
                        id: None,
                        seed: None,
                        name: t.name.clone(),
                        params: t.params.unwrap_or(0),
                        final_acc: t.accuracy,
                        best_acc: f64::NAN,
                        family: family_of(&t.name),
                    });
                }
            }
        }
        teachers.sort_by_key(|t| t.params);

        let students: Vec<Student> = runs
            .iter()
            .filter(|r| r.kind == Kind::Student && r.status == Status::Done)
            .map(|r| {
                let s = &r.spec;
                let mut st = Student {
                    id: r.id.clone(),
                    student: s.train.model.clone(),
                    teacher: s.teacher.as_ref().map(|t| t.root.clone()),
                    altered_teacher: s.teacher.as_ref().is_some_and(|t| {
                        t.at_epoch.is_some() || t.via_assistant.is_some() || t.fit.is_some() || t.calibrate
                    }),
                    series: s.series.clone(),
                    method: s.method.name().to_string(),
                    hyper: s.hyper.clone(),
                    seed: s.train.seed,
                    final_acc: r.final_acc.unwrap_or(f64::NAN),
                    best_acc: r.best_acc.unwrap_or(f64::NAN),
                    best_epoch: r.best_epoch.unwrap_or(0),
                    val_acc: None,
                    extra: None,
                    teacher_fit: None,
                    teacher_stats: None,
                    final_test_loss: None,
                };
                let rdir = crate::study::plan::run_dir(dir, &st.id);
                if let Some(rec) = crate::train::run::read_record(&rdir)? {
                    st.val_acc = rec.final_val_acc;
                    st.extra = rec.final_extra;
                    st.teacher_fit = rec.extra.get("teacher_fit").cloned();
                    st.teacher_stats = rec.extra.get("teacher_stats").cloned();
                }
                if st.teacher_stats.is_some() {
                    let meta = crate::train::checkpoint::read_meta(&rdir.join("last.json"))?;
                    st.final_test_loss = meta.history.last().map(|m| m.test_loss);
                }
                Ok(st)
            })
            .collect::<Result<_>>()?;
        let runs = runs
            .into_iter()
            .map(|r| RunState { id: r.id, name: r.name, status: r.status, error: r.error, wall_time_s: r.wall_time_s })
            .collect();
        Ok(StudyResults { name, probe_tau, version, study_toml, teachers, students, probes, runs, featured })
    }

    /// The test-set probe, if the study ran one.
    pub(crate) fn test_probe(&self) -> Option<&ProbeReport> {
        self.probes.iter().find(|(label, _)| *label == PROBES[0].1).map(|(_, p)| p)
    }

    /// How many runs the study plans.
    pub fn planned(&self) -> usize {
        self.runs.len()
    }

    /// How many runs are done.
    pub fn done(&self) -> usize {
        self.runs.iter().filter(|r| r.status == Status::Done).count()
    }

    /// The runs that failed.
    pub fn failed(&self) -> Vec<&RunState> {
        self.runs.iter().filter(|r| r.status == Status::Failed).collect()
    }

    /// The student architectures, sorted.
    pub(crate) fn student_models(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self.students.iter().map(|s| &s.student).collect();
        set.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_settings_are_read_and_checked() {
        let dir = Path::new("/x/my-study");
        let got = |text: &str| study_settings(text, dir).map(|s| (s.name, s.probe_tau));
        assert_eq!(got("name = \"a\"\nprobe_tau = 2").unwrap(), ("a".to_string(), 2.0));
        assert_eq!(got("probe_tau = 2.5").unwrap(), ("my-study".to_string(), 2.5));
        assert_eq!(got("").unwrap(), ("my-study".to_string(), 4.0));
        let s =
            study_settings("[teachers]\nfamilies = { r56 = \"resnet\" }\n[report]\nfeatured = [\"kd\"]", dir).unwrap();
        assert_eq!((s.families.get("r56").map(String::as_str), s.featured), (Some("resnet"), vec!["kd".to_string()]));
        let e = format!("{:#}", study_settings("[teachers]\nfamilies = { r56 = 1 }", dir).unwrap_err());
        assert!(e.contains("study.sqlite") && e.contains("teachers.families.r56"), "{e}");
        assert!(study_settings("name = 3", dir).is_err());
        assert!(study_settings("probe_tau = \"4\"", dir).is_err());
        assert!(study_settings("name = ", dir).is_err());
    }
}
