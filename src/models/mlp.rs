//! A multi-layer perceptron on the flattened image: `depth` hidden layers of `width` units with
//! ReLU, then a linear classifier (mlp_512x2 has two hidden layers of 512).
use super::layers::linear;
use super::taps::{head, Network, Taps};
use tch::nn;
use tch::Tensor;

#[derive(Debug)]
pub(crate) struct Mlp {
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
}

impl Mlp {
    pub fn new(p: &nn::Path, width: i64, depth: usize, inputs: i64, classes: i64) -> Self {
        let mut d = inputs;
        let hidden = (0..depth)
            .map(|i| {
                let l = linear(p / format!("hidden{i}"), d, width);
                d = width;
                l
            })
            .collect();
        Mlp { hidden, out: linear(p / "out", d, classes) }
    }
}

impl Network for Mlp {
    fn forward_taps(&self, x: &Tensor, _train: bool, taps: &mut Taps) -> Tensor {
        let mut h = x.flatten(1, -1);
        for (i, l) in self.hidden.iter().enumerate() {
            h = h.apply(l).relu();
            taps.put_nth("hidden", i + 1, &h);
        }
        head(h, &self.out, taps)
    }
}
