//! VGG with BatchNorm (Simonyan & Zisserman 2015) as the KD literature uses it on CIFAR: five
//! stages of 3×3 conv–BN–ReLU, 2×2 max-pooling after the first three stages, global average
//! pooling and a linear classifier.
use super::layers::{bn2d, conv2d, linear};
use super::taps::{pool_head, Network, Taps};
use tch::nn;
use tch::Tensor;

/// Channels of each conv layer, stage by stage.
pub fn config(depth: usize) -> Option<Vec<Vec<i64>>> {
    Some(match depth {
        8 => vec![vec![64], vec![128], vec![256], vec![512], vec![512]],
        11 => vec![vec![64], vec![128], vec![256, 256], vec![512, 512], vec![512, 512]],
        13 => vec![vec![64, 64], vec![128, 128], vec![256, 256], vec![512, 512], vec![512, 512]],
        _ => return None,
    })
}

#[derive(Debug)]
pub(crate) struct Vgg {
    /// Per stage: its conv–BN pairs.
    stages: Vec<Vec<(nn::Conv2D, nn::BatchNorm)>>,
    fc: nn::Linear,
}

impl Vgg {
    pub fn new(p: &nn::Path, cfg: &[Vec<i64>], cin: i64, classes: i64) -> Self {
        let mut c = cin;
        let mut stages = vec![];
        for (s, widths) in cfg.iter().enumerate() {
            let mut layers = vec![];
            for (j, &w) in widths.iter().enumerate() {
                let q = p / format!("stage{}", s + 1) / j;
                layers.push((conv2d(&q / "conv", c, w, 3, 1, 1, true), bn2d(&q / "bn", w)));
                c = w;
            }
            stages.push(layers);
        }
        Vgg { stages, fc: linear(p / "fc", c, classes) }
    }
}

impl Network for Vgg {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let mut h = x.shallow_clone();
        for (s, layers) in self.stages.iter().enumerate() {
            for (conv, bn) in layers {
                h = h.apply(conv).apply_t(bn, train).relu();
            }
            // A stage's tap is its conv output, before the pooling that starts the next stage.
            taps.put_nth("stage", s + 1, &h);
            if s < 3 {
                h = h.max_pool2d_default(2);
            }
        }
        pool_head(h, &self.fc, taps)
    }
}
