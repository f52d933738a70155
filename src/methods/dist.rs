//! `dist` (DIST, Huang et al. 2022): match the teacher's predictions by correlation rather than
//! exactly — inter-class relations (Pearson across classes, per sample) and intra-class relations
//! (Pearson across the batch, per class). ce = α·CE(s, y);
//! inter = β·τ²·(1 − mean_i ρ(p_i(s/τ), p_i(t/τ))); intra = γ·τ²·(1 − mean_c ρ(p_·c(s/τ), p_·c(t/τ))).
//! Defaults α = 1, β = γ = 2, τ = 4 (its CIFAR setting).
use super::common::{cross_entropy, pearson_rows};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// dist's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// Temperature of both softmaxes.
    pub tau: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the inter-class (per-sample) correlation term.
    pub beta: f64,
    /// Weight of the intra-class (per-class) correlation term. (`kdlab distill --gamma` sets this,
    /// not the learning rate's decay, when the method is dist.)
    pub gamma: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 1.0, beta: 2.0, gamma: 2.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        Ok(Box::new(Dist {
            tau: positive("tau", self.tau)?,
            alpha: weight("alpha", self.alpha)?,
            beta: weight("beta", self.beta)?,
            gamma: weight("gamma", self.gamma)?,
        }))
    }
}

pub(crate) struct Dist {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl Method for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let k = x.student.kind();
        let ps = (x.student / self.tau).softmax(1, k);
        let pt = (x.teacher / self.tau).softmax(1, k);
        let t2 = self.tau * self.tau;
        let inter = 1.0 - pearson_rows(&ps, &pt).mean(k);
        let intra = 1.0 - pearson_rows(&ps.transpose(0, 1), &pt.transpose(0, 1)).mean(k);
        vec![
            ("ce".into(), self.alpha * cross_entropy(x.student, x.labels)),
            ("inter".into(), self.beta * t2 * inter),
            ("intra".into(), self.gamma * t2 * intra),
        ]
    }
}
