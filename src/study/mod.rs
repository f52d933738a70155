//! Studies: a capacity-mismatch grid declared in one TOML file (`config`), expanded into runs with
//! stable ids (`plan`), indexed in SQLite (`store`) and run resumably (`runner`).
pub mod config;
pub mod devices;
mod failpoint;
pub mod fit;
pub mod plan;
pub mod runner;
pub mod slurm;
pub mod slurm_options;
pub mod store;
pub mod watch;

use crate::probe::{self, source::LogitSource};
use crate::util::{fmt, sealed};
use anyhow::{bail, Result};
use config::StudyConfig;
use plan::{Kind, RunSpec};
use std::path::Path;
use store::{Status, Store};

/// Where the teachers are probed: the test set, and the transfer set the students learn from (the
/// teachers' training images, plain, and as augmented views when the students train with
/// augmentation; one view per image, the same for every teacher).
pub(crate) struct ProbeSet {
    /// The file stem of the result (`probe` → `probe.json` and plots in `probe/`).
    pub stem: &'static str,
    pub split: &'static str,
    pub augment: bool,
}

pub(crate) const PROBE_TEST: ProbeSet = ProbeSet { stem: "probe", split: "test", augment: false };
pub(crate) const PROBE_TRAIN: ProbeSet = ProbeSet { stem: "probe-train", split: "train", augment: false };
pub(crate) const PROBE_TRAIN_AUG: ProbeSet = ProbeSet { stem: "probe-train-aug", split: "train", augment: true };

/// The probe sets of a study: the test set and the plain transfer set always, the augmented
/// transfer set when the students train with augmentation.
pub(crate) fn probe_sets(cfg: &StudyConfig) -> Vec<&'static ProbeSet> {
    let mut v = vec![&PROBE_TEST, &PROBE_TRAIN];
    if cfg.students.train.augment {
        v.push(&PROBE_TRAIN_AUG);
    }
    v
}

/// The meta key under which a probe set records which teachers it probed (the test-set probe
/// keeps the key it had before the transfer-set probes existed).
fn probe_meta_key(set: &ProbeSet) -> String {
    if set.stem == PROBE_TEST.stem {
        "probe_teachers".to_string()
    } else {
        format!("probe_teachers:{}", set.stem)
    }
}

/// Probes every teacher of the study on each of its probe sets and writes `<stem>.json` (the
/// report's nongt_std vs teacher size). A set is skipped when the same teachers were probed on
/// it already; the data are loaded once for the sets still to do.
pub(crate) fn probe_teachers(cfg: &StudyConfig, dir: &Path, specs: &[RunSpec], store: &Store) -> Result<()> {
    let mut teachers: Vec<(String, String)> = specs
        .iter()
        .filter(|s| s.kind == Kind::Teacher)
        .map(|s| (s.train.model.clone(), plan::run_dir(dir, &s.id).display().to_string()))
        .collect();
    for r in &cfg.teachers.runs {
        teachers.push((
            config::external_name(r),
            std::fs::canonicalize(r.parse::<crate::train::checkpoint::RunRef>()?.dir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| r.clone()),
        ));
    }
    if teachers.is_empty() {
        return Ok(());
    }
    let key = serde_json::to_string(&teachers)?;
    let mut todo = vec![];
    for set in probe_sets(cfg) {
        let file = dir.join(format!("{}.json", set.stem));
        let done = store.meta(&probe_meta_key(set))?.as_deref() == Some(key.as_str())
            && file.exists()
            && match sealed::read_json::<probe::ProbeReport>(&file, "a kdlab probe result") {
                Ok(_) => true,
                Err(e) => {
                    eprintln!("warning: {e:#}; probing the teachers again");
                    false
                }
            };
        if !done {
            todo.push(set);
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    // The teachers' own carving of the data: their training images are the students' transfer set.
    let data = cfg.teachers.train.load_data()?;
    let mut taus = probe::default_taus();
    if !taus.iter().any(|t| (t - cfg.probe_tau).abs() < 1e-12) {
        taus.push(cfg.probe_tau);
        taus.sort_by(f64::total_cmp);
    }
    for set in todo {
        probe_set(cfg, dir, &teachers, &data, &taus, set)?;
        store.set_meta(&probe_meta_key(set), &key)?;
    }
    Ok(())
}

/// Probes `teachers` (name, checkpoint spec) on one probe set and writes its JSON and plots.
fn probe_set(
    cfg: &StudyConfig,
    dir: &Path,
    teachers: &[(String, String)],
    data: &crate::data::Dataset,
    taus: &[f64],
    set: &ProbeSet,
) -> Result<()> {
    let split = std::sync::Arc::new(data.split(set.split)?.clone());
    let mut sources: Vec<Box<dyn LogitSource>> = vec![];
    for (name, spec) in teachers {
        let (model, _, _) = crate::train::checkpoint::load_model(spec, tch::Device::Cpu)?;
        let feed = data.feed(set.split, set.augment)?;
        sources.push(Box::new(probe::source::RunSource::from_feed(name.clone(), model, feed, 0)));
    }
    let labels: Vec<usize> = split.labels.iter().map(|&y| y as usize).collect();
    println!(
        "probing {} teachers on {} images of the {} split{}",
        teachers.len(),
        labels.len(),
        set.split,
        if set.augment { " (one augmented view each)" } else { "" }
    );
    let result =
        probe::run(sources, &labels, &format!("the {} split of {}", set.split, data.name), taus, probe::CHUNK)?;
    sealed::write_json(&dir.join(format!("{}.json", set.stem)), &result.report)?;
    probe::output::write_plots(&dir.join(set.stem), &result, cfg.probe_tau, Some(&data.class_names))?;
    println!("{}", probe::output::table(&result.report, &result.taus, cfg.probe_tau));
    Ok(())
}

/// `kdlab status`: progress by kind and status, failures, and an estimate of the time left.
pub fn status(dir: &Path) -> Result<String> {
    let db = dir.join("study.sqlite");
    let study_file = dir.join("study.toml");
    let opened = db.exists().then(|| Store::open_to_read(&db));
    let store = match opened {
        Some(Ok(store)) => store,
        Some(Err(e)) if !(store::is_damaged(&e) && study_file.exists()) => return Err(e),
        // Missing or damaged: rebuilt from the run directories, as `sweep` and `report` do.
        _ if study_file.exists() => match runner::lock(&dir.join(".sweep.lock"), "") {
            Ok(_lock) => runner::open(&study_file, Some(dir), false)?.3,
            Err(_) => {
                eprintln!(
                    "note: {} is {} while a sweep runs; its index is rebuilt in memory from the run directories \
                     (runs in progress show as queued)",
                    db.display(),
                    if db.exists() { "damaged" } else { "missing" }
                );
                runner::index_in_memory(&study_file, dir)?
            }
        },
        _ => bail!("{} is not a study directory (it has neither study.sqlite nor study.toml)", dir.display()),
    };
    let runs = store.planned_runs()?;
    let mut rows = vec![];
    for kind in [Kind::Teacher, Kind::Assistant, Kind::Student] {
        let of: Vec<_> = runs.iter().filter(|r| r.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let n = |s: Status| of.iter().filter(|r| r.status == s).count();
        let walls: Vec<f64> = of.iter().filter(|r| r.status == Status::Done).filter_map(|r| r.wall_time_s).collect();
        let mean = (!walls.is_empty()).then(|| walls.iter().sum::<f64>() / walls.len() as f64);
        let left = mean.map(|m| m * (n(Status::Queued) + n(Status::Running)) as f64);
        rows.push(vec![
            kind.as_str().to_string(),
            n(Status::Done).to_string(),
            n(Status::Running).to_string(),
            n(Status::Failed).to_string(),
            n(Status::Queued).to_string(),
            mean.map_or("-".into(), fmt::duration),
            left.map_or("-".into(), fmt::duration),
        ]);
    }
    let mut out = format!("{}\n", dir.display());
    out += &fmt::table(&["kind", "done", "running", "failed", "queued", "mean time", "time left (1 worker)"], &rows);
    for r in runs.iter().filter(|r| r.status == Status::Running) {
        out += &format!("running: {} {}\n", r.id, r.name);
    }
    for r in runs.iter().filter(|r| r.status == Status::Failed) {
        out += &format!("failed:  {} {}: {}\n", r.id, r.name, r.error.as_deref().unwrap_or("?"));
    }
    Ok(out)
}
