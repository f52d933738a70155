//! Temperature scaling (Guo et al., 2017): one temperature T for a teacher's logits, fitted on the
//! validation split to minimise the negative log-likelihood of softmax(z / T). Distilling from the
//! calibrated teacher (`teacher_calibrate = true`) uses z / T wherever the method reads the teacher.
use anyhow::{bail, Result};

/// The search range of 1/T: T from 0.01 to 100 covers any teacher a study trains (an
/// over-confident one lands near T ≈ 1.5–3, an under-trained one below 1).
const BETA_RANGE: (f64, f64) = (0.01, 100.0);

/// Mean NLL of softmax(β·z) over `labels`, in float64 (`logits` is N × C, row-major).
pub(crate) fn nll_at(logits: &[f32], labels: &[i64], classes: usize, beta: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().map(|&v| beta * v as f64).fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|&v| (beta * v as f64 - max).exp()).sum::<f64>().ln();
        total += lse - beta * row[y as usize] as f64;
    }
    total / labels.len() as f64
}

/// The temperature T minimising the mean NLL of softmax(z / T) on (`logits`, `labels`).
///
/// The NLL is convex in β = 1/T (a log-sum-exp of linear functions of β minus a linear one), so a
/// golden-section search over β finds the minimum; 80 steps narrow the range by 0.618^80 ≈ 2e-17,
/// well past float64 precision on β. A minimum at the range's end (no wrong answers on the split,
/// or no right ones) is an error rather than an extreme temperature.
pub(crate) fn fit_temperature(logits: &[f32], labels: &[i64], classes: usize) -> Result<f64> {
    if labels.is_empty() || logits.len() != labels.len() * classes {
        bail!(
            "fitting a temperature needs N × C logits for N > 0 labels (got {} values, {} labels)",
            logits.len(),
            labels.len()
        );
    }
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let f = |b: f64| nll_at(logits, labels, classes, b);
    // Golden-section search in ln β: the range spans four decades, and the minimum is unimodal in
    // ln β too (a monotone change of variable).
    let (mut a, mut b) = (BETA_RANGE.0.ln(), BETA_RANGE.1.ln());
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c.exp()), f(d.exp()));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c.exp());
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d.exp());
        }
    }
    let beta = ((a + b) / 2.0).exp();
    let edge = |x: f64, e: f64| (x.ln() - e.ln()).abs() < 1e-3;
    if edge(beta, BETA_RANGE.0) || edge(beta, BETA_RANGE.1) {
        bail!(
            "the validation NLL has no minimum for a temperature between {} and {} (the teacher is right on every validation image, or on none); calibration is not defined",
            1.0 / BETA_RANGE.1,
            1.0 / BETA_RANGE.0
        );
    }
    Ok(1.0 / beta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A teacher over-confident by a known factor: base logits z that are calibrated by
    /// construction (each label drawn from softmax(z)), handed out as 3·z, so T should be near 3.
    fn sample(n: usize, c: usize) -> (Vec<f32>, Vec<i64>) {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / (1u64 << 53) as f64
        };
        let mut logits = vec![];
        let mut labels = vec![];
        for _ in 0..n {
            let z: Vec<f64> = (0..c).map(|_| 3.0 * next()).collect();
            let w: Vec<f64> = z.iter().map(|v| v.exp()).collect();
            let mut u = next() * w.iter().sum::<f64>();
            let y = w.iter().position(|wk| {
                u -= wk;
                u <= 0.0
            });
            labels.push(y.unwrap_or(c - 1) as i64);
            logits.extend(z.iter().map(|v| (3.0 * v) as f32));
        }
        (logits, labels)
    }

    #[test]
    fn the_fitted_temperature_is_the_stationary_point_of_the_nll() {
        let (c, (logits, labels)) = (10, sample(20000, 10));
        let t = fit_temperature(&logits, &labels, c).unwrap();
        assert!((t - 3.0).abs() < 0.25, "logits 3× too confident give T ≈ 3, got {t}");
        // Independently: at the optimum dNLL/dβ = mean over samples of (E_p[z] − z_y) = 0, with p
        // the softmax at β = 1/T (computed here without nll_at).
        let beta = 1.0 / t;
        let mut grad = 0.0;
        for (row, &y) in logits.chunks_exact(c).zip(&labels) {
            let w: Vec<f64> = row.iter().map(|&v| (beta * v as f64).exp()).collect();
            let s: f64 = w.iter().sum();
            let ez: f64 = row.iter().zip(&w).map(|(&v, &wk)| v as f64 * wk / s).sum();
            grad += ez - row[y as usize] as f64;
        }
        grad /= labels.len() as f64;
        assert!(grad.abs() < 1e-7, "gradient at the fitted β: {grad}");
        // And the NLL there is below its value a little either side, and below the raw logits'.
        let at = |tt: f64| nll_at(&logits, &labels, c, 1.0 / tt);
        assert!(at(t) < at(t * 1.01) && at(t) < at(t * 0.99) && at(t) < at(1.0));
        // Scaling the logits by k scales the temperature by k.
        let scaled: Vec<f32> = logits.iter().map(|v| 2.0 * v).collect();
        let t2 = fit_temperature(&scaled, &labels, c).unwrap();
        assert!((t2 / t - 2.0).abs() < 1e-6, "{t2} vs 2 × {t}");
    }

    #[test]
    fn a_split_without_errors_has_no_temperature() {
        // Every sample right with a margin: the NLL falls towards 0 as T → 0, no interior minimum.
        let logits = vec![5.0f32, 0.0, 0.0, 5.0];
        let e = fit_temperature(&logits, &[0, 1], 2).unwrap_err().to_string();
        assert!(e.contains("no minimum"), "{e}");
        assert!(fit_temperature(&[], &[], 2).is_err());
    }
}
