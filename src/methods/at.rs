//! `at` (attention transfer; Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving
//! the Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017): the
//! student matches the teacher's spatial attention maps stage by stage.
//! ce = α·CE(s, y); feat = β·Σ_k mean_{i,j} (Q_s,k,i,j − Q_t,k,i,j)², where the attention map of
//! a stage's output f (C × H × W) is a(f) = mean_c |f_c|^p over the channels, flattened to H·W
//! positions, and Q = a / max(‖a‖₂, 10⁻¹²) per sample (F.normalize).
//!
//! Conventions and defaults are mdistiller's (`mdistiller/distillers/AT.py`, read with the search
//! tools): p = 2, β = 1000 (`FEAT_WEIGHT`), α = 1; the stages are mdistiller's `feats[1:]`, the
//! output of each stage (kdlab's `stage1` … `stageK`); the loss is the **sum** over stages of each
//! stage's mean over samples and positions. Where the two maps differ in size, the larger is
//! average-pooled to the smaller's (adaptive average pooling; mdistiller pools to a square of
//! the smaller height, kdlab to the smaller height and the smaller width, the same on square maps).
//! The channel counts need not agree: the map is a mean over channels.
//!
//! **Which stages.** mdistiller zips the student's and the teacher's stage lists, so it pairs
//! stages from the first and drops the deepest stages of the network with more. kdlab pairs the
//! same way with the count explicit: `stages = K` reads `stage1` … `stageK` of both networks
//! (default 3, a CIFAR ResNet's, WRN's or VGG's count; the plain CNN has 2, an ImageNet ResNet 4).
//! A network with fewer than K stages is refused before training with the tap it lacks named;
//! set `stages` to the smaller of the two counts.
use super::common::cross_entropy;
use super::{incompatible, positive, weight, LossInput, Method, MethodParams, TapNeeds};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// at's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// The exponent p of the attention map mean_c |f_c|^p.
    pub power: f64,
    /// How many stages are compared: stage1 … stageK of both networks.
    pub stages: i64,
    /// Weight of the cross-entropy term.
    pub ce_weight: f64,
    /// Weight of the attention (feature) term.
    pub feat_weight: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { power: 2.0, stages: 3, ce_weight: 1.0, feat_weight: 1000.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        positive("power", self.power)?;
        if self.stages < 1 {
            return incompatible("stages ≥ 1 (stage1 … stageK of both networks)", self.stages.to_string());
        }
        weight("ce_weight", self.ce_weight)?;
        weight("feat_weight", self.feat_weight)?;
        Ok(Box::new(At { p: self }))
    }
}

pub struct At {
    p: Params,
}

impl At {
    fn tap_names(&self) -> Vec<String> {
        (1..=self.p.stages).map(|k| format!("stage{k}")).collect()
    }
}

/// The normalised attention map of (N, C, H, W) features: (N, H·W).
pub fn attention(f: &Tensor, p: f64) -> Tensor {
    let a = f.abs().pow_tensor_scalar(p).mean_dim(1, false, f.kind()).flatten(1, -1);
    let norm = a.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    a / norm
}

/// One stage's term: the larger map average-pooled to the smaller's size, then the mean squared
/// difference of the attention maps over samples and positions.
pub fn stage_loss(fs: &Tensor, ft: &Tensor, p: f64) -> Tensor {
    let (ss, st) = (fs.size(), ft.size());
    let (h, w) = (ss[2].min(st[2]), ss[3].min(st[3]));
    let pool =
        |f: &Tensor, s: &[i64]| if s[2] == h && s[3] == w { f.shallow_clone() } else { f.adaptive_avg_pool2d([h, w]) };
    let (fs, ft) = (pool(fs, &ss), pool(ft, &st));
    (attention(&fs, p) - attention(&ft, p)).square().mean(fs.kind())
}

impl Method for At {
    fn name(&self) -> &'static str {
        "at"
    }
    fn taps(&self) -> TapNeeds {
        TapNeeds { student: self.tap_names(), teacher: self.tap_names() }
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let feat = self
            .tap_names()
            .iter()
            .map(|name| {
                let fs = x.student_tap(name);
                stage_loss(fs, &x.teacher_tap(name).to_kind(fs.kind()), self.p.power)
            })
            .reduce(|a, b| a + b)
            .expect("stages ≥ 1");
        vec![
            ("ce".into(), self.p.ce_weight * cross_entropy(x.student, x.labels)),
            ("feat".into(), self.p.feat_weight * feat),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// One sample, one channel, 2×2 maps: a = f², normalised; by hand.
    #[test]
    fn one_stage_by_hand() {
        let fs = Tensor::from_slice(&[1.0f64, -2.0, 0.0, 2.0]).view([1, 1, 2, 2]);
        let ft = Tensor::from_slice(&[3.0f64, 0.0, 0.0, 4.0]).view([1, 1, 2, 2]);
        // a_s = [1, 4, 0, 4] / √33; a_t = [9, 0, 0, 16] / √337.
        let qs = [1.0, 4.0, 0.0, 4.0].map(|v: f64| v / 33f64.sqrt());
        let qt = [9.0, 0.0, 0.0, 16.0].map(|v: f64| v / 337f64.sqrt());
        let want: f64 = qs.iter().zip(&qt).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / 4.0;
        let got = stage_loss(&fs, &ft, 2.0).double_value(&[]);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        // A 4×4 student map against the 2×2 teacher map: pooled 2×2 first (each block's mean).
        let big =
            Tensor::from_slice(&[1.0f64, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0])
                .view([1, 1, 4, 4]);
        let small = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).view([1, 1, 2, 2]);
        assert!(stage_loss(&big, &small, 2.0).double_value(&[]).abs() < 1e-15);
        assert!(stage_loss(&small, &big, 2.0).double_value(&[]).abs() < 1e-15);
    }

    /// A zero map has a zero attention and a finite gradient (the norm is floored, not divided by).
    #[test]
    fn a_dead_stage_has_a_finite_gradient() {
        let fs = Tensor::zeros([2, 3, 4, 4], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let ft = Tensor::ones([2, 5, 4, 4], (Kind::Double, tch::Device::Cpu));
        let l = stage_loss(&fs, &ft, 2.0);
        l.backward();
        assert!((l.double_value(&[]) - 1.0 / 16.0).abs() < 1e-15, "{}", l.double_value(&[]));
        let g = Vec::<f64>::try_from(fs.grad().flatten(0, -1)).unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn taps_follow_the_stage_count() {
        let m = Params { stages: 2, ..Default::default() }.build().unwrap();
        assert_eq!(m.taps().student, ["stage1", "stage2"]);
        assert_eq!(m.taps().teacher, ["stage1", "stage2"]);
        assert!(Params { stages: 0, ..Default::default() }.build().is_err());
    }
}
