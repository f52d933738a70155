//! `isats` (instance-specific ATS): as ATS, but τ2 is chosen for each sample as the value in
//! [τ2_min, τ1] that maximises the population variance of that sample's non-GT teacher
//! probabilities after ATS. The bound matters: as τ2 → 0 the variance tends to its degenerate
//! extreme (all non-GT mass on one class, or none), so an unbounded search would always run off
//! to the boundary. Defaults τ1 = 4, τ2_min = 0.5, s_τ = 1, λ = 0.5.
//!
//! The search, per sample and without gradient: the variance is evaluated on a grid of
//! `GRID` = 64 log-spaced values of τ2 over [τ2_min, τ1]; the best grid point's neighbours bracket
//! a golden-section search of `ITERS` = 30 steps (the bracket shrinks by 0.618³⁰ ≈ 5·10⁻⁷); the
//! result is kept only if it beats the best grid point. Cost: GRID + 2·ITERS + 1 = 125 softmaxes of
//! the teacher's logits per sample, a few percent of a ResNet student's step on CIFAR-100.
use super::ats::{self, log_ats};
use super::{positive, weight, LossInput, Method, MethodParams};
use anyhow::Result;
use tch::{Kind, Tensor};

pub const GRID: i64 = 64;
pub const ITERS: usize = 30;

pub struct Isats {
    pub tau1: f64,
    pub tau2_min: f64,
    pub student_tau: f64,
    pub lambda: f64,
    last: Vec<f64>,
    epoch: Vec<f64>,
    /// Samples this epoch whose ATS target no longer ranks the true class first.
    flipped: usize,
}

pub fn build(p: &MethodParams) -> Result<Box<dyn Method>> {
    let tau1 = positive("tau1", p.tau1.unwrap_or(4.0))?;
    let tau2_min = positive("tau2_min", p.tau2_min.unwrap_or(0.5))?;
    let lambda = weight("lambda", p.lambda.unwrap_or(0.5))?;
    ats::check(tau1, tau2_min, lambda, "tau2_min")?;
    Ok(Box::new(Isats {
        tau1,
        tau2_min,
        student_tau: positive("student_tau", p.student_tau.unwrap_or(1.0))?,
        lambda,
        last: vec![],
        epoch: vec![],
        flipped: 0,
    }))
}

/// Population variance of the non-GT probabilities of softmax(ATS(t; τ1, τ2)) for every candidate
/// τ2: `t` (N, C), `y` (N,), `tau2` (N, K) → (N, K).
pub fn nongt_variance(t: &Tensor, y: &Tensor, tau1: f64, tau2: &Tensor) -> Tensor {
    let (n, c) = (t.size()[0], t.size()[1]);
    let k = tau2.size()[1];
    let idx = y.view([n, 1, 1]).expand([n, k, 1], false);
    let gt = (t.gather(1, &y.view([n, 1]), false) / tau1).view([n, 1, 1]).expand([n, k, 1], false);
    // (N, K, C): every logit over its candidate τ2, then the true class's over τ1.
    let z = (t.unsqueeze(1) / tau2.unsqueeze(2)).scatter(2, &idx, &gt.contiguous());
    let p = z.softmax(2, t.kind());
    let others =
        Tensor::ones([n, 1, c], (Kind::Bool, t.device())).scatter_value(2, &y.view([n, 1, 1]), 0.0).to_kind(t.kind());
    let m = (c - 1) as f64;
    let mean = (&p * &others).sum_dim_intlist(2, true, t.kind()) / m;
    ((p - mean).square() * others).sum_dim_intlist(2, false, t.kind()) / m
}

/// The per-sample τ2 in [τ2_min, τ1] that maximises the non-GT variance: (N,) tensor.
pub fn choose_tau2(t: &Tensor, y: &Tensor, tau1: f64, tau2_min: f64) -> Tensor {
    let _g = tch::no_grad_guard();
    let t = &t.detach();
    let (n, kind, dev) = (t.size()[0], t.kind(), t.device());
    if (tau1 - tau2_min).abs() < 1e-12 {
        return Tensor::full([n], tau1, (kind, dev));
    }
    let grid = Tensor::logspace(tau2_min.log10(), tau1.log10(), GRID, 10.0, (kind, dev));
    let vals = nongt_variance(t, y, tau1, &grid.unsqueeze(0).expand([n, GRID], false).contiguous());
    let best = vals.argmax(1, false);
    let best_val = vals.gather(1, &best.unsqueeze(1), false).squeeze_dim(1);
    let at = |i: &Tensor| grid.index_select(0, &i.clamp(0, GRID - 1));
    let mut a = at(&(&best - 1));
    let mut b = at(&(&best + 1));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: &Tensor| nongt_variance(t, y, tau1, &x.unsqueeze(1)).squeeze_dim(1);
    for _ in 0..ITERS {
        let c = &b - (&b - &a) * phi;
        let d = &a + (&b - &a) * phi;
        let left = f(&c).ge_tensor(&f(&d)); // the maximum lies in [a, d]
        b = d.where_self(&left, &b);
        a = a.where_self(&left, &c);
    }
    let mid: Tensor = (&a + &b) / 2.0;
    let mid_val = f(&mid);
    let grid_best = at(&best);
    mid.where_self(&mid_val.ge_tensor(&best_val), &grid_best).clamp(tau2_min, tau1)
}

/// Summary of the chosen τ2 over an epoch: mean, spread, quantiles, a 10-bin histogram over
/// [τ2_min, τ1], and how often a bound was hit.
pub fn summarise(v: &mut [f64], lo: f64, hi: f64) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let q = |p: f64| v[((p * (n - 1.0)).round() as usize).min(v.len() - 1)];
    let mut counts = [0usize; 10];
    for x in v.iter() {
        let b = (((x - lo) / (hi - lo).max(1e-12)) * 10.0).floor().clamp(0.0, 9.0) as usize;
        counts[b] += 1;
    }
    let tol = 1e-3 * (hi - lo).max(1e-12);
    serde_json::json!({
        "mean": mean, "std": std, "min": v[0], "p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "max": v[v.len() - 1],
        "hist_edges": (0..=10).map(|i| lo + (hi - lo) * i as f64 / 10.0).collect::<Vec<_>>(),
        "hist_counts": counts,
        "at_tau2_min": v.iter().filter(|x| **x <= lo + tol).count() as f64 / n,
        "at_tau1": v.iter().filter(|x| **x >= hi - tol).count() as f64 / n,
    })
}

impl Method for Isats {
    fn name(&self) -> &'static str {
        "isats"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let tau2 = choose_tau2(x.teacher, x.labels, self.tau1, self.tau2_min);
        self.last = Vec::<f64>::try_from(tau2.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default();
        self.epoch.extend_from_slice(&self.last);
        let lp = log_ats(x.teacher, x.labels, self.tau1, &tau2.unsqueeze(1));
        // A small τ2 can lift a wrong class above the true one in the target; count how often.
        self.flipped += lp.argmax(1, false).ne_tensor(x.labels).sum(Kind::Int64).int64_value(&[]) as usize;
        ats::terms(x, &lp, self.student_tau, self.lambda)
    }
    fn hyper(&self) -> serde_json::Value {
        serde_json::json!({"tau1": self.tau1, "tau2_min": self.tau2_min, "student_tau": self.student_tau, "lambda": self.lambda,
            "search": {"grid": GRID, "grid_spacing": "log", "golden_section_iterations": ITERS}})
    }
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        Some(("tau2".into(), self.last.clone()))
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        let n = self.epoch.len().max(1) as f64;
        let s = summarise(&mut self.epoch, self.tau2_min, self.tau1);
        let flipped = self.flipped as f64 / n;
        self.epoch.clear();
        self.flipped = 0;
        Some(serde_json::json!({"isats_tau2": s, "target_not_true_class": flipped}))
    }
}
