//! From a study to its runs: every (teacher, student, method, hyper-parameters, seed) becomes one
//! run with a stable id, the hash of everything that determines its result. Adding a seed or a
//! temperature adds runs; the existing ones keep their ids and are not run again.
use super::config::{external_name, MethodBlock, StudyConfig};
use super::fit::FitPick;
use crate::methods::{self, MethodSpec};
use crate::train::checkpoint::{RunRef, Which};
use crate::train::config::TrainConfig;
use crate::train::takd;
use crate::train::topk_cache::TeacherCache;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Teacher,
    Assistant,
    Student,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Teacher => "teacher",
            Kind::Assistant => "assistant",
            Kind::Student => "student",
        }
    }
}

/// Where a teacher's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum TeacherSource {
    /// The study run (its id) that trains it.
    StudyRun(String),
    /// An existing run given in the study: its checkpoint spec (absolute).
    Existing(String),
}

/// Who teaches a run. Stored (spec.json, the study index) with the source as the two fields
/// `run_id` and `external`, as before the enum existed, so older plans read back unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredTeacherRef", into = "StoredTeacherRef")]
pub struct TeacherRef {
    /// The teacher's name in the study (its architecture, or an existing run's directory name).
    pub name: String,
    pub source: TeacherSource,
    /// ESKD: the checkpoint after this many epochs instead of the final one.
    pub at_epoch: Option<usize>,
    /// TAKD: the assistant's architecture when this teacher is an assistant run.
    pub via_assistant: Option<String>,
    /// The teacher at the top of the chain (for TAKD students, the assistant's own teacher).
    pub root: String,
    /// Matched on fit: the kept epoch this rule chooses on the validation split when the run
    /// starts (`at_epoch` is then None in the plan).
    pub fit: Option<FitPick>,
    /// Temperature-scaled on the validation split.
    pub calibrate: bool,
}

/// `TeacherRef` as stored; the fields added later are left out when unset, so plans written
/// before them read back, and write, unchanged.
#[derive(Serialize, Deserialize)]
struct StoredTeacherRef {
    name: String,
    run_id: Option<String>,
    external: Option<String>,
    at_epoch: Option<usize>,
    via_assistant: Option<String>,
    root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fit: Option<FitPick>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    calibrate: bool,
}

impl TryFrom<StoredTeacherRef> for TeacherRef {
    type Error = String;
    fn try_from(s: StoredTeacherRef) -> std::result::Result<Self, String> {
        let source = match (s.run_id, s.external) {
            (Some(id), None) => TeacherSource::StudyRun(id),
            (None, Some(ext)) => TeacherSource::Existing(ext),
            (id, ext) => {
                return Err(format!(
                    "teacher '{}' must name exactly one of run_id and external (has run_id {id:?}, external {ext:?})",
                    s.name
                ))
            }
        };
        Ok(TeacherRef {
            name: s.name,
            source,
            at_epoch: s.at_epoch,
            via_assistant: s.via_assistant,
            root: s.root,
            fit: s.fit,
            calibrate: s.calibrate,
        })
    }
}

impl From<TeacherRef> for StoredTeacherRef {
    fn from(t: TeacherRef) -> Self {
        let (run_id, external) = match t.source {
            TeacherSource::StudyRun(id) => (Some(id), None),
            TeacherSource::Existing(ext) => (None, Some(ext)),
        };
        StoredTeacherRef {
            name: t.name,
            run_id,
            external,
            at_epoch: t.at_epoch,
            via_assistant: t.via_assistant,
            root: t.root,
            fit: t.fit,
            calibrate: t.calibrate,
        }
    }
}

impl TeacherRef {
    /// The id of the study run that trains this teacher, if a study run does.
    pub(crate) fn study_run(&self) -> Option<&str> {
        match &self.source {
            TeacherSource::StudyRun(id) => Some(id),
            TeacherSource::Existing(_) => None,
        }
    }

    /// The checkpoint spec, given the study directory.
    pub fn spec(&self, study_dir: &Path) -> String {
        let base = match &self.source {
            TeacherSource::StudyRun(id) => run_dir(study_dir, id).display().to_string(),
            TeacherSource::Existing(ext) => ext.clone(),
        };
        RunRef { dir: base.into(), at: self.at_epoch.map(Which::Epoch) }.to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub id: String,
    pub kind: Kind,
    /// A readable one-line description.
    pub name: String,
    pub train: TrainConfig,
    /// The method and its hyper-parameters as the study gives them (stored as `method` and
    /// `params`).
    #[serde(flatten)]
    pub method: MethodSpec,
    /// Every hyper-parameter in effect, defaults included (what the id hashes).
    pub hyper: serde_json::Value,
    /// The line this run belongs to in the report (e.g. "kd τ=2", "kd (ESKD@3)").
    pub series: String,
    pub teacher: Option<TeacherRef>,
    /// DGKD: the trained assistants that guide this run beside its teacher, largest first (left
    /// out when none, so plans written before them read back, and write, unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guides: Vec<TeacherRef>,
    pub depends_on: Vec<String>,
    /// Distil from a teacher cache instead of running the teacher (false/true in plans written
    /// before top-k caches).
    #[serde(default)]
    pub teacher_cache: TeacherCache,
    /// LibTorch's intra-op threads for this run, fixed by the sweep (or `--emit-slurm`) that
    /// writes its spec.json: the count changes the order of float reductions, hence the numbers,
    /// so a local worker and a Slurm array task must use the same. Not part of the run's id (an
    /// execution setting; older plans have none), and None in the plan and the study index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// Where a run lives inside a study.
pub(crate) fn run_dir(study_dir: &Path, id: &str) -> std::path::PathBuf {
    study_dir.join("runs").join(id)
}

/// A stable id: the first 16 hex digits of the sha256 of the canonical JSON of `identity`
/// (serde_json sorts object keys, so equal content gives equal text).
fn hash_id(identity: &serde_json::Value) -> String {
    crate::data::sha256_hex(identity.to_string().as_bytes())[..16].to_string()
}

fn fmt_value(v: &serde_json::Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        Some(f) => format!("{f}"),
        None => v.to_string(),
    }
}

fn series_label(block: &MethodBlock, spec: &MethodSpec) -> String {
    if let Some(l) = &block.label {
        return l.clone();
    }
    let p = spec.given();
    let pv = serde_json::to_value(p).expect("serialises");
    let mut s = block.name.clone();
    for k in &block.varying {
        let sym = match k.as_str() {
            "tau" => "τ",
            "tau1" => "τ1",
            "tau2" => "τ2",
            "tau2_min" => "τ2min",
            "lambda" => "λ",
            "alpha" => "α",
            "beta" => "β",
            "gamma" => "γ",
            other => other,
        };
        s += &format!(" {sym}={}", fmt_value(&pv[k.as_str()]));
    }
    if p.get("standardize") == Some(&toml::Value::Boolean(true)) {
        s += "+ls";
    }
    if let Some(e) = block.teacher_epoch {
        s += &format!(" (ESKD@{e})");
    }
    if block.teacher_calibrate {
        s += " (calibrated)";
    }
    if let Some(a) = &block.assistant {
        s += &format!(" (TAKD via {a})");
    }
    if !block.assistants.is_empty() {
        s += &format!(" (DGKD via {})", block.assistants.join(", "));
    }
    for change in &block.train_changes {
        s += &format!(" {change}");
    }
    s
}

/// The identity of a teacher for hashing: a study run's id, or an existing run's weights checksum;
/// with the fit rule and calibration only where set, so that the runs planned before they existed
/// keep their ids.
fn teacher_identity(t: &TeacherRef, study_dir: &Path) -> Result<serde_json::Value> {
    let mut id = source_identity(t, study_dir)?;
    if let Some(fit) = &t.fit {
        id["fit"] = serde_json::to_value(fit)?;
    }
    if t.calibrate {
        id["calibrate"] = serde_json::Value::Bool(true);
    }
    Ok(id)
}

fn source_identity(t: &TeacherRef, study_dir: &Path) -> Result<serde_json::Value> {
    Ok(match &t.source {
        TeacherSource::StudyRun(id) => serde_json::json!({"run": id, "at_epoch": t.at_epoch}),
        TeacherSource::Existing(ext) => {
            let spec = RunRef { dir: ext.into(), at: t.at_epoch.map(Which::Epoch) }.to_string();
            let json = crate::train::checkpoint::resolve(&spec)?;
            let meta = crate::train::checkpoint::read_meta(&json)?;
            let _ = study_dir;
            serde_json::json!({"external": ext, "at_epoch": t.at_epoch, "weights_sha256": meta.weights_sha256})
        }
    })
}

/// The guides' identities, in order, for a run's id (DGKD).
fn guide_identity(guides: &[TeacherRef], study_dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::Value::Array(guides.iter().map(|g| teacher_identity(g, study_dir)).collect::<Result<_>>()?))
}

/// Runs in the order they are added, each id once.
#[derive(Default)]
struct Plan {
    runs: BTreeMap<String, RunSpec>,
    order: Vec<String>,
}

impl Plan {
    fn add(&mut self, r: RunSpec) {
        if !self.runs.contains_key(&r.id) {
            self.order.push(r.id.clone());
            self.runs.insert(r.id.clone(), r);
        }
    }

    fn into_runs(mut self) -> Vec<RunSpec> {
        self.order.into_iter().map(|id| self.runs.remove(&id).expect("added")).collect()
    }
}

/// Expands a study into its runs, teachers first; ids are unique.
pub fn expand(study: &StudyConfig, study_dir: &Path) -> Result<Vec<RunSpec>> {
    let mut plan = Plan::default();
    let mut teachers = vec![];
    for model in &study.teachers.models {
        let (run, teacher) = trained_teacher(study, model)?;
        plan.add(run);
        teachers.push(teacher);
    }
    for spec in &study.teachers.runs {
        teachers.push(existing_teacher(spec)?);
    }
    // The report groups runs by series: two blocks whose runs share a label but not their
    // hyper-parameters would be merged there (block index and hyper-parameters by label).
    let mut labels: BTreeMap<String, (usize, serde_json::Value)> = BTreeMap::new();
    for (b, block) in study.methods.iter().enumerate() {
        for spec in &block.grid {
            for (cache, fit) in block
                .caches(study.students.teacher_cache)
                .into_iter()
                .flat_map(|c| block.fits().into_iter().map(move |f| (c, f)))
            {
                let point = GridPoint::new(block, spec, cache, fit)?;
                // A block's training changes count as its values here: they change its runs too.
                let values = match block.train_changes.is_empty() {
                    true => point.hyper.clone(),
                    false => serde_json::json!({"hyper": point.hyper, "train": block.train_changes}),
                };
                let (first, hyper) = labels.entry(point.series.clone()).or_insert((b, values.clone()));
                if *first != b && *hyper != values {
                    bail!(
                        "methods[{first}] and methods[{b}] both label their runs '{}' with other hyper-parameters ({hyper} and {}): \
                         the report would merge them; list the values in one block (e.g. tau = [4, 1]) or give each block a `label`",
                        point.series,
                        values
                    );
                }
                for teacher in point.teachers(&teachers) {
                    for student in
                        study.students.models.iter().filter(|s| block.students.as_ref().is_none_or(|f| f.contains(s)))
                    {
                        for &seed in &study.seeds {
                            point.add_runs(&mut plan, study, study_dir, teacher, student, seed)?;
                        }
                    }
                }
            }
        }
    }
    Ok(plan.into_runs())
}

/// A teacher the study trains: its run, and how students refer to it.
fn trained_teacher(study: &StudyConfig, model: &str) -> Result<(RunSpec, TeacherRef)> {
    let train = TrainConfig { model: model.to_string(), ..study.teachers.train.clone() };
    let id = hash_id(&serde_json::json!({"kind": "teacher", "train": train.identity()}));
    let ce = MethodSpec::default_of(methods::ce::NAME)?;
    let run = RunSpec {
        id: id.clone(),
        kind: Kind::Teacher,
        name: format!("teacher {model} s{}", train.seed),
        train,
        method: ce.clone(),
        hyper: ce.hyper(),
        series: "teacher".into(),
        teacher: None,
        guides: vec![],
        depends_on: vec![],
        teacher_cache: TeacherCache::Off,
        threads: None,
    };
    let teacher = TeacherRef {
        name: model.to_string(),
        source: TeacherSource::StudyRun(id),
        at_epoch: None,
        via_assistant: None,
        root: model.to_string(),
        fit: None,
        calibrate: false,
    };
    Ok((run, teacher))
}

/// An existing run given as a teacher (`[teachers] runs`), by its absolute checkpoint spec.
fn existing_teacher(spec: &str) -> Result<TeacherRef> {
    let r: RunRef = spec.parse()?;
    let abs =
        std::fs::canonicalize(&r.dir).with_context(|| format!("teacher run {}: no such directory", r.dir.display()))?;
    let external = RunRef { dir: abs, ..r }.to_string();
    crate::train::checkpoint::resolve(&external)?;
    let name = external_name(spec);
    Ok(TeacherRef {
        name: name.clone(),
        source: TeacherSource::Existing(external),
        at_epoch: None,
        via_assistant: None,
        root: name,
        fit: None,
        calibrate: false,
    })
}

/// One combination of a `[[methods]]` block: what its runs share.
struct GridPoint<'a> {
    block: &'a MethodBlock,
    spec: &'a MethodSpec,
    hyper: serde_json::Value,
    series: String,
    teacher_cache: TeacherCache,
    fit: Option<&'a FitPick>,
}

impl<'a> GridPoint<'a> {
    fn new(
        block: &'a MethodBlock,
        spec: &'a MethodSpec,
        teacher_cache: TeacherCache,
        fit: Option<&'a FitPick>,
    ) -> Result<GridPoint<'a>> {
        let hyper = spec.hyper();
        let mut series = series_label(block, spec);
        // A block that chooses its caches compares them: each is a series of its own.
        if !block.teacher_cache.is_empty() {
            series += &format!(" cache={teacher_cache}");
        }
        // Each fit level is a series: the report draws the ladder of sizes at each level.
        if let Some(f) = fit {
            series += &format!(" (fit {})", f.label());
        }
        Ok(GridPoint { block, spec, hyper, series, teacher_cache, fit })
    }

    /// The teachers the block distils from (none for a method without one, as `ce`).
    fn teachers<'t>(&self, all: &'t [TeacherRef]) -> Vec<Option<&'t TeacherRef>> {
        if !self.spec.needs_teacher() {
            return vec![None];
        }
        all.iter().filter(|t| self.block.teachers.as_ref().is_none_or(|f| f.contains(&t.name))).map(Some).collect()
    }

    /// The run of `student` from `teacher` with `seed`, after the runs of its assistant chain
    /// (TAKD, DGKD) when the block has one.
    fn add_runs(
        &self,
        plan: &mut Plan,
        study: &StudyConfig,
        study_dir: &Path,
        teacher: Option<&TeacherRef>,
        student: &str,
        seed: u64,
    ) -> Result<()> {
        let block = self.block;
        let mut t = teacher.cloned().map(|t| TeacherRef {
            at_epoch: block.teacher_epoch,
            fit: self.fit.cloned(),
            calibrate: block.teacher_calibrate,
            ..t
        });
        let mut deps: Vec<String> = t.as_ref().and_then(|t| t.study_run().map(str::to_string)).into_iter().collect();
        // An assistant chain (TAKD's one assistant, DGKD's several; its rules in `train::takd`):
        // each assistant a run of its own before the student.
        let mut guides: Vec<TeacherRef> = vec![];
        let assistants: Vec<String> = block.assistant.iter().chain(&block.assistants).cloned().collect();
        if let (false, Some(chain_teacher)) = (assistants.is_empty(), t.clone()) {
            // The trained assistants, in chain order, as references to their runs.
            let mut trained: Vec<TeacherRef> = vec![];
            for link in takd::links(&block.name, self.spec.entry().guided, &assistants, student)? {
                let teacher = match link.taught_by {
                    takd::TaughtBy::Teacher => chain_teacher.clone(),
                    // A trained assistant is read as it is; the run is named after the chain's teacher.
                    takd::TaughtBy::Assistant => TeacherRef {
                        name: chain_teacher.name.clone(),
                        ..trained.last().expect("a chain's first link is taught by its teacher").clone()
                    },
                };
                let link_guides: Vec<TeacherRef> = link.guides.iter().map(|&i| trained[i].clone()).collect();
                let link_deps: Vec<String> = std::iter::once(&teacher)
                    .chain(&link_guides)
                    .filter_map(|r| r.study_run().map(str::to_string))
                    .collect();
                if link.role == takd::Role::Student {
                    (t, guides, deps) = (Some(teacher), link_guides, link_deps);
                    continue;
                }
                let run = RunSpec {
                    depends_on: link_deps,
                    ..self.assistant_run(study, study_dir, &teacher, &link, seed, link_guides)?
                };
                trained.push(TeacherRef {
                    name: link.model.clone(),
                    source: TeacherSource::StudyRun(run.id.clone()),
                    at_epoch: None,
                    via_assistant: Some(link.model.clone()),
                    root: chain_teacher.root.clone(),
                    fit: None,
                    calibrate: false,
                });
                plan.add(run);
            }
        }
        let train = TrainConfig { seed, ..block.train_for(&study.students, student) };
        let teacher_cache = if t.is_some() { self.teacher_cache } else { TeacherCache::Off };
        let mut identity = serde_json::json!({"kind": "student", "train": train.identity(), "method": block.name, "hyper": self.hyper, "teacher_cache": teacher_cache,
            "teacher": t.as_ref().map(|t| teacher_identity(t, study_dir)).transpose()?});
        if !guides.is_empty() {
            identity["guides"] = guide_identity(&guides, study_dir)?;
        }
        let from = t.as_ref().map(|t| format!(" ← {}", t.name)).unwrap_or_default();
        plan.add(RunSpec {
            id: hash_id(&identity),
            kind: Kind::Student,
            name: format!("{student}{from} {} s{seed}", self.series),
            train,
            method: self.spec.clone(),
            hyper: self.hyper.clone(),
            series: self.series.clone(),
            teacher_cache,
            teacher: t,
            guides,
            depends_on: deps,
            threads: None,
        });
        Ok(())
    }

    /// An assistant of the chain (TAKD's first link, or a DGKD assistant): distilled from
    /// `teacher`, it then teaches (or guides) the links below it.
    fn assistant_run(
        &self,
        study: &StudyConfig,
        study_dir: &Path,
        teacher: &TeacherRef,
        link: &takd::Link,
        seed: u64,
        guides: Vec<TeacherRef>,
    ) -> Result<RunSpec> {
        let block = self.block;
        let assistant = &link.model;
        let train = TrainConfig { seed, ..study.students.train_for(assistant) };
        let mut identity = serde_json::json!({"kind": "assistant", "train": train.identity(), "method": block.name, "hyper": self.hyper, "teacher_cache": self.teacher_cache,
            "teacher": teacher_identity(teacher, study_dir)?});
        if !guides.is_empty() {
            identity["guides"] = guide_identity(&guides, study_dir)?;
        }
        Ok(RunSpec {
            id: hash_id(&identity),
            kind: Kind::Assistant,
            name: format!("assistant {assistant} ← {} {} s{seed}", teacher.name, block.name),
            train,
            method: self.spec.clone(),
            hyper: self.hyper.clone(),
            series: format!("{} assistant", block.name),
            teacher: Some(teacher.clone()),
            guides,
            depends_on: vec![],
            teacher_cache: self.teacher_cache,
            threads: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(extra: &str) -> StudyConfig {
        let text = format!("data = 'fashion-mnist-mini'\nseeds = [0, 1]\n[teachers]\nmodels = ['cnn_w1', 'cnn_w2']\nepochs = 2\n[students]\nmodels = ['mlp_32x1']\nepochs = 3\n{extra}");
        StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap()
    }

    #[test]
    fn runs_are_the_grid_and_ids_are_stable() {
        let dir = Path::new("/tmp/unused");
        let s = study("[[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\ntau = [2, 4]\n[[methods]]\nname = 'kd'\nassistant = 'cnn_w1'\nteachers = ['cnn_w2']\n");
        let runs = expand(&s, dir).unwrap();
        let count = |k: Kind| runs.iter().filter(|r| r.kind == k).count();
        assert_eq!(count(Kind::Teacher), 2);
        // ce: 1 student × 2 seeds (no teacher); kd: 2 τ × 2 teachers × 2 seeds; TAKD: 2 seeds.
        assert_eq!(count(Kind::Student), 2 + 8 + 2);
        assert_eq!(count(Kind::Assistant), 2);
        assert_eq!(runs.iter().map(|r| &r.id).collect::<std::collections::HashSet<_>>().len(), runs.len());
        // Teachers come before the runs that depend on them.
        for (i, r) in runs.iter().enumerate() {
            for d in &r.depends_on {
                assert!(runs[..i].iter().any(|x| &x.id == d), "{} depends on a later run", r.name);
            }
        }
        assert!(runs.iter().any(|r| r.series == "kd τ=2") && runs.iter().any(|r| r.series == "kd (TAKD via cnn_w1)"));
        // The same study gives the same ids; a new seed only adds runs.
        assert_eq!(expand(&s, dir).unwrap(), runs);
        let mut s3 = s.clone();
        s3.seeds.push(2);
        let more = expand(&s3, dir).unwrap();
        assert!(runs.iter().all(|r| more.iter().any(|m| m.id == r.id)));
        assert_eq!(more.len(), runs.len() + 1 + 4 + 2);
    }

    #[test]
    fn a_dgkd_block_plans_its_dense_chain_and_leaves_the_other_runs_alone() {
        let dir = Path::new("/tmp/unused");
        let takd = "[[methods]]\nname = 'kd'\nassistant = 'cnn_w1'\nteachers = ['cnn_w2']\n";
        let before = expand(&study(takd), dir).unwrap();
        let dense = "[[methods]]\nname = 'dgkd'\nassistants = ['cnn_w1', 'mlp_64x1']\nteachers = ['cnn_w2']\n";
        let runs = expand(&study(&format!("{takd}{dense}")), dir).unwrap();
        assert!(before.iter().all(|b| runs.contains(b)), "the TAKD block plans what it planned");
        let dgkd: Vec<&RunSpec> = runs.iter().filter(|r| r.method.name() == "dgkd").collect();
        // Per seed: two assistants and the student.
        assert_eq!(dgkd.len(), 2 * 3);
        let seed0: Vec<&&RunSpec> = dgkd.iter().filter(|r| r.train.seed == 0).collect();
        let (a1, a2, s) = (seed0[0], seed0[1], seed0[2]);
        assert_eq!((a1.kind, a2.kind, s.kind), (Kind::Assistant, Kind::Assistant, Kind::Student));
        assert_eq!((a1.train.model.as_str(), a2.train.model.as_str()), ("cnn_w1", "mlp_64x1"));
        // Every link taught by the chain's teacher, guided by the assistants above it.
        for r in [a1, a2, s] {
            assert_eq!(r.teacher.as_ref().unwrap().name, "cnn_w2");
        }
        let guide_ids = |r: &RunSpec| r.guides.iter().map(|g| g.study_run().unwrap().to_string()).collect::<Vec<_>>();
        assert!(a1.guides.is_empty());
        assert_eq!(guide_ids(a2), vec![a1.id.clone()]);
        assert_eq!(guide_ids(s), [a1.id.clone(), a2.id.clone()]);
        assert!(a2.depends_on.contains(&a1.id) && s.depends_on.contains(&a1.id) && s.depends_on.contains(&a2.id));
        assert_eq!(s.series, "dgkd (DGKD via cnn_w1, mlp_64x1)");
        // The guides are part of a run's identity: another chain is another student.
        let other = "[[methods]]\nname = 'dgkd'\nassistants = ['cnn_w1']\nteachers = ['cnn_w2']\n";
        let one = expand(&study(other), dir).unwrap();
        assert!(one.iter().filter(|r| r.kind == Kind::Student).all(|r| !runs.iter().any(|x| x.id == r.id)));
        // The spec round-trips with its guides; a run without guides writes none.
        let json = serde_json::to_string(s).unwrap();
        assert_eq!(&serde_json::from_str::<RunSpec>(&json).unwrap(), *s);
        assert!(!serde_json::to_string(&before[0]).unwrap().contains("guides"));
        let refused = |block: &str| {
            let text = format!("data = 'fashion-mnist-mini'\n[teachers]\nmodels = ['cnn_w1']\n[students]\nmodels = ['mlp_32x1']\n[[methods]]\n{block}");
            format!("{:#}", StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap_err())
        };
        let e = refused("name = 'dgkd'");
        assert!(e.contains("method 'dgkd'") && e.contains("assistants = [\"a\", \"b\"]"), "{e}");
        let e = refused("name = 'dgkd'\nassistant = 'cnn_w1'");
        assert!(e.contains("list them as assistants"), "{e}");
        let e = refused("name = 'kd'\nassistants = ['cnn_w1', 'mlp_64x1']");
        assert!(e.contains("'kd' takes one assistant = \"x\" (TAKD)"), "{e}");
        let e = refused("name = 'dgkd'\nassistants = ['cnn_w1']\nteacher_calibrate = true");
        assert!(e.contains("does not combine with assistant"), "{e}");
    }

    #[test]
    fn blocks_that_would_share_a_series_with_other_values_are_refused() {
        let dir = Path::new("/tmp/unused");
        let two = study("[[methods]]\nname = 'kd'\ntau = 4\n[[methods]]\nname = 'kd'\ntau = 1\n");
        let e = format!("{:#}", expand(&two, dir).unwrap_err());
        assert!(e.contains("methods[0] and methods[1] both label their runs 'kd'"), "{e}");
        // One block listing both values, or labels, or the same values on other teachers: fine.
        expand(&study("[[methods]]\nname = 'kd'\ntau = [4, 1]\n"), dir).unwrap();
        expand(
            &study("[[methods]]\nname = 'kd'\ntau = 4\n[[methods]]\nname = 'kd'\ntau = 1\nlabel = 'kd cold'\n"),
            dir,
        )
        .unwrap();
        let split =
            "[[methods]]\nname = 'kd'\nteachers = ['cnn_w1']\n[[methods]]\nname = 'kd'\nteachers = ['cnn_w2']\n";
        expand(&study(split), dir).unwrap();
    }

    #[test]
    fn fit_levels_and_calibration_add_runs_and_leave_the_others_alone() {
        let dir = Path::new("/tmp/unused");
        let plain = expand(&study("val_per_class = 5\n[[methods]]\nname = 'kd'\n"), dir).unwrap();
        let s = study(
            "val_per_class = 5\n[[methods]]\nname = 'kd'\n[[methods]]\nname = 'kd'\nteacher_fit = { metric = 'val_nll', targets = [0.9, 0.5] }\n[[methods]]\nname = 'kd'\nteacher_calibrate = true\n",
        );
        let runs = expand(&s, dir).unwrap();
        // The plain block's runs keep their ids; each level and the calibrated teacher add 2 × 2.
        assert!(plain.iter().all(|p| runs.iter().any(|r| r.id == p.id && r.series == p.series)));
        assert_eq!(runs.len(), plain.len() + 3 * 4);
        let series: std::collections::BTreeSet<&str> =
            runs.iter().filter(|r| r.kind == Kind::Student).map(|r| r.series.as_str()).collect();
        assert_eq!(
            series.into_iter().collect::<Vec<_>>(),
            ["kd", "kd (calibrated)", "kd (fit val_nll≈0.5)", "kd (fit val_nll≈0.9)"]
        );
        let fitted: Vec<&RunSpec> = runs.iter().filter(|r| r.series.contains("fit")).collect();
        assert!(fitted.iter().all(|r| r.teacher.as_ref().is_some_and(|t| t.fit.is_some() && t.at_epoch.is_none())));
        // A plain teacher is stored as before the fields existed (no `fit`, no `calibrate`), and a
        // fitted one reads back whole.
        let stored = serde_json::to_value(&plain.iter().find(|r| r.kind == Kind::Student).unwrap().teacher).unwrap();
        assert!(stored.get("fit").is_none() && stored.get("calibrate").is_none(), "{stored}");
        let back: TeacherRef = serde_json::from_value(serde_json::to_value(&fitted[0].teacher).unwrap()).unwrap();
        assert_eq!(Some(&back), fitted[0].teacher.as_ref());
        // Both need the validation split, and a fit level needs kept epochs.
        let no_val = "data = 'fashion-mnist-mini'\n[teachers]\nmodels = ['cnn_w1']\n[students]\nmodels = ['mlp_32x1']\n[[methods]]\nname = 'kd'\nteacher_calibrate = true\n";
        let e = format!("{:#}", StudyConfig::from_table(no_val.parse().unwrap(), "s.toml", "s").unwrap_err());
        assert!(e.contains("set val_per_class"), "{e}");
        let unkept = "data = 'fashion-mnist-mini'\nval_per_class = 5\n[teachers]\nmodels = ['cnn_w1']\nsave_every = 0\n[students]\nmodels = ['mlp_32x1']\n[[methods]]\nname = 'kd'\nteacher_fit = { metric = 'val_acc', targets = [0.5] }\n";
        let e = format!("{:#}", StudyConfig::from_table(unkept.parse().unwrap(), "s.toml", "s").unwrap_err());
        assert!(e.contains("save_every = 1"), "{e}");
    }

    #[test]
    fn a_varying_rule_labels_the_series_without_quotes() {
        let s =
            study("[[methods]]\nname = 'isats'\nrule = ['order', 'ts', 'bounded']\ncenter_logits = [false, true]\n");
        let runs = expand(&s, Path::new("/tmp/unused")).unwrap();
        let series: std::collections::BTreeSet<&str> =
            runs.iter().filter(|r| r.kind == Kind::Student).map(|r| r.series.as_str()).collect();
        assert!(series.contains("isats rule=order center_logits=false"), "{series:?}");
        assert!(series.contains("isats rule=bounded center_logits=true"), "{series:?}");
        assert_eq!(series.len(), 6, "{series:?}");
    }

    #[test]
    fn a_block_compares_teacher_caches_each_a_series_and_the_old_ids_stay() {
        let dir = Path::new("/tmp/unused");
        let block = "[[methods]]\nname = 'kd'\nteacher_cache = ['topk:1', 'topk:5', true]\n";
        let runs = expand(&study(block), dir).unwrap();
        let students: Vec<&RunSpec> = runs.iter().filter(|r| r.kind == Kind::Student).collect();
        assert_eq!(students.len(), 2 * 3 * 2, "2 teachers × 3 caches × 2 seeds");
        let series: std::collections::BTreeSet<&str> = students.iter().map(|r| r.series.as_str()).collect();
        assert_eq!(series.into_iter().collect::<Vec<_>>(), ["kd cache=logits", "kd cache=topk:1", "kd cache=topk:5"]);
        assert!(students.iter().any(|r| r.teacher_cache == TeacherCache::TopK(5)));
        // A block's `true` is the [students] `true` of studies written before top-k: the same runs.
        let old = expand(&study("teacher_cache = true\n[[methods]]\nname = 'kd'\n"), dir).unwrap();
        let logits: Vec<&String> =
            students.iter().filter(|r| r.teacher_cache == TeacherCache::Logits).map(|r| &r.id).collect();
        assert_eq!(old.iter().filter(|r| r.kind == Kind::Student).map(|r| &r.id).collect::<Vec<_>>(), logits);
        // A method that cannot read a top-1 cache is refused when the study is read.
        let text = "data = 'fashion-mnist-mini'\n[teachers]\nmodels = ['cnn_w1']\n[students]\nmodels = ['mlp_32x1']\n\
                    [[methods]]\nname = 'dkd'\nteacher_cache = 'topk:1'\n";
        let e = format!("{:#}", StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap_err());
        assert!(e.contains("s.toml methods[0]") && e.contains("method 'dkd' cannot"), "{e}");
    }

    #[test]
    fn a_block_trains_its_students_otherwise_in_a_series_of_its_own() {
        use crate::train::engine::sgd::Optimizer;
        let dir = Path::new("/tmp/unused");
        let plain = expand(&study("[[methods]]\nname = 'kd'\n"), dir).unwrap();
        let blocks = "[[methods]]\nname = 'kd'\n[[methods]]\nname = 'kd'\ntrain = { optimizer = 'dot', lr = 0.1 }\n";
        let runs = expand(&study(blocks), dir).unwrap();
        let dot: Vec<&RunSpec> = runs.iter().filter(|r| r.train.optimizer == Optimizer::Dot).collect();
        assert_eq!(dot.len(), 2 * 2, "2 teachers × 2 seeds");
        for r in &dot {
            assert_eq!(
                (r.series.as_str(), r.train.lr, r.train.epochs, r.train.model.as_str()),
                ("kd lr=0.1 optimizer=dot", 0.1, 3, "mlp_32x1")
            );
        }
        // The plain block's runs keep their ids; the changed ones are new runs.
        assert!(plain.iter().all(|p| runs.iter().any(|r| r.id == p.id && r.series == p.series)));
        assert!(dot.iter().all(|d| plain.iter().all(|p| p.id != d.id)));
        // A student's overrides stay under the block's changes.
        let over =
            "[students.overrides.mlp_32x1]\nepochs = 5\n[[methods]]\nname = 'kd'\ntrain = { optimizer = 'dot' }\n";
        assert!(expand(&study(over), dir)
            .unwrap()
            .iter()
            .filter(|r| r.kind == Kind::Student)
            .all(|r| r.train.epochs == 5));
        // Labels with other training would merge in the report; the carving is the study's; keys are checked.
        let same = "[[methods]]\nname = 'kd'\nlabel = 'x'\n[[methods]]\nname = 'kd'\nlabel = 'x'\ntrain = { optimizer = 'dot' }\n";
        assert!(format!("{:#}", expand(&study(same), dir).unwrap_err()).contains("both label their runs 'x'"));
        let refused = |extra: &str| {
            let text = format!("data = 'fashion-mnist-mini'\n[teachers]\nmodels = ['cnn_w1']\n[students]\nmodels = ['mlp_32x1']\n[[methods]]\nname = 'kd'\n{extra}");
            format!("{:#}", StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap_err())
        };
        let e = refused("train = { train_subset = 10 }");
        assert!(e.contains("s.toml methods[0]: train.train_subset is the study's setting"), "{e}");
        let e = refused("train = { optimiser = 'dot' }");
        assert!(e.contains("methods[0] train") && e.contains("optimiser"), "{e}");
        let e = refused("train = { optimizer = 'adam' }");
        assert!(e.contains("methods[0] train"), "{e}");
        let e = refused("assistant = 'cnn_w1'\ntrain = { optimizer = 'dot' }");
        assert!(e.contains("train does not combine with assistant"), "{e}");
    }
}
