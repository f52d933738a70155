//! `sdd` (scale decoupled distillation; Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024):
//! KD on the logits of local regions of the pre-pooling map at several scales, besides the
//! global logits, with the regions whose teacher prediction disagrees with the global one
//! ("complementary" knowledge) weighted up.
//!
//! The logits of a region are the classifier applied to the region's average-pooled features;
//! the classifier being affine, they are the region's average of the `logit_map` tap (the
//! classifier at every position, `models::taps`), which is what the method reads of both networks.
//! Conventions from the authors' code (`shicaiwei123/SDD-CVPR2024`: `mdistiller/models/cifar/utils.py`
//! `SPP`, `mdistiller/distillers/KD.py` `sdd_kd_loss`, `SDD_KD`; read with the search tools):
//!
//! - the map is adaptive-average-pooled to 4 × 4 (the largest scale), and the 2 × 2 and 1 × 1
//!   maps are pooled from that 4 × 4 map (not from the full map; the same where H and W divide
//!   by 4). M = [1, 2, 4] (the README's CIFAR example) gives R = 1 + 4 + 16 = 21 regions, the
//!   1 × 1 one first: it is the "global" prediction. `max_scale = 2` is their M = [1, 2], 1 their [1].
//! - per region r and sample i: kl_ri = τ²·KL(softmax(t_ri/τ) ‖ softmax(s_ri/τ)).
//! - consistent or complementary is decided by the **teacher** alone: a region is complementary
//!   where the teacher's local prediction (argmax t_ri) is right and its global one (argmax t_0i)
//!   wrong, or the other way round; consistent where both are right or both wrong. The global
//!   region is consistent with itself. Complementary terms weigh 2 (`comp_weight`), consistent 1.
//! - kd = β·Σ_{r,i} w_ri·kl_ri / (R·N), a mean over every (region, sample); ce = α·CE(s, y) on the
//!   model's own logits. The base loss is KD at mdistiller's CIFAR setting: τ = 4, α = 0.1,
//!   β = 0.9. The authors' warm-up is commented out in SDD_KD, so there is none.
//!
//! A model whose classifier reads a flattened map (the plain CNN) or a vector (the MLP) has no
//! `logit_map` and is refused by name.
use super::common::{cross_entropy, kl_rows, log_softmax_t};
use super::{incompatible, positive, weight, LossInput, Method, MethodParams, TapNeeds};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

const TAP: &str = "logit_map";

/// sdd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The temperature τ.
    pub tau: f64,
    /// Weight of the cross-entropy term.
    pub alpha: f64,
    /// Weight of the multi-scale KD term.
    pub beta: f64,
    /// Weight of a complementary region's KL (a consistent one weighs 1).
    pub comp_weight: f64,
    /// The finest scale: regions of 1 × 1, 2 × 2, …, up to max_scale × max_scale (1, 2 or 4).
    pub max_scale: i64,
}

impl Default for Params {
    fn default() -> Self {
        Params { tau: 4.0, alpha: 0.1, beta: 0.9, comp_weight: 2.0, max_scale: 4 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("tau", self.tau)?;
        weight("alpha", self.alpha)?;
        weight("beta", self.beta)?;
        weight("comp_weight", self.comp_weight)?;
        if ![1, 2, 4].contains(&self.max_scale) {
            return incompatible(
                "max_scale of 1, 2 or 4 (the authors' M = [1], [1, 2], [1, 2, 4])",
                self.max_scale.to_string(),
            );
        }
        Ok(Box::new(Sdd { p: self }))
    }
}

pub struct Sdd {
    p: Params,
}

/// (N, C, H, W) logit map → (N·R, C) region logits, region-major (the R regions of sample i at
/// rows r·N + i), the global region first, then each scale's regions in row-major order.
pub fn region_logits(map: &Tensor, max_scale: i64) -> Tensor {
    let (n, c) = (map.size()[0], map.size()[1]);
    let finest = map.adaptive_avg_pool2d([max_scale, max_scale]);
    let mut scales = vec![];
    let mut s = 1;
    while s <= max_scale {
        let pooled = if s == max_scale { finest.shallow_clone() } else { finest.adaptive_avg_pool2d([s, s]) };
        // (N, C, s, s) → (s·s, N, C)
        scales.push(pooled.view([n, c, s * s]).permute([2, 0, 1]));
        s *= 2;
    }
    Tensor::cat(&scales, 0).reshape([-1, c])
}

impl Method for Sdd {
    fn name(&self) -> &'static str {
        "sdd"
    }
    fn taps(&self) -> TapNeeds {
        TapNeeds { student: vec![TAP.into()], teacher: vec![TAP.into()] }
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let ms = x.student_tap(TAP);
        let mt = x.teacher_tap(TAP).to_kind(ms.kind());
        let (s, t) = (region_logits(ms, self.p.max_scale), region_logits(&mt, self.p.max_scale));
        let tau = self.p.tau;
        let kl = kl_rows(&log_softmax_t(&t, tau), &log_softmax_t(&s, tau)) * (tau * tau);
        // The teacher's verdicts, without gradient: is each region's prediction right, and is
        // the global one (the first N rows) right for the same sample.
        let n = ms.size()[0];
        let regions = t.size()[0] / n;
        let labels = x.labels.repeat([regions]);
        let local = t.argmax(1, false).eq_tensor(&labels);
        let global = local.narrow(0, 0, n).repeat([regions]);
        let complementary = local.not_equal_tensor(&global).to_kind(kl.kind());
        let w = complementary * (self.p.comp_weight - 1.0) + 1.0;
        let kd = (&kl * w).mean(kl.kind());
        vec![("ce".into(), self.p.alpha * cross_entropy(x.student, x.labels)), ("kd".into(), self.p.beta * kd)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// On a 4 × 4 map the regions are the whole map's mean, the four 2 × 2 quadrants' means and the
    /// sixteen positions, in that order, region-major.
    #[test]
    fn regions_by_hand() {
        let v: Vec<f64> = (0..2 * 16).map(f64::from).collect();
        // N = 2 samples, C = 1 class, 4 × 4.
        let map = Tensor::from_slice(&v).view([2, 1, 4, 4]);
        let r = Vec::<f64>::try_from(region_logits(&map, 4).view(-1)).unwrap();
        assert_eq!(r.len(), 2 * 21);
        assert_eq!(&r[..2], &[7.5, 23.5]);
        // Sample 0's quadrants: top-left (0, 1, 4, 5) → 2.5, top-right 4.5, bottom-left 10.5, 12.5.
        let quads: Vec<f64> = (0..4).map(|q| r[2 + 2 * q]).collect();
        assert_eq!(quads, [2.5, 4.5, 10.5, 12.5]);
        let cells: Vec<f64> = (0..16).map(|k| r[10 + 2 * k + 1]).collect();
        assert_eq!(cells, (16..32).map(f64::from).collect::<Vec<_>>());
        assert_eq!(region_logits(&map, 1).size(), [2, 1]);
        assert_eq!(region_logits(&map, 2).size(), [10, 1]);
    }

    /// Where every region of the teacher agrees with its global prediction, SDD is KD averaged over
    /// the regions; a teacher whose regions disagree doubles those regions' share.
    #[test]
    fn complementary_regions_weigh_twice() {
        let kd_of = |ms: &Tensor, mt: &Tensor, y: &[i64], comp: f64| {
            let mut m = Params { comp_weight: comp, max_scale: 2, ..Default::default() }.build().unwrap();
            let (mut ts, mut tt) = (crate::models::Taps::only(&[TAP]), crate::models::Taps::only(&[TAP]));
            ts.put(TAP, ms);
            tt.put(TAP, mt);
            let logits = Tensor::zeros([ms.size()[0], ms.size()[1]], (Kind::Double, tch::Device::Cpu));
            let y = Tensor::from_slice(y);
            let mut x = LossInput::logits(&logits, &logits, &y, 1.0);
            x.student_taps = Some(&ts);
            x.teacher_taps = Some(&tt);
            m.terms(&x)[1].1.double_value(&[])
        };
        // One sample, 2 classes, a 2 × 2 map: the teacher favours class 0 everywhere but at one
        // position, where it favours class 1 strongly enough to stay below the global mean.
        let mt = Tensor::from_slice(&[3.0f64, 3.0, 3.0, -1.0, 0.0, 0.0, 0.0, 2.0]).view([1, 2, 2, 2]);
        let ms = Tensor::zeros([1, 2, 2, 2], (Kind::Double, tch::Device::Cpu));
        // Global: class 0 (2 vs 0.5). Position (1, 1): class 1 (2 vs −1). y = 0: 1 region of 5
        // is complementary, and its KL counts twice with comp_weight = 2.
        let (one, two) = (kd_of(&ms, &mt, &[0], 1.0), kd_of(&ms, &mt, &[0], 2.0));
        let kl = |a: f64, b: f64| {
            // τ = 4: the teacher's softmax of (a, b)/4 against the student's uniform (1/2, 1/2).
            let (pa, pb) = (1.0 / (1.0 + ((b - a) / 4.0).exp()), 1.0 / (1.0 + ((a - b) / 4.0).exp()));
            16.0 * (pa * (2.0 * pa).ln() + pb * (2.0 * pb).ln())
        };
        let regions = [kl(2.0, 0.5), kl(3.0, 0.0), kl(3.0, 0.0), kl(3.0, 0.0), kl(-1.0, 2.0)];
        let want_one = 0.9 * regions.iter().sum::<f64>() / 5.0;
        let want_two = want_one + 0.9 * regions[4] / 5.0;
        assert!((one - want_one).abs() < 1e-12, "{one} vs {want_one}");
        assert!((two - want_two).abs() < 1e-12, "{two} vs {want_two}");
        // With y = 1 the teacher's global prediction is wrong and the same region right: still
        // complementary; the other three regions are consistent (both wrong).
        assert!((kd_of(&ms, &mt, &[1], 2.0) - want_two).abs() < 1e-12);
    }
}
