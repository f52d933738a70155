//! Wide ResNets (Zagoruyko & Komodakis 2016), wrn_D_W: depth D = 6n+4, widths
//! (16, 16W, 32W, 64W), pre-activation basic blocks (BN → ReLU → conv), no dropout.
use super::layers::{bn2d, conv2d, linear};
use super::taps::{pool_head, run_stages, Network, Taps};
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug)]
struct PreActBlock {
    bn1: nn::BatchNorm,
    conv1: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        PreActBlock {
            bn1: bn2d(&p / "bn1", cin),
            conv1: conv2d(&p / "conv1", cin, cout, 3, stride, 1, false),
            bn2: bn2d(&p / "bn2", cout),
            conv2: conv2d(&p / "conv2", cout, cout, 3, 1, 1, false),
            shortcut: (stride != 1 || cin != cout).then(|| conv2d(&p / "shortcut", cin, cout, 1, stride, 0, false)),
        }
    }
}

impl ModuleT for PreActBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let o = x.apply_t(&self.bn1, train).relu();
        // A projection shortcut reads the pre-activated input, an identity one the raw input.
        let skip = match &self.shortcut {
            Some(conv) => o.apply(conv),
            None => x.shallow_clone(),
        };
        let o = o.apply(&self.conv1).apply_t(&self.bn2, train).relu().apply(&self.conv2);
        o + skip
    }
}

#[derive(Debug)]
pub(crate) struct WideResNet {
    stem: nn::Conv2D,
    blocks: Vec<PreActBlock>,
    /// Each stage's end in `blocks` (exclusive).
    stage_ends: Vec<usize>,
    bn: nn::BatchNorm,
    fc: nn::Linear,
}

impl WideResNet {
    pub fn new(p: &nn::Path, depth: usize, k: i64, cin: i64, classes: i64) -> Self {
        let n = (depth - 4) / 6;
        let widths = [16, 16 * k, 32 * k, 64 * k];
        let mut blocks = vec![];
        let mut c = widths[0];
        for stage in 0..3 {
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                blocks.push(PreActBlock::new(p / format!("block{}", stage + 1) / j, c, widths[stage + 1], stride));
                c = widths[stage + 1];
            }
        }
        WideResNet {
            stem: conv2d(p / "conv1", cin, 16, 3, 1, 1, false),
            stage_ends: vec![n, 2 * n, 3 * n],
            blocks,
            bn: bn2d(p / "bn", c),
            fc: linear(p / "fc", c, classes),
        }
    }
}

impl Network for WideResNet {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let h = x.apply(&self.stem);
        taps.put("stem", &h);
        // Pre-activation blocks: a stage's output is its last block's raw sum.
        let h = run_stages(h, &self.blocks, &self.stage_ends, train, taps);
        pool_head(h.apply_t(&self.bn, train).relu(), &self.fc, taps)
    }
}
