//! SGD with momentum, optional Nesterov, and weight decay, with exactly PyTorch's update rule
//! (torch.optim.SGD, dampening 0): g ← ∇ + wd·p; b ← g on the first step, else μ·b + g;
//! p ← p − lr·(g + μ·b if Nesterov else b). Written here rather than taken from tch so that the
//! momentum buffers can be checkpointed: a resumed run must continue bit-identically.
//!
//! `optimizer = "dot"` turns it into DOT, the Distillation-Oriented Trainer (Zhao et al., "DOT: A
//! Distillation-Oriented Trainer", ICCV 2023): the task loss (the term named `ce`) and the
//! distillation loss (every other term) are differentiated separately, and each gradient has its
//! own momentum buffer, μ − Δ for the task's and μ + Δ for the distillation's, so that the
//! distillation gradient dominates the update (the authors' `DistillationOrientedTrainer`, in
//! mdistiller's `engine/dot.py`). Per parameter, with g_t and g_d the two gradients:
//!
//! - both reach it: b_t ← (μ−Δ)·b_t + g_t + wd·p; b_d ← (μ+Δ)·b_d + g_d; p ← p − lr·b_t − lr·b_d
//!   (weight decay rides with the task gradient, as the authors');
//! - only one reaches it (a method's module that CE does not touch, say): that gradient plus
//!   wd·p, in its own buffer, with the plain μ;
//! - each buffer starts as its first gradient (weight decay included; the authors leave it out of a
//!   distillation-only buffer's first step, kdlab does not).
//!
//! Both buffers are checkpointed (`optim.momentum.`, `optim.momentum_distill.`), so a killed DOT
//! run resumes bit-identically. Nesterov is not defined for DOT and is refused.
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Tensor};

/// The optimiser a run trains with (`optimizer` in a training config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// SGD with momentum (PyTorch's rule).
    #[default]
    Sgd,
    /// DOT: separate momenta for the task (CE) and the distillation gradients.
    Dot,
}

impl Optimizer {
    pub fn as_str(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Dot => "dot",
        }
    }
}

/// DOT's Δ as the authors set it for CIFAR-100 and Tiny-ImageNet (0.09 on ImageNet).
pub const DOT_DELTA: f64 = 0.075;

pub struct Sgd {
    /// Trainable parameters, sorted by name (a stable order for saving and for determinism).
    params: Vec<(String, Tensor)>,
    buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// DOT's state; None for plain SGD.
    dot: Option<Dot>,
}

/// DOT's Δ, its second set of momentum buffers, and the step's gradients, split (per parameter,
/// undefined where that loss does not reach it; `Tensor::grad` is not used under DOT).
struct Dot {
    delta: f64,
    buffers: Vec<Option<Tensor>>,
    task: Vec<Tensor>,
    distill: Vec<Tensor>,
}

/// The prefix under which momentum buffers are stored in a checkpoint.
pub const BUFFER_PREFIX: &str = "optim.momentum.";
/// The prefix of DOT's distillation-gradient momentum buffers.
pub const DISTILL_BUFFER_PREFIX: &str = "optim.momentum_distill.";
/// Every optimiser tensor in a checkpoint starts with this.
pub const OPTIM_PREFIX: &str = "optim.";

impl Sgd {
    pub fn new(vs: &VarStore, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|_| None).collect();
        Sgd { params, buffers, momentum, nesterov, weight_decay, dot: None }
    }

    /// Makes this optimiser DOT with Δ = `delta` (after `with_vars`: every parameter is known).
    pub fn with_dot(mut self, delta: f64) -> Self {
        let n = self.params.len();
        let none = || (0..n).map(|_| Tensor::new()).collect::<Vec<_>>();
        self.dot = Some(Dot { delta, buffers: (0..n).map(|_| None).collect(), task: none(), distill: none() });
        self
    }

    /// Whether this is DOT (the trainer then calls `backward_split` instead of `backward`).
    pub fn is_dot(&self) -> bool {
        self.dot.is_some()
    }

    /// DOT's backward pass: the task and distillation losses (each times `scale`, fp16's loss
    /// scale) differentiated separately with respect to every parameter, the gradients kept for
    /// `step`. Either loss may be absent (plain training has no distillation term).
    pub fn backward_split(&mut self, task: Option<&Tensor>, distill: Option<&Tensor>, scale: f64) {
        let dot = self.dot.as_mut().expect("backward_split is DOT's");
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let n = inputs.len();
        let grads = |loss: Option<&Tensor>, keep_graph: bool| match loss {
            // Parameters the loss does not reach get an undefined tensor (all of them for a loss
            // that reaches none, which LibTorch's engine must not be handed).
            Some(l) if l.requires_grad() => Tensor::run_backward(&[l * scale], &inputs, keep_graph, false),
            _ => (0..n).map(|_| Tensor::new()).collect(),
        };
        // The graph is shared: it is kept through the first pass, freed by the second.
        dot.distill = grads(distill, task.is_some());
        dot.task = grads(task, false);
    }

    /// Adds the trainable variables of `vs` (a method's modules) under `prefix`, which also names
    /// their momentum buffers in a checkpoint.
    pub fn with_vars(mut self, vs: &VarStore, prefix: &str) -> Self {
        for (n, t) in vs.variables() {
            if t.requires_grad() {
                self.params.push((format!("{prefix}{n}"), t));
                self.buffers.push(None);
            }
        }
        self.params.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(self.dot.is_none(), "with_dot comes after with_vars");
        self
    }

    pub fn zero_grad(&mut self) {
        if let Some(dot) = &mut self.dot {
            dot.task.iter_mut().chain(&mut dot.distill).for_each(|g| *g = Tensor::new());
            return;
        }
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The gradients currently stored (handles: scaling one in place scales the stored gradient);
    /// under DOT both parts of each.
    pub fn grads(&self) -> Vec<Tensor> {
        if let Some(dot) = &self.dot {
            return dot.task.iter().chain(&dot.distill).filter(|g| g.defined()).map(|g| g.shallow_clone()).collect();
        }
        self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// Each parameter's gradient, as one tensor: under DOT the sum of its two parts, the gradient
    /// of the whole loss (so that the norm and clipping mean the same as under SGD).
    fn whole_grads(&self) -> Vec<Tensor> {
        let Some(dot) = &self.dot else {
            return self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
        };
        dot.task
            .iter()
            .zip(&dot.distill)
            .filter_map(|(t, d)| match (t.defined(), d.defined()) {
                (true, true) => Some(t + d),
                (true, false) => Some(t.shallow_clone()),
                (false, true) => Some(d.shallow_clone()),
                (false, false) => None,
            })
            .collect()
    }

    /// The global L2 norm of the gradients currently stored (weight decay not included), on the
    /// device: a scalar tensor, read back with the step's loss.
    pub fn grad_norm(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self.whole_grads().iter().map(|g| g.norm().to_kind(tch::Kind::Double)).collect();
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
        // Under DOT both parts of a gradient are scaled alike (their sum is what was measured).
        for mut g in self.grads() {
            let _ = g.g_mul_(&scale.to_kind(g.kind()));
        }
        norm
    }

    /// One update with learning rate `lr`, from the gradients currently stored.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        if self.dot.is_some() {
            return self.step_dot(lr);
        }
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

    /// DOT's update (the module's header gives the rule).
    fn step_dot(&mut self, lr: f64) {
        let dot = self.dot.as_mut().expect("DOT");
        let (mu, delta, wd) = (self.momentum, dot.delta, self.weight_decay);
        let parts =
            self.params.iter_mut().zip(&mut self.buffers).zip(dot.buffers.iter_mut().zip(&dot.task).zip(&dot.distill));
        for (((_, p), task_buf), ((distill_buf, gt), gd)) in parts {
            let both = gt.defined() && gd.defined();
            // (gradient, its buffer, its momentum, whether weight decay rides with it)
            let updates = [
                (gt, task_buf, if both { mu - delta } else { mu }, true),
                (gd, distill_buf, if both { mu + delta } else { mu }, !both),
            ];
            for (g, buf, m, decay) in updates {
                if !g.defined() {
                    continue;
                }
                let g = if decay && wd != 0.0 { g + &*p * wd } else { g.shallow_clone() };
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(m).g_add_(&g);
                        b
                    }
                    None => buf.insert(g.detach().copy()),
                };
                let _ = p.g_sub_(&(&*b * lr));
            }
        }
    }

    /// The momentum buffers as named tensors (empty before the first step); DOT's distillation
    /// buffers under their own prefix.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let named = |prefix: &'static str, buffers: &'_ [Option<Tensor>]| -> Vec<(String, Tensor)> {
            self.params
                .iter()
                .zip(buffers)
                .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("{prefix}{n}"), b.shallow_clone())))
                .collect()
        };
        let mut out = named(BUFFER_PREFIX, &self.buffers);
        if let Some(dot) = &self.dot {
            out.extend(named(DISTILL_BUFFER_PREFIX, &dot.buffers));
        }
        out
    }

    /// Restores buffers saved by `state` (every tensor under `optim.`). SGD: every parameter must
    /// have one (or none may). DOT: a parameter has a buffer of each kind only where that gradient
    /// reached it, so each is restored where saved; a saved buffer that names no parameter is an
    /// error either way.
    pub fn load_state(&mut self, saved: &BTreeMap<String, Tensor>, file: &str) -> Result<()> {
        let known = |k: &String| {
            [BUFFER_PREFIX, DISTILL_BUFFER_PREFIX]
                .iter()
                .any(|pre| k.strip_prefix(pre).is_some_and(|n| self.params.iter().any(|(name, _)| name == n)))
        };
        if let Some(k) = saved.keys().find(|k| !known(k)) {
            bail!("{file}: optimizer state {k} belongs to no parameter of this run's optimizer");
        }
        if self.dot.is_none() {
            if let Some(k) = saved.keys().find(|k| k.starts_with(DISTILL_BUFFER_PREFIX)) {
                bail!("{file}: {k} is DOT's state (optimizer = \"dot\"), and this run trains with SGD");
            }
        }
        if let Some(dot) = &mut self.dot {
            let restore = |prefix: &str, buffers: &mut [Option<Tensor>]| -> Result<()> {
                for ((n, p), buf) in self.params.iter().zip(buffers) {
                    let key = format!("{prefix}{n}");
                    *buf = match saved.get(&key) {
                        None => None,
                        Some(t) if t.size() != p.size() => {
                            bail!("{file}: {key} has shape {:?}, the parameter has {:?}", t.size(), p.size())
                        }
                        Some(t) => Some(t.to_device(p.device()).copy()),
                    };
                }
                Ok(())
            };
            restore(BUFFER_PREFIX, &mut self.buffers)?;
            return restore(DISTILL_BUFFER_PREFIX, &mut dot.buffers);
        }
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

    /// DOT on a tiny model, three steps, against its rule written out in f64: `a` gets both
    /// gradients (momenta μ − Δ and μ + Δ, weight decay with the task's), `b` only the task's and `c`
    /// only the distillation's (each momentum μ, weight decay with it). L_task = Σ ct·a² + 3·b²,
    /// L_distill = Σ cd·a² + 2·c². Then the state: saved after two steps and loaded into a fresh
    /// DOT, the third step is bit-identical; SGD refuses DOT's state.
    #[test]
    fn dot_matches_its_update_rule_by_hand_and_resumes_bit_identically() {
        let (lr, mu, delta, wd) = (0.1f64, 0.9f64, 0.075f64, 0.01f64);
        let (ct, cd) = ([0.5f64, 3.0], [2.0f64, -0.25]);
        let make = || {
            let vs = VarStore::new(Device::Cpu);
            let root = vs.root();
            let a = root.var_copy("a", &Tensor::from_slice(&[1.0f64, -2.0]));
            let b = root.var_copy("b", &Tensor::from_slice(&[0.75f64]));
            let c = root.var_copy("c", &Tensor::from_slice(&[-1.5f64]));
            // Initial values exact in f32, where the VarStore creates them.
            let mut vs = vs;
            vs.double();
            let opt = Sgd::new(&vs, mu, false, wd).with_dot(delta);
            (vs, a, b, c, opt)
        };
        let losses = |a: &Tensor, b: &Tensor, c: &Tensor| {
            let task = (a * a * Tensor::from_slice(&ct)).sum(Kind::Double) + (b * b * 3.0).sum(Kind::Double);
            let distill = (a * a * Tensor::from_slice(&cd)).sum(Kind::Double) + (c * c * 2.0).sum(Kind::Double);
            (task, distill)
        };
        let step = |opt: &mut Sgd, a: &Tensor, b: &Tensor, c: &Tensor| {
            opt.zero_grad();
            let (task, distill) = losses(a, b, c);
            opt.backward_split(Some(&task), Some(&distill), 1.0);
            opt.step(lr);
        };
        let (_vs, a, b, c, mut opt) = make();
        let (mut wa, mut wb, mut wc) = ([1.0f64, -2.0], 0.75f64, -1.5f64);
        let (mut bt_a, mut bd_a, mut bt_b, mut bd_c) = ([0.0f64; 2], [0.0f64; 2], 0.0f64, 0.0f64);
        let buf = |first: bool, b: f64, m: f64, g: f64| if first { g } else { m * b + g };
        let mut saved = BTreeMap::new();
        for k in 0..3 {
            step(&mut opt, &a, &b, &c);
            let first = k == 0;
            for i in 0..2 {
                let (gt, gd) = (2.0 * ct[i] * wa[i], 2.0 * cd[i] * wa[i]);
                bt_a[i] = buf(first, bt_a[i], mu - delta, gt + wd * wa[i]);
                bd_a[i] = buf(first, bd_a[i], mu + delta, gd);
                wa[i] -= lr * bt_a[i] + lr * bd_a[i];
            }
            bt_b = buf(first, bt_b, mu, 6.0 * wb + wd * wb);
            wb -= lr * bt_b;
            bd_c = buf(first, bd_c, mu, 4.0 * wc + wd * wc);
            wc -= lr * bd_c;
            let got: Vec<f64> = [&a, &b, &c].iter().flat_map(|t| Vec::<f64>::try_from(*t).unwrap()).collect();
            let want = [wa[0], wa[1], wb, wc];
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "step {k}: {got:?} vs {want:?}");
            }
            if k == 1 {
                saved = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
            }
        }
        // The state after two steps: a has both buffers, b the task's only, c the distillation's only.
        let keys: Vec<&str> = saved.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["optim.momentum.a", "optim.momentum.b", "optim.momentum_distill.a", "optim.momentum_distill.c"]
        );
        // A fresh DOT at the weights after two steps, with the saved state, takes the same third step.
        let (_vs2, a2, b2, c2, mut opt2) = make();
        let (_vs1, a1, b1, c1, mut opt1) = make();
        for _ in 0..2 {
            step(&mut opt1, &a1, &b1, &c1);
        }
        tch::no_grad(|| {
            for (dst, src) in [(&a2, &a1), (&b2, &b1), (&c2, &c1)] {
                dst.shallow_clone().copy_(src);
            }
        });
        opt2.load_state(&saved, "saved").unwrap();
        step(&mut opt2, &a2, &b2, &c2);
        for (x, y) in [(&a, &a2), (&b, &b2), (&c, &c2)] {
            assert_eq!(Vec::<f64>::try_from(x).unwrap(), Vec::<f64>::try_from(y).unwrap());
        }
        // Plain SGD refuses DOT's state rather than dropping half of it.
        let (vs3, ..) = make();
        let e = Sgd::new(&vs3, mu, false, wd).load_state(&saved, "saved").unwrap_err().to_string();
        assert!(e.contains("optim.momentum_distill.a is DOT's state"), "{e}");
    }

    /// Under DOT the norm (and the clipping) is of each parameter's whole gradient, the sum of its
    /// two parts: task (3, 4) and distillation (1, −1) on one parameter sum to (4, 3), norm 5.
    #[test]
    fn dot_clips_the_whole_gradient() {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[0.0f64, 0.0]));
        let mut opt = Sgd::new(&vs, 0.9, false, 0.0).with_dot(0.075);
        let task = (&p * Tensor::from_slice(&[3.0f64, 4.0])).sum(Kind::Double);
        let distill = (&p * Tensor::from_slice(&[1.0f64, -1.0])).sum(Kind::Double);
        opt.backward_split(Some(&task), Some(&distill), 1.0);
        let norm = opt.clip_grad_norm(2.5).double_value(&[]);
        assert!((norm - 5.0).abs() < 1e-12, "{norm}");
        let after = opt.grad_norm().double_value(&[]);
        assert!((after - 2.5).abs() < 1e-6, "{after}");
        // Both parts were halved alike.
        let g: Vec<f64> = opt.grads().iter().flat_map(|g| Vec::<f64>::try_from(g).unwrap()).collect();
        for (x, w) in g.iter().zip([1.5, 2.0, 0.5, -0.5]) {
            assert!((x - w).abs() < 1e-6, "{g:?}");
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
