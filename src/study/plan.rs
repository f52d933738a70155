//! From a study to its runs: every (teacher, student, method, hyper-parameters, seed) becomes one
//! run with a stable id, the hash of everything that determines its result. Adding a seed or a
//! temperature adds runs; the existing ones keep their ids and are not run again.
use super::config::{external_name, MethodBlock, StudyConfig};
use crate::methods::{self, MethodParams};
use crate::train::checkpoint::{RunRef, Which};
use crate::train::config::TrainConfig;
use anyhow::{Context, Result};
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

/// Who teaches a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherRef {
    /// The teacher's name in the study (its architecture, or an existing run's directory name).
    pub name: String,
    /// The study run that produces it (None for an existing run given in the study).
    pub run_id: Option<String>,
    /// An existing run's checkpoint spec (absolute), for teachers from outside the study.
    pub external: Option<String>,
    /// ESKD: the checkpoint after this many epochs instead of the final one.
    pub at_epoch: Option<usize>,
    /// TAKD: the assistant's architecture when this teacher is an assistant run.
    pub via_assistant: Option<String>,
    /// The teacher at the top of the chain (for TAKD students, the assistant's own teacher).
    pub root: String,
}

impl TeacherRef {
    /// The checkpoint spec, given the study directory.
    pub fn spec(&self, study_dir: &Path) -> String {
        let base = match (&self.run_id, &self.external) {
            (Some(id), _) => run_dir(study_dir, id).display().to_string(),
            (None, Some(ext)) => ext.clone(),
            (None, None) => unreachable!("a teacher is a study run or an existing run"),
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
    pub method: String,
    pub params: MethodParams,
    /// Every hyper-parameter in effect, defaults included.
    pub hyper: serde_json::Value,
    /// The line this run belongs to in the report (e.g. "kd τ=2", "kd (ESKD@3)").
    pub series: String,
    pub teacher: Option<TeacherRef>,
    pub depends_on: Vec<String>,
    /// Distil from the teacher's logit cache instead of running the teacher.
    #[serde(default)]
    pub teacher_cache: bool,
}

/// Where a run lives inside a study.
pub fn run_dir(study_dir: &Path, id: &str) -> std::path::PathBuf {
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

fn series_label(block: &MethodBlock, p: &MethodParams) -> String {
    if let Some(l) = &block.label {
        return l.clone();
    }
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
    if p.standardize == Some(true) {
        s += "+ls";
    }
    if let Some(e) = block.teacher_epoch {
        s += &format!(" (ESKD@{e})");
    }
    if let Some(a) = &block.assistant {
        s += &format!(" (TAKD via {a})");
    }
    s
}

/// The identity of a teacher for hashing: a study run's id, or an existing run's weights checksum.
fn teacher_identity(t: &TeacherRef, study_dir: &Path) -> Result<serde_json::Value> {
    Ok(match (&t.run_id, &t.external) {
        (Some(id), _) => serde_json::json!({"run": id, "at_epoch": t.at_epoch}),
        (None, Some(ext)) => {
            let spec = RunRef { dir: ext.into(), at: t.at_epoch.map(Which::Epoch) }.to_string();
            let json = crate::train::checkpoint::resolve(&spec)?;
            let meta = crate::train::checkpoint::read_meta(&json)?;
            let _ = study_dir;
            serde_json::json!({"external": ext, "at_epoch": t.at_epoch, "weights_sha256": meta.weights_sha256})
        }
        _ => unreachable!(),
    })
}

/// Expands a study into its runs, teachers first; ids are unique.
pub fn expand(study: &StudyConfig, study_dir: &Path) -> Result<Vec<RunSpec>> {
    let mut runs: BTreeMap<String, RunSpec> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    let mut add = |r: RunSpec, runs: &mut BTreeMap<String, RunSpec>| {
        if !runs.contains_key(&r.id) {
            order.push(r.id.clone());
            runs.insert(r.id.clone(), r);
        }
    };
    let ce = methods::build("ce", &MethodParams::default())?;
    // Teachers trained by the study.
    let mut teachers: Vec<TeacherRef> = vec![];
    for model in &study.teachers.models {
        let train = TrainConfig { model: model.clone(), ..study.teachers.train.clone() };
        let id = hash_id(&serde_json::json!({"kind": "teacher", "train": train.identity()}));
        add(
            RunSpec {
                id: id.clone(),
                kind: Kind::Teacher,
                name: format!("teacher {model} s{}", train.seed),
                train,
                method: "ce".into(),
                params: MethodParams::default(),
                hyper: ce.hyper(),
                series: "teacher".into(),
                teacher: None,
                depends_on: vec![],
                teacher_cache: false,
            },
            &mut runs,
        );
        teachers.push(TeacherRef {
            name: model.clone(),
            run_id: Some(id),
            external: None,
            at_epoch: None,
            via_assistant: None,
            root: model.clone(),
        });
    }
    for spec in &study.teachers.runs {
        let r: RunRef = spec.parse()?;
        let abs = std::fs::canonicalize(&r.dir)
            .with_context(|| format!("teacher run {}: no such directory", r.dir.display()))?;
        let external = RunRef { dir: abs, ..r }.to_string();
        crate::train::checkpoint::resolve(&external)?;
        let name = external_name(spec);
        teachers.push(TeacherRef {
            name: name.clone(),
            run_id: None,
            external: Some(external),
            at_epoch: None,
            via_assistant: None,
            root: name,
        });
    }
    for block in &study.methods {
        for params in &block.grid {
            let method = methods::build(&block.name, params)?;
            let hyper = method.hyper();
            let series = series_label(block, params);
            let chosen: Vec<Option<&TeacherRef>> = if block.name == "ce" {
                vec![None]
            } else {
                teachers
                    .iter()
                    .filter(|t| block.teachers.as_ref().is_none_or(|f| f.contains(&t.name)))
                    .map(Some)
                    .collect()
            };
            for teacher in chosen {
                for student in
                    study.students.models.iter().filter(|s| block.students.as_ref().is_none_or(|f| f.contains(s)))
                {
                    for &seed in &study.seeds {
                        let mut t = teacher.cloned().map(|t| TeacherRef { at_epoch: block.teacher_epoch, ..t });
                        let mut deps: Vec<String> = t.as_ref().and_then(|t| t.run_id.clone()).into_iter().collect();
                        if let (Some(assistant), Some(tr)) = (&block.assistant, &t) {
                            let train = TrainConfig { seed, ..study.students.train_for(assistant) };
                            let identity = serde_json::json!({"kind": "assistant", "train": train.identity(), "method": block.name, "hyper": hyper, "teacher_cache": study.students.teacher_cache,
                                "teacher": teacher_identity(tr, study_dir)?});
                            let aid = hash_id(&identity);
                            add(
                                RunSpec {
                                    id: aid.clone(),
                                    kind: Kind::Assistant,
                                    name: format!("assistant {assistant} ← {} {} s{seed}", tr.name, block.name),
                                    train,
                                    method: block.name.clone(),
                                    params: params.clone(),
                                    hyper: hyper.clone(),
                                    series: format!("{} assistant", block.name),
                                    teacher: Some(tr.clone()),
                                    depends_on: deps.clone(),
                                    teacher_cache: study.students.teacher_cache,
                                },
                                &mut runs,
                            );
                            t = Some(TeacherRef {
                                name: tr.name.clone(),
                                run_id: Some(aid.clone()),
                                external: None,
                                at_epoch: None,
                                via_assistant: Some(assistant.clone()),
                                root: tr.root.clone(),
                            });
                            deps = vec![aid];
                        }
                        let train = TrainConfig { seed, ..study.students.train_for(student) };
                        let identity = serde_json::json!({"kind": "student", "train": train.identity(), "method": block.name, "hyper": hyper, "teacher_cache": study.students.teacher_cache && t.is_some(),
                            "teacher": t.as_ref().map(|t| teacher_identity(t, study_dir)).transpose()?});
                        let id = hash_id(&identity);
                        let from = t.as_ref().map(|t| format!(" ← {}", t.name)).unwrap_or_default();
                        add(
                            RunSpec {
                                id,
                                kind: Kind::Student,
                                name: format!("{student}{from} {series} s{seed}"),
                                train,
                                method: block.name.clone(),
                                params: params.clone(),
                                hyper: hyper.clone(),
                                series: series.clone(),
                                teacher_cache: study.students.teacher_cache && t.is_some(),
                                teacher: t,
                                depends_on: deps,
                            },
                            &mut runs,
                        );
                    }
                }
            }
        }
    }
    Ok(order.into_iter().map(|id| runs.remove(&id).expect("added")).collect())
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
}
