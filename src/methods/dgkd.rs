//! `dgkd`: densely guided KD (Son, Na, Choi & Han, "Densely Guided Knowledge Distillation using
//! Multiple Teacher Assistants", ICCV 2021). A chain of assistants of decreasing size, largest
//! first, each taught densely: the first by the teacher, each later one by the teacher and every
//! assistant above it, the student by all of them (`train::takd` builds the chain). Each guide g
//! (the teacher, then the assistants) gives a KD term, and the terms are summed:
//!
//!   ce = α·CE(s, y);  kd = β·τ²·Σ_g b_g·KL(p(z_g/τ) ‖ p(s/τ))
//!
//! with b_g ∈ {0, 1} the stochastic teaching ("stochastic DGKD"): at every step `drop` guides,
//! chosen uniformly without replacement among all of them, the teacher included, are left out of
//! the sum, the same ones for every sample of the batch. The draw comes from the step's seed
//! (`LossInput::draw_seed`), so a seed gives the same masks and a resumed run draws what the
//! uninterrupted one drew; `kdlab loss --keep` gives the mask instead.
//!
//! Conventions and where they come from:
//! - dense teaching and stochastic teaching "for each mini-batch, a teacher or teacher assistants
//!   are randomly dropped" (per step, not per sample; the teacher may be dropped): the paper;
//! - the loss's form, (1 − λ)·L_CE + λ·τ²·Σ KL summed over the guides (not averaged): the
//!   authors' `train.py` (github.com/wonchulSon/DGKD), TAKD's KD loss extended to every guide;
//!   α = 1 − λ and β = λ in kdlab's naming (kd's α and β);
//! - τ = 5, λ = 1 (so α = 0, β = 1) and one guide dropped per mini-batch (`drop = 1`): the
//!   authors' `train.py` defaults (`--T 5`, `--lamb 1`, `--drop-num 1`), which remove one guide
//!   at random per step with `random.choice` over the teacher and the assistants alike. With
//!   λ = 1 the labels do not enter the loss (ce = 0): give `alpha` (and `beta`) to use them;
//! - the KL is averaged over the batch (the paper's KL divergence, as kd's). The authors' code
//!   calls `nn.KLDivLoss()` with PyTorch's default reduction, which also divides by the number of
//!   classes; kdlab keeps the mathematical KL, as for every other method;
//! - at least one guide is always kept (drop at most n − 1 of n guides): with the teacher alone
//!   (the first assistant's link) no guide is dropped, and DGKD is KD with (α, β, τ), as the paper
//!   trains its first assistant; the authors' code would drop the teacher there and leave no
//!   distillation at all.
use super::common::{cross_entropy, kl_from_log, log_softmax_t};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// dgkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The temperature τ of every guide and of the student.
    pub tau: f64,
    /// Weight of the cross-entropy term (1 − λ in the paper).
    pub alpha: f64,
    /// Weight of the summed KD terms (λ in the paper).
    pub beta: f64,
    /// Guides left out of the sum at each step (a whole number; at most all but one are dropped).
    pub drop: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 5.0, alpha: 0.0, beta: 1.0, drop: 1.0 }
    }
}

impl MethodParams for Params {
    const GUIDED: bool = true;

    fn build(self) -> Result<Box<dyn Method>> {
        let drop = weight("drop", self.drop)?;
        if drop.fract() != 0.0 {
            bail!("drop must be a whole number of guides, got {drop}");
        }
        Ok(Box::new(Dgkd {
            tau: positive("tau", self.tau)?,
            alpha: weight("alpha", self.alpha)?,
            beta: weight("beta", self.beta)?,
            drop: drop as usize,
        }))
    }
}

pub(crate) struct Dgkd {
    pub tau: f64,
    pub alpha: f64,
    pub beta: f64,
    pub drop: usize,
}

/// Mixed with a step's draw seed, so the mask's numbers are DGKD's own.
const KEEP_STREAM: u64 = 0xD6_4D;

/// Which of `n` guides (the teacher first, then the assistants) a step keeps: all but
/// min(`drop`, n − 1) of them, the dropped ones drawn uniformly without replacement from `seed`.
pub fn keep_mask(seed: u64, n: usize, drop: usize) -> Vec<bool> {
    let mut keep = vec![true; n];
    let mut rng = crate::util::rng::Rng::new(crate::util::rng::mix(&[seed, KEEP_STREAM]));
    let mut order: Vec<usize> = (0..n).collect();
    // A partial Fisher–Yates shuffle: the first `k` of `order` are the dropped guides.
    for i in 0..drop.min(n.saturating_sub(1)) {
        let j = i + rng.below((n - i) as u64) as usize;
        order.swap(i, j);
        keep[order[i]] = false;
    }
    keep
}

impl Method for Dgkd {
    fn name(&self) -> &'static str {
        "dgkd"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let assistants = x.guides.unwrap_or(&[]);
        let guides: Vec<&Tensor> = std::iter::once(x.teacher).chain(assistants.iter()).collect();
        let drawn;
        let keep = match x.keep {
            Some(k) => {
                assert_eq!(
                    k.len(),
                    guides.len(),
                    "a keep mask has one entry per guide (the teacher, then the assistants)"
                );
                k
            }
            None => {
                drawn = keep_mask(x.draw_seed, guides.len(), self.drop);
                &drawn
            }
        };
        let log_s = log_softmax_t(x.student, self.tau);
        let mut kd = Tensor::zeros([], (x.student.kind(), x.student.device()));
        for (g, _) in guides.iter().zip(keep).filter(|(_, &k)| k) {
            kd += kl_from_log(&log_softmax_t(g, self.tau), &log_s);
        }
        vec![
            ("ce".into(), self.alpha * cross_entropy(x.student, x.labels)),
            ("kd".into(), self.beta * self.tau * self.tau * kd),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_keep_masks_and_one_guide_is_always_kept() {
        for seed in 0..200u64 {
            let m = keep_mask(seed, 3, 1);
            assert_eq!(m, keep_mask(seed, 3, 1));
            assert_eq!(m.iter().filter(|&&k| !k).count(), 1, "{m:?}");
            assert_eq!(keep_mask(seed, 1, 1), [true], "the teacher alone is never dropped");
            assert_eq!(keep_mask(seed, 3, 5).iter().filter(|&&k| k).count(), 1);
            assert_eq!(keep_mask(seed, 4, 0), [true; 4]);
        }
        // Every guide, the teacher included, is dropped at some step, about as often as the others.
        let mut dropped = [0; 3];
        for seed in 0..3000u64 {
            for (i, k) in keep_mask(seed, 3, 1).iter().enumerate() {
                dropped[i] += usize::from(!k);
            }
        }
        assert!(dropped.iter().all(|&d| (900..1100).contains(&d)), "{dropped:?}");
        assert_ne!((0..20).map(|s| keep_mask(s, 3, 1)).collect::<Vec<_>>(), vec![keep_mask(0, 3, 1); 20]);
    }

    #[test]
    fn with_the_teacher_alone_it_is_kd() {
        let s = Tensor::from_slice(&[0.3f64, -1.0, 2.0, 0.5, 0.1, -0.2]).view([2, 3]);
        let t = Tensor::from_slice(&[1.0f64, 0.0, -1.0, 0.2, 2.0, 0.4]).view([2, 3]);
        let y = Tensor::from_slice(&[2i64, 1]);
        let x = LossInput::logits(&s, &t, &y, 1.0);
        let mut d = Params { alpha: 0.3, beta: 0.7, tau: 4.0, drop: 1.0 }.build().unwrap();
        let mut kd =
            super::super::kd::Params { alpha: 0.3, beta: 0.7, tau: 4.0, ..Default::default() }.build().unwrap();
        for ((n1, a), (n2, b)) in d.terms(&x).iter().zip(kd.terms(&x).iter()) {
            assert_eq!(n1, n2);
            assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-12, "{n1}");
        }
    }
}
