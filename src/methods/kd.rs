//! `kd` (Hinton et al. 2015): ce = α·CE(s, y); kd = β·s_τ²·KL(p(t/τ) ‖ p(s/s_τ)). The student's
//! temperature s_τ defaults to the teacher's τ (the classic form); the paper's authors also use a
//! separate s_τ. Defaults τ = 4, α = 0.1, β = 0.9 (mdistiller's CIFAR setting).
use super::common::{cross_entropy, kl_from_log, log_softmax_t, standardize};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use tch::Tensor;

pub struct Kd {
    pub tau: f64,
    pub student_tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub standardize: bool,
}

pub fn build(p: &MethodParams) -> Result<Box<dyn Method>> {
    let tau = positive("tau", p.tau.unwrap_or(4.0))?;
    Ok(Box::new(Kd {
        tau,
        student_tau: positive("student_tau", p.student_tau.unwrap_or(tau))?,
        alpha: weight("alpha", p.alpha.unwrap_or(0.1))?,
        beta: weight("beta", p.beta.unwrap_or(0.9))?,
        standardize: p.standardize.unwrap_or(false),
    }))
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
    fn hyper(&self) -> serde_json::Value {
        serde_json::json!({"tau": self.tau, "student_tau": self.student_tau, "alpha": self.alpha, "beta": self.beta, "standardize": self.standardize})
    }
}
