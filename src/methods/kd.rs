//! `kd` (Hinton et al. 2015): ce = α·CE(s, y); kd = β·s_τ²·KL(p(t/τ) ‖ p(s/s_τ)). The student's
//! temperature s_τ defaults to the teacher's τ (the classic form); the paper's authors also use a
//! separate s_τ. Defaults τ = 4, α = 0.1, β = 0.9 (mdistiller's CIFAR setting).
use super::common::{cross_entropy, kl_from_log, log_softmax_t, standardize};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// kd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The teacher's temperature τ.
    pub tau: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the KD term.
    pub beta: f64,
    /// The student's temperature s_τ (default: τ).
    pub student_tau: Option<f64>,
    /// Logit standardisation before the temperature softmax.
    pub standardize: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 0.1, beta: 0.9, student_tau: None, standardize: false }
    }
}

impl MethodParams for Params {
    const BASELINE: bool = true;

    fn build(self) -> Result<Box<dyn Method>> {
        let tau = positive("tau", self.tau)?;
        Ok(Box::new(Kd {
            tau,
            student_tau: positive("student_tau", self.student_tau.unwrap_or(tau))?,
            alpha: weight("alpha", self.alpha)?,
            beta: weight("beta", self.beta)?,
            standardize: self.standardize,
        }))
    }
    /// The student's temperature as it is in effect (τ when not given), as kd's runs have always
    /// recorded it.
    fn record(&self) -> serde_json::Value {
        let mut h = serde_json::to_value(self).expect("hyper-parameters serialise");
        h["student_tau"] = serde_json::json!(self.student_tau.unwrap_or(self.tau));
        h
    }
}

pub(crate) struct Kd {
    pub tau: f64,
    pub student_tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub standardize: bool,
}

impl Method for Kd {
    fn name(&self) -> &'static str {
        "kd"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let (s, t) = if self.standardize {
            (standardize(x.student), standardize(x.teacher))
        } else {
            (x.student.shallow_clone(), x.teacher.shallow_clone())
        };
        let kl = kl_from_log(&log_softmax_t(&t, self.tau), &log_softmax_t(&s, self.student_tau));
        vec![
            ("ce".into(), self.alpha * cross_entropy(x.student, x.labels)),
            ("kd".into(), self.beta * self.student_tau * self.student_tau * kl),
        ]
    }
}
