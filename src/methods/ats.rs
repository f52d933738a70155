//! `ats` (asymmetric temperature scaling, Li et al. 2022): the teacher's true-class logit is
//! divided by τ1 and every other logit by τ2 ≤ τ1, which spreads the wrong classes apart (larger
//! non-GT variance) while keeping their order. ce = (1−λ)·CE(s, y);
//! kd = λ·s_τ²·KL(p_ATS ‖ p(s/s_τ)). Defaults τ1 = 4, τ2 = 2, s_τ = 1, λ = 0.5.
//!
//! `center_logits` (default false, as the authors' code, which uses the raw logits): subtract each
//! sample's mean teacher logit first. ATS is not invariant to adding a constant k to all of a
//! sample's logits: the true class moves by k/τ1 and the others by k/τ2, so the target changes
//! with the teacher's arbitrary logit offset; after centring it does not.
//!
//! Every epoch the run records how often the target does not rank the true class strictly first
//! (`ats_target`): `teacher_wrong` (the teacher's own logit of the true class is not strictly the
//! largest; ties count as wrong), `flipped_where_teacher_right` (the teacher is right but the ATS
//! target is not: τ2 < τ1 lifted a wrong class above the true one), `fixed_where_teacher_wrong`
//! (the other way round, possible when the logits are negative) and `target_not_true_class`, all
//! as shares of the epoch's samples. The counts stay on the device until the epoch ends.
use super::common::{cross_entropy, gt_mask, kl_from_log, log_softmax_t};
use super::{incompatible, positive, weight, LossInput, Method, MethodParams};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// ats's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The student's temperature s_τ.
    pub student_tau: f64,
    /// Temperature of the teacher's true-class logit.
    pub tau1: f64,
    /// Temperature of the teacher's other logits (≤ τ1).
    pub tau2: f64,
    /// Weight of the KD term; CE gets 1 − λ.
    pub lambda: f64,
    /// Subtract each sample's mean teacher logit first.
    pub center_logits: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { student_tau: 1.0, tau1: 4.0, tau2: 2.0, lambda: 0.5, center_logits: false }
    }
}

impl MethodParams for Params {
    const GRID: Option<super::GridKeys> = Some(super::GridKeys {
        rows: "tau1",
        cols: "tau2",
        row_symbol: "τ1",
        col_symbol: "τ2",
        variant: Some("center_logits"),
        empty: "τ1 < τ2 is not ATS",
    });
    fn build(self) -> Result<Box<dyn Method>> {
        let student_tau = positive("student_tau", self.student_tau)?;
        let tau1 = positive("tau1", self.tau1)?;
        let tau2 = positive("tau2", self.tau2)?;
        check(tau1, tau2, weight("lambda", self.lambda)?, "tau2")?;
        Ok(Box::new(Ats {
            tau1,
            tau2,
            student_tau,
            lambda: self.lambda,
            center_logits: self.center_logits,
            flips: Flips::default(),
        }))
    }
}

pub(crate) struct Ats {
    pub tau1: f64,
    pub tau2: f64,
    pub student_tau: f64,
    pub lambda: f64,
    pub center_logits: bool,
    flips: Flips,
}

/// Checks λ ∈ [0, 1] (an invalid value) and τ1 ≥ τ2 (an incompatible pair, which a study grid
/// skips).
pub fn check(tau1: f64, tau2: f64, lambda: f64, tau2_name: &str) -> Result<()> {
    if !(0.0..=1.0).contains(&lambda) {
        bail!("lambda must be in [0, 1], got {lambda}");
    }
    if tau1 < tau2 {
        return incompatible(
            format!("ATS needs tau1 ≥ {tau2_name} (the true class is softened at least as much as the others)"),
            format!("tau1 = {tau1}, {tau2_name} = {tau2}"),
        );
    }
    Ok(())
}

/// The teacher logits as the ATS family uses them: detached, and with each row's mean subtracted
/// when `center` is set.
pub(crate) fn prepare(t: &Tensor, center: bool) -> Tensor {
    let t = t.detach();
    if center {
        let mean = t.mean_dim(1, true, t.kind());
        t - mean
    } else {
        t
    }
}

/// log p_ATS: log-softmax of the teacher logits with the true class divided by τ1 and the others
/// by `tau2` (a scalar or an (N, 1) tensor of per-sample temperatures).
pub fn log_ats(t: &Tensor, y: &Tensor, tau1: f64, tau2: &Tensor) -> Tensor {
    let idx = y.unsqueeze(1);
    let z = (t / tau2).scatter(1, &idx, &(t.gather(1, &idx, false) / tau1));
    z.log_softmax(1, t.kind())
}

/// Per row, z_y − max_{c≠y} z_c: (N,). Positive exactly where the true class is strictly first.
pub fn true_class_gap(z: &Tensor, y: &Tensor) -> Tensor {
    let zy = z.gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
    zy - z.masked_fill(&gt_mask(z, y), f64::NEG_INFINITY).amax([1], false)
}

/// The ATS loss terms given log p_ATS.
pub fn terms(x: &LossInput, log_p_ats: &Tensor, student_tau: f64, lambda: f64) -> Vec<(String, Tensor)> {
    let kl = kl_from_log(log_p_ats, &log_softmax_t(x.student, student_tau));
    vec![
        ("ce".into(), (1.0 - lambda) * cross_entropy(x.student, x.labels)),
        ("kd".into(), lambda * student_tau * student_tau * kl),
    ]
}

/// Counts, over an epoch, of the samples whose ATS target does not rank the true class first.
#[derive(Default)]
pub(crate) struct Flips {
    /// Samples, teacher wrong, flipped where the teacher is right, fixed where it is wrong (int64,
    /// on the logits' device: reading them back every step would stall a GPU).
    counts: Option<Tensor>,
}

impl Flips {
    /// Adds a batch: teacher logits `t`, labels `y` and the target's log-probabilities.
    pub(crate) fn add(&mut self, t: &Tensor, y: &Tensor, log_target: &Tensor) {
        let _g = tch::no_grad_guard();
        let teacher_right = true_class_gap(t, y).gt(0.0);
        let target_right = true_class_gap(log_target, y).gt(0.0);
        let count = |b: Tensor| b.sum(Kind::Int64);
        let c = Tensor::stack(
            &[
                Tensor::from(t.size()[0]).to_device(t.device()),
                count(teacher_right.logical_not()),
                count(teacher_right.logical_and(&target_right.logical_not())),
                count(teacher_right.logical_not().logical_and(&target_right)),
            ],
            0,
        );
        self.counts = Some(match self.counts.take() {
            Some(a) => a + c,
            None => c,
        });
    }

    /// The shares since the last call (null when no sample was seen); resets the counts.
    pub fn take(&mut self) -> serde_json::Value {
        let Some(c) = self.counts.take() else { return serde_json::Value::Null };
        let c = Vec::<i64>::try_from(c.to_device(tch::Device::Cpu)).unwrap_or_default();
        let &[n, wrong, flipped, fixed] = c.as_slice() else { return serde_json::Value::Null };
        if n == 0 {
            return serde_json::Value::Null;
        }
        let share = |k: i64| k as f64 / n as f64;
        serde_json::json!({
            "samples": n,
            "teacher_wrong": share(wrong),
            "flipped_where_teacher_right": share(flipped),
            "fixed_where_teacher_wrong": share(fixed),
            "target_not_true_class": share(wrong - fixed + flipped),
        })
    }
}

impl Method for Ats {
    fn name(&self) -> &'static str {
        "ats"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let t = prepare(x.teacher, self.center_logits);
        let tau2 = Tensor::from(self.tau2).to_kind(t.kind()).to_device(t.device());
        let lp = log_ats(&t, x.labels, self.tau1, &tau2);
        self.flips.add(&t, x.labels, &lp);
        terms(x, &lp, self.student_tau, self.lambda)
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"ats_target": self.flips.take()}))
    }
}
