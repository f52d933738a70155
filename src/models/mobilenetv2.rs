//! MobileNetV2 (Sandler et al. 2018) adapted to small images as in the CRD / mdistiller zoo: the
//! stem and the second stage keep full resolution (stride 1), so a 32×32 input ends at 4×4.
//! `width` scales every layer's channels (0.5 gives the light student of the KD literature).
use super::layers::{bn2d, conv2d, conv2d_grouped, linear};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// (expansion t, output channels c, repeats n, first stride s) per stage.
const STAGES: [(i64, i64, usize, i64); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Rounds channels to a multiple of 8 without losing more than 10% (as torchvision does).
fn make_divisible(v: f64) -> i64 {
    let d = 8.0;
    let new = ((v + d / 2.0) / d).floor().max(1.0) * d;
    (if new < 0.9 * v { new + d } else { new }) as i64
}

#[derive(Debug)]
struct InvertedResidual {
    expand: Option<(nn::Conv2D, nn::BatchNorm)>,
    depthwise: (nn::Conv2D, nn::BatchNorm),
    project: (nn::Conv2D, nn::BatchNorm),
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64, t: i64) -> Self {
        let hidden = cin * t;
        InvertedResidual {
            expand: (t != 1)
                .then(|| (conv2d(&p / "expand", cin, hidden, 1, 1, 0, false), bn2d(&p / "expand_bn", hidden))),
            depthwise: (conv2d_grouped(&p / "dw", hidden, hidden, 3, stride, hidden), bn2d(&p / "dw_bn", hidden)),
            project: (conv2d(&p / "project", hidden, cout, 1, 1, 0, false), bn2d(&p / "project_bn", cout)),
            residual: stride == 1 && cin == cout,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        if let Some((conv, bn)) = &self.expand {
            h = h.apply(conv).apply_t(bn, train).relu6();
        }
        h = h.apply(&self.depthwise.0).apply_t(&self.depthwise.1, train).relu6();
        h = h.apply(&self.project.0).apply_t(&self.project.1, train); // linear bottleneck
        if self.residual {
            h + x
        } else {
            h
        }
    }
}

#[derive(Debug)]
pub struct MobileNetV2 {
    stem: (nn::Conv2D, nn::BatchNorm),
    blocks: Vec<InvertedResidual>,
    head: (nn::Conv2D, nn::BatchNorm),
    fc: nn::Linear,
}

impl MobileNetV2 {
    pub fn new(p: &nn::Path, width: f64, cin: i64, classes: i64) -> Self {
        let stem_c = make_divisible(32.0 * width);
        let last = if width > 1.0 { make_divisible(1280.0 * width) } else { 1280 };
        let mut blocks = vec![];
        let mut c = stem_c;
        for (s, &(t, out, n, stride)) in STAGES.iter().enumerate() {
            let out = make_divisible(out as f64 * width);
            for j in 0..n {
                blocks.push(InvertedResidual::new(
                    p / format!("stage{}", s + 1) / j,
                    c,
                    out,
                    if j == 0 { stride } else { 1 },
                    t,
                ));
                c = out;
            }
        }
        MobileNetV2 {
            stem: (conv2d(p / "stem", cin, stem_c, 3, 1, 1, false), bn2d(p / "stem_bn", stem_c)),
            blocks,
            head: (conv2d(p / "head", c, last, 1, 1, 0, false), bn2d(p / "head_bn", last)),
            fc: linear(p / "fc", last, classes),
        }
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.stem.0).apply_t(&self.stem.1, train).relu6();
        for b in &self.blocks {
            h = b.forward_t(&h, train);
        }
        h = h.apply(&self.head.0).apply_t(&self.head.1, train).relu6();
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}
