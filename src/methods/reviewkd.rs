//! `reviewkd` (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021): the
//! student's stages, fused from the deepest to the shallowest by attention-based fusion (ABF)
//! modules, each regress the teacher's stage at the same depth, compared at several pooled scales
//! by the hierarchical context loss (HCL).
//! ce = α·CE(s, y); feat = w·β·Σ_levels HCL(ABF output, teacher feature), w = min(epoch/warmup, 1).
//!
//! Conventions and defaults from mdistiller's `mdistiller/distillers/ReviewKD.py` and its config
//! (read with the search tools):
//!
//! - levels, from the deepest: the embedding as a 1 × 1 map, then stageK … stage1 of the student
//!   (post-activation, mdistiller's `STU_PREACT = False`) against the teacher's embedding and
//!   stageK_preact … stage1_preact (its `preact_feats[1:]`). Only CIFAR ResNets have `_preact`
//!   taps; `teacher_preact = false` reads the teacher's post-activation stages instead.
//! - ABF of a level: x = BN(conv1×1(f)) to `mid` = min(512, the student embedding's width)
//!   channels; at every level but the deepest, the previous (deeper) level's x is resized to this
//!   level's size (nearest), and x = x·a₀ + x_deep·a₁ with (a₀, a₁) = sigmoid(conv1×1([x, x_deep]));
//!   x is resized (nearest) to the teacher's size at this level and passed on; the level's output
//!   is BN(conv3×3(x)) with the teacher's channel count.
//! - HCL of a level (n, c, h, w): (MSE + Σ_{l ∈ 4, 2, 1; l < h} 2^−k·MSE of both maps average-pooled
//!   to l × l, k = 1, 2, …) / (1 + Σ 2^−k): each MSE a mean over every element.
//! - α = 1, β = 5 (mdistiller's CIFAR-100 config), warmup = 20 epochs; the convolutions of ABF
//!   start Kaiming-uniform with a = 1, as theirs.
//!
//! The ABF modules and their BatchNorm statistics live in the method's variables: trained with the
//! student, checkpointed, restored on resume.
use super::common::cross_entropy;
use super::{incompatible, weight, LossInput, Method, MethodParams, Setup, TapNeeds};
use crate::models::layers::bn2d;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::Tensor;

/// reviewkd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// How many stages are reviewed: stage1 … stageK of both networks (plus the embedding).
    pub stages: i64,
    /// Read the teacher's stages before their last activation (`stageK_preact`), as the authors.
    pub teacher_preact: bool,
    /// Weight of the cross-entropy term.
    pub ce_weight: f64,
    /// Weight of the review (HCL) term.
    pub feat_weight: f64,
    /// Epochs over which the review term's weight rises linearly to its full value.
    pub warmup: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { stages: 3, teacher_preact: true, ce_weight: 1.0, feat_weight: 5.0, warmup: 20.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        if self.stages < 1 {
            return incompatible("stages ≥ 1 (stage1 … stageK of both networks)", self.stages.to_string());
        }
        weight("ce_weight", self.ce_weight)?;
        weight("feat_weight", self.feat_weight)?;
        weight("warmup", self.warmup)?;
        Ok(Box::new(ReviewKd { p: self, levels: vec![] }))
    }
}

pub struct ReviewKd {
    p: Params,
    /// From the deepest (the embedding) to stage1.
    levels: Vec<Abf>,
}

/// One attention-based fusion module.
#[derive(Debug)]
struct Abf {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    att: Option<nn::Conv2D>,
    /// The teacher's (h, w) at this level.
    out: (i64, i64),
}

/// Kaiming-uniform with a = 1: U(−√(3/fan_in), √(3/fan_in)), as the authors' ABF convolutions.
fn conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    let bound = (3.0 / (cin * k * k) as f64).sqrt();
    let cfg = nn::ConvConfig {
        padding: k / 2,
        bias: false,
        ws_init: Init::Uniform { lo: -bound, up: bound },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

impl Abf {
    fn new(p: nn::Path, cin: i64, mid: i64, cout: i64, fuse: bool, out: (i64, i64)) -> Abf {
        Abf {
            conv1: conv(&p / "conv1", cin, mid, 1),
            bn1: bn2d(&p / "bn1", mid),
            conv2: conv(&p / "conv2", mid, cout, 3),
            bn2: bn2d(&p / "bn2", cout),
            // PyTorch's default initialisation of a convolution with a bias, as the authors'.
            att: fuse.then(|| nn::conv2d(&p / "att", 2 * mid, 2, 1, Default::default())),
            out,
        }
    }

    /// (output, x passed to the next, shallower level).
    fn forward(&self, f: &Tensor, deeper: Option<&Tensor>, train: bool) -> (Tensor, Tensor) {
        let size = f.size();
        let (n, h, w) = (size[0], size[2], size[3]);
        let mut x = f.apply(&self.conv1).apply_t(&self.bn1, train);
        if let (Some(att), Some(y)) = (&self.att, deeper) {
            let y = resize(y, (h, w));
            let z = Tensor::cat(&[&x, &y], 1).apply(att).sigmoid();
            x = &x * z.narrow(1, 0, 1).view([n, 1, h, w]) + y * z.narrow(1, 1, 1).view([n, 1, h, w]);
        }
        let x = resize(&x, self.out);
        (x.apply(&self.conv2).apply_t(&self.bn2, train), x)
    }
}

/// Nearest-neighbour resizing (F.interpolate's default mode); the map itself where the size agrees.
fn resize(x: &Tensor, (h, w): (i64, i64)) -> Tensor {
    let s = x.size();
    if s[2] == h && s[3] == w {
        x.shallow_clone()
    } else {
        x.upsample_nearest2d([h, w], None, None)
    }
}

/// The hierarchical context loss of one level.
pub fn hcl(fs: &Tensor, ft: &Tensor) -> Tensor {
    let h = fs.size()[2];
    let mse = |a: &Tensor, b: &Tensor| (a - b).square().mean(a.kind());
    let mut loss = mse(fs, ft);
    let (mut cnt, mut tot) = (1.0, 1.0);
    for l in [4, 2, 1] {
        if l >= h {
            continue;
        }
        cnt /= 2.0;
        loss += mse(&fs.adaptive_avg_pool2d([l, l]), &ft.adaptive_avg_pool2d([l, l])) * cnt;
        tot += cnt;
    }
    loss / tot
}

impl ReviewKd {
    fn student_taps(&self) -> Vec<String> {
        let mut t: Vec<String> = vec!["embedding".into()];
        t.extend((1..=self.p.stages).rev().map(|k| format!("stage{k}")));
        t
    }
    fn teacher_taps(&self) -> Vec<String> {
        let suffix = if self.p.teacher_preact { "_preact" } else { "" };
        let mut t: Vec<String> = vec!["embedding".into()];
        t.extend((1..=self.p.stages).rev().map(|k| format!("stage{k}{suffix}")));
        t
    }
}

/// A tap as a map: a vector (the embedding) is a 1 × 1 map.
fn as_map(t: &Tensor) -> Tensor {
    match t.dim() {
        2 => t.unsqueeze(-1).unsqueeze(-1),
        _ => t.shallow_clone(),
    }
}

fn map_shape(s: &[i64]) -> Option<(i64, i64, i64)> {
    match s {
        [c] => Some((*c, 1, 1)),
        [c, h, w] => Some((*c, *h, *w)),
        _ => None,
    }
}

impl Method for ReviewKd {
    fn name(&self) -> &'static str {
        "reviewkd"
    }
    fn taps(&self) -> TapNeeds {
        TapNeeds { student: self.student_taps(), teacher: self.teacher_taps() }
    }
    fn setup(&mut self, s: &Setup) -> Result<()> {
        let shapes = |names: Vec<String>, of: &dyn Fn(&str) -> Vec<i64>, whose: &str| -> Result<Vec<(i64, i64, i64)>> {
            names
                .iter()
                .map(|n| {
                    let shape = of(n);
                    map_shape(&shape).ok_or_else(|| {
                        anyhow::anyhow!(
                            "ReviewKD reads (C, H, W) maps and vectors; the {whose}'s tap {n} has shape {shape:?}"
                        )
                    })
                })
                .collect()
        };
        let st = shapes(self.student_taps(), &|n| s.student_shape(n).to_vec(), "student")?;
        let te = shapes(self.teacher_taps(), &|n| s.teacher_shape(n).to_vec(), "teacher")?;
        let mid = st[0].0.min(512);
        if st.iter().zip(&te).any(|(a, b)| a.1 == 0 || b.1 == 0) {
            bail!("ReviewKD: an empty map among the taps {st:?} {te:?}");
        }
        self.levels = st
            .iter()
            .zip(&te)
            .enumerate()
            .map(|(i, (a, b))| Abf::new(&s.vars / format!("abf{i}"), a.0, mid, b.0, i > 0, (b.1, b.2)))
            .collect();
        Ok(())
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        assert!(!self.levels.is_empty(), "the trainer calls setup before the first step");
        let mut deeper: Option<Tensor> = None;
        let mut review: Option<Tensor> = None;
        for ((abf, sn), tn) in self.levels.iter().zip(self.student_taps()).zip(self.teacher_taps()) {
            let fs = as_map(x.student_tap(&sn));
            let (out, pass) = abf.forward(&fs, deeper.as_ref(), true);
            let ft = as_map(x.teacher_tap(&tn)).to_kind(out.kind());
            let l = hcl(&out, &ft);
            review = Some(match review {
                Some(r) => r + l,
                None => l,
            });
            deeper = Some(pass);
        }
        let w = if self.p.warmup > 0.0 { (x.epoch / self.p.warmup).min(1.0) } else { 1.0 };
        vec![
            ("ce".into(), self.p.ce_weight * cross_entropy(x.student, x.labels)),
            ("feat".into(), w * self.p.feat_weight * review.expect("at least one level")),
        ]
    }
    fn settled_epoch(&self) -> f64 {
        self.p.warmup.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HCL on a 4 × 4 map: the MSE, plus the 2 × 2 and 1 × 1 pooled MSEs at 1/2 and 1/4, over 7/4
    /// (the 4 × 4 pooling is skipped: l ≥ h).
    #[test]
    fn hcl_by_hand() {
        let a = Tensor::from_slice(&[1.0f64; 16]).view([1, 1, 4, 4]);
        let mut v = [0.0f64; 16];
        v[0] = 4.0;
        let b = Tensor::from_slice(&v).view([1, 1, 4, 4]);
        // Elementwise: 15 ones and one 3² → 24/16. 2 × 2: b's quadrant means [1, 0, 0, 0] against 1:
        // 3/4. 1 × 1: 0.25 against 1: 0.5625.
        let want = (24.0 / 16.0 + 0.5 * 0.75 + 0.25 * 0.5625) / 1.75;
        let got = hcl(&a, &b).double_value(&[]);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        // A 1 × 1 level is the plain MSE.
        let (c, d) = (
            Tensor::from_slice(&[1.0f64, 2.0]).view([1, 2, 1, 1]),
            Tensor::from_slice(&[0.0f64, 0.0]).view([1, 2, 1, 1]),
        );
        assert!((hcl(&c, &d).double_value(&[]) - 2.5).abs() < 1e-15);
    }

    #[test]
    fn taps_and_levels() {
        let m = Params { stages: 2, ..Default::default() }.build().unwrap();
        assert_eq!(m.taps().student, ["embedding", "stage2", "stage1"]);
        assert_eq!(m.taps().teacher, ["embedding", "stage2_preact", "stage1_preact"]);
        let m = Params { stages: 1, teacher_preact: false, ..Default::default() }.build().unwrap();
        assert_eq!(m.taps().teacher, ["embedding", "stage1"]);
    }
}
