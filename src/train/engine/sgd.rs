//! SGD with momentum, optional Nesterov, and weight decay, with exactly PyTorch's update rule
//! (torch.optim.SGD, dampening 0): g ← ∇ + wd·p; b ← g on the first step, else μ·b + g;
//! p ← p − lr·(g + μ·b if Nesterov else b). Written here rather than taken from tch so that the
//! momentum buffers can be checkpointed: a resumed run must continue bit-identically.
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Tensor};

pub struct Sgd {
    /// Trainable parameters, sorted by name (a stable order for saving and for determinism).
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// The prefix under which momentum buffers are stored in a checkpoint.
pub(crate) const BUFFER_PREFIX: &str = "optim.momentum.";

impl Sgd {
    pub fn new(vs: &VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Sgd { params, buffers, momentum, nesterov, weight_decay }
    }

    /// Adds the trainable variables of `vs` (a method's modules) under `prefix`, which also names
    /// their momentum buffers in a checkpoint.
    pub(crate) fn with_vars(mut self, vs: &VarStore, prefix: &str) -> Self {
        for (n, t) in vs.variables() {
            if t.requires_grad() {
                self.params.push((format!("{prefix}{n}"), t));
                self.buffers.push(None);
            }
        }
        self.params.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }

    pub(crate) fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The gradients currently stored (handles: scaling one in place scales the stored gradient).
    pub(crate) fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// The global L2 norm of the gradients currently stored (weight decay not included), on the
    /// device: a scalar tensor, read back with the step's loss.
    pub fn grad_norm(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.norm().to_kind(tch::Kind::Double))
            .collect();
        if norms.is_empty() {
            return Tensor::from(0.0f64);
        }
        Tensor::stack(&norms, 0).norm()
    }

    /// Scales the stored gradients by min(1, max_norm / ‖g‖) (‖g‖ the global L2 norm, as
    /// torch.nn.utils.clip_grad_norm_), without reading anything back from the device; returns
    /// ‖g‖ before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let norm = self.grad_norm();
        let _guard = tch::no_grad_guard();
        let scale = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_(&scale.to_kind(g.kind()));
            }
        }
        norm
    }

    /// One update with learning rate `lr`, from the gradients currently stored.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        for ((_, p), buf) in self.params.iter_mut().zip(&mut self.buffers) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let g = if self.weight_decay != 0.0 { grad + &*p * self.weight_decay } else { grad };
            let update = if self.momentum != 0.0 {
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                        b
                    }
                    None => buf.insert(g.detach().copy()),
                };
                if self.nesterov {
                    g + &*b * self.momentum
                } else {
                    b.shallow_clone()
                }
            } else {
                g
            };
            let _ = p.g_sub_(&(update * lr));
        }
    }

    /// The momentum buffers as named tensors (empty before the first step).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("{BUFFER_PREFIX}{n}"), b.shallow_clone())))
            .collect()
    }

    /// Restores buffers saved by `state`; every parameter must have one (or none may).
    pub(crate) fn load_state(&mut self, saved: &BTreeMap<String, Tensor>, file: &str) -> Result<()> {
        let found = self.params.iter().filter(|(n, _)| saved.contains_key(&format!("{BUFFER_PREFIX}{n}"))).count();
        if found == 0 {
            self.buffers.iter_mut().for_each(|b| *b = None);
            return Ok(());
        }
        for ((n, p), buf) in self.params.iter().zip(&mut self.buffers) {
            let key = format!("{BUFFER_PREFIX}{n}");
            let Some(t) = saved.get(&key) else { bail!("{file}: optimizer state lacks {key}") };
            if t.size() != p.size() {
                bail!("{file}: {key} has shape {:?}, the parameter has {:?}", t.size(), p.size());
            }
            *buf = Some(t.to_device(p.device()).copy());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two steps on f(p) = Σ c·p², against the update rule computed by hand in f64.
    #[test]
    fn matches_pytorch_update_rule() {
        for nesterov in [false, true] {
            let vs = VarStore::new(Device::Cpu);
            let p = vs.root().var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0]));
            let c = Tensor::from_slice(&[0.5f32, 3.0]);
            let mut opt = Sgd::new(&vs, 0.9, nesterov, 0.01);
            let (lr, mu, wd) = (0.1f64, 0.9f64, 0.01f64);
            let mut want = [1.0f64, -2.0];
            let cs = [0.5f64, 3.0];
            let mut buf = [0.0f64; 2];
            for step in 0..2 {
                opt.zero_grad();
                (&p * &p * &c).sum(Kind::Float).backward();
                opt.step(lr);
                for i in 0..2 {
                    let g = 2.0 * cs[i] * want[i] + wd * want[i];
                    buf[i] = if step == 0 { g } else { mu * buf[i] + g };
                    let d = if nesterov { g + mu * buf[i] } else { buf[i] };
                    want[i] -= lr * d;
                }
            }
            let got: Vec<f32> = Vec::try_from(&p).unwrap();
            for i in 0..2 {
                assert!((got[i] as f64 - want[i]).abs() < 1e-5, "nesterov={nesterov}: {got:?} vs {want:?}");
            }
            assert_eq!(opt.state().len(), 1);
        }
    }

    /// Gradients (3, 4) and (12) have global norm 13: clipping at 6.5 halves both, at 20 leaves
    /// them alone, and the norm returned is the one before clipping.
    #[test]
    fn clips_the_global_norm_by_hand() {
        for (max, scale) in [(6.5, 0.5), (20.0, 1.0)] {
            let vs = VarStore::new(Device::Cpu);
            let a = vs.root().var_copy("a", &Tensor::from_slice(&[0.0f32, 0.0]));
            let b = vs.root().var_copy("b", &Tensor::from_slice(&[0.0f32]));
            let mut opt = Sgd::new(&vs, 0.0, false, 0.0);
            opt.zero_grad();
            // d/da (3·a0 + 4·a1) = (3, 4); d/db (12·b) = 12.
            let loss = (&a * &Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float) + (&b * 12.0).sum(Kind::Float);
            loss.backward();
            let norm = opt.clip_grad_norm(max).double_value(&[]);
            assert!((norm - 13.0).abs() < 1e-5, "{norm}");
            let ga: Vec<f32> = Vec::try_from(a.grad()).unwrap();
            let gb: Vec<f32> = Vec::try_from(b.grad()).unwrap();
            let want = [3.0 * scale, 4.0 * scale, 12.0 * scale];
            for (g, w) in ga.iter().chain(&gb).zip(want) {
                assert!((*g as f64 - w).abs() < 1e-5, "max {max}: {ga:?} {gb:?} vs {want:?}");
            }
        }
    }
}
