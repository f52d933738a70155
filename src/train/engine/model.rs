//! A network together with its variables, architecture name, input shape and class count.
use crate::data::Shape;
use crate::models;
use crate::util::device::MemoryFormat;
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
        if let Some(narrowest) = model.narrowest_convolution() {
            if crate::util::device::channels_last_for(device, narrowest) {
                model.to_channels_last();
            }
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

    /// The layout the model's weights (and inputs) are stored in.
    pub fn memory_format(&self) -> MemoryFormat {
        if self.channels_last {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }

    /// Whether channels-last storage can matter (the model has convolutions).
    pub(crate) fn has_convolutions(&self) -> bool {
        self.narrowest_convolution().is_some()
    }

    /// The fewest output channels of any convolution (None: the model has none).
    fn narrowest_convolution(&self) -> Option<i64> {
        self.vs.variables().values().filter(|v| v.dim() == 4).map(|v| v.size()[0]).min()
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
///
/// Its strides are written out rather than left to `permute().contiguous()`: that skips the copy
/// when a dimension has size 1 and gives back the NCHW strides, so a one-channel image batch (or a
/// convolution weight reading one channel) kept NCHW strides, LibTorch chose its NCHW kernels for
/// the whole first block, and converted the activations before the second (a third of a plain
/// CNN's forward pass on Fashion-MNIST; docs/performance.md).
pub(crate) fn channels_last(t: &Tensor) -> Tensor {
    let size = t.size();
    let out = Tensor::empty_strided(&size, channels_last_strides(&size), (t.kind(), t.device()));
    let mut dst = out.shallow_clone();
    dst.copy_(t);
    out
}

/// The strides of an N×C×H×W tensor stored in NHWC order.
fn channels_last_strides(size: &[i64]) -> [i64; 4] {
    let (c, h, w) = (size[1], size[2], size[3]);
    [c * h * w, 1, w * c, c]
}

/// Whether `t` has channels-last strides, as LibTorch's kernel choice reads them (a dimension of
/// size 1 included).
#[cfg(test)]
pub(crate) fn has_channels_last_strides(t: &Tensor) -> bool {
    t.stride() == channels_last_strides(&t.size())
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

    /// `auto` stores a model channels-last on the CPU only when every convolution has at least 16
    /// output channels: cnn_w1's 8-channel layer is faster in NCHW, cnn_w2 and the ResNets in
    /// channels-last; a network without convolutions has nothing to reorder.
    #[test]
    fn auto_layout_follows_the_narrowest_convolution() {
        let shape: Shape = "1x28x28".parse().unwrap();
        let layout = |arch: &str| Model::new(arch, shape, 10, Device::Cpu, 1).unwrap().memory_format();
        assert_eq!(layout("cnn_w1"), MemoryFormat::Contiguous);
        assert_eq!(layout("cnn_w2"), MemoryFormat::ChannelsLast);
        assert_eq!(layout("resnet8"), MemoryFormat::ChannelsLast);
        assert_eq!(layout("mlp_16x1"), MemoryFormat::Contiguous);
    }

    /// A one-channel batch and a weight that reads one channel get channels-last strides too, so
    /// the first block runs LibTorch's channels-last kernels: its output comes out channels-last.
    /// (`permute().contiguous()` left both in NCHW strides, and the first block ran NCHW.)
    #[test]
    fn one_channel_inputs_and_weights_are_stored_channels_last() {
        let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = channels_last(&x);
        assert!(has_channels_last_strides(&y) && !has_channels_last_strides(&x));
        assert!(y.equal(&x), "the layout is storage only");
        let shape: Shape = "1x28x28".parse().unwrap();
        let mut cl = Model::new("cnn_w2", shape, 10, Device::Cpu, 7).unwrap();
        cl.to_channels_last();
        for (n, t) in cl.named_variables().into_iter().filter(|(_, t)| t.dim() == 4) {
            assert!(has_channels_last_strides(&t), "{n}: {:?}", t.stride());
        }
        let mut taps = models::Taps::only(&["stage1"]);
        let _ = cl.forward_train_taps(&x, &mut taps);
        let stage1 = taps.get("stage1").unwrap();
        assert!(has_channels_last_strides(stage1), "stage1 strides {:?}", stage1.stride());
    }
}
