//! `nckd`: only the non-target part of DKD — the teacher's wrong-class distribution q̂ (the non-GT
//! probabilities renormalised) — plus CE. ce = α·CE(s, y); nckd = β·τ²·KL(q̂(t/τ) ‖ q̂(s/τ)).
//! Defaults α = 1, β = 8, τ = 4.
use super::common::{cross_entropy, kl_from_log, log_nongt_t, standardize};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use tch::Tensor;

pub struct Nckd {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub standardize: bool,
}

pub fn build(p: &MethodParams) -> Result<Box<dyn Method>> {
    Ok(Box::new(Nckd {
        tau: positive("tau", p.tau.unwrap_or(4.0))?,
        alpha: weight("alpha", p.alpha.unwrap_or(1.0))?,
        beta: weight("beta", p.beta.unwrap_or(8.0))?,
        standardize: p.standardize.unwrap_or(false),
    }))
}

impl Method for Nckd {
    fn name(&self) -> &'static str {
        "nckd"
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
    fn hyper(&self) -> serde_json::Value {
        serde_json::json!({"tau": self.tau, "alpha": self.alpha, "beta": self.beta, "standardize": self.standardize})
    }
}
