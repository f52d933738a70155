//! A study file: the grid of a capacity-mismatch experiment, declared once.
//!
//! ```toml
//! name = "fashion-mnist-cpu"          # optional (default: the file's stem)
//! data = "fashion-mnist"
//! seeds = [0, 1, 2]
//! probe_tau = 4.0                     # τ at which the report shows the probe's nongt_std
//! device = "cuda"                    # optional: where `kdlab sweep` runs it (default cpu)
//! gres = "gpu:a100:1"                 # optional: what its Slurm jobs ask for (default gpu:1)
//! threads = 1                         # optional: LibTorch threads per run, local and on Slurm
//!
//! [teachers]                          # a capacity ladder trained by the study (once each) ...
//! models = ["cnn_w1", "cnn_w2", "cnn_w4", "cnn_w8"]
//! runs = []                           # ... and/or existing runs ("runs/r56", "runs/r110@epoch60")
//! seed = 0
//! epochs = 10                         # any training key: lr, batch_size, schedule, milestones, ...
//! families = { r56 = "resnet" }       # optional: a teacher's family where the zoo's is not it
//!
//! [students]
//! models = ["cnn_w1"]
//! epochs = 10
//!
//! [[methods]]                         # each list is a grid: every combination is a run
//! name = "kd"
//! tau = [1, 2, 4, 8]
//!
//! [[methods]]
//! name = "ats"
//! tau1 = [1, 2, 3, 4, 5, 6]
//! tau2 = [1, 2, 3, 4, 5]
//! teachers = ["cnn_w8"]              # optional: only these teachers (or students)
//!
//! [[methods]]
//! name = "kd"
//! teacher_epoch = 3                   # ESKD: the teacher's checkpoint after 3 epochs
//!
//! [[methods]]
//! name = "kd"
//! assistant = "cnn_w2"                # TAKD: teacher → assistant → student
//!
//! [[methods]]
//! name = "dgkd"
//! assistants = ["cnn_w4", "cnn_w2"]   # DGKD: each taught by the teacher and those above it
//!
//! [[methods]]
//! name = "kd"
//! train = { optimizer = "dot" }       # the block's students trained otherwise (any training key)
//!
//! [slurm]                             # optional: what `--emit-slurm` arrays ask for (`slurm.rs`)
//! partition = "cpu"
//! time = "2:00:00"
//! ```
use super::fit::FitPick;
use crate::methods;
use crate::train::checkpoint::RunRef;
use crate::train::config::{self, TrainConfig};
use crate::train::topk_cache::TeacherCache;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct StudyConfig {
    pub name: String,
    pub data: String,
    pub seeds: Vec<u64>,
    pub probe_tau: f64,
    pub teachers: TeacherSet,
    pub students: StudentSet,
    pub methods: Vec<MethodBlock>,
    /// Where `kdlab sweep` runs the study when no `--device` is given (`device = "cuda"`).
    pub device: Option<super::devices::SweepDevice>,
    /// What the Slurm jobs of a study on GPUs ask for (`gres = "gpu:a100:1"`; default `gpu:1`).
    pub gres: Option<String>,
    /// The series the report's mismatch curves feature (`[report] featured = [...]`); empty: the
    /// report's default choice.
    pub featured: Vec<String>,
    /// LibTorch threads per run, for local workers and Slurm array tasks alike (`threads = 1`);
    /// None: a sweep divides the cores among its workers.
    pub threads: Option<usize>,
    /// What Slurm job arrays ask for (`[slurm]`).
    pub slurm: super::slurm_options::SlurmOptions,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TeacherSet {
    pub models: Vec<String>,
    pub runs: Vec<String>,
    /// Families given in the study file (`families = { name = "family" }`) for teachers whose
    /// family the zoo does not know or gets wrong; the report compares capacity within a family.
    pub families: BTreeMap<String, String>,
    /// The teachers' training settings (model and seed are filled per teacher).
    pub train: TrainConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StudentSet {
    pub models: Vec<String>,
    pub train: TrainConfig,
    /// Per-student changes to `train` (`[students.overrides.mobilenetv2_x0_5] lr = 0.01`).
    pub overrides: BTreeMap<String, TrainConfig>,
    /// Distil from a teacher cache instead of running the teacher (a `[[methods]]` block may
    /// choose its own).
    pub teacher_cache: TeacherCache,
}

/// One `[[methods]]` block: a method and a grid of its hyper-parameters.
/// The keys of `[students]` (and of one student's overrides) that are not training keys.
const STUDENT_OWN_KEYS: &[&str] = &["models", "teacher_cache"];

/// The `[students]` section as written, for a methods block that changes its students' training
/// (`train = { ... }`): each student's settings are the section's, then its overrides, then the block's.
struct StudentTables<'a> {
    section: &'a toml::Table,
    data: &'a str,
}

impl StudentTables<'_> {
    /// Student `model`'s training table with `changes` on top.
    fn with(&self, model: &str, changes: &toml::Table) -> toml::Table {
        let mut merged = self.section.clone();
        let overrides = merged.remove("overrides");
        if let Some(o) = overrides.as_ref().and_then(|o| o.get(model)).and_then(|o| o.as_table()) {
            merged.extend(o.clone());
        }
        merged.extend(changes.clone());
        merged
    }

    fn models(&self, origin: &str) -> Result<Vec<String>> {
        models(self.section, "students.models", origin)
    }
}

impl StudentSet {
    /// The training settings of student `model` (its overrides applied).
    pub(crate) fn train_for(&self, model: &str) -> TrainConfig {
        TrainConfig { model: model.to_string(), ..self.overrides.get(model).unwrap_or(&self.train).clone() }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MethodBlock {
    pub name: String,
    /// Every combination of the listed values that the method accepts.
    pub grid: Vec<methods::MethodSpec>,
    /// The hyper-parameters that vary in the grid (they label the runs), in the method's order.
    pub varying: Vec<String>,
    /// Combinations the method declares incompatible, left out of the grid.
    pub skipped: Vec<SkippedCombination>,
    pub teachers: Option<Vec<String>>,
    pub students: Option<Vec<String>>,
    pub teacher_epoch: Option<usize>,
    pub assistant: Option<String>,
    /// DGKD (a guided method): the chain's assistants, largest first, each taught by the teacher
    /// and the assistants above it; the students by all of them (`train::takd`).
    pub assistants: Vec<String>,
    pub label: Option<String>,
    /// The teacher caches this block's runs distil from, each a run of its own (`teacher_cache =
    /// ["topk:1", "topk:5", true]`); empty: the `[students]` setting.
    pub teacher_cache: Vec<TeacherCache>,
    /// Teachers matched on fit: per level, each teacher's kept epoch its rule chooses on the
    /// validation split (`teacher_fit = { metric = "val_nll", targets = [0.5, 0.4] }`), each level
    /// a series of its own; empty: the final checkpoint.
    pub teacher_fit: Vec<FitPick>,
    /// Distil from the temperature-scaled teacher (`teacher_calibrate = true`).
    pub teacher_calibrate: bool,
    /// The block's changes to its students' training (`train = { optimizer = "dot" }`): each
    /// student's settings with them applied; empty: the `[students]` settings.
    pub train: BTreeMap<String, TrainConfig>,
    /// Those changes as `key=value`, in key order: they label the block's series.
    pub train_changes: Vec<String>,
}

/// A grid combination left out because the method declares its values incompatible.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedCombination {
    pub params: methods::Table,
    /// The constraint it breaks (`methods::Incompatible`).
    pub needs: String,
    /// Its values that break it.
    pub got: String,
}

const TOP_KEYS: [&str; 16] = [
    "name",
    "report",
    "data",
    "seeds",
    "probe_tau",
    "teachers",
    "students",
    "methods",
    "description",
    "train_subset",
    "val_per_class",
    "subset_seed",
    "device",
    "gres",
    "threads",
    "slurm",
];
/// Top-level keys that set the same value in [teachers] and [students] (a section may override
/// them): the data carving, so that the students' transfer set is the teachers' training set.
const SHARED_TRAIN_KEYS: [&str; 3] = config::CARVING_KEYS;
/// The keys of a `[[methods]]` block that are not the method's hyper-parameters.
pub const BLOCK_KEYS: [&str; 11] = [
    "name",
    "teachers",
    "students",
    "teacher_epoch",
    "assistant",
    "assistants",
    "label",
    "teacher_cache",
    "teacher_fit",
    "teacher_calibrate",
    "train",
];

fn unknown(origin: &str, key: &str, allowed: &[String]) -> anyhow::Error {
    let hint = crate::util::text::did_you_mean(key, allowed);
    anyhow::anyhow!("{origin}: unknown key '{key}'{hint}; valid keys: {}", allowed.join(", "))
}

fn strings(v: &toml::Value, key: &str, origin: &str) -> Result<Vec<String>> {
    match v {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{origin}: '{key}' must list strings, found {x}"))
            })
            .collect(),
        other => bail!("{origin}: '{key}' must be a string or a list of strings, found {other}"),
    }
}

/// A training section: its own keys plus every training key except those the study sets itself.
fn train_section(t: &toml::Table, origin: &str, own: &[&str], data: &str) -> Result<TrainConfig> {
    let mut allowed: Vec<String> = config::keys_of(&TrainConfig::default())
        .into_iter()
        .filter(|k| !["model", "data", "seed"].contains(&k.as_str()))
        .collect();
    allowed.extend(own.iter().map(|s| s.to_string()));
    let mut table = toml::Table::new();
    for (k, v) in t {
        if !allowed.contains(k) {
            return Err(unknown(origin, k, &allowed));
        }
        if !own.contains(&k.as_str()) {
            table.insert(k.clone(), v.clone());
        }
    }
    table.insert("data".into(), toml::Value::String(data.to_string()));
    config::from_table(table, origin)
}

fn optional_str(table: &toml::Table, k: &str, origin: &str) -> Result<Option<String>> {
    match table.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!("{origin}: '{k}' should be a string, found {v}"),
    }
}

/// A Slurm generic resource such as `gpu:1` or `gpu:a100:2`; it is written into job scripts, so
/// nothing but the characters such names use gets through.
fn gres(g: &str, origin: &str) -> Result<String> {
    let ok = !g.is_empty() && g.chars().all(|c| c.is_ascii_alphanumeric() || ":_,.-".contains(c));
    if !ok {
        bail!("{origin}: 'gres' = {g:?} is not a Slurm resource (e.g. \"gpu:1\" or \"gpu:a100:1\")");
    }
    Ok(g.to_string())
}

fn seeds(v: Option<&toml::Value>, origin: &str) -> Result<Vec<u64>> {
    let seeds: Vec<u64> = match v {
        None => vec![0],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_integer()
                    .filter(|i| *i >= 0)
                    .map(|i| i as u64)
                    .with_context(|| format!("{origin}: 'seeds' must list non-negative integers, found {v}"))
            })
            .collect::<Result<_>>()?,
        Some(v) => bail!("{origin}: 'seeds' should be a list of integers, found {v}"),
    };
    if seeds.is_empty() {
        bail!("{origin}: 'seeds' is empty");
    }
    Ok(seeds)
}

fn probe_tau(v: Option<&toml::Value>, origin: &str) -> Result<f64> {
    match v {
        None => Ok(4.0),
        Some(v) => v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .filter(|t| *t > 0.0)
            .with_context(|| format!("{origin}: 'probe_tau' must be a positive number")),
    }
}

/// The section `[k]` (empty if absent), with the top-level data-carving keys it does not set.
fn section(table: &toml::Table, k: &str, origin: &str) -> Result<toml::Table> {
    let mut t = match table.get(k) {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(v) => bail!("{origin}: '[{k}]' should be a table, found {v}"),
    };
    for key in SHARED_TRAIN_KEYS {
        if let (Some(v), false) = (table.get(key), t.contains_key(key)) {
            t.insert(key.to_string(), v.clone());
        }
    }
    Ok(t)
}

/// The architectures a section lists under `models`, each checked.
fn models(t: &toml::Table, key: &str, origin: &str) -> Result<Vec<String>> {
    let models = t.get("models").map(|v| strings(v, key, origin)).transpose()?.unwrap_or_default();
    for m in &models {
        crate::models::parse(m).with_context(|| origin.to_string())?;
    }
    Ok(models)
}

fn method_blocks(v: Option<&toml::Value>, origin: &str, students: &StudentTables) -> Result<Vec<MethodBlock>> {
    let blocks = match v {
        None => bail!("{origin}: no [[methods]] (e.g. [[methods]] name = \"kd\")"),
        Some(toml::Value::Array(a)) => a,
        Some(v) => bail!("{origin}: 'methods' must be [[methods]] tables, found {v}"),
    };
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let b = b.as_table().with_context(|| format!("{origin}: methods[{i}] is not a table"))?;
            MethodBlock::parse(b, &format!("{origin} methods[{i}]"), students)
        })
        .collect()
}

/// A block's `train = { ... }`: every student's training settings with the changes applied, and
/// the changes as `key=value`. The transfer set is the teachers' training set, so the carving
/// keys stay the study's.
fn block_train(
    b: &toml::Table,
    origin: &str,
    students: &StudentTables,
) -> Result<(BTreeMap<String, TrainConfig>, Vec<String>)> {
    let Some(v) = b.get("train") else { return Ok(Default::default()) };
    let changes =
        v.as_table().with_context(|| format!("{origin}: train should be a table of training keys, found {v}"))?;
    if let Some(k) =
        changes.keys().find(|k| SHARED_TRAIN_KEYS.contains(&k.as_str()) || STUDENT_OWN_KEYS.contains(&k.as_str()))
    {
        bail!("{origin}: train.{k} is the study's setting, not a block's (the students' transfer set is the teachers' training set)");
    }
    let origin = format!("{origin} train");
    let mut train = BTreeMap::new();
    for model in students.models(&origin)? {
        let table = students.with(&model, changes);
        train.insert(model, train_section(&table, &origin, STUDENT_OWN_KEYS, students.data)?);
    }
    let labels =
        changes.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string)));
    Ok((train, labels.collect()))
}

impl TeacherSet {
    fn parse(t: &toml::Table, data: &str, origin: &str) -> Result<TeacherSet> {
        let runs = t.get("runs").map(|v| strings(v, "teachers.runs", origin)).transpose()?.unwrap_or_default();
        for r in &runs {
            r.parse::<RunRef>().with_context(|| format!("{origin}: teachers.runs"))?;
        }
        let seed = t
            .get("seed")
            .map(|v| {
                v.as_integer()
                    .filter(|i| *i >= 0)
                    .with_context(|| format!("{origin}: teachers.seed must be a non-negative integer"))
            })
            .transpose()?
            .unwrap_or(0);
        let train = train_section(t, &format!("{origin} [teachers]"), &["models", "runs", "seed", "families"], data)?;
        Ok(TeacherSet {
            models: models(t, "teachers.models", origin)?,
            runs,
            families: teacher_families(t, origin)?,
            train: TrainConfig { seed: seed as u64, ..train },
        })
    }
}

impl StudentSet {
    fn parse(s: &toml::Table, data: &str, origin: &str) -> Result<StudentSet> {
        let students = StudentSet {
            models: models(s, "students.models", origin)?,
            train: train_section(s, &format!("{origin} [students]"), &["models", "teacher_cache", "overrides"], data)?,
            overrides: Self::overrides(s, data, origin)?,
            teacher_cache: match s.get("teacher_cache") {
                None => TeacherCache::Off,
                Some(v) => TeacherCache::from_toml(v, "students.teacher_cache", origin)?,
            },
        };
        if students.models.is_empty() {
            bail!("{origin}: [students] lists no models");
        }
        if let Some(m) = students.overrides.keys().find(|m| !students.models.contains(m)) {
            bail!(
                "{origin}: students.overrides.{m}: '{m}' is not one of the students ({})",
                students.models.join(", ")
            );
        }
        Ok(students)
    }

    /// `[students.overrides.MODEL]`: each student's training settings, its changes on top of the
    /// section's.
    fn overrides(s: &toml::Table, data: &str, origin: &str) -> Result<BTreeMap<String, TrainConfig>> {
        let mut overrides = BTreeMap::new();
        let Some(o) = s.get("overrides") else { return Ok(overrides) };
        let o =
            o.as_table().with_context(|| format!("{origin}: students.overrides should be a table of student names"))?;
        for (model, changes) in o {
            let changes = changes
                .as_table()
                .with_context(|| format!("{origin}: students.overrides.{model} should be a table"))?;
            let mut merged = s.clone();
            merged.remove("overrides");
            merged.extend(changes.clone());
            let origin = format!("{origin} [students.overrides.{model}]");
            overrides.insert(model.clone(), train_section(&merged, &origin, STUDENT_OWN_KEYS, data)?);
        }
        Ok(overrides)
    }
}

impl StudyConfig {
    pub fn load(path: &Path) -> Result<StudyConfig> {
        let table = config::read_table(Some(path))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "study".into());
        Self::from_table(table, &path.display().to_string(), &stem)
    }

    pub fn from_table(table: toml::Table, origin: &str, default_name: &str) -> Result<StudyConfig> {
        let top: Vec<String> = TOP_KEYS.iter().map(|s| s.to_string()).collect();
        if let Some(k) = table.keys().find(|k| !top.contains(k)) {
            return Err(unknown(origin, k, &top));
        }
        let name = optional_str(&table, "name", origin)?.unwrap_or_else(|| default_name.to_string());
        let data = optional_str(&table, "data", origin)?
            .with_context(|| format!("{origin}: no 'data' (e.g. data = \"fashion-mnist\")"))?;
        let students = section(&table, "students", origin)?;
        let cfg = StudyConfig {
            name,
            seeds: seeds(table.get("seeds"), origin)?,
            probe_tau: probe_tau(table.get("probe_tau"), origin)?,
            teachers: TeacherSet::parse(&section(&table, "teachers", origin)?, &data, origin)?,
            students: StudentSet::parse(&students, &data, origin)?,
            methods: method_blocks(table.get("methods"), origin, &StudentTables { section: &students, data: &data })?,
            featured: featured(&table, origin)?,
            threads: super::slurm_options::parse_threads(table.get("threads"), origin)?,
            slurm: super::slurm_options::SlurmOptions::parse(table.get("slurm"), origin)?,
            data,
            device: optional_str(&table, "device", origin)?
                .map(|d| d.parse().with_context(|| format!("{origin}: 'device'")))
                .transpose()?,
            gres: optional_str(&table, "gres", origin)?.map(|g| gres(&g, origin)).transpose()?,
        };
        cfg.check_references(origin)?;
        Ok(cfg)
    }

    /// One line per `[[methods]]` block whose grid left combinations out as incompatible: how many,
    /// and why.
    pub fn skipped_notes(&self) -> Vec<String> {
        self.methods.iter().enumerate().filter_map(|(i, m)| m.skipped_note(i)).collect()
    }

    /// The names teachers go by in the study: the architecture for trained ones, the directory
    /// name (with any @checkpoint) for existing runs.
    pub(crate) fn teacher_names(&self) -> Vec<String> {
        let mut v = self.teachers.models.clone();
        v.extend(self.teachers.runs.iter().map(|r| external_name(r)));
        v
    }

    fn check_references(&self, origin: &str) -> Result<()> {
        let teachers = self.teacher_names();
        if let Some(t) = self.teachers.families.keys().find(|t| !teachers.contains(t)) {
            bail!(
                "{origin}: teachers.families.{t}: '{t}' is not a teacher of the study (teachers: {})",
                teachers.join(", ")
            );
        }
        for (i, m) in self.methods.iter().enumerate() {
            for t in m.teachers.iter().flatten() {
                if !teachers.contains(t) {
                    bail!(
                        "{origin} methods[{i}]: teacher '{t}' is not in the study (teachers: {})",
                        teachers.join(", ")
                    );
                }
            }
            for s in m.students.iter().flatten() {
                if !self.students.models.contains(s) {
                    bail!(
                        "{origin} methods[{i}]: student '{s}' is not in the study (students: {})",
                        self.students.models.join(", ")
                    );
                }
            }
            if let Some(e) = m.teacher_epoch {
                let t = &self.teachers.train;
                let kept = e == t.epochs || (t.save_every > 0 && e % t.save_every == 0 && e <= t.epochs);
                if !self.teachers.models.is_empty() && !kept {
                    bail!(
                        "{origin} methods[{i}]: teacher_epoch = {e} is not a checkpoint the teachers keep ({} epochs, save_every = {}); set [teachers] save_every to a divisor of {e}",
                        t.epochs,
                        t.save_every
                    );
                }
            }
            if (!m.teacher_fit.is_empty() || m.teacher_calibrate) && self.students.train.val_per_class == 0 {
                bail!(
                    "{origin} methods[{i}]: teacher_fit and teacher_calibrate use the validation split, and the study carves none: set val_per_class (e.g. val_per_class = 100)"
                );
            }
            if !m.teacher_fit.is_empty() && !self.teachers.models.is_empty() && self.teachers.train.save_every == 0 {
                bail!(
                    "{origin} methods[{i}]: teacher_fit chooses among the teachers' kept epochs, and [teachers] keeps only the last (save_every = 0); set save_every = 1"
                );
            }
            if methods::needs_teacher(&m.name) && teachers.is_empty() {
                bail!("{origin}: method '{}' needs teachers, and [teachers] lists none", m.name);
            }
        }
        Ok(())
    }
}

/// `[teachers] families = { teacher = "family" }` of a study file's table: each teacher's family
/// where the study names one. Shared with the report, which reads the study file it stored.
pub(crate) fn teacher_families(teachers: &toml::Table, origin: &str) -> Result<BTreeMap<String, String>> {
    let Some(v) = teachers.get("families") else { return Ok(BTreeMap::new()) };
    let t = v.as_table().with_context(|| {
        format!("{origin}: teachers.families should be a table of teacher = \"family\" (e.g. families = {{ my_run = \"wrn\" }}), found {v}")
    })?;
    t.iter()
        .map(|(k, v)| match v.as_str().map(str::trim) {
            Some(f) if !f.is_empty() => Ok((k.clone(), f.to_string())),
            _ => bail!("{origin}: teachers.families.{k} should be a family's name (a non-empty string), found {v}"),
        })
        .collect()
}

/// `[report] featured = ["series", ...]` of a study file's table. Shared with the report.
pub fn featured(table: &toml::Table, origin: &str) -> Result<Vec<String>> {
    let Some(v) = table.get("report") else { return Ok(vec![]) };
    let r = v.as_table().with_context(|| format!("{origin}: '[report]' should be a table, found {v}"))?;
    if let Some(k) = r.keys().find(|k| k.as_str() != "featured") {
        return Err(unknown(&format!("{origin} [report]"), k, &["featured".to_string()]));
    }
    r.get("featured").map(|v| strings(v, "report.featured", origin)).transpose().map(Option::unwrap_or_default)
}

/// The display name of an existing run given as a teacher (checked when the study is loaded).
pub(crate) fn external_name(spec: &str) -> String {
    spec.parse::<RunRef>().map_or_else(|_| spec.to_string(), |r| r.name())
}

impl MethodBlock {
    fn parse(b: &toml::Table, origin: &str, students: &StudentTables) -> Result<MethodBlock> {
        let name =
            b.get("name").and_then(|v| v.as_str()).with_context(|| format!("{origin}: no method 'name'"))?.to_string();
        let entry = methods::entry_of(&name).with_context(|| origin.to_string())?;
        // A key no method takes is likely a typo of a block key or one of this method's keys.
        let allowed: Vec<String> = BLOCK_KEYS.iter().chain(entry.keys()).map(|k| k.to_string()).collect();
        if let Some(k) = b.keys().find(|k| !allowed.contains(k) && !methods::all_keys().contains(&k.as_str())) {
            return Err(unknown(origin, k, &allowed));
        }
        let given = b.keys().map(String::as_str).filter(|k| !BLOCK_KEYS.contains(k));
        entry.check_keys(given).with_context(|| origin.to_string())?;
        let (combinations, varying) = combinations(b, entry.keys(), origin)?;
        let (grid, skipped) = compatible(entry, combinations, origin)?;
        let list = |k: &str| b.get(k).map(|v| strings(v, k, origin)).transpose();
        let teacher_epoch = b
            .get("teacher_epoch")
            .map(|v| {
                v.as_integer()
                    .filter(|i| *i >= 1)
                    .map(|i| i as usize)
                    .with_context(|| format!("{origin}: teacher_epoch must be an integer ≥ 1"))
            })
            .transpose()?;
        let assistant = b
            .get("assistant")
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{origin}: assistant must be an architecture name"))
            })
            .transpose()?;
        let assistants = list("assistants")?.unwrap_or_default();
        for a in assistant.iter().chain(&assistants) {
            crate::models::parse(a).with_context(|| origin.to_string())?;
        }
        if entry.needs_teacher {
            if assistant.is_some() && entry.guided {
                bail!("{origin}: '{name}' is taught by a chain of assistants: list them as assistants = [\"a\", \"b\"] (largest first)");
            }
            if !assistants.is_empty() && !entry.guided {
                bail!("{origin}: assistants = [...] is a guided method's chain (dgkd); '{name}' takes one assistant = \"x\" (TAKD)");
            }
            crate::train::takd::check(&name, entry.guided, &assistants).with_context(|| origin.to_string())?;
        }
        // What the checks below say of `assistant` holds for a chain of them.
        let chained = assistant.is_some() || !assistants.is_empty();
        let teacher_uses = ["teacher_cache", "teacher_fit", "teacher_calibrate"];
        if !entry.needs_teacher
            && (chained || teacher_epoch.is_some() || teacher_uses.iter().any(|k| b.contains_key(*k)))
        {
            bail!("{origin}: '{name}' uses no teacher, so teacher_epoch, assistant, teacher_cache, teacher_fit and teacher_calibrate do not apply");
        }
        let teacher_fit =
            b.get("teacher_fit").map(|v| FitPick::parse_block(v, origin)).transpose()?.unwrap_or_default();
        if !teacher_fit.is_empty() && (teacher_epoch.is_some() || chained) {
            bail!("{origin}: teacher_fit chooses the teacher's epoch itself; it does not combine with teacher_epoch or assistant");
        }
        let teacher_calibrate = match b.get("teacher_calibrate") {
            None => false,
            Some(toml::Value::Boolean(v)) => *v,
            Some(v) => bail!("{origin}: teacher_calibrate should be true or false, found {v}"),
        };
        if teacher_calibrate && chained {
            bail!("{origin}: teacher_calibrate does not combine with assistant (which teacher would it calibrate?)");
        }
        let teacher_cache = block_caches(b, origin)?;
        let (train, train_changes) = block_train(b, origin, students)?;
        if !train.is_empty() && chained {
            bail!("{origin}: train does not combine with assistant (the assistant is trained as the [students] say)");
        }
        for (spec, cache) in grid.iter().flat_map(|p| teacher_cache.iter().map(move |c| (p, c))) {
            if let TeacherCache::TopK(k) = cache {
                crate::train::distill::check_topk(spec, *k).with_context(|| origin.to_string())?;
            }
        }
        Ok(MethodBlock {
            name,
            grid,
            varying,
            skipped,
            teachers: list("teachers")?,
            students: list("students")?,
            teacher_epoch,
            assistant,
            assistants,
            label: b.get("label").and_then(|v| v.as_str()).map(str::to_string),
            teacher_cache,
            teacher_fit,
            teacher_calibrate,
            train,
            train_changes,
        })
    }

    /// The training settings of this block's student `model`, before the seed.
    pub(crate) fn train_for(&self, students: &StudentSet, model: &str) -> TrainConfig {
        match self.train.get(model) {
            Some(t) => TrainConfig { model: model.to_string(), ..t.clone() },
            None => students.train_for(model),
        }
    }

    /// The fit levels of this block's runs: None (the final checkpoint) when it sets none.
    pub(crate) fn fits(&self) -> Vec<Option<&FitPick>> {
        if self.teacher_fit.is_empty() {
            vec![None]
        } else {
            self.teacher_fit.iter().map(Some).collect()
        }
    }

    /// The teacher caches of this block's runs, given the `[students]` setting.
    pub fn caches(&self, students: TeacherCache) -> Vec<TeacherCache> {
        if self.teacher_cache.is_empty() {
            vec![students]
        } else {
            self.teacher_cache.clone()
        }
    }

    /// "methods[i] (ats): 9 of 30 combinations left out as incompatible: …", if any were.
    fn skipped_note(&self, i: usize) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut why: Vec<(&str, Vec<&str>)> = vec![];
        for s in &self.skipped {
            match why.iter_mut().find(|(needs, _)| *needs == s.needs) {
                Some((_, got)) => got.push(&s.got),
                None => why.push((&s.needs, vec![&s.got])),
            }
        }
        let reasons: Vec<String> = why
            .iter()
            .map(|(needs, got)| {
                let more = if got.len() > 3 { format!("; … {} more", got.len() - 3) } else { String::new() };
                format!("{needs} ({}: {}{more})", got.len(), got[..got.len().min(3)].join("; "))
            })
            .collect();
        Some(format!(
            "methods[{i}] ({}): {} of {} combinations left out as incompatible: {}",
            self.name,
            self.skipped.len(),
            self.skipped.len() + self.grid.len(),
            reasons.join("; and ")
        ))
    }
}

/// A block's `teacher_cache`: one mode or a list of them.
fn block_caches(b: &toml::Table, origin: &str) -> Result<Vec<TeacherCache>> {
    let key = "teacher_cache";
    match b.get(key) {
        None => Ok(vec![]),
        Some(toml::Value::Array(a)) if a.is_empty() => bail!("{origin}: '{key}' is an empty list"),
        Some(toml::Value::Array(a)) => a.iter().map(|v| TeacherCache::from_toml(v, key, origin)).collect(),
        Some(v) => Ok(vec![TeacherCache::from_toml(v, key, origin)?]),
    }
}

/// Every combination of the values a block lists for the method's keys (a single value is a list
/// of one), the method's first key outermost; and the keys that take more than one value.
fn combinations(b: &toml::Table, keys: &[&str], origin: &str) -> Result<(Vec<methods::Table>, Vec<String>)> {
    let mut grid: Vec<methods::Table> = vec![methods::Table::new()];
    let mut varying = vec![];
    for &k in keys {
        let Some(v) = b.get(k) else { continue };
        let values: Vec<toml::Value> = match v {
            toml::Value::Array(a) if a.is_empty() => bail!("{origin}: '{k}' is an empty list"),
            toml::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        if values.len() > 1 {
            varying.push(k.to_string());
        }
        grid = grid
            .into_iter()
            .flat_map(|g| {
                values.iter().map(move |v| {
                    let mut g = g.clone();
                    g.insert(k.to_string(), v.clone());
                    g
                })
            })
            .collect();
    }
    Ok((grid, varying))
}

/// The combinations the method accepts, and those it declares incompatible (left out of a grid).
/// Any other refusal is an error, as is a single setting that is incompatible or a grid with no
/// compatible combination.
fn compatible(
    entry: &methods::Entry,
    combinations: Vec<methods::Table>,
    origin: &str,
) -> Result<(Vec<methods::MethodSpec>, Vec<SkippedCombination>)> {
    let single = combinations.len() == 1;
    let (mut grid, mut skipped) = (vec![], vec![]);
    for params in combinations {
        match methods::MethodSpec::parse(entry.name, params.clone()) {
            Ok(spec) => grid.push(spec),
            Err(e) => match methods::incompatibility(&e) {
                Some(i) if !single => skipped.push(SkippedCombination {
                    needs: i.needs.clone(),
                    got: i.got.clone(),
                    params: params.clone(),
                }),
                _ => return Err(e.context(origin.to_string())),
            },
        }
    }
    if grid.is_empty() {
        let needs: Vec<&str> = skipped.iter().map(|s| s.needs.as_str()).collect();
        bail!("{origin}: no combination in the grid is compatible: {}", needs[0]);
    }
    Ok((grid, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StudyConfig> {
        StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s")
    }

    const BASE: &str = "data = 'fashion-mnist-mini'\nseeds = [0, 1]\n[teachers]\nmodels = ['cnn_w1', 'cnn_w2']\nepochs = 2\n[students]\nmodels = ['mlp_32x1']\nepochs = 3\n";

    #[test]
    fn teacher_families_and_featured_series_are_checked() {
        let with = |families: &str, report: &str| {
            let text = BASE.replace("epochs = 2\n[students]", &format!("epochs = 2\n{families}\n[students]"));
            parse(&format!("{text}[[methods]]\nname = 'kd'\n{report}\n"))
        };
        let s = with("families = { cnn_w1 = 'small cnn' }", "[report]\nfeatured = ['kd']").unwrap();
        assert_eq!(s.teachers.families.get("cnn_w1").map(String::as_str), Some("small cnn"));
        assert_eq!(s.featured, ["kd"]);
        assert!(!s.teachers.families.contains_key("cnn_w2"), "only the teachers named");
        for (families, report, needle) in [
            ("families = { resnet8 = 'resnet' }", "", "'resnet8' is not a teacher of the study"),
            ("families = { cnn_w1 = '' }", "", "teachers.families.cnn_w1 should be a family's name"),
            ("families = { cnn_w1 = 3 }", "", "teachers.families.cnn_w1 should be a family's name"),
            ("families = 'cnn'", "", "teachers.families should be a table"),
            ("", "[report]\nfeature = ['kd']", "unknown key 'feature'"),
            ("", "[report]\nfeatured = [1]", "'report.featured' must list strings"),
        ] {
            let e = format!("{:#}", with(families, report).unwrap_err());
            assert!(e.contains(needle) && e.contains("s.toml"), "{families} {report}: {e}");
        }
    }

    #[test]
    fn grids_expand_and_keys_are_checked() {
        let s = parse(&format!(
            "{BASE}[[methods]]\nname = 'ats'\ntau1 = [2, 4]\ntau2 = [1, 2]\n[[methods]]\nname = 'ce'\n"
        ))
        .unwrap();
        assert_eq!(s.methods[0].grid.len(), 4);
        assert_eq!(s.methods[0].varying, vec!["tau1", "tau2"]);
        assert_eq!(s.teachers.train.epochs, 2);
        assert_eq!(s.students.train.epochs, 3);
        let e = format!("{:#}", parse(&format!("{BASE}[[methods]]\nname = 'kd'\ntua = 4\n")).unwrap_err());
        assert!(e.contains("'tua'") && e.contains("did you mean 'tau'"), "{e}");
        let e = format!("{:#}", parse(&format!("{BASE}[[methods]]\nname = 'ats'\ntau1 = 1\ntau2 = 3\n")).unwrap_err());
        assert!(e.contains("tau1 ≥ tau2"), "{e}");
        // In a grid, τ1 < τ2 combinations are skipped: 3 × 3 values, 6 with τ1 ≥ τ2.
        let s = parse(&format!("{BASE}[[methods]]\nname = 'ats'\ntau1 = [1, 2, 3]\ntau2 = [1, 2, 3]\n")).unwrap();
        assert_eq!(s.methods[0].grid.len(), 6);
        let e =
            format!("{:#}", parse(&format!("{BASE}[[methods]]\nname = 'kd'\nteachers = ['resnet8']\n")).unwrap_err());
        assert!(e.contains("teacher 'resnet8' is not in the study"), "{e}");
        let e = format!(
            "{:#}",
            parse("data = 'x'\n[students]\nmodels = ['cnn_w1']\nepoch = 3\n[[methods]]\nname='ce'\n").unwrap_err()
        );
        assert!(e.contains("did you mean 'epochs'"), "{e}");
    }

    #[test]
    fn string_and_boolean_hyper_parameters_pass_through_the_grid() {
        let s = parse(&format!(
            "{BASE}[[methods]]\nname = 'isats'\nrule = ['order', 'bounded']\ncenter_logits = true\n[[methods]]\nname = 'ats'\ncenter_logits = [false, true]\n"
        ))
        .unwrap();
        let rules: Vec<Option<&str>> =
            s.methods[0].grid.iter().map(|p| p.given().get("rule").and_then(|r| r.as_str())).collect();
        assert_eq!(rules, vec![Some("order"), Some("bounded")]);
        assert!(s.methods[0].grid.iter().all(|p| p.given().get("center_logits") == Some(&toml::Value::Boolean(true))));
        assert_eq!(s.methods[0].varying, vec!["rule"]);
        assert_eq!(s.methods[1].grid.len(), 2);
        assert_eq!(s.methods[1].varying, vec!["center_logits"]);
        // A single rule, and a misspelt one: an error naming the valid rules, even in a grid.
        let s = parse(&format!("{BASE}[[methods]]\nname = 'isats'\nrule = 'ts'\n")).unwrap();
        assert_eq!(s.methods[0].grid[0].given().get("rule").and_then(|r| r.as_str()), Some("ts"));
        for bad in ["'oder'", "['order', 'oder']"] {
            let e = format!("{:#}", parse(&format!("{BASE}[[methods]]\nname = 'isats'\nrule = {bad}\n")).unwrap_err());
            assert!(e.contains("unknown ISATS rule 'oder'") && e.contains("order, ts, ts_order, bounded"), "{e}");
        }
        let e = format!("{:#}", parse(&format!("{BASE}[[methods]]\nname = 'ats'\nrule = 'order'\n")).unwrap_err());
        assert!(e.contains("does not take rule"), "{e}");
    }
}
