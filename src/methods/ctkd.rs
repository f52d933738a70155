//! `ctkd` (Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023): KD whose
//! temperature is learnt, adversarially. One global temperature τ = τ_min + τ_range·σ(θ), θ a
//! trainable scalar in the method's VarStore (optimised with the student, checkpointed, restored on
//! resume), reaches the loss through a gradient reversal layer: the forward pass is the identity,
//! the backward pass multiplies the gradient by −λ, so θ climbs the distillation loss while the
//! student descends it. λ follows a cosine curriculum over the 1-based epoch e, from λ_min to λ_max
//! over `lambda_epochs` epochs, then stays at λ_max:
//! λ(e) = λ_min + (λ_max − λ_min)·(1 − cos(π·min(e, lambda_epochs)/lambda_epochs))/2.
//! ce = α·CE(s, y); kd = β·τ²·KL(p(t/τ) ‖ p(s/τ)), KL summed over classes and averaged over the
//! batch; τ reaches every place it appears (both softmaxes and τ²), the teacher's included.
//!
//! Conventions and defaults from the authors' code (github.com/zhengli97/CTKD, CIFAR-100 script):
//! `Global_T` holds θ initialised to 1 (`torch.ones(1)`), so τ starts at 1 + 20·σ(1) ≈ 15.62;
//! `temp = t_start + t_end·sigmoid(θ)` with t_start = 1, t_end = 20, which bounds τ to (1, 21) (the
//! method's clamp range); the reversal strength comes from `CosineDecay(max 0, min −1, loops 10)`
//! read at the 1-based epoch (so λ(1) = (1 − cos(π/10))/2 ≈ 0.024, λ = 1 from epoch 10 on);
//! `-r 0.1 -a 0.9`: α = 0.1 on CE and β = 0.9 on the KD term (`DistillKL`: batchmean KL times
//! T²); θ is in the optimiser's parameter list with the student, weight decay included. The
//! curriculum needs no total number of epochs: it is a fixed count of epochs (5 on ImageNet:
//! `-p lambda_epochs=5`). The gradient reversal is written as θ̃ = θ̄ − λ·(θ − θ̄), θ̄ = θ detached:
//! its value is θ exactly, its derivative −λ.
use super::common::{cross_entropy, kl_from_log};
use super::{positive, weight, LossInput, Method, MethodParams, Setup};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// ctkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The lower bound of the temperature (the authors' `t_start`).
    pub tau_min: f64,
    /// The width of the temperature's range: τ ∈ (tau_min, tau_min + tau_range) (`t_end`).
    pub tau_range: f64,
    /// The initial value of the trainable θ, τ = tau_min + tau_range·σ(θ) (`Global_T`'s 1).
    pub theta_init: f64,
    /// The reversal strength at epoch 0 (minus the authors' `decay_max`).
    pub lambda_min: f64,
    /// The reversal strength from `lambda_epochs` on (minus the authors' `decay_min`).
    pub lambda_max: f64,
    /// Epochs over which λ rises (the authors' `decay_loops`; 0: λ_max throughout).
    pub lambda_epochs: f64,
    /// Weight of the cross-entropy term (the authors' `-r`).
    pub alpha: f64,
    /// Weight of the KD term (the authors' `-a`).
    pub beta: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            tau_min: 1.0,
            tau_range: 20.0,
            theta_init: 1.0,
            lambda_min: 0.0,
            lambda_max: 1.0,
            lambda_epochs: 10.0,
            alpha: 0.1,
            beta: 0.9,
        }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau_min", self.tau_min)?;
        positive("tau_range", self.tau_range)?;
        if !self.theta_init.is_finite() {
            bail!("theta_init must be a finite number, got {}", self.theta_init);
        }
        weight("lambda_min", self.lambda_min)?;
        weight("lambda_max", self.lambda_max)?;
        weight("lambda_epochs", self.lambda_epochs)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        Ok(Box::new(Ctkd { p: self, theta: None, last_lambda: None }))
    }
}

pub struct Ctkd {
    p: Params,
    /// The trainable θ (a scalar), created in `setup`.
    theta: Option<Tensor>,
    /// λ of the last batch, for the epoch's record.
    last_lambda: Option<f64>,
}

impl Ctkd {
    /// The reversal strength λ at a 1-based epoch.
    pub fn lambda_at(&self, epoch: f64) -> f64 {
        let progress = if self.p.lambda_epochs <= 0.0 { 1.0 } else { (epoch / self.p.lambda_epochs).clamp(0.0, 1.0) };
        let eased = (1.0 - (std::f64::consts::PI * progress).cos()) / 2.0;
        self.p.lambda_min + (self.p.lambda_max - self.p.lambda_min) * eased
    }

    /// The temperature τ(θ) for a given θ.
    pub fn tau_of(&self, theta: f64) -> f64 {
        self.p.tau_min + self.p.tau_range / (1.0 + (-theta).exp())
    }
}

/// The gradient reversal layer: the value of `x`, with derivative −λ.
fn reverse_gradient(x: &Tensor, lambda: f64) -> Tensor {
    let fixed = x.detach();
    &fixed - (x - &fixed) * lambda
}

impl Method for Ctkd {
    fn name(&self) -> &'static str {
        "ctkd"
    }
    fn setup(&mut self, s: &Setup) -> Result<()> {
        self.theta = Some(s.vars.var("theta", &[], nn::Init::Const(self.p.theta_init)));
        Ok(())
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let theta = self.theta.as_ref().expect("the trainer calls setup before the first step");
        let lambda = self.lambda_at(x.epoch);
        self.last_lambda = Some(lambda);
        let reversed = reverse_gradient(&theta.to_kind(x.student.kind()), lambda);
        let tau = reversed.sigmoid() * self.p.tau_range + self.p.tau_min;
        let log_p = |z: &Tensor| (z / &tau).log_softmax(1, z.kind());
        let kl = kl_from_log(&log_p(x.teacher), &log_p(x.student));
        vec![
            ("ce".into(), self.p.alpha * cross_entropy(x.student, x.labels)),
            ("kd".into(), self.p.beta * tau.square() * kl),
        ]
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        let theta = self.theta.as_ref()?.double_value(&[]);
        let lambda = self.last_lambda.take()?;
        Some(serde_json::json!({ "ctkd": { "tau": self.tau_of(theta), "theta": theta, "lambda": lambda } }))
    }
    fn settled_epoch(&self) -> f64 {
        self.p.lambda_epochs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn built(p: Params) -> (Box<dyn Method>, nn::VarStore) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut m = p.build().unwrap();
        m.setup(&Setup { vars: vs.root(), student: &[], teacher: &[], classes: 3, samples: 2, labels: None }).unwrap();
        vs.double();
        (m, vs)
    }

    /// The authors' curriculum at their CIFAR setting: λ(1) = (1 − cos(π/10))/2, λ(5) = 1/2,
    /// λ = 1 from epoch 10; and τ at θ = 1 is 1 + 20·σ(1).
    #[test]
    fn the_curriculum_and_the_initial_temperature() {
        let m = Ctkd { p: Params::default(), theta: None, last_lambda: None };
        let want1 = (1.0 - (std::f64::consts::PI / 10.0).cos()) / 2.0;
        assert!((m.lambda_at(1.0) - want1).abs() < 1e-15, "{}", m.lambda_at(1.0));
        assert!((m.lambda_at(5.0) - 0.5).abs() < 1e-15);
        assert_eq!(m.lambda_at(10.0), 1.0);
        assert_eq!(m.lambda_at(40.0), 1.0);
        assert!((m.tau_of(1.0) - (1.0 + 20.0 / (1.0 + (-1f64).exp()))).abs() < 1e-12);
        assert!((m.tau_of(1.0) - 15.6211716).abs() < 1e-6);
    }

    /// The reversal layer keeps θ's value and multiplies its gradient by −λ: the gradient of the
    /// loss with respect to θ is −λ times that of the same loss without the layer.
    #[test]
    fn the_temperature_gradient_is_reversed_and_scaled_by_lambda() {
        let s = Tensor::from_slice(&[1.0f64, -0.5, 2.0, 0.3, 0.0, -1.0]).view([2, 3]);
        let t = Tensor::from_slice(&[3.0f64, 0.5, -1.0, 0.0, 2.0, 1.0]).view([2, 3]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let (mut m, vs) = built(Params { theta_init: 0.3, ..Default::default() });
        let theta = vs.variables()["theta"].shallow_clone();
        let epoch = 4.0;
        let lambda = Ctkd { p: Params::default(), theta: None, last_lambda: None }.lambda_at(epoch);
        let kd = m.terms(&LossInput::logits(&s, &t, &y, epoch)).remove(1).1;
        kd.backward();
        let reversed = theta.grad().double_value(&[]);
        // The same loss, written without the layer (at θ as stored: 0.3 rounded to f32 on creation).
        let th = Tensor::from(theta.double_value(&[])).set_requires_grad(true);
        let tau = th.sigmoid() * 20.0 + 1.0;
        let lp = |z: &Tensor| (z / &tau).log_softmax(1, Kind::Double);
        let plain: Tensor = 0.9 * tau.square() * kl_from_log(&lp(&t), &lp(&s));
        let (pv, kv) = (plain.double_value(&[]), kd.double_value(&[]));
        assert!((pv - kv).abs() < 1e-14, "{pv} vs {kv}");
        plain.backward();
        let g = th.grad().double_value(&[]);
        assert!(g.abs() > 1e-6, "a gradient worth comparing: {g}");
        assert!((reversed + lambda * g).abs() <= 1e-12 * g.abs(), "{reversed} vs −{lambda}·{g}");
    }
}
