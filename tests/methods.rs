//! Every distillation loss against an independent float64 computation written here from the
//! definitions (plain loops, no tensors), its gradient against finite differences, the identities
//! the methods must satisfy, and ISATS's search against brute force.
use kdlab::methods::{self, isats, LossInput, MethodParams};
use tch::{Kind, Tensor};

const N: usize = 5;
const C: usize = 6;

fn data(seed: u64, scale: f64) -> Vec<f64> {
    let mut r = kdlab::util::rng::Rng::new(seed);
    (0..N * C).map(|_| (r.unit() - 0.5) * 2.0 * scale).collect()
}

const Y: [i64; N] = [0, 3, 5, 2, 3];

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).view([N as i64, C as i64])
}

/// The terms of `method` with `params` computed by kdlab, as (name, value) pairs.
fn kdlab_terms(method: &str, params: &MethodParams, s: &[f64], te: &[f64], epoch: f64) -> Vec<(String, f64)> {
    let mut m = methods::build(method, params).unwrap();
    let y = Tensor::from_slice(&Y);
    m.terms(&LossInput { student: &t(s), teacher: &t(te), labels: &y, epoch })
        .into_iter()
        .map(|(k, v)| (k, v.double_value(&[])))
        .collect()
}

mod plain {
    use super::{C, N, Y};

    pub fn row(v: &[f64], i: usize) -> Vec<f64> {
        v[i * C..(i + 1) * C].to_vec()
    }
    pub fn softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    }
    pub fn scale(z: &[f64], tau: f64) -> Vec<f64> {
        z.iter().map(|x| x / tau).collect()
    }
    pub fn kl(p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b).ln()).sum()
    }
    pub fn ce(s: &[f64]) -> f64 {
        (0..N).map(|i| -softmax(&row(s, i))[Y[i] as usize].ln()).sum::<f64>() / N as f64
    }
    /// Mean over the batch of f(row i of s, row i of t, y_i).
    pub fn mean(s: &[f64], t: &[f64], f: impl Fn(&[f64], &[f64], usize) -> f64) -> f64 {
        (0..N).map(|i| f(&row(s, i), &row(t, i), Y[i] as usize)).sum::<f64>() / N as f64
    }
    /// q̂: the non-GT probabilities renormalised (entry y removed).
    pub fn nongt(p: &[f64], y: usize) -> Vec<f64> {
        let rest: f64 = 1.0 - p[y];
        p.iter().enumerate().filter(|(c, _)| *c != y).map(|(_, v)| v / rest).collect()
    }
    pub fn binary(p: &[f64], y: usize) -> Vec<f64> {
        vec![p[y], 1.0 - p[y]]
    }
    pub fn standardize(z: &[f64]) -> Vec<f64> {
        let m = z.iter().sum::<f64>() / z.len() as f64;
        let sd = (z.iter().map(|x| (x - m).powi(2)).sum::<f64>() / z.len() as f64).sqrt();
        z.iter().map(|x| (x - m) / (sd + 1e-7)).collect()
    }
    pub fn ats(t: &[f64], y: usize, tau1: f64, tau2: f64) -> Vec<f64> {
        softmax(&t.iter().enumerate().map(|(c, v)| if c == y { v / tau1 } else { v / tau2 }).collect::<Vec<_>>())
    }
    pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
        let (ma, mb) = (a.iter().sum::<f64>() / a.len() as f64, b.iter().sum::<f64>() / b.len() as f64);
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let den = (a.iter().map(|x| (x - ma).powi(2)).sum::<f64>()).sqrt()
            * (b.iter().map(|y| (y - mb).powi(2)).sum::<f64>()).sqrt();
        num / den
    }
}

fn check(method: &str, params: MethodParams, epoch: f64, want: &[(&str, f64)]) {
    let (s, te) = (data(1, 3.0), data(2, 5.0));
    let got = kdlab_terms(method, &params, &s, &te, epoch);
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        want.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "{method}: term names"
    );
    for ((k, g), (_, w)) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-10 * w.abs().max(1.0), "{method} {k}: kdlab {g} vs plain {w}");
    }
}

fn p(f: impl FnOnce(&mut MethodParams)) -> MethodParams {
    let mut m = MethodParams::default();
    f(&mut m);
    m
}

#[test]
fn every_loss_matches_a_plain_f64_computation() {
    use plain::*;
    let (s, te) = (data(1, 3.0), data(2, 5.0));
    check("ce", p(|_| {}), 1.0, &[("ce", ce(&s))]);
    // kd: defaults τ = 4, α = 0.1, β = 0.9, s_τ = τ; and with a separate student temperature.
    let kd = |tau: f64, st: f64| mean(&s, &te, |sr, tr, _| kl(&softmax(&scale(tr, tau)), &softmax(&scale(sr, st))));
    check("kd", p(|_| {}), 1.0, &[("ce", 0.1 * ce(&s)), ("kd", 0.9 * 16.0 * kd(4.0, 4.0))]);
    check(
        "kd",
        p(|m| {
            m.tau = Some(2.0);
            m.student_tau = Some(1.0);
            m.alpha = Some(0.3);
            m.beta = Some(0.7)
        }),
        1.0,
        &[("ce", 0.3 * ce(&s)), ("kd", 0.7 * kd(2.0, 1.0))],
    );
    // ats: τ1 = 4, τ2 = 2, s_τ = 1, λ = 0.5.
    let ats_kl = |tau1: f64, tau2: f64| mean(&s, &te, |sr, tr, y| kl(&ats(tr, y, tau1, tau2), &softmax(sr)));
    check("ats", p(|_| {}), 1.0, &[("ce", 0.5 * ce(&s)), ("kd", 0.5 * ats_kl(4.0, 2.0))]);
    // nckd: α = 1, β = 8, τ = 4.
    let nck = |std: bool| {
        mean(&s, &te, |sr, tr, y| {
            let (sr, tr) = if std { (standardize(sr), standardize(tr)) } else { (sr.to_vec(), tr.to_vec()) };
            kl(&nongt(&softmax(&scale(&tr, 4.0)), y), &nongt(&softmax(&scale(&sr, 4.0)), y))
        })
    };
    check("nckd", p(|_| {}), 1.0, &[("ce", ce(&s)), ("nckd", 8.0 * 16.0 * nck(false))]);
    // dkd: w = min(epoch / 20, 1).
    let tck = |std: bool| {
        mean(&s, &te, |sr, tr, y| {
            let (sr, tr) = if std { (standardize(sr), standardize(tr)) } else { (sr.to_vec(), tr.to_vec()) };
            kl(&binary(&softmax(&scale(&tr, 4.0)), y), &binary(&softmax(&scale(&sr, 4.0)), y))
        })
    };
    check(
        "dkd",
        p(|_| {}),
        5.0,
        &[("ce", ce(&s)), ("tckd", 0.25 * 16.0 * tck(false)), ("nckd", 0.25 * 8.0 * 16.0 * nck(false))],
    );
    check("dkd", p(|_| {}), 30.0, &[("ce", ce(&s)), ("tckd", 16.0 * tck(false)), ("nckd", 8.0 * 16.0 * nck(false))]);
    // LS on kd, nckd, dkd: standardised logits before every temperature softmax, CE on raw ones.
    let kd_ls =
        mean(&s, &te, |sr, tr, _| kl(&softmax(&scale(&standardize(tr), 4.0)), &softmax(&scale(&standardize(sr), 4.0))));
    check("kd", p(|m| m.standardize = Some(true)), 1.0, &[("ce", 0.1 * ce(&s)), ("kd", 0.9 * 16.0 * kd_ls)]);
    check("nckd", p(|m| m.standardize = Some(true)), 1.0, &[("ce", ce(&s)), ("nckd", 128.0 * nck(true))]);
    check(
        "dkd",
        p(|m| m.standardize = Some(true)),
        20.0,
        &[("ce", ce(&s)), ("tckd", 16.0 * tck(true)), ("nckd", 128.0 * nck(true))],
    );
    // dist: α = 1, β = γ = 2, τ = 4; Pearson across classes per sample, and across the batch per class.
    let ps: Vec<Vec<f64>> = (0..N).map(|i| softmax(&scale(&row(&s, i), 4.0))).collect();
    let pt: Vec<Vec<f64>> = (0..N).map(|i| softmax(&scale(&row(&te, i), 4.0))).collect();
    let inter = 1.0 - (0..N).map(|i| pearson(&ps[i], &pt[i])).sum::<f64>() / N as f64;
    let col = |m: &Vec<Vec<f64>>, c: usize| m.iter().map(|r| r[c]).collect::<Vec<f64>>();
    let intra = 1.0 - (0..C).map(|c| pearson(&col(&ps, c), &col(&pt, c))).sum::<f64>() / C as f64;
    let got = kdlab_terms("dist", &MethodParams::default(), &s, &te, 1.0);
    for ((k, g), w) in got.iter().zip([ce(&s), 2.0 * 16.0 * inter, 2.0 * 16.0 * intra]) {
        // DIST's ε = 1e-8 in the correlation's denominator: agreement to ~1e-7 relative.
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "dist {k}: {g} vs {w}");
    }
}

#[test]
fn ats_with_equal_temperatures_is_kd() {
    let (s, te) = (data(3, 2.0), data(4, 6.0));
    for tau in [1.0, 2.0, 4.0, 8.0] {
        let ats = kdlab_terms(
            "ats",
            &p(|m| {
                m.tau1 = Some(tau);
                m.tau2 = Some(tau);
                m.student_tau = Some(tau);
                m.lambda = Some(0.7)
            }),
            &s,
            &te,
            1.0,
        );
        let kd = kdlab_terms(
            "kd",
            &p(|m| {
                m.tau = Some(tau);
                m.alpha = Some(0.3);
                m.beta = Some(0.7)
            }),
            &s,
            &te,
            1.0,
        );
        for ((ka, va), (kk, vk)) in ats.iter().zip(&kd) {
            assert_eq!(ka, kk);
            assert!((va - vk).abs() < 1e-12 * vk.abs().max(1.0), "τ = {tau}, {ka}: ATS {va} vs KD {vk}");
        }
    }
}

#[test]
fn kd_kl_decomposes_into_tckd_and_weighted_nckd() {
    // Per sample: KL(p_T ‖ p_S) = KL(b_T ‖ b_S) + (1 − p_T,y)·KL(q̂_T ‖ q̂_S) at the same τ.
    let (s, te) = (data(5, 3.0), data(6, 4.0));
    for tau in [1.0, 4.0] {
        for i in 0..N {
            let one = |v: &[f64]| Tensor::from_slice(&v[i * C..(i + 1) * C]).view([1, C as i64]);
            let y = Tensor::from_slice(&[Y[i]]);
            let terms = |m: &str, prm: MethodParams| {
                methods::build(m, &prm).unwrap().terms(&LossInput {
                    student: &one(&s),
                    teacher: &one(&te),
                    labels: &y,
                    epoch: 100.0,
                })
            };
            let kd = terms(
                "kd",
                p(|m| {
                    m.tau = Some(tau);
                    m.beta = Some(1.0)
                }),
            )[1]
            .1
            .double_value(&[])
                / (tau * tau);
            let dkd = terms(
                "dkd",
                p(|m| {
                    m.tau = Some(tau);
                    m.alpha = Some(1.0);
                    m.beta = Some(1.0)
                }),
            );
            let (tckd, nckd) = (dkd[1].1.double_value(&[]) / (tau * tau), dkd[2].1.double_value(&[]) / (tau * tau));
            let pt_y = plain::softmax(&plain::scale(&plain::row(&te, i), tau))[Y[i] as usize];
            assert!(
                (kd - (tckd + (1.0 - pt_y) * nckd)).abs() < 1e-12,
                "τ {tau} sample {i}: {kd} vs {tckd} + {} · {nckd}",
                1.0 - pt_y
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let (s, te) = (data(7, 2.0), data(8, 3.0));
    let y = Tensor::from_slice(&Y);
    let cases: Vec<(&str, MethodParams)> = vec![
        ("ce", p(|_| {})),
        ("kd", p(|_| {})),
        ("kd", p(|m| m.standardize = Some(true))),
        ("ats", p(|_| {})),
        ("isats", p(|_| {})),
        ("nckd", p(|_| {})),
        ("dkd", p(|_| {})),
        ("dist", p(|_| {})),
    ];
    for (name, prm) in cases {
        let mut m = methods::build(name, &prm).unwrap();
        let total = |sv: &Tensor, m: &mut Box<dyn methods::Method>| -> Tensor {
            m.terms(&LossInput { student: sv, teacher: &t(&te), labels: &y, epoch: 10.0 })
                .into_iter()
                .map(|(_, v)| v)
                .reduce(|a, b| a + b)
                .unwrap()
        };
        let sv = t(&s).set_requires_grad(true);
        total(&sv, &mut m).backward();
        let grad: Vec<f64> = Vec::try_from(sv.grad().view(-1)).unwrap();
        let h = 1e-6;
        for k in [0, 7, 13, 29] {
            let mut up = s.clone();
            up[k] += h;
            let mut down = s.clone();
            down[k] -= h;
            let fd =
                (total(&t(&up), &mut m).double_value(&[]) - total(&t(&down), &mut m).double_value(&[])) / (2.0 * h);
            assert!(
                (fd - grad[k]).abs() < 1e-6 * fd.abs().max(1.0),
                "{name}: ∂/∂s[{k}] autograd {} vs finite difference {fd}",
                grad[k]
            );
        }
    }
}

#[test]
fn isats_tau2_is_within_bounds_and_the_brute_force_argmax() {
    let te = data(9, 6.0);
    let y = Tensor::from_slice(&Y);
    for (tau1, tau2_min) in [(4.0, 0.5), (2.0, 1.0), (8.0, 0.25)] {
        let chosen: Vec<f64> = Vec::try_from(isats::choose_tau2(&t(&te), &y, tau1, tau2_min)).unwrap();
        for (i, &tau2) in chosen.iter().enumerate() {
            assert!((tau2_min..=tau1).contains(&tau2), "{tau2} outside [{tau2_min}, {tau1}]");
            // Brute force: 20,001 evenly spaced candidates, variance from the plain definition.
            let var = |tau2: f64| {
                let p = plain::ats(&plain::row(&te, i), Y[i] as usize, tau1, tau2);
                let q: Vec<f64> = p.iter().enumerate().filter(|(c, _)| *c != Y[i] as usize).map(|(_, v)| *v).collect();
                let m = q.iter().sum::<f64>() / q.len() as f64;
                q.iter().map(|v| (v - m).powi(2)).sum::<f64>() / q.len() as f64
            };
            let grid: Vec<f64> = (0..=20_000).map(|k| tau2_min + (tau1 - tau2_min) * k as f64 / 20_000.0).collect();
            let best = grid.iter().cloned().max_by(|a, b| var(*a).total_cmp(&var(*b))).unwrap();
            assert!(
                var(tau2) >= var(best) - 1e-12,
                "sample {i}: var({tau2}) = {} < var({best}) = {}",
                var(tau2),
                var(best)
            );
            let step = (tau1 - tau2_min) / 20_000.0;
            assert!((tau2 - best).abs() <= 2.0 * step + 1e-9, "sample {i}: τ2 {tau2} vs brute force {best}");
        }
    }
}

#[test]
fn bad_hyper_parameters_are_refused_by_name() {
    let e = |m: &str, prm: MethodParams| format!("{:#}", methods::build(m, &prm).err().unwrap());
    assert!(e(
        "ats",
        p(|m| {
            m.tau1 = Some(1.0);
            m.tau2 = Some(2.0)
        })
    )
    .contains("tau1 ≥ tau2"));
    assert!(e("kd", p(|m| m.tau = Some(0.0))).contains("tau must be a positive"));
    assert!(e("kd", p(|m| m.tau1 = Some(3.0))).contains("does not take tau1"));
    assert!(e("ats", p(|m| m.standardize = Some(true))).contains("does not take standardize"));
    assert!(e("fitnet", p(|_| {})).contains("unknown method"));
}

#[test]
fn losses_are_computed_in_the_input_dtype() {
    let (s, te) = (data(1, 3.0), data(2, 5.0));
    let y = Tensor::from_slice(&Y);
    let mut m = methods::build("dkd", &MethodParams::default()).unwrap();
    let f32_terms = m.terms(&LossInput {
        student: &t(&s).to_kind(Kind::Float),
        teacher: &t(&te).to_kind(Kind::Float),
        labels: &y,
        epoch: 20.0,
    });
    assert!(f32_terms.iter().all(|(_, v)| v.kind() == Kind::Float));
    let f64_terms = m.terms(&LossInput { student: &t(&s), teacher: &t(&te), labels: &y, epoch: 20.0 });
    for ((_, a), (_, b)) in f32_terms.iter().zip(&f64_terms) {
        let (a, b) = (a.double_value(&[]), b.double_value(&[]));
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

/// The must-show check: `kdlab loss` agrees with the NumPy reference (written separately from the
/// formulas) to 1e-5 relative for every method, on logits it has never seen.
#[test]
fn kdlab_loss_matches_the_numpy_reference() {
    let venv = std::env::var("KDLAB_TORCH_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/kdlab-torch-venv", std::env::var("HOME").unwrap_or_default()));
    let py = std::path::Path::new(&venv).join("bin/python");
    if !py.exists() {
        eprintln!("skipping: no NumPy environment at {}", py.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (n, c) = (24usize, 10usize);
    let mut r = kdlab::util::rng::Rng::new(2024);
    let student: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 6.0) as f32).collect();
    let teacher: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 14.0) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    kdlab::data::npy::write_f32(&dir.path().join("s.npy"), &[n, c], &student).unwrap();
    kdlab::data::npy::write_f32(&dir.path().join("t.npy"), &[n, c], &teacher).unwrap();
    kdlab::data::npy::write_i64(&dir.path().join("y.npy"), &[n], &labels).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/loss_reference.py");
    let cases: &[&[&str]] = &[
        &["--method", "ce"],
        &["--method", "kd"],
        &["--method", "kd", "--tau", "2", "--student-tau", "1", "--alpha", "0.5", "--beta", "0.5"],
        &["--method", "kd", "--standardize", "--tau", "2"],
        &["--method", "ats", "--tau1", "5", "--tau2", "1.5"],
        &["--method", "isats", "--tau1", "4", "--tau2-min", "0.5"],
        &["--method", "nckd"],
        &["--method", "nckd", "--standardize"],
        &["--method", "dkd", "--epoch", "7"],
        &["--method", "dkd", "--standardize", "--tau", "2"],
        &["--method", "dist"],
    ];
    let files = ["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"];
    for case in cases {
        let ours = std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .arg("loss")
            .args(*case)
            .args(files)
            .args(["--json", "--per-sample"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(ours.status.success(), "{case:?}: {}", String::from_utf8_lossy(&ours.stderr));
        let theirs = std::process::Command::new(&py)
            .arg(&script)
            .args(*case)
            .args(files)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(theirs.status.success(), "{case:?}: {}", String::from_utf8_lossy(&theirs.stderr));
        let a: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-9;
        for (k, v) in b["terms"].as_object().unwrap() {
            let (x, y) = (a["terms"][k].as_f64().unwrap_or(f64::NAN), v.as_f64().unwrap());
            assert!(close(x, y), "{case:?} {k}: kdlab {x} vs NumPy {y}");
        }
        assert!(close(a["total"].as_f64().unwrap(), b["total"].as_f64().unwrap()), "{case:?} total");
        if let Some(ref_tau2) = b["per_sample"]["tau2"].as_array() {
            for (x, y) in a["per_sample"]["tau2"].as_array().unwrap().iter().zip(ref_tau2) {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 2.0 * 3.5 / 20_000.0 + 1e-6, "ISATS τ2: kdlab {x} vs brute force {y}");
            }
        }
    }
}
