//! `nckd`: only the non-target part of DKD — the teacher's wrong-class distribution q̂ (the non-GT
//! probabilities renormalised) — plus CE. ce = α·CE(s, y); nckd = β·τ²·KL(q̂(t/τ) ‖ q̂(s/τ)).
//! Defaults α = 1, β = 8, τ = 4.
use super::common::{cross_entropy, kl_from_log, log_nongt_t, standardize};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// nckd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// Temperature of both softmaxes.
    pub tau: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the non-target (NCKD) term.
    pub beta: f64,
    /// Logit standardisation before the temperature softmax.
    pub standardize: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 1.0, beta: 8.0, standardize: false }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        Ok(Box::new(Nckd {
            tau: positive("tau", self.tau)?,
            alpha: weight("alpha", self.alpha)?,
            beta: weight("beta", self.beta)?,
            standardize: self.standardize,
        }))
    }
}

pub(crate) struct Nckd {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub standardize: bool,
}

impl Method for Nckd {
    fn name(&self) -> &'static str {
        "nckd"
    }
    /// Needs k ≥ 2 from a top-k teacher cache: its whole signal is the non-target distribution.
    fn min_topk(&self) -> usize {
        2
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let (s, t) = if self.standardize {
            (standardize(x.student), standardize(x.teacher))
        } else {
            (x.student.shallow_clone(), x.teacher.shallow_clone())
        };
        let kl = kl_from_log(&log_nongt_t(&t, x.labels, self.tau), &log_nongt_t(&s, x.labels, self.tau));
        vec![
            ("ce".into(), self.alpha * cross_entropy(x.student, x.labels)),
            ("nckd".into(), self.beta * self.tau * self.tau * kl),
        ]
    }
}
