//! A network together with its variables, architecture name, input shape and class count.
use crate::data::Shape;
use crate::models;
use anyhow::Result;
use tch::nn;
use tch::{Device, Tensor};

pub struct Model {
    pub vs: nn::VarStore,
    pub net: models::Net,
    pub arch: String,
    pub input: Shape,
    pub classes: usize,
    /// Weights, and the inputs given to the model, in channels-last memory order.
    pub channels_last: bool,
}

impl Model {
    /// A freshly initialised network; the initialisation is a function of `seed` alone.
    pub fn new(arch: &str, input: Shape, classes: usize, device: Device, seed: u64) -> Result<Model> {
        let vs = nn::VarStore::new(device);
        let net = seeded(seed, crate::util::rng::stream::INIT, || models::build(&vs.root(), arch, input, classes))?;
        let mut model = Model { vs, net, arch: arch.to_string(), input, classes, channels_last: false };
        if crate::util::device::channels_last_for(device) && model.has_convolutions() {
            model.to_channels_last();
        }
        Ok(model)
    }

    /// Stores every 4-D weight in channels-last (NHWC) memory order, the layout oneDNN's CPU
    /// convolutions prefer; inputs must then be converted with `channels_last` too. The logical
    /// shapes (and so checkpoints, which are saved contiguous) do not change.
    pub fn to_channels_last(&mut self) {
        self.channels_last = true;
        self.restore_4d_weights(channels_last);
    }

    /// Back to PyTorch's default NCHW order (the inverse of `to_channels_last`).
    pub fn to_contiguous(&mut self) {
        self.channels_last = false;
        self.restore_4d_weights(Tensor::contiguous);
    }

    /// Replaces the storage of every 4-D variable by `order(variable)`, keeping its values.
    fn restore_4d_weights(&mut self, order: impl Fn(&Tensor) -> Tensor) {
        let _guard = tch::no_grad_guard();
        for (_, mut v) in self.vs.variables() {
            if v.dim() == 4 {
                let stored = order(&v);
                v.set_data(&stored);
            }
        }
    }

    pub fn params(&self) -> u64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as u64).sum()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits in training mode (BatchNorm uses batch statistics and updates its running ones).
    pub(crate) fn forward_train(&self, x: &Tensor) -> Tensor {
        self.net.forward_t(&self.prepare(x), true)
    }

    /// Logits in training mode, recording the taps `taps` asks for (`models::taps`).
    pub(crate) fn forward_train_taps(&self, x: &Tensor, taps: &mut models::Taps) -> Tensor {
        self.net.forward_taps(&self.prepare(x), true, taps)
    }

    /// Logits in inference mode, recording the taps `taps` asks for.
    pub(crate) fn infer_taps(&self, x: &Tensor, taps: &mut models::Taps) -> Tensor {
        tch::no_grad(|| self.net.forward_taps(&self.prepare(x), false, taps))
    }

    /// Every tap's shape (batch dimension left out), as `kdlab models --taps` lists them.
    pub(crate) fn tap_shapes(&self) -> Vec<(String, Vec<i64>)> {
        models::taps::shapes(self.net.as_ref(), self.input, self.device())
    }

    /// The input in the model's memory order.
    fn prepare(&self, x: &Tensor) -> Tensor {
        if self.channels_last && x.dim() == 4 {
            channels_last(x)
        } else {
            x.shallow_clone()
        }
    }

    /// Whether channels-last storage can matter (the model has convolutions).
    pub(crate) fn has_convolutions(&self) -> bool {
        self.vs.variables().values().any(|v| v.dim() == 4)
    }

    /// Logits in inference mode: BatchNorm uses running statistics, no gradient is recorded.
    pub fn infer(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(&self.prepare(x), false))
    }

    /// Named variables, sorted by name (parameters and BatchNorm running statistics).
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Runs `init` with LibTorch's generator seeded from (`seed`, `stream`). The generator is global:
/// a lock is held from seeding to the last draw so that two initialisations at once in one
/// process (tests run in threads) cannot interleave their draws.
pub fn seeded<T>(seed: u64, stream: u64, init: impl FnOnce() -> T) -> T {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(crate::util::rng::mix(&[seed, stream]) as i64 & i64::MAX);
    init()
}

/// Inference with any network that gives logits: a kdlab model, or a teacher of either kind.
pub trait Infer {
    /// Logits in inference mode (no gradient; BatchNorm uses running statistics).
    fn infer(&self, x: &Tensor) -> Tensor;
    fn device(&self) -> Device;
}

impl Infer for Model {
    fn infer(&self, x: &Tensor) -> Tensor {
        Model::infer(self, x)
    }
    fn device(&self) -> Device {
        Model::device(self)
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({} on {}, {} classes)", self.arch, self.input, self.classes)
    }
}

/// A 4-D tensor with the same shape stored in channels-last (NHWC) order.
pub(crate) fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// The memory order is storage only: the same seed gives the same weights and the same
    /// logits in either order, and weights saved from one load into the other.
    #[test]
    fn channels_last_and_contiguous_models_compute_the_same_function() {
        let shape: Shape = "1x28x28".parse().unwrap();
        let mut cl = Model::new("cnn_w2", shape, 10, Device::Cpu, 7).unwrap();
        cl.to_channels_last();
        let mut plain = Model::new("cnn_w2", shape, 10, Device::Cpu, 7).unwrap();
        plain.to_contiguous();
        // conv2's weight (32, 16, 3, 3): conv1's has one input channel, contiguous in either order.
        let w = |m: &Model| {
            m.named_variables().into_iter().filter(|(_, t)| t.dim() == 4).max_by_key(|(_, t)| t.numel()).unwrap().1
        };
        assert!(!w(&cl).is_contiguous() && w(&plain).is_contiguous(), "the two layouts differ in storage");
        for ((n, a), (_, b)) in cl.named_variables().iter().zip(plain.named_variables()) {
            assert!(a.equal(&b), "{n}: the same seed must give the same values");
        }
        tch::manual_seed(3);
        let x = Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu));
        let diff = (cl.infer(&x) - plain.infer(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "logits differ by {diff}");

        // Weights written from the channels-last model (as checkpoints are: contiguous copies)
        // load into a fresh contiguous model of another seed and give its logits.
        let mut other = Model::new("cnn_w2", shape, 10, Device::Cpu, 99).unwrap();
        other.to_contiguous();
        let saved: std::collections::BTreeMap<String, Tensor> =
            cl.named_variables().into_iter().map(|(n, t)| (format!("model.{n}"), t.contiguous())).collect();
        crate::train::checkpoint::load_weights(&other, &saved, std::path::Path::new("test")).unwrap();
        let diff = (cl.infer(&x) - other.infer(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "logits after loading differ by {diff}");
    }
}
