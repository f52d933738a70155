//! `ats` (asymmetric temperature scaling, Li et al. 2022): the teacher's true-class logit is
//! divided by τ1 and every other logit by τ2 ≤ τ1, which spreads the wrong classes apart (larger
//! non-GT variance) while keeping their order. ce = (1−λ)·CE(s, y);
//! kd = λ·s_τ²·KL(p_ATS ‖ p(s/s_τ)). Defaults τ1 = 4, τ2 = 2, s_τ = 1, λ = 0.5.
use super::common::{cross_entropy, kl_from_log, log_softmax_t};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::{bail, Result};
use tch::Tensor;

pub struct Ats {
    pub tau1: f64,
    pub tau2: f64,
    pub student_tau: f64,
    pub lambda: f64,
}

/// Checks τ1 ≥ τ2 and λ ∈ [0, 1].
pub fn check(tau1: f64, tau2: f64, lambda: f64, tau2_name: &str) -> Result<()> {
    if tau1 < tau2 {
        bail!("ATS needs tau1 ≥ {tau2_name} (the true class is softened at least as much as the others), got tau1 = {tau1}, {tau2_name} = {tau2}");
    }
    if !(0.0..=1.0).contains(&lambda) {
        bail!("lambda must be in [0, 1], got {lambda}");
    }
    Ok(())
}

pub fn build(p: &MethodParams) -> Result<Box<dyn Method>> {
    let tau1 = positive("tau1", p.tau1.unwrap_or(4.0))?;
    let tau2 = positive("tau2", p.tau2.unwrap_or(2.0))?;
    let lambda = weight("lambda", p.lambda.unwrap_or(0.5))?;
    check(tau1, tau2, lambda, "tau2")?;
    Ok(Box::new(Ats { tau1, tau2, student_tau: positive("student_tau", p.student_tau.unwrap_or(1.0))?, lambda }))
}

/// log p_ATS: log-softmax of the teacher logits with the true class divided by τ1 and the others
/// by `tau2` (a scalar or an (N, 1) tensor of per-sample temperatures).
pub fn log_ats(t: &Tensor, y: &Tensor, tau1: f64, tau2: &Tensor) -> Tensor {
    let idx = y.unsqueeze(1);
    let z = (t / tau2).scatter(1, &idx, &(t.gather(1, &idx, false) / tau1));
    z.log_softmax(1, t.kind())
}

/// The ATS loss terms given log p_ATS.
pub fn terms(x: &LossInput, log_p_ats: &Tensor, student_tau: f64, lambda: f64) -> Vec<(String, Tensor)> {
    let kl = kl_from_log(log_p_ats, &log_softmax_t(x.student, student_tau));
    vec![
        ("ce".into(), (1.0 - lambda) * cross_entropy(x.student, x.labels)),
        ("kd".into(), lambda * student_tau * student_tau * kl),
    ]
}

impl Method for Ats {
    fn name(&self) -> &'static str {
        "ats"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let tau2 = Tensor::from(self.tau2).to_kind(x.teacher.kind()).to_device(x.teacher.device());
        let lp = log_ats(x.teacher, x.labels, self.tau1, &tau2);
        terms(x, &lp, self.student_tau, self.lambda)
    }
    fn hyper(&self) -> serde_json::Value {
        serde_json::json!({"tau1": self.tau1, "tau2": self.tau2, "student_tau": self.student_tau, "lambda": self.lambda})
    }
}
