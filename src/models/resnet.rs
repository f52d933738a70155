//! CIFAR ResNets (He et al. 2016), depth 6n+2: a 3×3 stem, three stages of n basic blocks with
//! widths (16, 32, 64) — or (32, 64, 128, 256) stages-after-stem for the ×4 variants of the CRD /
//! mdistiller zoo — global average pooling and a linear classifier. Shortcuts that change shape are
//! 1×1 convolutions with BatchNorm ("option B").
use super::layers::{bn2d, conv2d, linear};
use super::taps::{pool_head, Network, Taps};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Two 3×3 conv–BN layers and a skip; the skip is a 1×1 conv–BN projection (under `skip_name`:
/// kdlab's CIFAR ResNets say `shortcut`, torchvision's `downsample`) where the shape changes.
#[derive(Debug)]
pub(super) struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    pub(super) fn new(p: nn::Path, cin: i64, cout: i64, stride: i64, skip_name: &str) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| projection(&p / skip_name, cin, cout, stride));
        BasicBlock {
            conv1: conv2d(&p / "conv1", cin, cout, 3, stride, 1, false),
            bn1: bn2d(&p / "bn1", cout),
            conv2: conv2d(&p / "conv2", cout, cout, 3, 1, 1, false),
            bn2: bn2d(&p / "bn2", cout),
            shortcut,
        }
    }
}

/// The 1×1 conv–BN projection of a skip connection that changes the shape.
pub(super) fn projection(p: nn::Path, cin: i64, cout: i64, stride: i64) -> (nn::Conv2D, nn::BatchNorm) {
    (conv2d(&p / 0, cin, cout, 1, stride, 0, false), bn2d(&p / 1, cout))
}

impl BasicBlock {
    /// The block's output before its last ReLU (the `stageK_preact` tap).
    fn forward_preact(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train);
        let skip = match &self.shortcut {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        out + skip
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_preact(x, train).relu()
    }
}

#[derive(Debug)]
pub(crate) struct CifarResNet {
    stem: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    /// Each stage's end in `blocks` (exclusive).
    stage_ends: Vec<usize>,
    fc: nn::Linear,
}

impl CifarResNet {
    /// `widths[0]` is the stem's width, the rest one per stage; stages after the first halve the
    /// resolution.
    pub fn new(p: &nn::Path, depth: usize, widths: &[i64], cin: i64, classes: i64) -> Self {
        let n = (depth - 2) / 6;
        let mut blocks = vec![];
        let mut c = widths[0];
        for (stage, &w) in widths[1..].iter().enumerate() {
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(p / format!("layer{}", stage + 1) / j, c, w, stride, "shortcut"));
                c = w;
            }
        }
        CifarResNet {
            stem: conv2d(p / "conv1", cin, widths[0], 3, 1, 1, false),
            stem_bn: bn2d(p / "bn1", widths[0]),
            stage_ends: (1..widths.len()).map(|s| s * n).collect(),
            blocks,
            fc: linear(p / "fc", c, classes),
        }
    }
}

impl Network for CifarResNet {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let mut h = x.apply(&self.stem).apply_t(&self.stem_bn, train).relu();
        taps.put("stem", &h);
        for (i, b) in self.blocks.iter().enumerate() {
            let pre = b.forward_preact(&h, train);
            h = pre.relu();
            if let Some(k) = self.stage_ends.iter().position(|&e| e == i + 1) {
                if taps.active() {
                    taps.put(&format!("stage{}_preact", k + 1), &pre);
                }
                taps.put_nth("stage", k + 1, &h);
            }
        }
        pool_head(h, &self.fc, taps)
    }
}
