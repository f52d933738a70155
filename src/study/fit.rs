//! Teachers matched on fit (issue 23): a `[[methods]]` block's `teacher_fit` distils each teacher
//! architecture from the saved epoch whose validation fit (accuracy, NLL or ECE) is closest to a
//! target, or first reaches it, so that a ladder of sizes sits at one fit level.
//!
//! ```toml
//! teacher_fit = { metric = "val_nll", targets = [0.5, 0.4, 0.35], rule = "closest" }
//! ```
//!
//! The choice is made when the student's run starts, from the teacher's kept checkpoints, each
//! evaluated on the validation split only (never the test set); the run id hashes the rule, not the
//! epoch, so the plan is known before the teachers are trained. The epoch and the metric's value go
//! into run.json (`teacher_fit`). Every distillation run of a study also records its teacher's
//! fit (`teacher_stats`: test accuracy, NLL and ECE, validation NLL, σ(q) on the transfer set),
//! of the calibrated teacher where it is calibrated, for the report's size-versus-fit section.
use crate::data::Dataset;
use crate::probe::{self, source::RunSource, TeacherReport};
use crate::train::checkpoint::{self, RunRef, Which};
use crate::train::teacher::Teacher;
use crate::util::sealed;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitMetric {
    ValAcc,
    ValNll,
    ValEce,
}

impl FitMetric {
    const NAMES: [(&'static str, FitMetric); 3] =
        [("val_acc", FitMetric::ValAcc), ("val_nll", FitMetric::ValNll), ("val_ece", FitMetric::ValEce)];

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, m)| *m == self).map(|(n, _)| *n).expect("listed")
    }
    /// Accuracy grows as a teacher fits; NLL and ECE fall.
    fn higher_is_fitter(self) -> bool {
        self == FitMetric::ValAcc
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitRule {
    /// The kept epoch whose value is closest to the target (the earlier one on a tie).
    Closest,
    /// The first kept epoch that reaches the target.
    First,
}

/// One fit level: the checkpoint of each teacher chosen by `rule` on `metric` against `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitPick {
    pub metric: FitMetric,
    pub target: f64,
    pub rule: FitRule,
}

/// A kept checkpoint of a teacher and its fit on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub epoch: usize,
    pub val_acc: f64,
    pub val_nll: f64,
    pub val_ece: f64,
}

impl Candidate {
    pub fn value(&self, m: FitMetric) -> f64 {
        match m {
            FitMetric::ValAcc => self.val_acc,
            FitMetric::ValNll => self.val_nll,
            FitMetric::ValEce => self.val_ece,
        }
    }
}

impl FitPick {
    /// A block's `teacher_fit` table: one pick per target.
    pub(crate) fn parse_block(v: &toml::Value, origin: &str) -> Result<Vec<FitPick>> {
        let key = "teacher_fit";
        let t = v.as_table().with_context(|| {
            format!("{origin}: '{key}' should be a table, e.g. {{ metric = \"val_nll\", targets = [0.5, 0.4] }}")
        })?;
        let allowed = ["metric", "targets", "rule"];
        if let Some(k) = t.keys().find(|k| !allowed.contains(&k.as_str())) {
            let names: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
            let hint = crate::util::text::did_you_mean(k, &names);
            bail!("{origin}: {key}: unknown key '{k}'{hint}; valid keys: {}", allowed.join(", "));
        }
        let metric_names: Vec<String> = FitMetric::NAMES.iter().map(|(n, _)| n.to_string()).collect();
        let metric = match t.get("metric") {
            None => bail!("{origin}: {key} needs a metric ({})", metric_names.join(", ")),
            Some(toml::Value::String(s)) => match FitMetric::NAMES.iter().find(|(n, _)| n == s) {
                Some((_, m)) => *m,
                None => {
                    let hint = crate::util::text::did_you_mean(s, &metric_names);
                    bail!("{origin}: {key}.metric '{s}' is not one of {}{hint}", metric_names.join(", "))
                }
            },
            Some(v) => bail!("{origin}: {key}.metric should be a string, found {v}"),
        };
        let rule = match t.get("rule").map(|v| v.as_str()) {
            None | Some(Some("closest")) => FitRule::Closest,
            Some(Some("first")) => FitRule::First,
            Some(_) => bail!("{origin}: {key}.rule should be \"closest\" or \"first\""),
        };
        let as_f64 = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        let targets: Vec<f64> = match t.get("targets") {
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| as_f64(v).with_context(|| format!("{origin}: {key}.targets must list numbers, found {v}")))
                .collect::<Result<_>>()?,
            Some(v) if as_f64(v).is_some() => vec![as_f64(v).expect("checked")],
            Some(v) => bail!("{origin}: {key}.targets should be a non-empty list of numbers, found {v}"),
            None => bail!("{origin}: {key} needs targets (e.g. targets = [0.5, 0.4, 0.35])"),
        };
        for &x in &targets {
            let ok = x.is_finite() && x >= 0.0 && (metric != FitMetric::ValAcc || x <= 1.0);
            if !ok {
                bail!(
                    "{origin}: {key}.targets: {x} is not a value {} can take ({})",
                    metric.name(),
                    if metric == FitMetric::ValAcc { "a fraction in [0, 1]" } else { "a non-negative number" }
                );
            }
        }
        Ok(targets.into_iter().map(|target| FitPick { metric, target, rule }).collect())
    }

    /// How the report and the series name the level: `val_nll≈0.4`, `val_acc≥0.85`.
    pub fn label(&self) -> String {
        let op = match (self.rule, self.metric.higher_is_fitter()) {
            (FitRule::Closest, _) => "≈",
            (FitRule::First, true) => "≥",
            (FitRule::First, false) => "≤",
        };
        format!("{}{op}{}", self.metric.name(), self.target)
    }

    /// The candidate this pick chooses.
    pub(crate) fn choose<'c>(&self, candidates: &'c [Candidate]) -> Result<&'c Candidate> {
        let m = self.metric;
        let mut sorted: Vec<&Candidate> = candidates.iter().collect();
        sorted.sort_by_key(|c| c.epoch);
        let chosen = match self.rule {
            FitRule::Closest => sorted
                .iter()
                .copied()
                .filter(|c| c.value(m).is_finite())
                .min_by(|a, b| (a.value(m) - self.target).abs().total_cmp(&(b.value(m) - self.target).abs())),
            FitRule::First => sorted.iter().copied().find(|c| {
                let v = c.value(m);
                if m.higher_is_fitter() {
                    v >= self.target
                } else {
                    v <= self.target
                }
            }),
        };
        chosen.with_context(|| {
            let values: Vec<String> = sorted.iter().map(|c| format!("{}: {:.4}", c.epoch, c.value(m))).collect();
            format!(
                "no kept checkpoint of the teacher reaches {} (epoch: {} = {}); lower the target or keep more epochs (save_every)",
                self.label(),
                m.name(),
                values.join(", ")
            )
        })
    }
}

/// The fit on the validation split of every kept checkpoint of the teacher run in `run_dir`,
/// computed once per run and data carving and kept beside it (`fit-candidates.json`).
pub fn candidates(run_dir: &Path, data: &Dataset) -> Result<Vec<Candidate>> {
    #[derive(Serialize, Deserialize)]
    struct Cached {
        data_fingerprint: String,
        epochs: Vec<usize>,
        candidates: Vec<Candidate>,
    }
    let mut epochs = checkpoint::list_epochs(run_dir);
    let last = checkpoint::read_meta(&run_dir.join("last.json"))
        .with_context(|| format!("teacher_fit reads the teacher run {}", run_dir.display()))?
        .epoch;
    if !epochs.contains(&last) {
        epochs.push(last);
    }
    epochs.sort_unstable();
    let file = run_dir.join("fit-candidates.json");
    let fingerprint = data.fingerprint();
    if file.exists() {
        // A damaged or stale file is derived data: computed again.
        if let Ok(c) = sealed::read_json::<Cached>(&file, "a kdlab fit-candidates file") {
            if c.data_fingerprint == fingerprint && c.epochs == epochs {
                return Ok(c.candidates);
            }
        }
    }
    if data.val.is_none() {
        bail!("teacher_fit chooses checkpoints on the validation split, and {} has none: set val_per_class", data.name)
    }
    let mut out = vec![];
    for &e in &epochs {
        let at = if e == last { None } else { Some(Which::Epoch(e)) };
        let spec = RunRef { dir: run_dir.to_path_buf(), at }.to_string();
        out.push(Candidate { epoch: e, ..checkpoint_fit(&spec, data, tch::Device::Cpu)? });
    }
    let cached = Cached { data_fingerprint: fingerprint, epochs, candidates: out };
    sealed::write_json(&file, &cached)?;
    Ok(cached.candidates)
}

/// The fit on the validation split of one checkpoint (`runs/NAME`, `runs/NAME@epochN`): accuracy,
/// NLL and ECE of its plain logits (τ = 1), through the probe. `epoch` is the checkpoint's own
/// (epochs completed when it was saved). The validation split only: `data` must have one.
pub fn checkpoint_fit(spec: &str, data: &Dataset, device: tch::Device) -> Result<Candidate> {
    let Some(val) = &data.val else {
        bail!("{spec}: the fit is measured on the validation split, and {} has none: set val_per_class", data.name)
    };
    let labels: Vec<usize> = val.labels.iter().map(|&y| y as usize).collect();
    let (model, meta, _) = checkpoint::load_model(spec, device)?;
    let source = RunSource::from_feed(spec.to_string(), model, data.feed("val", false)?, 0);
    let r = probe::run(vec![Box::new(source)], &labels, "the validation split", &[1.0], probe::CHUNK)?;
    let t = &r.report.teachers[0];
    Ok(Candidate { epoch: meta.epoch, val_acc: t.accuracy, val_nll: t.per_tau[0].nll, val_ece: t.per_tau[0].ece })
}

/// The temperatures at which the transfer set's σ(q) is recorded (the report shows the study's
/// `probe_tau`, the nearest of these).
pub(crate) const SIGMA_TAUS: [f64; 4] = [1.0, 2.0, 4.0, 8.0];

/// What a distillation run records of its teacher's fit: accuracy, NLL and ECE on the test and
/// validation splits, and σ(q) (the spread of the non-target probabilities) on the transfer set at
/// [`SIGMA_TAUS`], all of the teacher as the method sees it (its logits divided by `temperature`).
/// Cached per checkpoint, data carving and temperature in the teacher's cache directory.
pub fn teacher_stats(teacher: &Teacher, data: &Dataset, temperature: f64) -> Result<serde_json::Value> {
    let key = format!("{}|{}|{temperature:.12}", teacher.meta.weights_sha256, data.fingerprint());
    let file =
        teacher.cache_dir().join(format!("teacher-stats-{}.json", &crate::data::sha256_hex(key.as_bytes())[..16]));
    if let Ok(v) = sealed::read_json::<serde_json::Value>(&file, "a kdlab teacher-stats file") {
        if v.get("key").and_then(|k| k.as_str()) == Some(key.as_str()) {
            return Ok(v["stats"].clone());
        }
    }
    let on = |split: &str, taus: &[f64]| -> Result<TeacherReport> {
        let s = data.split(split)?;
        let labels: Vec<usize> = s.labels.iter().map(|&y| y as usize).collect();
        let (model, _, _) = checkpoint::load_model(&teacher.spec, tch::Device::Cpu)?;
        let source = RunSource::from_feed(teacher.spec.clone(), model, data.feed(split, false)?, 0);
        let r = probe::run(vec![Box::new(source)], &labels, &format!("the {split} split"), taus, probe::CHUNK)?;
        Ok(r.report.teachers.into_iter().next().expect("one teacher"))
    };
    let test = on("test", &[temperature])?;
    let mut stats = serde_json::json!({
        "temperature": temperature,
        "test_acc": test.accuracy,
        "test_nll": test.per_tau[0].nll,
        "test_ece": test.per_tau[0].ece,
    });
    if data.val.is_some() {
        let val = on("val", &[temperature])?;
        stats["val_acc"] = serde_json::json!(val.accuracy);
        stats["val_nll"] = serde_json::json!(val.per_tau[0].nll);
        stats["val_ece"] = serde_json::json!(val.per_tau[0].ece);
    }
    let taus: Vec<f64> = SIGMA_TAUS.iter().map(|t| t * temperature).collect();
    let transfer = on("train", &taus)?;
    let sigma: serde_json::Map<String, serde_json::Value> = SIGMA_TAUS
        .iter()
        .zip(&transfer.per_tau)
        .map(|(t, r)| (format!("{t}"), serde_json::json!(r.nongt_std)))
        .collect();
    stats["transfer_nongt_std"] = serde_json::Value::Object(sigma);
    sealed::write_json(&file, &serde_json::json!({"key": key, "stats": stats}))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(epoch: usize, val_acc: f64, val_nll: f64) -> Candidate {
        Candidate { epoch, val_acc, val_nll, val_ece: 0.0 }
    }

    #[test]
    fn picks_choose_by_rule_on_validation_values() {
        let cands = vec![c(3, 0.80, 0.60), c(1, 0.70, 0.90), c(2, 0.78, 0.55), c(4, 0.82, 0.70)];
        let pick = |metric, target, rule| FitPick { metric, target, rule };
        assert_eq!(pick(FitMetric::ValAcc, 0.79, FitRule::Closest).choose(&cands).unwrap().epoch, 2, "a tie: earlier");
        assert_eq!(pick(FitMetric::ValAcc, 0.79, FitRule::First).choose(&cands).unwrap().epoch, 3);
        assert_eq!(pick(FitMetric::ValNll, 0.65, FitRule::First).choose(&cands).unwrap().epoch, 2);
        assert_eq!(pick(FitMetric::ValNll, 0.72, FitRule::Closest).choose(&cands).unwrap().epoch, 4);
        let e = format!("{:#}", pick(FitMetric::ValAcc, 0.9, FitRule::First).choose(&cands).unwrap_err());
        assert!(e.contains("val_acc≥0.9") && e.contains("4: 0.8200"), "{e}");
    }

    #[test]
    fn a_block_table_gives_one_pick_per_target_and_bad_ones_are_named() {
        let parse = |s: &str| FitPick::parse_block(&s.parse::<toml::Table>().unwrap()["f"], "s.toml");
        let p = parse("f = { metric = 'val_nll', targets = [0.5, 0.4] }").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].metric, p[1].target, p[1].rule), (FitMetric::ValNll, 0.4, FitRule::Closest));
        assert_eq!(p[0].label(), "val_nll≈0.5");
        let p = parse("f = { metric = 'val_acc', targets = 0.85, rule = 'first' }").unwrap();
        assert_eq!(p[0].label(), "val_acc≥0.85");
        for (bad, says) in [
            ("f = { metric = 'val_los', targets = [1] }", "is not one of val_acc, val_nll, val_ece"),
            ("f = { metric = 'val_acc', targets = [85] }", "a fraction in [0, 1]"),
            ("f = { metric = 'val_acc' }", "needs targets"),
            ("f = { metric = 'val_acc', targets = [0.8], rul = 'first' }", "did you mean 'rule'"),
            ("f = { metric = 'val_acc', targets = [0.8], rule = 'last' }", "\"closest\" or \"first\""),
            ("f = 3", "should be a table"),
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains(says) && e.contains("s.toml"), "{bad}: {e}");
        }
    }
}
