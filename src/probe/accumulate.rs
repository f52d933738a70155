//! Streaming accumulators: samples arrive in chunks, statistics are kept as running sums, and
//! nothing of size N × C (let alone N × C × |τ|) is ever held.
use super::stats::{self, soft_stats};
use super::{PairReport, PairTau, TauReport, TeacherReport};

/// Confidence bins of the expected calibration error: 15 equal-width bins (lo, hi].
pub(crate) const ECE_BINS: usize = 15;

#[derive(Clone, Debug, Default)]
struct TauSums {
    p_true: f64,
    nongt_mean: f64,
    nongt_std: f64,
    nongt_var: f64,
    nongt_entropy: f64,
    nll: f64,
    bin_count: [u64; ECE_BINS],
    bin_conf: [f64; ECE_BINS],
    bin_correct: [u64; ECE_BINS],
    /// Class affinity: per true class k, the sum of q̂ over its samples (C × C, row k).
    affinity: Vec<f64>,
}

/// Everything the probe learns about one teacher.
pub(crate) struct TeacherAccumulator {
    pub name: String,
    pub params: Option<u64>,
    pub classes: usize,
    taus: Vec<f64>,
    n: usize,
    correct: usize,
    gap: f64,
    logit_std: f64,
    per_tau: Vec<TauSums>,
    class_count: Vec<u64>,
    scratch: Vec<f64>,
}

impl TeacherAccumulator {
    pub fn new(name: String, params: Option<u64>, classes: usize, taus: &[f64]) -> Self {
        let per_tau =
            taus.iter().map(|_| TauSums { affinity: vec![0.0; classes * classes], ..Default::default() }).collect();
        TeacherAccumulator {
            name,
            params,
            classes,
            taus: taus.to_vec(),
            n: 0,
            correct: 0,
            gap: 0.0,
            logit_std: 0.0,
            per_tau,
            class_count: vec![0; classes],
            scratch: vec![0.0; classes],
        }
    }

    /// Adds one sample: logits `f` (length C) with true class `y`.
    pub(crate) fn add(&mut self, f: &[f64], y: usize) {
        let c = self.classes;
        self.n += 1;
        self.class_count[y] += 1;
        let pred = stats::argmax(f);
        let correct = pred == y;
        self.correct += usize::from(correct);
        let max_other =
            f.iter().enumerate().filter(|(i, _)| *i != y).map(|(_, &v)| v).fold(f64::NEG_INFINITY, f64::max);
        self.gap += f[y] - max_other;
        let k = (c - 1) as f64;
        let mean = (f.iter().sum::<f64>() - f[y]) / k;
        let var = f.iter().enumerate().filter(|(i, _)| *i != y).map(|(_, &v)| (v - mean) * (v - mean)).sum::<f64>() / k;
        self.logit_std += var.sqrt();
        for (t, sums) in self.taus.iter().zip(self.per_tau.iter_mut()) {
            let s = soft_stats(f, y, *t);
            sums.p_true += s.p_true;
            sums.nongt_mean += s.nongt_mean;
            sums.nongt_var += s.nongt_var;
            sums.nongt_std += s.nongt_var.sqrt();
            sums.nongt_entropy += s.nongt_entropy;
            sums.nll += s.nll;
            let bin = ((s.confidence * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
            sums.bin_count[bin] += 1;
            sums.bin_conf[bin] += s.confidence;
            sums.bin_correct[bin] += u64::from(correct);
            stats::nongt_distribution(f, y, *t, &mut self.scratch);
            for (a, q) in sums.affinity[y * c..(y + 1) * c].iter_mut().zip(&self.scratch) {
                *a += q;
            }
        }
    }

    /// The class-affinity matrix at τ index `ti`: A[k][c] = mean q̂_c over samples of class k
    /// (NaN on the diagonal, where q̂ has no entry, and in rows of classes without samples).
    pub fn affinity(&self, ti: usize) -> Vec<f64> {
        let c = self.classes;
        let mut a = self.per_tau[ti].affinity.clone();
        for k in 0..c {
            for j in 0..c {
                a[k * c + j] = if j == k || self.class_count[k] == 0 {
                    f64::NAN
                } else {
                    a[k * c + j] / self.class_count[k] as f64
                };
            }
        }
        a
    }

    pub fn report(&self) -> TeacherReport {
        let n = self.n.max(1) as f64;
        let per_tau: Vec<TauReport> = self
            .taus
            .iter()
            .zip(&self.per_tau)
            .map(|(&tau, s)| {
                let ece = (0..ECE_BINS)
                    .filter(|&b| s.bin_count[b] > 0)
                    .map(|b| {
                        let cnt = s.bin_count[b] as f64;
                        (cnt / n) * (s.bin_correct[b] as f64 / cnt - s.bin_conf[b] / cnt).abs()
                    })
                    .sum();
                TauReport {
                    tau,
                    p_true: s.p_true / n,
                    nongt_mean: s.nongt_mean / n,
                    nongt_std: s.nongt_std / n,
                    nongt_var: s.nongt_var / n,
                    nongt_entropy: s.nongt_entropy / n,
                    nll: s.nll / n,
                    ece,
                }
            })
            .collect();
        let best_tau_nll = per_tau.iter().min_by(|a, b| a.nll.total_cmp(&b.nll)).map(|t| t.tau).unwrap_or(f64::NAN);
        TeacherReport {
            name: self.name.clone(),
            classes: self.classes,
            samples: self.n,
            params: self.params,
            accuracy: self.correct as f64 / n,
            logit_gap: self.gap / n,
            logit_nongt_std: self.logit_std / n,
            best_tau_nll,
            per_tau,
        }
    }
}

/// Rank agreement between two teachers on the non-GT classes.
#[derive(Default)]
pub(crate) struct PairAccumulator {
    pub a: usize,
    pub b: usize,
    n: usize,
    spearman: (f64, usize),
    kendall: (f64, usize),
    top1: usize,
    topk: f64,
    xa: Vec<f64>,
    xb: Vec<f64>,
}

impl PairAccumulator {
    pub fn new(a: usize, b: usize) -> Self {
        PairAccumulator { a, b, ..Default::default() }
    }

    /// Adds one sample seen by both teachers.
    pub(crate) fn add(&mut self, fa: &[f64], fb: &[f64], y: usize) {
        self.n += 1;
        stats::without(fa, y, &mut self.xa);
        stats::without(fb, y, &mut self.xb);
        if let Some(r) = stats::spearman(&self.xa, &self.xb) {
            self.spearman.0 += r;
            self.spearman.1 += 1;
        }
        if let Some(t) = stats::kendall_tau_b(&self.xa, &self.xb) {
            self.kendall.0 += t;
            self.kendall.1 += 1;
        }
        self.top1 += usize::from(stats::argmax(&self.xa) == stats::argmax(&self.xb));
        let k = 5.min(self.xa.len());
        let (ta, tb) = (stats::top_k(&self.xa, k), stats::top_k(&self.xb, k));
        self.topk += ta.iter().filter(|i| tb.contains(i)).count() as f64 / k as f64;
    }

    pub fn report(&self, teachers: &[TeacherAccumulator], taus: &[f64]) -> PairReport {
        let (ta, tb) = (&teachers[self.a], &teachers[self.b]);
        let mean = |(s, k): (f64, usize)| (k > 0).then(|| s / k as f64);
        let n = self.n.max(1) as f64;
        let per_tau = (0..taus.len())
            .map(|i| {
                let (aa, ab) = (ta.affinity(i), tb.affinity(i));
                let (x, y): (Vec<f64>, Vec<f64>) =
                    aa.iter().zip(&ab).filter(|(p, q)| p.is_finite() && q.is_finite()).map(|(p, q)| (*p, *q)).unzip();
                PairTau { tau: taus[i], affinity_corr: stats::pearson(&x, &y) }
            })
            .collect();
        PairReport {
            a: ta.name.clone(),
            b: tb.name.clone(),
            spearman: mean(self.spearman),
            kendall: mean(self.kendall),
            top1_agree: self.top1 as f64 / n,
            top5_overlap: self.topk / n,
            per_tau,
        }
    }
}
