//! A multi-layer perceptron on the flattened image: `depth` hidden layers of `width` units with
//! ReLU, then a linear classifier (mlp_512x2 has two hidden layers of 512).
use super::layers::linear;
use tch::nn::{self, ModuleT};
use tch::Tensor;

#[derive(Debug)]
pub struct Mlp {
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

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let mut h = x.flatten(1, -1);
        for l in &self.hidden {
            h = h.apply(l).relu();
        }
        h.apply(&self.out)
    }
}
