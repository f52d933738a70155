//! Pieces the methods share: temperature-scaled log-probabilities, KL divergence from
//! log-probabilities, the non-GT (q̂) and binary (b) distributions of DKD, logit standardisation,
//! and row-wise Pearson correlation. All work in the dtype of their inputs.
use tch::{Kind, Tensor};

/// A logit value that makes a class vanish from a softmax without producing infinities (whose
/// products with zero would give NaN in the loss or its gradient).
const MASKED: f64 = -1e9;

/// log softmax(z/τ) along classes.
pub(crate) fn log_softmax_t(z: &Tensor, tau: f64) -> Tensor {
    (z / tau).log_softmax(1, z.kind())
}

/// KL(p ‖ q) = Σ_c p_c (log p_c − log q_c), from log-probabilities, summed over classes and
/// averaged over the batch. Classes where p underflows to 0 contribute 0.
pub(crate) fn kl_from_log(log_p: &Tensor, log_q: &Tensor) -> Tensor {
    kl_rows(log_p, log_q).mean(log_p.kind())
}

/// KL(p_i ‖ q_i) of each row, (N, C) → (N,): for methods that weigh samples before the mean.
pub(crate) fn kl_rows(log_p: &Tensor, log_q: &Tensor) -> Tensor {
    (log_p.exp() * (log_p - log_q)).sum_dim_intlist(1, false, log_p.kind())
}

/// Mean cross-entropy on raw logits.
pub fn cross_entropy(z: &Tensor, y: &Tensor) -> Tensor {
    z.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)
}

/// A (N, C) boolean mask that is true at each row's true class.
pub(crate) fn gt_mask(z: &Tensor, y: &Tensor) -> Tensor {
    Tensor::zeros_like(z).scatter_value(1, &y.unsqueeze(1), 1.0).to_kind(Kind::Bool)
}

/// log q̂(z/τ): the log-softmax over the non-GT classes only (the true class gets ≈ −1e9).
pub(crate) fn log_nongt_t(z: &Tensor, y: &Tensor, tau: f64) -> Tensor {
    (z / tau).masked_fill(&gt_mask(z, y), MASKED).log_softmax(1, z.kind())
}

/// log b(z/τ) = log [p_y, 1 − p_y] as an (N, 2) tensor, computed stably from log-sum-exps.
pub(crate) fn log_binary_t(z: &Tensor, y: &Tensor, tau: f64) -> Tensor {
    let s = z / tau;
    let all = s.logsumexp([1], true);
    let log_py = s.gather(1, &y.unsqueeze(1), false) - &all;
    let log_rest = s.masked_fill(&gt_mask(z, y), MASKED).logsumexp([1], true) - &all;
    Tensor::cat(&[log_py, log_rest], 1)
}

/// Logit standardisation (Sun et al. 2024): (z − mean z) / (std z + 1e-7) per row, with the
/// population standard deviation.
pub fn standardize(z: &Tensor) -> Tensor {
    let mean = z.mean_dim(1, true, z.kind());
    let std = z.std_dim(1, false, true);
    (z - mean) / (std + 1e-7)
}

/// Pearson correlation of matching rows of `a` and `b` (N, C) → (N,). A constant row (a student
/// collapsed to one output, say) has correlation 0 and a finite gradient: the product of the sums
/// of squares is clamped before the square root, whose derivative at 0 is infinite (and NaN once
/// multiplied by the zero centred row).
pub(crate) fn pearson_rows(a: &Tensor, b: &Tensor) -> Tensor {
    let ac = a - a.mean_dim(1, true, a.kind());
    let bc = b - b.mean_dim(1, true, b.kind());
    let num = (&ac * &bc).sum_dim_intlist(1, false, a.kind());
    let ss = |x: &Tensor| x.square().sum_dim_intlist(1, false, a.kind());
    num / (ss(&ac) * ss(&bc)).clamp_min(1e-16).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], r: i64, c: i64) -> Tensor {
        Tensor::from_slice(v).view([r, c])
    }

    #[test]
    fn pearson_of_a_constant_row_is_zero_with_a_finite_gradient() {
        // Row 0: [1, 2, 3] against [2, 4, 7]: centred [-1, 0, 1] and [-7/3, -1/3, 8/3]
        // → (7/3 + 8/3) / (√2 · √(114/9)) = 5 / √(228/9). Row 1: a constant row.
        let a = t(&[1.0, 2.0, 3.0, 0.5, 0.5, 0.5], 2, 3).set_requires_grad(true);
        let b = t(&[2.0, 4.0, 7.0, 1.0, 2.0, 4.0], 2, 3);
        let r = pearson_rows(&a, &b);
        let want = 5.0 / (228.0f64 / 9.0).sqrt();
        assert!((r.double_value(&[0]) - want).abs() < 1e-12);
        assert_eq!(r.double_value(&[1]), 0.0);
        r.sum(Kind::Double).backward();
        let g = Vec::<f64>::try_from(a.grad().flatten(0, -1)).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "gradient {g:?}");
    }

    #[test]
    fn binary_and_nongt_distributions_by_hand() {
        // z = ln[1, 2, 3, 4], y = 3, τ = 1 → p = [.1, .2, .3, .4], b = [.4, .6], q̂ = [1, 2, 3]/6.
        let z = t(&[1f64.ln(), 2f64.ln(), 3f64.ln(), 4f64.ln()], 1, 4);
        let y = Tensor::from_slice(&[3i64]);
        let b: Vec<f64> = Vec::try_from(log_binary_t(&z, &y, 1.0).exp().view(-1)).unwrap();
        assert!((b[0] - 0.4).abs() < 1e-12 && (b[1] - 0.6).abs() < 1e-12, "{b:?}");
        let q: Vec<f64> = Vec::try_from(log_nongt_t(&z, &y, 1.0).exp().view(-1)).unwrap();
        for (got, want) in q.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0]) {
            assert!((got - want).abs() < 1e-12, "{q:?}");
        }
    }

    #[test]
    fn kl_by_hand_and_standardize() {
        let p = [0.5f64, 0.25, 0.25];
        let q = [0.25f64, 0.5, 0.25];
        let lp = t(&p.map(f64::ln), 1, 3);
        let lq = t(&q.map(f64::ln), 1, 3);
        let want: f64 = p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((kl_from_log(&lp, &lq).double_value(&[]) - want).abs() < 1e-12);
        let s: Vec<f64> = Vec::try_from(standardize(&t(&[1.0, 2.0, 3.0], 1, 3)).view(-1)).unwrap();
        let sd = (2.0f64 / 3.0).sqrt();
        assert!((s[0] + 1.0 / (sd + 1e-7)).abs() < 1e-9 && s[1].abs() < 1e-12, "{s:?}");
    }
}
