//! `isats` (instance-specific ATS): as ATS (true class over τ1, the others over τ2), but τ2 is
//! chosen for each sample by a `rule`. All rules keep τ1 global and τ2 ∈ [τ2_min, τ1], and judge a
//! candidate τ2 by the population variance of the sample's non-GT teacher probabilities after
//! ATS (the probabilities themselves, not renormalised). Defaults: rule = "ts_order", τ1 = 4,
//! τ2_min = 0.5, s_τ = 1, λ = 0.5, center_logits = false, margin = 10⁻³ (`order`, `ts_order`).
//!
//! The teacher is *right* on a sample when its logit of the true class is strictly the largest
//! (f_y > m = max_{c≠y} f_c; a tie counts as wrong). Where it is wrong no τ2 ≤ τ1 can make the
//! target right for positive logits, and a variance-seeking τ2 would only sharpen the wrong class,
//! so the rules `order`, `ts` and `ts_order` fall back to τ2 = τ1 there (plain KD at τ1 for that
//! sample).
//!
//! The default, `ts_order`, was chosen on the validation split of `studies/fashion-mnist-mismatch.toml`
//! (the best ISATS rule there for all nine teachers, and the only one ahead of KD at τ = 4 for every
//! teacher); its τ2 is τ1 for 36–51% of the samples there (τ* above τ1; with `tau1 = 8`, 0–7%, at
//! a cost of up to 0.4 points of test accuracy), see the README.
//!
//! - `order`: the τ2 ∈ [τ2_min, τ1] with the largest non-GT variance *among those that
//!   keep the true class first in the target*, with a margin: the target's log-probability gap
//!   log p_y − max_{c≠y} log p_c = f_y/τ1 − m/τ2 must be at least `margin` (default
//!   `DEFAULT_MARGIN` = 10⁻³). The gap is monotone in τ2, so the feasible set is an interval
//!   [lo, τ1]: if m ≤ 0 the gap only grows as τ2 falls and lo = τ2_min; if m > 0,
//!   lo = max(τ2_min, τ1·m / (f_y − margin·τ1)). The margin (rather than a bare gap > 0) keeps the
//!   true class strictly first once the target is computed in float32: the rounding of f/τ is
//!   ~10⁻⁷·|f/τ|, at most ~10⁻⁴ for any logits a network produces (|f/τ| up to ~10³), while 10⁻³
//!   in log-probability (p_y ≥ 1.001·p_c) barely constrains the target beyond that. Fallback τ2 = τ1
//!   where the teacher is not right by the margin at τ2 = τ1 itself ((f_y − m)/τ1 < margin: wrong
//!   teachers, ties and near-ties). In practice the non-GT variance keeps growing as τ2 falls, so
//!   the constraint binds for most samples: τ2 sits at the floor, where the target's strongest
//!   wrong class is within `margin` of the true class (p_m = p_y·e^−margin). A larger `margin`
//!   (say 0.5 or 1) keeps the true class clearly ahead.
//! - `ts`: τ*(x) is the symmetric temperature in [0.05, 50] at which plain temperature scaling
//!   softmax(f/τ) gives the sample's non-GT probabilities their largest variance (an interior
//!   maximum when the teacher is right: the variance tends to 0 as τ → 0, where all mass goes to
//!   y, and as τ → ∞, where it goes uniform); then τ2 = clamp(τ*, τ2_min, τ1) with τ1 unchanged.
//!   (The alternative, τ2 = τ* with a per-sample τ1 = max(τ1, τ*), was not chosen: it would make
//!   τ1 per-sample too and, for τ* > τ1, turn the sample into plain KD at τ*.) Fallback τ2 = τ1
//!   where the teacher is wrong.
//! - `ts_order` (default): `ts`'s τ*, kept within `order`'s feasible interval: τ2 = clamp(τ*, floor, τ1), so
//!   the temperature comes from an interior optimum (of symmetric scaling) and the true class stays
//!   first by `margin`. Fallback as `order`.
//! - `bounded`: the previous rule, kept for comparison: the variance maximiser over [τ2_min, τ1]
//!   with no constraint and no fallback. It is degenerate: the variance grows as τ2 falls, so it
//!   nearly always returns τ2_min, and the target then often ranks a wrong class first.
//!
//! `center_logits`: subtract each sample's mean teacher logit before choosing τ2 and building the
//! target (see `ats`; the default uses the raw logits, as the authors' code).
//!
//! The search, per sample and without gradient: the variance is evaluated on a grid of `GRID` = 64
//! log-spaced values over the sample's interval; the best grid point's neighbours bracket a
//! golden-section search of `ITERS` = 30 steps (the bracket shrinks by 0.618³⁰ ≈ 5·10⁻⁷); the
//! result is kept only if it beats the best grid point. Nothing assumes the variance unimodal
//! beyond the grid's resolution. Cost: GRID + 2·ITERS + 1 = 125 softmaxes of the teacher's logits
//! per sample, a few percent of a ResNet student's step on CIFAR-100 but ten times an MLP
//! student's; `ts` and `ts_order` remember τ* per logits row (`TauStarMemo`), so with the logit
//! cache the search runs once per (sample, view), not once per epoch.
//!
//! Every epoch the run records the distribution of the chosen τ2 (`isats_tau2`: quantiles, a
//! histogram over [τ2_min, τ1], and the shares of samples `fallback` (given τ1 by the fallback),
//! `at_floor` (`order`: at the constraint's floor, where the floor is above τ2_min), `at_tau2_min`
//! and `at_tau1` (the search chose a bound; fallbacks not counted) and `interior`, which add up to
//! 1), and how often the target does not rank the true class first (`ats_target`, as `ats`).
use super::ats::{self, log_ats, prepare, Flips};
use super::common::gt_mask;
use super::{incompatible, positive, weight, LossInput, Method, MethodParams};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

pub(crate) const GRID: i64 = 64;
pub(crate) const ITERS: usize = 30;
/// `order`: the default least log-probability gap between the true class and the next in the
/// target.
pub const DEFAULT_MARGIN: f64 = 1e-3;
/// `ts`: the range searched for the symmetric temperature τ*.
pub const TS_RANGE: (f64, f64) = (0.05, 50.0);

/// How τ2 is chosen per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Order,
    Ts,
    TsOrder,
    Bounded,
}

impl Rule {
    pub(crate) const ALL: [Rule; 4] = [Rule::Order, Rule::Ts, Rule::TsOrder, Rule::Bounded];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Order => "order",
            Rule::Ts => "ts",
            Rule::TsOrder => "ts_order",
            Rule::Bounded => "bounded",
        }
    }

    /// Whether the rule keeps the true class first by `margin`.
    pub(crate) fn uses_margin(self) -> bool {
        matches!(self, Rule::Order | Rule::TsOrder)
    }

    pub fn parse(s: &str) -> Result<Rule> {
        match Rule::ALL.into_iter().find(|r| r.name() == s) {
            Some(r) => Ok(r),
            None => {
                let names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                bail!("unknown ISATS rule '{s}': choose one of {}", names.join(", "))
            }
        }
    }
}

pub(crate) struct Isats {
    pub rule: Rule,
    pub tau1: f64,
    pub tau2_min: f64,
    pub student_tau: f64,
    pub lambda: f64,
    pub center_logits: bool,
    /// `order` and `ts_order` only.
    pub margin: f64,
    last: Vec<f64>,
    /// This epoch's (τ2, floor, fallback as 0/1) per sample.
    epoch: Vec<[f64; 3]>,
    flips: Flips,
    tau_star: TauStarMemo,
}

/// isats's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The student's temperature s_τ.
    pub student_tau: f64,
    /// Temperature of the teacher's true-class logit.
    pub tau1: f64,
    /// Lower end of the per-sample τ2 search.
    pub tau2_min: f64,
    /// Weight of the KD term; CE gets 1 − λ.
    pub lambda: f64,
    /// How τ2 is chosen per sample (`Rule`'s names).
    pub rule: String,
    /// Subtract each sample's mean teacher logit first.
    pub center_logits: bool,
    /// `order` and `ts_order` only: the least log-probability gap kept between the true class and
    /// the next (default `DEFAULT_MARGIN`).
    pub margin: Option<f64>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            student_tau: 1.0,
            tau1: 4.0,
            tau2_min: 0.5,
            lambda: 0.5,
            rule: Rule::TsOrder.name().into(),
            center_logits: false,
            margin: None,
        }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        let rule = Rule::parse(&self.rule)?;
        let student_tau = positive("student_tau", self.student_tau)?;
        let tau1 = positive("tau1", self.tau1)?;
        let tau2_min = positive("tau2_min", self.tau2_min)?;
        let margin = positive("margin", self.margin.unwrap_or(DEFAULT_MARGIN))?;
        ats::check(tau1, tau2_min, weight("lambda", self.lambda)?, "tau2_min")?;
        if self.margin.is_some() && !rule.uses_margin() {
            return incompatible(
                "margin applies to the ISATS rules 'order' and 'ts_order' only",
                format!("margin = {margin} with rule = '{}'", rule.name()),
            );
        }
        Ok(Box::new(Isats {
            margin,
            rule,
            tau1,
            tau2_min,
            student_tau,
            lambda: self.lambda,
            center_logits: self.center_logits,
            last: vec![],
            epoch: vec![],
            flips: Flips::default(),
            tau_star: TauStarMemo::default(),
        }))
    }
    /// The values in effect (the margin resolved, present only for the rules that use it) and the
    /// search's fixed constants, which change what a run computes and so belong to its id.
    fn record(&self) -> serde_json::Value {
        let Ok(rule) = Rule::parse(&self.rule) else {
            return serde_json::to_value(self).expect("hyper-parameters serialise");
        };
        let margin = self.margin.unwrap_or(DEFAULT_MARGIN);
        let mut h = serde_json::json!({"rule": rule.name(), "tau1": self.tau1, "tau2_min": self.tau2_min,
            "student_tau": self.student_tau, "lambda": self.lambda, "center_logits": self.center_logits,
            "search": {"grid": GRID, "grid_spacing": "log", "golden_section_iterations": ITERS}});
        match rule {
            Rule::Order => {
                h["margin"] = serde_json::json!(margin);
                h["fallback"] = "tau2 = tau1 where (f_y - max_{c!=y} f_c)/tau1 < margin".into();
            }
            Rule::TsOrder => {
                h["margin"] = serde_json::json!(margin);
                h["ts_range"] = serde_json::json!([TS_RANGE.0, TS_RANGE.1]);
                h["ts_tau2"] = "clamp(tau*, order floor, tau1)".into();
                h["fallback"] = "tau2 = tau1 where (f_y - max_{c!=y} f_c)/tau1 < margin".into();
            }
            Rule::Ts => {
                h["ts_range"] = serde_json::json!([TS_RANGE.0, TS_RANGE.1]);
                h["ts_tau2"] = "clamp(tau*, tau2_min, tau1)".into();
                h["fallback"] = "tau2 = tau1 where the teacher is wrong".into();
            }
            Rule::Bounded => {}
        }
        h
    }
}

/// Population variance of the non-GT probabilities of softmax(f with f_y/τ1 and f_c/τ2) for every
/// candidate pair: `t` (N, C), `y` (N,), `tau1` and `tau2` (N, K) → (N, K).
fn variance_at(t: &Tensor, y: &Tensor, tau1: &Tensor, tau2: &Tensor) -> Tensor {
    let (n, c) = (t.size()[0], t.size()[1]);
    let k = tau2.size()[1];
    let idx = y.view([n, 1, 1]).expand([n, k, 1], false);
    let gt = (t.gather(1, &y.view([n, 1]), false) / tau1).view([n, k, 1]);
    // (N, K, C): every logit over its candidate τ2, then the true class's over τ1.
    let z = (t.unsqueeze(1) / tau2.unsqueeze(2)).scatter(2, &idx, &gt.contiguous());
    let p = z.softmax(2, t.kind());
    let others =
        Tensor::ones([n, 1, c], (Kind::Bool, t.device())).scatter_value(2, &y.view([n, 1, 1]), 0.0).to_kind(t.kind());
    let m = (c - 1) as f64;
    let mean = (&p * &others).sum_dim_intlist(2, true, t.kind()) / m;
    ((p - mean).square() * others).sum_dim_intlist(2, false, t.kind()) / m
}

/// Population variance of the non-GT probabilities of the ATS target for every candidate τ2:
/// `t` (N, C), `y` (N,), `tau2` (N, K) → (N, K).
pub(crate) fn nongt_variance(t: &Tensor, y: &Tensor, tau1: f64, tau2: &Tensor) -> Tensor {
    let tau1 = Tensor::full(tau2.size(), tau1, (t.kind(), t.device()));
    variance_at(t, y, &tau1, tau2)
}

/// The same for plain temperature scaling softmax(f/τ): `tau` (N, K) → (N, K).
pub(crate) fn ts_variance(t: &Tensor, y: &Tensor, tau: &Tensor) -> Tensor {
    variance_at(t, y, tau, tau)
}

/// Per sample, the x ∈ [lo_i, hi_i] that maximises `f` ((N, K) candidates → (N, K) values): a
/// log-spaced grid, then golden-section between the best grid point's neighbours. (N,).
pub(crate) fn maximise(f: &dyn Fn(&Tensor) -> Tensor, lo: &Tensor, hi: &Tensor) -> Tensor {
    let (kind, dev) = (lo.kind(), lo.device());
    let (lo, hi) = (lo.unsqueeze(1), hi.unsqueeze(1));
    let steps = (Tensor::arange(GRID, (kind, dev)) / (GRID - 1) as f64).unsqueeze(0);
    let (llo, lhi) = (lo.log(), hi.log());
    let grid = (&llo + (&lhi - &llo) * steps).exp().clamp_tensor(Some(&lo), Some(&hi));
    let vals = f(&grid);
    let best = vals.argmax(1, true);
    let best_val = vals.gather(1, &best, false);
    let at = |i: &Tensor| grid.gather(1, &i.clamp(0, GRID - 1), false);
    let mut a = at(&(&best - 1));
    let mut b = at(&(&best + 1));
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..ITERS {
        let c = &b - (&b - &a) * phi;
        let d = &a + (&b - &a) * phi;
        let left = f(&c).ge_tensor(&f(&d)); // the maximum lies in [a, d]
        b = d.where_self(&left, &b);
        a = a.where_self(&left, &c);
    }
    let mid: Tensor = (&a + &b) / 2.0;
    let mid_val = f(&mid);
    mid.where_self(&mid_val.ge_tensor(&best_val), &at(&best)).clamp_tensor(Some(&lo), Some(&hi)).squeeze_dim(1)
}

/// A rule's choice for a batch, all (N,).
pub(crate) struct Choice {
    pub tau2: Tensor,
    /// The lower end of the interval searched (`order`: the constraint's floor, at least τ2_min;
    /// the other rules: τ2_min; fallbacks: τ1).
    pub floor: Tensor,
    /// Samples given τ2 = τ1 by the fallback (bool).
    pub fallback: Tensor,
}

/// `ts`: each sample's τ* ∈ `TS_RANGE` maximising the non-GT variance of softmax(f/τ). (N,).
pub fn ts_temperature(t: &Tensor, y: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let t = &t.detach();
    let (n, kind, dev) = (t.size()[0], t.kind(), t.device());
    let lo = Tensor::full([n], TS_RANGE.0, (kind, dev));
    let hi = Tensor::full([n], TS_RANGE.1, (kind, dev));
    maximise(&|tau: &Tensor| ts_variance(t, y, tau), &lo, &hi)
}

/// Remembers each sample's τ* by the content of its teacher logits and label. τ* depends on
/// nothing else, and when the teacher's logits come from the logit cache the same rows recur every
/// epoch, so the search (125 softmaxes per sample, ten times an MLP student's whole step) runs
/// once per (sample, view) instead of once per epoch. Exact: a hit returns the value computed
/// before, and the search treats every row on its own, so computing a row alone or within a batch
/// gives the same bits (tested). Rows that never recur (continuous crops, a teacher run on the fly
/// with dropout) only cost a hash per row; the memo stops growing at `TAU_STAR_MEMO_CAP` entries.
#[derive(Default)]
pub struct TauStarMemo {
    map: std::collections::HashMap<u128, f64>,
    pub hits: u64,
    pub misses: u64,
}

/// At most this many remembered τ* (~48 bytes each: ~100 MB).
pub(crate) const TAU_STAR_MEMO_CAP: usize = 1 << 21;

impl TauStarMemo {
    /// A 128-bit key of a row's exact values (as f64: exact for f16/f32 rows) and its label.
    fn key(row: &[f64], label: i64) -> u128 {
        use std::hash::{Hash, Hasher};
        let half = |salt: u64| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, label).hash(&mut h);
            row.iter().for_each(|v| v.to_bits().hash(&mut h));
            h.finish() as u128
        };
        (half(0x006b_646c_6162) << 64) | half(0x0074_6175_7374_6172)
    }

    /// `ts_temperature(t, y)`, computing only the rows not seen before.
    pub fn tau_star(&mut self, t: &Tensor, y: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        let (n, c) = (t.size()[0], t.size()[1] as usize);
        let rows = Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu).reshape([-1]))
            .unwrap_or_default();
        let labels = Vec::<i64>::try_from(y.to_device(tch::Device::Cpu)).unwrap_or_default();
        let keys: Vec<u128> = (0..n as usize).map(|i| Self::key(&rows[i * c..(i + 1) * c], labels[i])).collect();
        let mut values: Vec<Option<f64>> = keys.iter().map(|k| self.map.get(k).copied()).collect();
        let missing: Vec<i64> = (0..n).filter(|&i| values[i as usize].is_none()).collect();
        if !missing.is_empty() {
            let computed = if missing.len() == n as usize {
                ts_temperature(t, y)
            } else {
                let idx = Tensor::from_slice(&missing).to_device(t.device());
                ts_temperature(&t.index_select(0, &idx), &y.index_select(0, &idx))
            };
            let computed =
                Vec::<f64>::try_from(computed.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default();
            for (&i, v) in missing.iter().zip(computed) {
                values[i as usize] = Some(v);
                if self.map.len() < TAU_STAR_MEMO_CAP {
                    self.map.insert(keys[i as usize], v);
                }
            }
        }
        self.misses += missing.len() as u64;
        self.hits += (n as usize - missing.len()) as u64;
        let values: Vec<f64> = values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect();
        Tensor::from_slice(&values).to_kind(t.kind()).to_device(t.device())
    }
}

/// `order`'s feasible floor per sample and where the teacher is right by the margin at τ2 = τ1
/// (elsewhere the floor is τ1: the fallback). The gap f_y/τ1 − m/τ2 ≥ margin holds for every
/// τ2 ∈ [floor, τ1]: if m ≤ 0 the gap only grows as τ2 falls (floor τ2_min); if m > 0,
/// floor = max(τ2_min, τ1·m / (f_y − margin·τ1)).
fn order_floor(fy: &Tensor, m: &Tensor, tau1: f64, tau2_min: f64, margin: f64) -> (Tensor, Tensor) {
    let full = |v: f64| Tensor::full(fy.size(), v, (fy.kind(), fy.device()));
    let ok = (fy - m).ge(margin * tau1);
    // Where m > 0 and the teacher is right by the margin, f_y − margin·τ1 ≥ m > 0.
    let floor = (m * tau1 / (fy - margin * tau1).clamp_min(1e-30)).clamp(tau2_min, tau1);
    let floor = floor.where_self(&m.gt(0.0), &full(tau2_min)).where_self(&ok, &full(tau1));
    (floor, ok)
}

/// The per-sample τ2 of `rule` (teacher logits `t` as given: centre them first if wanted);
/// `margin` is used by `order` and `ts_order` only.
pub(crate) fn choose(rule: Rule, t: &Tensor, y: &Tensor, tau1: f64, tau2_min: f64, margin: f64) -> Choice {
    choose_with(rule, t, y, tau1, tau2_min, margin, &mut |t, y| ts_temperature(t, y))
}

/// `choose`, with `tau_star` computing `ts_temperature` (the rules `ts` and `ts_order` call it).
fn choose_with(
    rule: Rule,
    t: &Tensor,
    y: &Tensor,
    tau1: f64,
    tau2_min: f64,
    margin: f64,
    tau_star: &mut dyn FnMut(&Tensor, &Tensor) -> Tensor,
) -> Choice {
    let _g = tch::no_grad_guard();
    let t = &t.detach();
    let (n, kind, dev) = (t.size()[0], t.kind(), t.device());
    let full = |v: f64| Tensor::full([n], v, (kind, dev));
    let var = |tau2: &Tensor| nongt_variance(t, y, tau1, tau2);
    let fy = t.gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
    let m = t.masked_fill(&gt_mask(t, y), f64::NEG_INFINITY).amax([1], false);
    match rule {
        Rule::Bounded => {
            let lo = full(tau2_min);
            Choice { tau2: maximise(&var, &lo, &full(tau1)), floor: lo, fallback: full(0.0).to_kind(Kind::Bool) }
        }
        Rule::Order => {
            let (floor, ok) = order_floor(&fy, &m, tau1, tau2_min, margin);
            Choice { tau2: maximise(&var, &floor, &full(tau1)), floor, fallback: ok.logical_not() }
        }
        Rule::TsOrder => {
            let (floor, ok) = order_floor(&fy, &m, tau1, tau2_min, margin);
            let tau2 = tau_star(t, y).clamp_tensor(Some(&floor), Some(&full(tau1))).where_self(&ok, &full(tau1));
            Choice { tau2, floor, fallback: ok.logical_not() }
        }
        Rule::Ts => {
            let right = fy.gt_tensor(&m);
            let tau2 = tau_star(t, y).clamp(tau2_min, tau1).where_self(&right, &full(tau1));
            Choice { tau2, floor: full(tau2_min).where_self(&right, &full(tau1)), fallback: right.logical_not() }
        }
    }
}

/// The per-sample τ2 of `rule`: (N,).
pub fn choose_tau2(rule: Rule, t: &Tensor, y: &Tensor, tau1: f64, tau2_min: f64, margin: f64) -> Tensor {
    choose(rule, t, y, tau1, tau2_min, margin).tau2
}

/// Summary of an epoch's choices, each (τ2, floor, fallback as 0/1): mean, spread, quantiles and a
/// 10-bin histogram of τ2 over [τ2_min, τ1], and the shares `fallback`, `at_floor`, `at_tau2_min`,
/// `at_tau1` and `interior` (each sample counted once, in that order of precedence).
pub(crate) fn summarise(rows: &[[f64; 3]], lo: f64, hi: f64) -> serde_json::Value {
    if rows.is_empty() {
        return serde_json::Value::Null;
    }
    let mut v: Vec<f64> = rows.iter().map(|r| r[0]).collect();
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
    // 0 fallback, 1 at the floor, 2 at τ2_min, 3 at τ1, 4 interior.
    let mut kinds = [0usize; 5];
    for &[tau2, floor, fallback] in rows {
        let k = if fallback > 0.5 {
            0
        } else if floor > lo + tol && tau2 <= floor + tol {
            1
        } else if tau2 <= lo + tol {
            2
        } else if tau2 >= hi - tol {
            3
        } else {
            4
        };
        kinds[k] += 1;
    }
    let share = |k: usize| kinds[k] as f64 / n;
    serde_json::json!({
        "mean": mean, "std": std, "min": v[0], "p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "max": v[v.len() - 1],
        "hist_edges": (0..=10).map(|i| lo + (hi - lo) * i as f64 / 10.0).collect::<Vec<_>>(),
        "hist_counts": counts,
        "fallback": share(0), "at_floor": share(1), "at_tau2_min": share(2), "at_tau1": share(3), "interior": share(4),
    })
}

impl Method for Isats {
    fn name(&self) -> &'static str {
        "isats"
    }
    /// Needs k ≥ 2 from a top-k teacher cache: its τ2 rules read the spread of the non-target probabilities.
    fn min_topk(&self) -> usize {
        2
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let t = prepare(x.teacher, self.center_logits);
        let memo = &mut self.tau_star;
        let ch = choose_with(self.rule, &t, x.labels, self.tau1, self.tau2_min, self.margin, &mut |t, y| {
            memo.tau_star(t, y)
        });
        let rows = Tensor::stack(&[&ch.tau2, &ch.floor, &ch.fallback.to_kind(ch.tau2.kind())], 1);
        let rows =
            Vec::<Vec<f64>>::try_from(rows.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default();
        self.last = rows.iter().map(|r| r[0]).collect();
        self.epoch.extend(rows.iter().map(|r| [r[0], r[1], r[2]]));
        let lp = log_ats(&t, x.labels, self.tau1, &ch.tau2.unsqueeze(1));
        self.flips.add(&t, x.labels, &lp);
        ats::terms(x, &lp, self.student_tau, self.lambda)
    }
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        Some(("tau2".into(), self.last.clone()))
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        let s = summarise(&self.epoch, self.tau2_min, self.tau1);
        self.epoch.clear();
        let flips = self.flips.take();
        Some(
            serde_json::json!({"isats_tau2": s, "target_not_true_class": flips["target_not_true_class"], "ats_target": flips,
                "tau_star_memo": {"hits": self.tau_star.hits, "misses": self.tau_star.misses}}),
        )
    }
}
