//! Taps: a network's intermediate outputs under stable names, for the methods that distil from
//! features (FitNet's hint layer, AT's stage outputs, SDD's pre-pooling map). Every zoo model
//! names them the same way, after torchdistill's module paths and mdistiller's feature dict:
//!
//! | name | what |
//! |---|---|
//! | `stem` | after the first convolution block (where the model has one) |
//! | `stage1` … `stageK` | each stage's output, post-activation (`hidden1` … for an MLP) |
//! | `stageK_preact` | a CIFAR ResNet stage's output before its last ReLU |
//! | `prepool` | the map the global pooling (or flattening) reads |
//! | `logit_map` | the classifier applied at every position of `prepool` (C × H × W), where the model pools globally |
//! | `embedding` | the vector the classifier reads |
//! | `logits` | the output |
//!
//! A forward pass records only the taps it is asked for, so logits-only training keeps its
//! memory: nothing else is held alive past its use.
use tch::nn::ModuleT;
use tch::Tensor;

/// Each tap's name and shape (batch dimension left out).
pub(crate) type TapShapes = Vec<(String, Vec<i64>)>;

/// Which taps a forward pass keeps, and those it kept.
#[derive(Default)]
pub struct Taps {
    want: Want,
    got: Vec<(String, Tensor)>,
}

#[derive(Default)]
enum Want {
    #[default]
    Nothing,
    All,
    Only(Vec<String>),
}

impl Taps {
    /// Keeps nothing (a plain forward pass).
    pub fn none() -> Taps {
        Taps::default()
    }

    /// Keeps every tap (for listing them).
    pub fn all() -> Taps {
        Taps { want: Want::All, got: vec![] }
    }

    /// Keeps the named taps.
    pub fn only<S: AsRef<str>>(names: &[S]) -> Taps {
        Taps { want: Want::Only(names.iter().map(|n| n.as_ref().to_string()).collect()), got: vec![] }
    }

    fn wants(&self, name: &str) -> bool {
        match &self.want {
            Want::Nothing => false,
            Want::All => true,
            Want::Only(names) => names.iter().any(|n| n == name),
        }
    }

    /// Records `t` as `name` if it is wanted (a shallow copy: the graph is shared).
    pub fn put(&mut self, name: &str, t: &Tensor) {
        if self.wants(name) {
            self.got.push((name.to_string(), t.shallow_clone()));
        }
    }

    /// Whether anything is kept (names built with `format!` need not be built otherwise).
    pub(crate) fn active(&self) -> bool {
        !matches!(self.want, Want::Nothing)
    }

    /// Records the tensor `make` builds as `name`, building it only if `name` is wanted (a tap
    /// that costs a computation of its own, as `logit_map`).
    pub fn put_with(&mut self, name: &str, make: impl FnOnce() -> Tensor) {
        if self.wants(name) {
            let t = make();
            self.got.push((name.to_string(), t));
        }
    }

    /// Records `t` as `{prefix}{i}`; the name is built only when something is kept.
    pub(crate) fn put_nth(&mut self, prefix: &str, i: usize, t: &Tensor) {
        if self.active() {
            self.put(&format!("{prefix}{i}"), t);
        }
    }

    /// The tap `name`, if it was recorded.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.got.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Every recorded tap, in the order the forward pass produced them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.got.iter().map(|(n, t)| (n.as_str(), t))
    }
}

/// A network whose forward pass can record its taps. `forward_t` is the plain forward pass.
pub trait Network: std::fmt::Debug + Send {
    /// Logits, recording the taps `taps` asks for (`logits` included).
    fn forward_taps(&self, x: &Tensor, train: bool, taps: &mut Taps) -> Tensor;

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_taps(x, train, &mut Taps::none())
    }
}

/// Records the classifier's input and output: the last two taps of every model.
pub fn head(embedding: Tensor, fc: &tch::nn::Linear, taps: &mut Taps) -> Tensor {
    taps.put("embedding", &embedding);
    let logits = embedding.apply(fc);
    taps.put("logits", &logits);
    logits
}

/// Global average pooling of the pre-pooling map, then the classifier. The `logit_map` tap is
/// the classifier applied at each position of the map: since the classifier is affine, average
/// pooling the map over any region and classifying gives the same logits as pooling `logit_map`
/// over that region (SDD's local logits; the mean over all positions is the model's logits).
pub(crate) fn pool_head(prepool: Tensor, fc: &tch::nn::Linear, taps: &mut Taps) -> Tensor {
    taps.put("prepool", &prepool);
    taps.put_with("logit_map", || logit_map(&prepool, fc));
    head(prepool.adaptive_avg_pool2d([1, 1]).flatten(1, -1), fc, taps)
}

/// (N, D, H, W) → (N, C, H, W): the classifier at every position.
pub fn logit_map(prepool: &Tensor, fc: &tch::nn::Linear) -> Tensor {
    prepool.permute([0, 2, 3, 1]).apply(fc).permute([0, 3, 1, 2])
}

/// Runs `blocks` in order, recording `stage{k}` after each index in `stage_ends` (exclusive ends).
pub(crate) fn run_stages<'a, B: ModuleT + ?Sized + 'a>(
    mut h: Tensor,
    blocks: impl IntoIterator<Item = &'a B>,
    stage_ends: &[usize],
    train: bool,
    taps: &mut Taps,
) -> Tensor {
    for (i, b) in blocks.into_iter().enumerate() {
        h = b.forward_t(&h, train);
        if let Some(stage) = stage_ends.iter().position(|&e| e == i + 1) {
            taps.put_nth("stage", stage + 1, &h);
        }
    }
    h
}

/// The shape of every tap of `net` (its variables on `device`) for one input of `shape`: a batch
/// of 2 in eval mode, the batch dimension left out.
pub(crate) fn shapes(net: &dyn Network, shape: crate::data::Shape, device: tch::Device) -> TapShapes {
    let _guard = tch::no_grad_guard();
    let x = Tensor::zeros([2, shape.c as i64, shape.h as i64, shape.w as i64], (tch::Kind::Float, device));
    let mut taps = Taps::all();
    let _logits = net.forward_taps(&x, false, &mut taps);
    taps.iter().map(|(n, t)| (n.to_string(), t.size()[1..].to_vec())).collect()
}
