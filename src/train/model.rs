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
}

impl Model {
    /// A freshly initialised network; the initialisation is a function of `seed` alone.
    pub fn new(arch: &str, input: Shape, classes: usize, device: Device, seed: u64) -> Result<Model> {
        // LibTorch's generator is global: hold a lock from seeding to the last initialiser so that
        // two models built at once in one process cannot interleave their random draws.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _lock = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(crate::util::rng::mix(&[seed, crate::util::rng::stream::INIT]) as i64 & i64::MAX);
        let vs = nn::VarStore::new(device);
        let net = models::build(&vs.root(), arch, input, classes)?;
        Ok(Model { vs, net, arch: arch.to_string(), input, classes })
    }

    pub fn params(&self) -> u64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as u64).sum()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Logits in training mode (BatchNorm uses batch statistics and updates its running ones).
    pub fn forward_train(&self, x: &Tensor) -> Tensor {
        self.net.forward_t(x, true)
    }

    /// Logits in inference mode: BatchNorm uses running statistics, no gradient is recorded.
    pub fn infer(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(x, false))
    }

    /// Named variables, sorted by name (parameters and BatchNorm running statistics).
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({} on {}, {} classes)", self.arch, self.input, self.classes)
    }
}
