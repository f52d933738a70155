//! MobileNetV2 (Sandler et al. 2018) as RepDistiller and mdistiller define it for CIFAR (from
//! "Knowledge Distillation via Route Constrained Optimization"): a 3×3 stride-2 stem, seven stages
//! of inverted residuals — the second at stride 1, so a 32×32 input ends at 2×2 — a 1×1 head to
//! 1280 channels, global average pooling and a linear classifier. Unlike torchvision's, every
//! activation is ReLU (not ReLU6), every block has its 1×1 expansion (also at expansion 1), and
//! `width` scales channels as ⌊c·width⌋ with no rounding to multiples of 8 (0.5 gives the light
//! KD student, RepDistiller's `mobile_half`). Parameter names are RepDistiller's (`conv1.0`,
//! `blocks.S.J.conv.K`, `conv2.0`, `classifier.0`), so its checkpoints load with no renaming.
use super::layers::{bn2d, conv2d, conv2d_grouped, linear};
use super::taps::{pool_head, run_stages, Network, Taps};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// (expansion t, output channels c, repeats n, first stride s) per stage.
const STAGES: [(i64, i64, usize, i64); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// ⌊channels · width⌋ as RepDistiller's `int(c * width_mult)`, at least 1.
fn scaled(channels: i64, width: f64) -> i64 {
    ((channels as f64 * width) as i64).max(1)
}

/// 1×1 expansion, 3×3 depthwise (strided), 1×1 linear projection, each with BatchNorm (RepDistiller's
/// `conv.0/1`, `conv.3/4`, `conv.6/7`); the input is added back where the shape is kept.
#[derive(Debug)]
struct InvertedResidual {
    expand: (nn::Conv2D, nn::BatchNorm),
    depthwise: (nn::Conv2D, nn::BatchNorm),
    project: (nn::Conv2D, nn::BatchNorm),
    residual: bool,
}

impl InvertedResidual {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64, t: i64) -> Self {
        let hidden = cin * t;
        let q = &p / "conv";
        InvertedResidual {
            expand: (conv2d(&q / 0, cin, hidden, 1, 1, 0, false), bn2d(&q / 1, hidden)),
            depthwise: (conv2d_grouped(&q / 3, hidden, hidden, 3, stride, hidden), bn2d(&q / 4, hidden)),
            project: (conv2d(&q / 6, hidden, cout, 1, 1, 0, false), bn2d(&q / 7, cout)),
            residual: stride == 1 && cin == cout,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.expand.0).apply_t(&self.expand.1, train).relu();
        let h = h.apply(&self.depthwise.0).apply_t(&self.depthwise.1, train).relu();
        let h = h.apply(&self.project.0).apply_t(&self.project.1, train); // linear bottleneck
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
    /// Each stage's (bottleneck group's) end in `blocks` (exclusive).
    stage_ends: Vec<usize>,
    head: (nn::Conv2D, nn::BatchNorm),
    fc: nn::Linear,
}

impl MobileNetV2 {
    pub fn new(p: &nn::Path, width: f64, cin: i64, classes: i64) -> Self {
        let stem_c = scaled(32, width);
        let last = if width > 1.0 { scaled(1280, width) } else { 1280 };
        let mut blocks = vec![];
        let mut stage_ends = vec![];
        let mut c = stem_c;
        for (s, &(t, out, n, stride)) in STAGES.iter().enumerate() {
            let out = scaled(out, width);
            for j in 0..n {
                let block_stride = if j == 0 { stride } else { 1 };
                blocks.push(InvertedResidual::new(p / "blocks" / s / j, c, out, block_stride, t));
                c = out;
            }
            stage_ends.push(blocks.len());
        }
        MobileNetV2 {
            stem: (conv2d(p / "conv1" / 0, cin, stem_c, 3, 2, 1, false), bn2d(p / "conv1" / 1, stem_c)),
            blocks,
            stage_ends,
            head: (conv2d(p / "conv2" / 0, c, last, 1, 1, 0, false), bn2d(p / "conv2" / 1, last)),
            fc: linear(p / "classifier" / 0, last, classes),
        }
    }
}

impl Network for MobileNetV2 {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let h = x.apply(&self.stem.0).apply_t(&self.stem.1, train).relu();
        taps.put("stem", &h);
        let h = run_stages(h, &self.blocks, &self.stage_ends, train, taps);
        // RepDistiller's AvgPool2d(input/16, ceil_mode) is this global pooling for inputs whose
        // side is a multiple of 32 (the only ones it accepts).
        pool_head(h.apply(&self.head.0).apply_t(&self.head.1, train).relu(), &self.fc, taps)
    }
}
