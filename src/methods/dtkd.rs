//! `dtkd` (Wei & Bai, "Dynamic Temperature Knowledge Distillation", arXiv 2404.12711, 2024): a
//! temperature per sample for each network from the ratio of their largest logits. With
//! m_s = max_c s_c and m_t = max_c t_c of a sample and the reference temperature τ,
//! T_s = 2·m_s/(m_t + m_s)·τ and T_t = 2·m_t/(m_t + m_s)·τ (the network with the sharper output
//! gets the higher temperature; their mean is τ). Three terms, as the authors' code:
//! ce = CE(s, y); dtkd = w·α·mean_i T_t,i·T_s,i·KL(softmax(t_i/T_t,i) ‖ softmax(s_i/T_s,i));
//! kd = w·β·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), with the warm-up weight
//! w = min(epoch / warmup, 1). The gradient flows through m_s (into the student's largest logit)
//! in both temperatures and in the weight T_t·T_s, as in the authors' code.
//!
//! Defaults τ = 4, α = 3, β = 1, warm-up 20 epochs: the authors' CIFAR-100 configuration (CE
//! weight 1).
//!
//! One departure, for samples the formula does not cover: where m_s ≤ 0 or m_t ≤ 0 (a student
//! whose logits are all negative, say early in training) the temperatures would be negative or
//! infinite (m_t + m_s = 0), and a negative T_s·T_t would turn the term into one the student
//! maximises; kdlab gives such a sample T_s = T_t = τ (its dtkd term is then KD's). The share of
//! such samples is recorded every epoch (`dtkd.fallback`), with the mean temperatures.
use super::common::{cross_entropy, kl_from_log, kl_rows, log_softmax_t};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// dtkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The reference temperature τ (the mean of the two per-sample temperatures, and KD's).
    pub tau: f64,
    /// Weight of the dynamic-temperature term.
    pub alpha: f64,
    /// Weight of the plain KD term at τ.
    pub beta: f64,
    /// Epochs of linear warm-up of both distillation terms (0: none).
    pub warmup: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 3.0, beta: 1.0, warmup: 20.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau", self.tau)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        weight("warmup", self.warmup)?;
        Ok(Box::new(Dtkd { p: self, epoch: [0.0; 4] }))
    }
}

pub(crate) struct Dtkd {
    p: Params,
    /// This epoch's samples, fallbacks, and sums of T_s and T_t.
    epoch: [f64; 4],
}

/// The per-sample temperatures (T_s, T_t), each (N, 1), and the (N, 1) mask of the samples that
/// fall back to τ.
pub fn temperatures(s: &Tensor, t: &Tensor, tau: f64) -> (Tensor, Tensor, Tensor) {
    // max_dim, not amax: the gradient goes to one largest logit, as torch's max(dim) in the
    // authors' code (amax would share it among ties).
    let (ms, _) = s.max_dim(1, true);
    let (mt, _) = t.max_dim(1, true);
    let ok = ms.gt(0.0).logical_and(&mt.gt(0.0));
    // Replacing both maxima by 1 where they are not positive makes those temperatures exactly τ
    // and keeps the division finite, so no NaN reaches the gradient through the unused branch.
    let one = Tensor::ones_like(&ms);
    let (ms, mt) = (ms.where_self(&ok, &one), mt.where_self(&ok, &one));
    let sum = &ms + &mt;
    ((2.0 * tau) * &ms / &sum, (2.0 * tau) * &mt / &sum, ok.logical_not())
}

impl Dtkd {
    /// The warm-up weight at a 1-based epoch.
    pub(crate) fn warmup_weight(&self, epoch: f64) -> f64 {
        if self.p.warmup <= 0.0 {
            1.0
        } else {
            (epoch / self.p.warmup).min(1.0)
        }
    }
}

impl Method for Dtkd {
    fn name(&self) -> &'static str {
        "dtkd"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let k = x.student.kind();
        let (ts, tt, fallback) = temperatures(x.student, x.teacher, self.p.tau);
        let log_pt = (x.teacher / &tt).log_softmax(1, k);
        let log_ps = (x.student / &ts).log_softmax(1, k);
        let dtkd = (kl_rows(&log_pt, &log_ps) * (&tt * &ts).squeeze_dim(1)).mean(k);
        let kd = self.p.tau
            * self.p.tau
            * kl_from_log(&log_softmax_t(x.teacher, self.p.tau), &log_softmax_t(x.student, self.p.tau));
        let w = self.warmup_weight(x.epoch);
        let stats = Tensor::stack(
            &[
                fallback.to_kind(Kind::Double).sum(Kind::Double),
                ts.detach().to_kind(Kind::Double).sum(Kind::Double),
                tt.detach().to_kind(Kind::Double).sum(Kind::Double),
            ],
            0,
        );
        let stats = Vec::<f64>::try_from(stats).unwrap_or_default();
        self.epoch[0] += x.student.size()[0] as f64;
        for (acc, v) in self.epoch[1..].iter_mut().zip(stats) {
            *acc += v;
        }
        vec![
            ("ce".into(), cross_entropy(x.student, x.labels)),
            ("dtkd".into(), w * self.p.alpha * dtkd),
            ("kd".into(), w * self.p.beta * kd),
        ]
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        let [n, fallback, ts, tt] = std::mem::take(&mut self.epoch);
        if n == 0.0 {
            return None;
        }
        Some(serde_json::json!({"dtkd": {
            "samples": n, "fallback": fallback / n, "tau_student_mean": ts / n, "tau_teacher_mean": tt / n,
        }}))
    }
    fn settled_epoch(&self) -> f64 {
        self.p.warmup
    }
}
