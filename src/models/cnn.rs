//! A plain two-block CNN with a width multiplier m: conv(8m)–BN–ReLU–pool, conv(16m)–BN–ReLU–pool,
//! then a linear classifier on the flattened features. Cheap enough to build whole capacity ladders
//! (cnn_w1 … cnn_w16) on a CPU.
use super::layers::{bn2d, conv2d, linear};
use super::taps::{head, Network, Taps};
use tch::nn;
use tch::Tensor;

#[derive(Debug)]
pub(crate) struct PlainCnn {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    fc: nn::Linear,
}

impl PlainCnn {
    pub fn new(p: &nn::Path, m: i64, cin: i64, h: i64, w: i64, classes: i64) -> Self {
        PlainCnn {
            conv1: conv2d(p / "conv1", cin, 8 * m, 3, 1, 1, true),
            bn1: bn2d(p / "bn1", 8 * m),
            conv2: conv2d(p / "conv2", 8 * m, 16 * m, 3, 1, 1, true),
            bn2: bn2d(p / "bn2", 16 * m),
            // Two 2×2 poolings (floor) leave (h/4)×(w/4) positions.
            fc: linear(p / "fc", 16 * m * (h / 4) * (w / 4), classes),
        }
    }
}

impl Network for PlainCnn {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu().max_pool2d_default(2);
        taps.put("stage1", &h);
        let h = h.apply(&self.conv2).apply_t(&self.bn2, train).relu().max_pool2d_default(2);
        taps.put("stage2", &h);
        // No global pooling: the classifier reads the flattened map.
        taps.put("prepool", &h);
        head(h.flatten(1, -1), &self.fc, taps)
    }
}
