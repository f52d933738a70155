//! Per-sample building blocks of the probe, in f64: the softened distribution at a temperature and
//! its non-ground-truth statistics, ranks with ties, Spearman's ρ and Kendall's τ-b. Everything is
//! computed from logits in log space, so τ from 0.05 to 20 and logits of ±1e4 neither overflow nor
//! lose the non-GT tail.

/// Statistics of one sample's softened output p = softmax(f/τ) with true class y.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SoftStats {
    pub p_true: f64,
    /// e(q) = (1 − p_y)/(C − 1): the mean of the non-GT entries.
    pub nongt_mean: f64,
    /// Population variance of the C − 1 non-GT entries p_c.
    pub nongt_var: f64,
    /// Entropy (natural log) of the non-GT entries renormalised to sum 1 (q̂).
    pub nongt_entropy: f64,
    /// −log p_y.
    pub nll: f64,
    /// max_c p_c (the confidence used by ECE).
    pub confidence: f64,
}

/// log Σ exp(x_i/τ) over the entries of `x` other than `skip`, with the maximum `m` of those entries.
fn log_sum_exp(x: &[f64], tau: f64, skip: Option<usize>) -> (f64, f64) {
    let m = x.iter().enumerate().filter(|(i, _)| Some(*i) != skip).map(|(_, &v)| v).fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().enumerate().filter(|(i, _)| Some(*i) != skip).map(|(_, &v)| ((v - m) / tau).exp()).sum();
    (m, s.ln())
}

/// Softened-output statistics of logits `f` (length C ≥ 2) at temperature `tau` for true class `y`.
pub(crate) fn soft_stats(f: &[f64], y: usize, tau: f64) -> SoftStats {
    let c = f.len();
    let (m, lse) = log_sum_exp(f, tau, None);
    let logp = |i: usize| (f[i] - m) / tau - lse;
    let p_true = logp(y).exp();
    let confidence = (-lse).exp(); // the largest entry has (f_i − m) = 0
                                   // Non-GT entries: mean and population variance, two-pass.
    let k = (c - 1) as f64;
    let mut sum = 0.0;
    for i in (0..c).filter(|&i| i != y) {
        sum += logp(i).exp();
    }
    let mean = sum / k;
    let mut var = 0.0;
    for i in (0..c).filter(|&i| i != y) {
        let d = logp(i).exp() - mean;
        var += d * d;
    }
    var /= k;
    // q̂ = softmax over the non-GT logits alone: equal to p_c/(1 − p_y), but exact even when
    // p_y rounds to 1.
    let (mq, lq) = log_sum_exp(f, tau, Some(y));
    let mut entropy = 0.0;
    for i in (0..c).filter(|&i| i != y) {
        let lqi = (f[i] - mq) / tau - lq;
        let qi = lqi.exp();
        if qi > 0.0 {
            entropy -= qi * lqi;
        }
    }
    SoftStats { p_true, nongt_mean: mean, nongt_var: var, nongt_entropy: entropy.max(0.0), nll: -logp(y), confidence }
}

/// q̂: the non-GT entries of softmax(f/τ) renormalised to sum 1, written into `out[c]` for c ≠ y
/// (out[y] = 0).
pub(crate) fn nongt_distribution(f: &[f64], y: usize, tau: f64, out: &mut [f64]) {
    let (m, l) = log_sum_exp(f, tau, Some(y));
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i == y { 0.0 } else { ((f[i] - m) / tau - l).exp() };
    }
}

/// Index of the largest entry (the first among equals), as NumPy's argmax.
pub(crate) fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// The entries of `f` other than `y`, in class order.
pub fn without(f: &[f64], y: usize, out: &mut Vec<f64>) {
    out.clear();
    out.extend(f.iter().enumerate().filter(|(i, _)| *i != y).map(|(_, &v)| v));
}

/// Ranks (1-based) with ties given their average rank.
pub(crate) fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Pearson correlation; None when either side is constant (or there are fewer than 2 values).
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    if a.len() < 2 {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return None;
    }
    Some((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Spearman's ρ (Pearson correlation of average ranks); None when undefined.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Kendall's τ-b in O(n log n) (Knight's algorithm, as SciPy uses); None when undefined.
pub(crate) fn kendall_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len();
    if n < 2 {
        return None;
    }
    // Sort by (a, b); count pairs tied in a, and tied in both.
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&i, &j| a[i].total_cmp(&a[j]).then(b[i].total_cmp(&b[j])));
    let pairs = |run: u64| run * (run - 1) / 2;
    let (mut tied_a, mut tied_ab) = (0u64, 0u64);
    let (mut ra, mut rab) = (1u64, 1u64);
    for k in 1..n {
        let (p, q) = (idx[k - 1], idx[k]);
        if a[p] == a[q] {
            ra += 1;
            if b[p] == b[q] {
                rab += 1;
            } else {
                tied_ab += pairs(rab);
                rab = 1;
            }
        } else {
            tied_a += pairs(ra);
            tied_ab += pairs(rab);
            ra = 1;
            rab = 1;
        }
    }
    tied_a += pairs(ra);
    tied_ab += pairs(rab);
    // Sort by b with a merge sort, counting the swaps: the discordant pairs.
    let mut ys: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
    let mut buf = ys.clone();
    let swaps = merge_count(&mut ys, &mut buf);
    let mut tied_b = 0u64;
    let mut rb = 1u64;
    for k in 1..n {
        if ys[k] == ys[k - 1] {
            rb += 1;
        } else {
            tied_b += pairs(rb);
            rb = 1;
        }
    }
    tied_b += pairs(rb);
    let total = pairs(n as u64);
    let concordant_minus_discordant =
        total as f64 - tied_a as f64 - tied_b as f64 + tied_ab as f64 - 2.0 * swaps as f64;
    let denom = ((total - tied_a) as f64 * (total - tied_b) as f64).sqrt();
    if denom == 0.0 {
        return None;
    }
    Some((concordant_minus_discordant / denom).clamp(-1.0, 1.0))
}

/// Sorts `v` ascending, returning the number of inversions (pairs i < j with v[i] > v[j]).
fn merge_count(v: &mut [f64], buf: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut swaps = merge_count(&mut v[..mid], &mut buf[..mid]) + merge_count(&mut v[mid..], &mut buf[mid..]);
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[j] < v[i] {
            buf[k] = v[j];
            swaps += (mid - i) as u64;
            j += 1;
        } else {
            buf[k] = v[i];
            i += 1;
        }
        k += 1;
    }
    buf[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    buf[k..k + n - j].copy_from_slice(&v[j..n]);
    v.copy_from_slice(&buf[..n]);
    swaps
}

/// The indices of the `k` largest entries (ties: lower index first, as a stable sort by
/// descending value).
pub fn top_k(x: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kendall's τ-b by its O(n²) definition, to check the fast version.
    fn kendall_naive(a: &[f64], b: &[f64]) -> Option<f64> {
        let n = a.len();
        let (mut conc, mut disc, mut ta, mut tb) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            for j in i + 1..n {
                let (da, db) = (a[i] - a[j], b[i] - b[j]);
                if da == 0.0 && db == 0.0 {
                    continue;
                } else if da == 0.0 {
                    ta += 1.0;
                } else if db == 0.0 {
                    tb += 1.0;
                } else if da * db > 0.0 {
                    conc += 1.0;
                } else {
                    disc += 1.0;
                }
            }
        }
        let d = ((conc + disc + ta) * (conc + disc + tb)).sqrt();
        (d > 0.0).then(|| (conc - disc) / d)
    }

    #[test]
    fn kendall_fast_equals_definition_with_ties() {
        let mut r = crate::util::rng::Rng::new(9);
        for n in [2usize, 3, 5, 9, 20, 57] {
            for _ in 0..20 {
                let a: Vec<f64> = (0..n).map(|_| r.below(4) as f64).collect();
                let b: Vec<f64> = (0..n).map(|_| r.below(5) as f64).collect();
                match (kendall_tau_b(&a, &b), kendall_naive(&a, &b)) {
                    (Some(x), Some(y)) => assert!((x - y).abs() < 1e-12, "{a:?} {b:?}: {x} vs {y}"),
                    (x, y) => assert_eq!(x.is_none(), y.is_none(), "{a:?} {b:?}"),
                }
            }
        }
        assert_eq!(kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
    }

    #[test]
    fn ranks_and_spearman_by_hand() {
        assert_eq!(average_ranks(&[10.0, 30.0, 20.0, 30.0]), vec![1.0, 3.5, 2.0, 3.5]);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap() - 1.0).abs() < 1e-12);
        // Ranks [1, 2, 3] vs [3, 1, 2]: ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·6/24 = −0.5.
        assert!((spearman(&[1.0, 2.0, 3.0], &[9.0, 1.0, 5.0]).unwrap() + 0.5).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), vec![1, 2, 3]);
    }

    #[test]
    fn soft_stats_by_hand() {
        // f = [ln 1, ln 2, ln 3, ln 4], τ = 1 → p = [0.1, 0.2, 0.3, 0.4]; y = 3.
        let f = [1f64.ln(), 2f64.ln(), 3f64.ln(), 4f64.ln()];
        let s = soft_stats(&f, 3, 1.0);
        assert!((s.p_true - 0.4).abs() < 1e-12);
        assert!((s.nongt_mean - 0.2).abs() < 1e-12);
        // non-GT [0.1, 0.2, 0.3]: population variance 0.02/3.
        assert!((s.nongt_var - 0.02 / 3.0).abs() < 1e-12);
        // q̂ = [1/6, 2/6, 3/6].
        let h: f64 = [1.0f64 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().map(|q| -q * q.ln()).sum();
        assert!((s.nongt_entropy - h).abs() < 1e-12);
        assert!((s.nll + 0.4f64.ln()).abs() < 1e-12);
        assert!((s.confidence - 0.4).abs() < 1e-12);
    }

    #[test]
    fn extreme_logits_and_temperatures_stay_finite() {
        let f = [1e4, -1e4, 0.0, 3.0];
        for tau in [0.05, 0.25, 1.0, 20.0] {
            for y in 0..4 {
                let s = soft_stats(&f, y, tau);
                for v in [s.p_true, s.nongt_mean, s.nongt_var, s.nongt_entropy, s.nll, s.confidence] {
                    assert!(v.is_finite(), "tau {tau} y {y}: {s:?}");
                }
            }
        }
        // p_y ≈ 1 in floating point, yet q̂ stays a distribution of the non-GT entries:
        // its entropy is that of softmax([-1e4, 0, 3]/0.05) ≈ 0.
        let s = soft_stats(&f, 0, 0.05);
        assert!(s.nll < 1e-12 && s.nongt_entropy < 1e-12);
        let s = soft_stats(&[1e4, 0.0, 0.0], 0, 1.0);
        assert!((s.nongt_entropy - 2f64.ln()).abs() < 1e-12, "{s:?}");
    }
}
