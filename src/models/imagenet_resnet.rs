//! torchvision's ImageNet ResNets (He et al. 2016): a 7×7 stride-2 stem with BatchNorm, ReLU and a
//! 3×3 stride-2 max-pool, four stages of widths 64/128/256/512 (stride 1, 2, 2, 2), global average
//! pooling and a linear classifier. resnet18/34 use basic blocks; resnet50/101/152 bottlenecks
//! (×4 expansion, the stride on the 3×3 convolution as torchvision has it, "ResNet v1.5").
//! Parameter names are torchvision's (`conv1`, `bn1`, `layerS.B.conv1` …, `downsample.0/1`,
//! `fc`), so a torchvision state dict loads with no renaming.
use super::layers::{bn2d, conv2d, linear};
use super::resnet::{projection, BasicBlock};
use super::taps::{pool_head, run_stages, Network, Taps};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Blocks per stage for each depth, and whether they are bottlenecks.
pub fn config(depth: usize) -> Option<([usize; 4], bool)> {
    Some(match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        101 => ([3, 4, 23, 3], true),
        152 => ([3, 8, 36, 3], true),
        _ => return None,
    })
}

/// Bottleneck widths expand by this factor on the block's output.
const EXPANSION: i64 = 4;

/// 1×1 reduce, 3×3 (strided), 1×1 expand, each with BatchNorm; the skip is projected where the
/// shape changes.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Bottleneck {
    fn new(p: nn::Path, cin: i64, width: i64, stride: i64) -> Self {
        let cout = width * EXPANSION;
        Bottleneck {
            conv1: conv2d(&p / "conv1", cin, width, 1, 1, 0, false),
            bn1: bn2d(&p / "bn1", width),
            conv2: conv2d(&p / "conv2", width, width, 3, stride, 1, false),
            bn2: bn2d(&p / "bn2", width),
            conv3: conv2d(&p / "conv3", width, cout, 1, 1, 0, false),
            bn3: bn2d(&p / "bn3", cout),
            downsample: (stride != 1 || cin != cout).then(|| projection(&p / "downsample", cin, cout, stride)),
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train).relu();
        let out = out.apply(&self.conv3).apply_t(&self.bn3, train);
        let skip = match &self.downsample {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        (out + skip).relu()
    }
}

#[derive(Debug)]
pub(crate) struct ImageNetResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<Box<dyn ModuleT>>,
    /// Each stage's end in `blocks` (exclusive).
    stage_ends: Vec<usize>,
    fc: nn::Linear,
}

impl ImageNetResNet {
    /// `depth` must be one of [`config`]'s.
    pub fn new(p: &nn::Path, depth: usize, cin: i64, classes: i64) -> Self {
        let (counts, bottleneck) = config(depth).expect("a torchvision ResNet depth");
        let mut blocks: Vec<Box<dyn ModuleT>> = vec![];
        let mut c = 64;
        let mut stage_ends = vec![];
        for (stage, (&n, width)) in counts.iter().zip([64, 128, 256, 512]).enumerate() {
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                let q = p / format!("layer{}", stage + 1) / j;
                if bottleneck {
                    blocks.push(Box::new(Bottleneck::new(q, c, width, stride)));
                    c = width * EXPANSION;
                } else {
                    blocks.push(Box::new(BasicBlock::new(q, c, width, stride, "downsample")));
                    c = width;
                }
            }
            stage_ends.push(blocks.len());
        }
        ImageNetResNet {
            conv1: conv2d(p / "conv1", cin, 64, 7, 2, 3, false),
            bn1: bn2d(p / "bn1", 64),
            blocks,
            stage_ends,
            fc: linear(p / "fc", c, classes),
        }
    }
}

impl Network for ImageNetResNet {
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor {
        let stem = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        taps.put("stem", &stem);
        let h = stem.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let h = run_stages(h, self.blocks.iter().map(|b| b.as_ref()), &self.stage_ends, train, taps);
        pool_head(h, &self.fc, taps)
    }
}
