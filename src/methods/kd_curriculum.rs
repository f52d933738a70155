//! `kd_curriculum`: KD whose temperature follows a fixed curriculum, after CTKD's idea (Li et al.
//! 2023) that the temperature should change with training, here on a schedule instead of learned
//! adversarially. τ(e) moves from `tau_start` to `tau_end` along a half cosine over the first
//! `ramp_epochs` epochs, then stays at `tau_end`:
//! τ(e) = τ_start + (τ_end − τ_start)·(1 − cos(π·min(e / ramp_epochs, 1)))/2, e the 1-based epoch.
//! ce = α·CE(s, y); kd = β·τ(e)²·KL(p(t/τ(e)) ‖ p(s/τ(e))). Defaults τ_start = 1, τ_end = 4,
//! ramp_epochs = 20, α = 0.1, β = 0.9 (kd's weights).
//!
//! It is also the worked example of adding a method: this file and one line in `REGISTRY`; the
//! keys `tau_start`, `tau_end` and `ramp_epochs` reach `kdlab distill`, `kdlab loss` and study
//! grids from the struct below.
use super::common::{cross_entropy, kl_from_log, log_softmax_t};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// kd_curriculum's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The temperature at the first epoch.
    pub tau_start: f64,
    /// The temperature from `ramp_epochs` on.
    pub tau_end: f64,
    /// Epochs over which the temperature moves (0: `tau_end` throughout).
    pub ramp_epochs: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the KD term.
    pub beta: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau_start: 1.0, tau_end: 4.0, ramp_epochs: 20.0, alpha: 0.1, beta: 0.9 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau_start", self.tau_start)?;
        positive("tau_end", self.tau_end)?;
        weight("ramp_epochs", self.ramp_epochs)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        Ok(Box::new(KdCurriculum { p: self }))
    }
}

pub(crate) struct KdCurriculum {
    p: Params,
}

impl KdCurriculum {
    /// The temperature at a 1-based epoch.
    pub(crate) fn tau_at(&self, epoch: f64) -> f64 {
        let progress = if self.p.ramp_epochs <= 0.0 { 1.0 } else { (epoch / self.p.ramp_epochs).clamp(0.0, 1.0) };
        let eased = (1.0 - (std::f64::consts::PI * progress).cos()) / 2.0;
        self.p.tau_start + (self.p.tau_end - self.p.tau_start) * eased
    }
}

impl Method for KdCurriculum {
    fn name(&self) -> &'static str {
        "kd_curriculum"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let tau = self.tau_at(x.epoch);
        let kl = kl_from_log(&log_softmax_t(x.teacher, tau), &log_softmax_t(x.student, tau));
        vec![
            ("ce".into(), self.p.alpha * cross_entropy(x.student, x.labels)),
            ("kd".into(), self.p.beta * tau * tau * kl),
        ]
    }
    fn settled_epoch(&self) -> f64 {
        self.p.ramp_epochs
    }
}
