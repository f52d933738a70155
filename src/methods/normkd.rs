//! `normkd` (Chi et al., "NormKD: Normalized Logits for Knowledge Distillation", arXiv 2308.00520,
//! 2023): KD with a temperature per sample and per network, set by the spread of its own logits:
//! T_t,i = τ_norm·σ(t_i), T_s,i = τ_norm·σ(s_i), σ the standard deviation over classes with
//! Bessel's correction (torch's `std`, as the authors' code); ce = α·CE(s, y);
//! kd = β·mean_i T_t,i²·KL(softmax(t_i/T_t,i) ‖ softmax(s_i/T_s,i)). Each row is divided by its
//! own spread, so the target does not depend on the teacher's logit scale, nor the student's
//! prediction on its own; the gradient flows through the student's σ as well (the authors do not
//! detach it). The weight T_t² is the teacher's.
//!
//! Defaults τ_norm = 2, α = 0.1, β = 0.9: the authors' CIFAR-100 configuration (their KD weights).
//!
//! One departure, for rows no network produces in training: σ is floored at 10⁻⁷ (the variance at
//! 10⁻¹⁴, before the square root), so that a row of equal logits gives a uniform softmax and a
//! finite gradient instead of 0/0.
use super::common::{cross_entropy, kl_rows};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The floor of a row's logit variance (σ ≥ 10⁻⁷).
const MIN_VAR: f64 = 1e-14;

/// normkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The temperature per unit of logit standard deviation.
    pub tau_norm: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the distillation term.
    pub beta: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau_norm: 2.0, alpha: 0.1, beta: 0.9 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau_norm", self.tau_norm)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        Ok(Box::new(NormKd { p: self }))
    }
}

pub(crate) struct NormKd {
    p: Params,
}

/// σ of each row of `z` with Bessel's correction, (N, C) → (N, 1), floored at √MIN_VAR. The
/// variance is clamped, not σ, because σ's derivative is infinite at 0 (NaN once multiplied by
/// the zero deviations of a constant row); the clamp passes no gradient where it binds.
pub fn spread(z: &Tensor) -> Tensor {
    let k = z.kind();
    let c = z.size()[1];
    let dev = z - z.mean_dim(1, true, k);
    (dev.square().sum_dim_intlist(1, true, k) / (c - 1).max(1) as f64).clamp_min(MIN_VAR).sqrt()
}

impl Method for NormKd {
    fn name(&self) -> &'static str {
        "normkd"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let k = x.student.kind();
        let tt = (self.p.tau_norm * spread(x.teacher)).detach();
        let ts = self.p.tau_norm * spread(x.student);
        let log_pt = (x.teacher / &tt).log_softmax(1, k);
        let log_ps = (x.student / &ts).log_softmax(1, k);
        let kd = (kl_rows(&log_pt, &log_ps) * tt.square().squeeze_dim(1)).mean(k);
        vec![("ce".into(), self.p.alpha * cross_entropy(x.student, x.labels)), ("kd".into(), self.p.beta * kd)]
    }
}
