//! `dkd` (decoupled KD, Zhao et al. 2022): KD's KL splits into a target term on the binary
//! distribution b = [p_y, 1 − p_y] (TCKD) and a non-target term on q̂ (NCKD), weighted separately:
//! ce = CE(s, y); tckd = w·α·τ²·KL(b(t/τ) ‖ b(s/τ)); nckd = w·β·τ²·KL(q̂(t/τ) ‖ q̂(s/τ)), with the
//! warm-up weight w = min(epoch / warmup, 1). Defaults α = 1, β = 8, τ = 4, warm-up 20 epochs.
use super::common::{cross_entropy, kl_from_log, log_binary_t, log_nongt_t, standardize};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// dkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// Temperature of both softmaxes.
    pub tau: f64,
    /// Weight of the target (TCKD) term.
    pub alpha: f64,
    /// Weight of the non-target (NCKD) term.
    pub beta: f64,
    /// Epochs of linear warm-up of both KD terms (0: none).
    pub warmup: f64,
    /// Logit standardisation before the temperature softmax.
    pub standardize: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 1.0, beta: 8.0, warmup: 20.0, standardize: false }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        Ok(Box::new(Dkd {
            tau: positive("tau", self.tau)?,
            alpha: weight("alpha", self.alpha)?,
            beta: weight("beta", self.beta)?,
            warmup: weight("warmup", self.warmup)?,
            standardize: self.standardize,
        }))
    }
}

pub(crate) struct Dkd {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub warmup: f64,
    pub standardize: bool,
}

impl Dkd {
    /// The warm-up weight at a 1-based epoch.
    pub(crate) fn warmup_weight(&self, epoch: f64) -> f64 {
        if self.warmup <= 0.0 {
            1.0
        } else {
            (epoch / self.warmup).min(1.0)
        }
    }
}

impl Method for Dkd {
    fn name(&self) -> &'static str {
        "dkd"
    }
    /// Needs k ≥ 2 from a top-k teacher cache: its NCKD term is the non-target distribution.
    fn min_topk(&self) -> usize {
        2
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let (s, t) = if self.standardize {
            (standardize(x.student), standardize(x.teacher))
        } else {
            (x.student.shallow_clone(), x.teacher.shallow_clone())
        };
        let w = self.warmup_weight(x.epoch);
        let t2 = self.tau * self.tau;
        let tckd = kl_from_log(&log_binary_t(&t, x.labels, self.tau), &log_binary_t(&s, x.labels, self.tau));
        let nckd = kl_from_log(&log_nongt_t(&t, x.labels, self.tau), &log_nongt_t(&s, x.labels, self.tau));
        vec![
            ("ce".into(), cross_entropy(x.student, x.labels)),
            ("tckd".into(), w * self.alpha * t2 * tckd),
            ("nckd".into(), w * self.beta * t2 * nckd),
        ]
    }
    fn settled_epoch(&self) -> f64 {
        self.warmup
    }
}
