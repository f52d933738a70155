//! `wttm` (weighted transformed teacher matching; Zheng & Yang, ICLR 2024): TTM with each sample's
//! KL weighted by the power sum of its teacher probabilities, U_γ(p_t) = Σ_c p_t,c^γ (γ = 1/τ),
//! which is large where the teacher is smooth (at most C^(1−γ), for a uniform teacher) and near 1
//! where it is confident: ce = α·CE(s, y);
//! kd = β·mean_i U_γ(p_t,i)·KL(softmax(t_i/τ) ‖ softmax(s_i)). The weight is the teacher's, so
//! no gradient flows through it; the batch mean divides by N, not by Σ U (as the authors' code).
//!
//! Defaults τ = 5 (γ = 0.2), α = 1, β = 4: the authors' README example of WTTM (`--ttm_l 0.2`, WTTM
//! weight 4, there added to CRD); their appendix lists a (γ, β) per teacher–student pair.
use super::common::{cross_entropy, kl_rows, log_softmax_t};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// wttm's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The teacher's temperature τ = 1/γ.
    pub tau: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the weighted distillation term.
    pub beta: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 5.0, alpha: 1.0, beta: 4.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau", self.tau)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        Ok(Box::new(Wttm { p: self }))
    }
}

pub(crate) struct Wttm {
    p: Params,
}

/// U_γ(p) = Σ_c p_c^γ per row of logits `t`, from log-probabilities: exp(logsumexp(γ·log p)), so
/// that a probability that underflows in p does not vanish from p^γ.
pub fn power_sum(t: &Tensor, gamma: f64) -> Tensor {
    (gamma * t.log_softmax(1, t.kind())).logsumexp([1], false).exp()
}

impl Method for Wttm {
    fn name(&self) -> &'static str {
        "wttm"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let k = x.student.kind();
        let u = power_sum(x.teacher, 1.0 / self.p.tau).detach();
        let kl = kl_rows(&log_softmax_t(x.teacher, self.p.tau), &log_softmax_t(x.student, 1.0));
        vec![
            ("ce".into(), self.p.alpha * cross_entropy(x.student, x.labels)),
            ("kd".into(), self.p.beta * (u * kl).mean(k)),
        ]
    }
}
