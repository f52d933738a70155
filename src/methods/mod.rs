//! Distillation methods, one file each, after mdistiller's contract: a method is a small type that
//! turns (student logits, teacher logits, labels, epoch) into named loss terms; the trainer sums
//! the terms. Its hyper-parameters are a serde struct in the same file (`MethodParams`), and the
//! registry builds the method from a table of them (`-p tau=4`, a flag, a study file's keys).
//! Adding a method is one file and one line in `REGISTRY`: the CLI flags, `kdlab loss` and study
//! grids read its keys from its struct.
pub mod at;
pub mod ats;
pub mod ce;
pub mod common;
pub mod crd;
pub mod ctkd;
pub mod dgkd;
pub mod dist;
pub mod dkd;
pub mod dtkd;
pub mod fitnet;
pub mod isats;
pub mod kd;
pub mod kd_curriculum;
pub mod nckd;
pub mod normkd;
pub mod reviewkd;
pub mod sdd;
mod spec;
pub mod ttm;
pub mod wttm;

pub use spec::MethodSpec;

use crate::models::Taps;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{nn, Tensor};

/// One batch as a method sees it. The tensors share one dtype (f32 in training, f64 in
/// `kdlab loss` checks).
pub struct LossInput<'a> {
    /// (N, C) student logits, with gradient.
    pub student: &'a Tensor,
    /// (N, C) teacher logits, without gradient.
    pub teacher: &'a Tensor,
    /// (N,) int64 labels.
    pub labels: &'a Tensor,
    /// 1-based epoch (fractional within an epoch is not used): DKD's warm-up reads it.
    pub epoch: f64,
    /// The student's taps that `Method::taps` asked for (with gradient); None for logit methods.
    pub student_taps: Option<&'a Taps>,
    /// The teacher's taps that `Method::taps` asked for (without gradient).
    pub teacher_taps: Option<&'a Taps>,
    /// Each sample's index in the training set, (N,) int64 on the CPU (host-side, so a method
    /// reads them without waiting for the device): the rows of a memory bank that are this
    /// batch's (CRD). The trainer sets them from the batch; `kdlab loss` from `--indices`
    /// (default 0..N). None where no index is known (logit methods do not read them).
    pub indices: Option<&'a Tensor>,
    /// The seed of this step's random draws (CRD's negatives). The trainer mixes the run's seed
    /// with the epoch and the step, so a seed gives the same draws and a resumed run draws what
    /// the uninterrupted one drew; `kdlab loss` takes `--draw-seed`.
    pub draw_seed: u64,
    /// Draws given instead of made, for reference checks (`kdlab loss --negatives`): CRD's
    /// (N, K) int64 sample indices of each anchor's negatives, on the CPU. None in training.
    pub negatives: Option<&'a Tensor>,
    /// The other guides' (N, C) logits, without gradient, for a method that learns from several
    /// (`MethodParams::GUIDED`, DGKD: the trained assistants above the model, largest first; the
    /// teacher stays in `teacher`). None for every other method.
    pub guides: Option<&'a [Tensor]>,
    /// Which guides (the teacher, then `guides`) a step keeps, given instead of drawn from
    /// `draw_seed`, for reference checks (`kdlab loss --keep`). None in training.
    pub keep: Option<&'a [bool]>,
}

impl<'a> LossInput<'a> {
    /// A batch of logits and labels, without taps (what every logit method reads).
    pub fn logits(student: &'a Tensor, teacher: &'a Tensor, labels: &'a Tensor, epoch: f64) -> LossInput<'a> {
        LossInput {
            student,
            teacher,
            labels,
            epoch,
            student_taps: None,
            teacher_taps: None,
            indices: None,
            draw_seed: 0,
            negatives: None,
            guides: None,
            keep: None,
        }
    }

    /// The student's tap `name`. The trainer checks every tap a method asks for against both
    /// models before the first step, so a missing one here is a bug in kdlab, not in the input.
    pub(crate) fn student_tap(&self, name: &str) -> &Tensor {
        tap(self.student_taps, name, "student")
    }

    /// The teacher's tap `name` (see `student_tap`).
    pub(crate) fn teacher_tap(&self, name: &str) -> &Tensor {
        tap(self.teacher_taps, name, "teacher")
    }
}

fn tap<'a>(taps: Option<&'a Taps>, name: &str, whose: &str) -> &'a Tensor {
    taps.and_then(|t| t.get(name))
        .unwrap_or_else(|| panic!("the {whose}'s tap '{name}' was not served, though the method asked for it"))
}

/// The taps a method reads (`models::taps` names: `stage2`, `prepool`, `embedding`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TapNeeds {
    pub student: Vec<String>,
    pub teacher: Vec<String>,
}

impl TapNeeds {
    pub fn is_empty(&self) -> bool {
        self.student.is_empty() && self.teacher.is_empty()
    }
}

/// What a method learns before its first step: where its modules go and the shapes of the taps
/// it asked for (batch dimension left out).
pub struct Setup<'a> {
    /// Where the method creates its trainable modules (`nn::linear(&vars / "regressor", …)`) and
    /// its state (`vars.zeros_no_train(…)`): both are checkpointed with the student and restored
    /// on resume; the trainable ones are optimised with the student's parameters.
    pub vars: nn::Path<'a>,
    pub student: &'a [(String, Vec<i64>)],
    pub teacher: &'a [(String, Vec<i64>)],
    pub classes: usize,
    /// Training samples (a memory bank's size).
    pub samples: usize,
    /// Each training sample's label (`samples` of them), for methods that draw by class (CRD's
    /// negatives come from the other classes); None where they are not known (`kdlab loss` with a
    /// bank larger than its batch, whose negatives are then given).
    pub labels: Option<&'a [u16]>,
}

impl Setup<'_> {
    /// The shape of the student's tap `name` (which `Method::taps` asked for).
    pub(crate) fn student_shape(&self, name: &str) -> &[i64] {
        shape_of(self.student, name)
    }
    /// The shape of the teacher's tap `name` (which `Method::taps` asked for).
    pub(crate) fn teacher_shape(&self, name: &str) -> &[i64] {
        shape_of(self.teacher, name)
    }
}

fn shape_of<'a>(shapes: &'a [(String, Vec<i64>)], name: &str) -> &'a [i64] {
    // The trainer checks every asked-for tap against the model before `setup` runs.
    shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice()).unwrap_or(&[])
}

/// A distillation method: logits (and, for feature methods, taps) in, named loss terms out.
/// A method may own trainable modules and state across steps, created in `setup` under the path
/// it is given; the trainer optimises and checkpoints them with the student.
pub trait Method: Send {
    fn name(&self) -> &'static str;
    /// The taps it reads; none for a logit method.
    fn taps(&self) -> TapNeeds {
        TapNeeds::default()
    }
    /// Creates its modules and state, once per run, before the first step (and before a resumed
    /// run's checkpoint is restored into them).
    fn setup(&mut self, _setup: &Setup) -> Result<()> {
        Ok(())
    }
    /// Named loss terms, each a scalar (a mean over the batch).
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)>;
    /// Per-sample values worth showing (ISATS: the chosen τ2 of the last batch).
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        None
    }
    /// Statistics gathered over an epoch (ISATS: the distribution of chosen τ2); resets them.
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        None
    }
    /// The fewest classes a top-k teacher cache must keep for the method to read the teacher as it
    /// means to (see `train::topk_cache`: the other classes share one fill logit). Methods that
    /// read only the softened target as a whole take any k; those whose signal is the shape of
    /// the non-target distribution need k ≥ 2, since at k = 1 a right teacher's non-target
    /// classes are all equal.
    fn min_topk(&self) -> usize {
        1
    }
    /// The first epoch from which the loss no longer changes with the epoch (DKD: the end of its
    /// warm-up): `kdlab loss`'s default epoch.
    fn settled_epoch(&self) -> f64 {
        1.0
    }
}

/// Hyper-parameters as the user gives them (`-p tau=4`, a flag, or a study file's keys): key →
/// value, only the keys given. Each method reads the table into its own `Params` struct.
pub type Table = toml::Table;

/// A method's hyper-parameters: a serde struct in the method's own file, with
/// `#[serde(default, deny_unknown_fields)]` and a `Default` that holds the method's defaults. Integers
/// are accepted for float keys (`tau = 4` is 4.0), as serde reads them. A study grid varies the
/// keys in the order the struct declares them (the first one outermost).
pub(crate) trait MethodParams: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Whether the method distils from a teacher (`ce`, the student alone, does not).
    const NEEDS_TEACHER: bool = true;
    /// Two keys whose grid the report draws as a heat-map (ATS's τ1 × τ2).
    const GRID: Option<GridKeys> = None;
    /// The baseline the report measures every other method against (KD, tuned on validation):
    /// drawn first, and the one whose student the fit view follows across teachers.
    const BASELINE: bool = false;
    /// Whether the method learns from the teacher and a chain of trained assistants at once
    /// (DGKD): it needs assistants (`--assistant a,b`, a study block's `assistants`) and reads
    /// their logits in `LossInput::guides`. A method that is not guided takes one assistant at
    /// most (TAKD's chain).
    const GUIDED: bool = false;

    /// Checks the values and builds the method. A value no run can use is an error that names its
    /// key (see `positive`, `weight`); values that are fine alone but not together return
    /// `Incompatible`, which a study grid skips instead of failing.
    fn build(self) -> Result<Box<dyn Method>>;

    /// The hyper-parameters in effect, as a run records them and its id hashes them: the struct
    /// serialised, so no method lists its keys twice. A method whose record was written before
    /// this rule overrides it to write what it wrote then (kd fills in student_tau; isats adds
    /// its search's constants), which keeps its runs' ids.
    fn record(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("hyper-parameters serialise")
    }
}

/// Hyper-parameter values that are each valid but do not go together (ATS with τ1 < τ2). A study
/// grid leaves such a combination out, and says so; any other refusal is an error.
#[derive(Debug)]
pub(crate) struct Incompatible {
    /// The constraint, the same for every combination it refuses (it groups them in a summary).
    pub needs: String,
    /// The values that break it.
    pub got: String,
}

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}, got {}", self.needs, self.got)
    }
}

impl std::error::Error for Incompatible {}

/// Refuses a combination as incompatible: `return incompatible(...)` in `MethodParams::build`.
pub fn incompatible<T>(needs: impl Into<String>, got: impl Into<String>) -> Result<T> {
    Err(Incompatible { needs: needs.into(), got: got.into() }.into())
}

/// Two hyper-parameters that form a grid worth a heat-map: rows × columns, labelled by their
/// symbols. Runs with `variant` set to true are another series (ATS with centred logits) and stay
/// out of the grid.
#[derive(Clone, Copy, Debug)]
pub struct GridKeys {
    pub rows: &'static str,
    pub cols: &'static str,
    pub row_symbol: &'static str,
    pub col_symbol: &'static str,
    pub variant: Option<&'static str>,
    /// What an empty cell means.
    pub empty: &'static str,
}

/// A method's entry in the registry: its name, a line about it, and its `MethodParams` type, from
/// which the keys it takes, their defaults, the constructor and its properties all follow.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    /// Whether it distils from a teacher (`MethodParams::NEEDS_TEACHER`).
    pub needs_teacher: bool,
    /// The grid the report draws (`MethodParams::GRID`).
    pub grid: Option<GridKeys>,
    /// The report's baseline (`MethodParams::BASELINE`).
    pub baseline: bool,
    /// Whether it learns from the teacher and every assistant above it (`MethodParams::GUIDED`).
    pub guided: bool,
    parse: fn(&Table) -> Result<std::sync::Arc<dyn spec::AnyParams>>,
    keys: fn() -> &'static [&'static str],
    defaults: fn() -> serde_json::Value,
}

/// The registry entry of a method whose hyper-parameters are `P`.
const fn entry<P: MethodParams>(name: &'static str, about: &'static str) -> Entry {
    Entry {
        name,
        about,
        needs_teacher: P::NEEDS_TEACHER,
        grid: P::GRID,
        baseline: P::BASELINE,
        guided: P::GUIDED,
        parse: spec::parse::<P>,
        keys: field_names::<P>,
        defaults: defaults_of::<P>,
    }
}

pub const REGISTRY: &[Entry] = &[
    entry::<ce::Params>("ce", "cross-entropy only (the student baseline)"),
    entry::<kd::Params>("kd", "Hinton, Vinyals & Dean, NIPS workshop 2015: α·CE + β·s_τ²·KL(p(t/τ) ‖ p(s/s_τ))"),
    entry::<ats::Params>("ats", "asymmetric temperature scaling (Li et al., NeurIPS 2022): τ1 on the true class, τ2 on the others"),
    entry::<isats::Params>("isats", "instance-specific ATS (Fan, Li & Zhan, Front. Comput. Sci. 2026): τ2 per sample in [τ2_min, τ1] by a rule (ts_order: the variance-maximising temperature, kept where the true class stays first)"),
    entry::<nckd::Params>("nckd", "DKD's non-target term alone, plus CE (Zhao et al., CVPR 2022)"),
    entry::<dkd::Params>("dkd", "decoupled KD (Zhao et al., CVPR 2022): CE + α·TCKD + β·NCKD with warm-up"),
    entry::<dist::Params>("dist", "DIST (Huang et al., NeurIPS 2022): inter- and intra-class Pearson correlation"),
    entry::<kd_curriculum::Params>("kd_curriculum", "KD whose temperature follows a fixed schedule over the first epochs (after CTKD's curriculum, Li et al., AAAI 2023)"),
    entry::<ctkd::Params>("ctkd", "curriculum temperature KD (Li et al., AAAI 2023): KD whose temperature τ = τ_min + τ_range·σ(θ) is learnt through a gradient reversal layer, its strength λ rising along a cosine over the first epochs"),
    entry::<ttm::Params>("ttm", "transformed teacher matching (Zheng & Yang, ICLR 2024): CE + β·KL(p(t/τ) ‖ p(s)), the temperature on the teacher only"),
    entry::<wttm::Params>("wttm", "weighted TTM (Zheng & Yang, ICLR 2024): TTM with each sample weighted by Σ_c p_t,c^(1/τ)"),
    entry::<normkd::Params>("normkd", "NormKD (Chi et al., arXiv 2023): KD with per-sample temperatures τ_norm·std of each network's logits"),
    entry::<dtkd::Params>("dtkd", "dynamic temperature KD (Wei & Bai, arXiv 2024): per-sample temperatures from the ratio of the largest logits, plus KD, with warm-up"),
    entry::<dgkd::Params>("dgkd", "densely guided KD (Son et al., ICCV 2021): a chain of assistants, each taught by the teacher and every assistant above it, the student by all: α·CE + β·τ²·Σ_g KL(p(g/τ) ‖ p(s/τ)), `drop` guides left out at random each step; needs assistants"),
    entry::<fitnet::Params>("fitnet", "FitNets (Romero et al., ICLR 2015): CE + β·MSE(regressor(student hint), teacher hint); taps: the hint (stage2)"),
    entry::<crd::Params>("crd", "contrastive representation distillation (Tian et al., ICLR 2020): CE + β·NCE contrast of student and teacher embeddings against memory banks of K negatives; taps: embedding"),
    entry::<at::Params>("at", "attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + β·Σ_k mean (Q_s,k − Q_t,k)², Q = L2-normalised mean_c |f_c|^p of each stage; taps: stage1 … stageK"),
    entry::<sdd::Params>("sdd", "scale decoupled distillation (Wei, Luo & Luo, CVPR 2024): KD over the logits of 1×1, 2×2 and 4×4 regions, complementary regions weighted up; taps: logit_map"),
    entry::<reviewkd::Params>("reviewkd", "knowledge review (Chen et al., CVPR 2021): CE + β·Σ_levels HCL(ABF fusion of the student's stages, the teacher's); taps: stage1 … stageK and embedding"),
];

impl Entry {
    /// The hyper-parameters it takes, in the order its struct declares them.
    pub fn keys(&self) -> &'static [&'static str] {
        (self.keys)()
    }

    /// Each key's default (null where the default depends on another key, as kd's student_tau).
    pub fn defaults(&self) -> serde_json::Value {
        (self.defaults)()
    }

    /// Reads `params` into the method's typed hyper-parameters. A key it does not take is an
    /// error, not silently ignored.
    fn parse(&self, params: &Table) -> Result<std::sync::Arc<dyn spec::AnyParams>> {
        self.check_keys(params.keys().map(String::as_str))?;
        (self.parse)(params).with_context(|| format!("method '{}'", self.name))
    }

    /// Refuses a key the method does not take, naming the keys it takes (and the nearest, for a
    /// key no method takes: a likely typo).
    pub(crate) fn check_keys<'a>(&self, given: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let keys = self.keys();
        let Some(key) = given.into_iter().find(|k| !keys.contains(k)) else { return Ok(()) };
        let takes = if keys.is_empty() { "no hyper-parameters".to_string() } else { keys.join(", ") };
        if all_keys().contains(&key) {
            bail!("method '{}' does not take {key} (it takes {takes})", self.name);
        }
        let candidates: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let hint = crate::util::text::did_you_mean(key, &candidates);
        bail!("unknown key '{key}'{hint}: method '{}' takes {takes}", self.name)
    }
}

fn defaults_of<P: MethodParams>() -> serde_json::Value {
    serde_json::to_value(P::default()).expect("hyper-parameters serialise")
}

/// The field names of `P`, in declaration order, as serde's derive hands them to a deserializer
/// (so that no method lists its keys a second time).
fn field_names<P: MethodParams>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    struct Recorder<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Recorder<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
            Err(Error::custom("hyper-parameters must be a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = P::deserialize(Recorder(&mut fields));
    fields
}

/// The registry entry of method `name`.
pub fn entry_of(name: &str) -> Result<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name).with_context(|| {
        let names: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        format!("unknown method '{name}': choose one of {}", names.join(", "))
    })
}

/// Whether method `name` distils from a teacher (an unknown name is reported where it is built).
pub(crate) fn needs_teacher(name: &str) -> bool {
    entry_of(name).map_or(true, |e| e.needs_teacher)
}

/// Whether method `name` is the report's baseline (an unknown name, as a run of a method since
/// removed, is not).
pub fn is_baseline(name: &str) -> bool {
    entry_of(name).is_ok_and(|e| e.baseline)
}

/// Builds method `name` from hyper-parameters given as a table: `MethodSpec::parse`, then
/// `build`, for callers at the edge that want the method at once (`kdlab loss`, tests).
pub fn build(name: &str, params: &Table) -> Result<Box<dyn Method>> {
    MethodSpec::parse(name, params.clone())?.build()
}

/// Every key some method takes, each once, in registry order.
pub(crate) fn all_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = vec![];
    for k in REGISTRY.iter().flat_map(|e| e.keys()) {
        if !keys.contains(k) {
            keys.push(k);
        }
    }
    keys
}

/// The incompatibility behind an error from `build`, if that is what it is.
pub(crate) fn incompatibility(e: &anyhow::Error) -> Option<&Incompatible> {
    e.downcast_ref::<Incompatible>()
}

/// Checks a temperature (or any quantity that must be positive).
pub fn positive(key: &str, v: f64) -> Result<f64> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{key} must be a positive number, got {v}");
    }
    Ok(v)
}

/// Checks a loss weight.
pub fn weight(key: &str, v: f64) -> Result<f64> {
    if !(v >= 0.0 && v.is_finite()) {
        bail!("{key} must be ≥ 0, got {v}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_one_baseline_and_it_needs_a_teacher() {
        let baselines: Vec<&str> = REGISTRY.iter().filter(|e| e.baseline).map(|e| e.name).collect();
        assert_eq!(baselines, ["kd"], "the report tunes and draws first exactly one baseline");
        assert!(is_baseline("kd") && !is_baseline("ats") && !is_baseline("no-such-method"));
        assert!(REGISTRY.iter().filter(|e| e.baseline).all(|e| e.needs_teacher));
    }
}
