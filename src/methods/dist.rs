//! `dist` (DIST, Huang et al. 2022): match the teacher's predictions by correlation rather than
//! exactly — inter-class relations (Pearson across classes, per sample) and intra-class relations
//! (Pearson across the batch, per class). ce = α·CE(s, y);
//! inter = β·τ²·(1 − mean_i ρ(p_i(s/τ), p_i(t/τ))); intra = γ·τ²·(1 − mean_c ρ(p_·c(s/τ), p_·c(t/τ))).
//! Defaults α = 1, β = γ = 2, τ = 4 (its CIFAR setting).
use super::common::{cross_entropy, pearson_rows};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use tch::Tensor;

pub struct Dist {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

pub fn build(p: &MethodParams) -> Result<Box<dyn Method>> {
    Ok(Box::new(Dist {
        tau: positive("tau", p.tau.unwrap_or(4.0))?,
        alpha: weight("alpha", p.alpha.unwrap_or(1.0))?,
        beta: weight("beta", p.beta.unwrap_or(2.0))?,
        gamma: weight("gamma", p.gamma.unwrap_or(2.0))?,
    }))
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
    fn hyper(&self) -> serde_json::Value {
        serde_json::json!({"tau": self.tau, "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma})
    }
}
