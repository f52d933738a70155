//! Every distillation loss against an independent float64 computation written here from the
//! definitions (plain loops, no tensors), its gradient against finite differences, the identities
//! the methods must satisfy, and ISATS's search against brute force.
use kdlab::methods::isats::{self, Rule};
use kdlab::methods::{self, LossInput};
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
fn kdlab_terms(method: &str, params: &methods::Table, s: &[f64], te: &[f64], epoch: f64) -> Vec<(String, f64)> {
    let mut m = methods::build(method, params).unwrap();
    let y = Tensor::from_slice(&Y);
    m.terms(&LossInput::logits(&t(s), &t(te), &y, epoch)).into_iter().map(|(k, v)| (k, v.double_value(&[]))).collect()
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

fn check(method: &str, params: methods::Table, epoch: f64, want: &[(&str, f64)]) {
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

/// The hyper-parameters a test sets, by name (a key left `None` is not given).
#[derive(Default, serde::Serialize)]
struct Given {
    tau: Option<f64>,
    alpha: Option<f64>,
    beta: Option<f64>,
    student_tau: Option<f64>,
    tau1: Option<f64>,
    tau2: Option<f64>,
    tau2_min: Option<f64>,
    lambda: Option<f64>,
    standardize: Option<bool>,
    rule: Option<String>,
    center_logits: Option<bool>,
    margin: Option<f64>,
}

/// The table a method is built from, with the keys `f` sets.
fn p(f: impl FnOnce(&mut Given)) -> methods::Table {
    let mut m = Given::default();
    f(&mut m);
    methods::Table::try_from(m).unwrap()
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
    let got = kdlab_terms("dist", &methods::Table::new(), &s, &te, 1.0);
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
            let terms = |m: &str, prm: methods::Table| {
                methods::build(m, &prm).unwrap().terms(&LossInput::logits(&one(&s), &one(&te), &y, 100.0))
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
    // Every registered logit method at its defaults (a new one is covered without a line here), and
    // LS. Feature methods read taps, not only logits: their gradients are checked in their files.
    let mut cases: Vec<(&str, methods::Table)> = methods::REGISTRY
        .iter()
        .filter(|e| methods::MethodSpec::default_of(e.name).unwrap().taps().is_empty())
        .map(|e| (e.name, methods::Table::new()))
        .collect();
    cases.push(("kd", p(|m| m.standardize = Some(true))));
    for (name, prm) in cases {
        let mut m = methods::build(name, &prm).unwrap();
        // The contract: setup before the first step (CTKD creates its temperature parameter there).
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let setup =
            methods::Setup { vars: vs.root(), student: &[], teacher: &[], classes: C, samples: N, labels: None };
        m.setup(&setup).unwrap();
        let total = |sv: &Tensor, m: &mut Box<dyn methods::Method>| -> Tensor {
            m.terms(&LossInput::logits(sv, &t(&te), &y, 10.0)).into_iter().map(|(_, v)| v).reduce(|a, b| a + b).unwrap()
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
fn isats_bounded_tau2_is_within_bounds_and_the_brute_force_argmax() {
    let te = data(9, 6.0);
    let y = Tensor::from_slice(&Y);
    for (tau1, tau2_min) in [(4.0, 0.5), (2.0, 1.0), (8.0, 0.25)] {
        let chosen: Vec<f64> =
            Vec::try_from(isats::choose_tau2(Rule::Bounded, &t(&te), &y, tau1, tau2_min, 1.0)).unwrap();
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
    let e = |m: &str, prm: methods::Table| format!("{:#}", methods::build(m, &prm).err().unwrap());
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
    assert!(e("hintnet", p(|_| {})).contains("unknown method"));
    let bad_rule = e("isats", p(|m| m.rule = Some("oder".into())));
    assert!(
        bad_rule.contains("unknown ISATS rule 'oder'") && bad_rule.contains("order, ts, ts_order, bounded"),
        "{bad_rule}"
    );
    assert!(e("ats", p(|m| m.rule = Some("order".into()))).contains("does not take rule"));
    assert!(e("kd", p(|m| m.center_logits = Some(true))).contains("does not take center_logits"));
    let ts_margin = e(
        "isats",
        p(|m| {
            m.rule = Some("ts".into());
            m.margin = Some(0.5)
        }),
    );
    assert!(ts_margin.contains("margin applies to the ISATS rules 'order' and 'ts_order' only"), "{ts_margin}");
    assert!(e("isats", p(|m| m.margin = Some(0.0))).contains("margin must be a positive"));
}

#[test]
fn losses_are_computed_in_the_input_dtype() {
    let (s, te) = (data(1, 3.0), data(2, 5.0));
    let y = Tensor::from_slice(&Y);
    let mut m = methods::build("dkd", &methods::Table::new()).unwrap();
    let f32_terms = m.terms(&LossInput::logits(&t(&s).to_kind(Kind::Float), &t(&te).to_kind(Kind::Float), &y, 20.0));
    assert!(f32_terms.iter().all(|(_, v)| v.kind() == Kind::Float));
    let f64_terms = m.terms(&LossInput::logits(&t(&s), &t(&te), &y, 20.0));
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
        &["--method", "ats", "--tau1", "5", "--tau2", "1.5", "--center-logits"],
        &["--method", "isats", "--tau1", "4", "--tau2-min", "0.5", "--rule", "bounded"],
        &["--method", "isats", "--tau1", "4", "--tau2-min", "0.5", "--rule", "order"],
        &["--method", "isats", "--tau1", "3", "--tau2-min", "0.25", "--rule", "order", "--center-logits"],
        &["--method", "isats", "--tau1", "4", "--tau2-min", "0.5", "--margin", "0.7"],
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

// ---- ISATS rules, the ATS flip counter and centring -------------------------------------------

/// A batch of teacher logits with its labels, rows of any width.
struct Case {
    name: &'static str,
    rows: Vec<Vec<f64>>,
    y: Vec<i64>,
}

impl Case {
    fn teacher(&self) -> Tensor {
        let c = self.rows[0].len() as i64;
        Tensor::from_slice(&self.rows.concat()).view([self.rows.len() as i64, c])
    }
    fn labels(&self) -> Tensor {
        Tensor::from_slice(&self.y)
    }
}

/// Standard normal draws (Box–Muller) from the project's generator.
fn normal(r: &mut kdlab::util::rng::Rng) -> f64 {
    let (u, v) = (1.0 - r.unit(), r.unit());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Random, realistic and adversarial logits: ties, a wrong teacher, C = 2, ±1e3 scale, all equal.
fn cases() -> Vec<Case> {
    let mut r = kdlab::util::rng::Rng::new(77);
    let mut random = |n: usize, c: usize, scale: f64| -> Case {
        let rows = (0..n).map(|_| (0..c).map(|_| (r.unit() - 0.5) * 2.0 * scale).collect()).collect();
        let y = (0..n).map(|i| (i % c) as i64).collect();
        Case { name: "random", rows, y }
    };
    let mut out = vec![random(12, 6, 6.0), random(8, 10, 3.0)];
    let mut r = kdlab::util::rng::Rng::new(78);
    let realistic: Vec<Vec<f64>> = (0..16)
        .map(|i| (0..10).map(|c| if c == i % 10 { 8.0 } else { 0.0 } + 1.5 * normal(&mut r)).collect())
        .collect();
    out.push(Case { name: "realistic", rows: realistic, y: (0..16).map(|i| i % 10).collect() });
    out.push(Case {
        name: "ties",
        rows: vec![
            vec![5.0, 2.0, 2.0, 2.0, -1.0],
            vec![3.0, 3.0, 1.0, 0.0, 0.0], // the true class tied with another at the top
            vec![4.0, 1.0, 1.0, -2.0, -2.0],
            vec![-1.0, -3.0, -3.0, -3.0, -3.0],
        ],
        y: vec![0, 0, 0, 0],
    });
    out.push(Case {
        name: "wrong teacher",
        rows: vec![vec![1.0, 6.0, 0.5, -1.0], vec![2.0, 2.5, 0.0, 0.0], vec![-2.0, -1.0, -4.0, -3.0]],
        y: vec![0, 0, 0],
    });
    out.push(Case {
        name: "C = 2",
        rows: vec![vec![3.0, -1.0], vec![0.5, 1.5], vec![4.0, 3.9], vec![-2.0, -7.0]],
        y: vec![0, 0, 0, 0],
    });
    out.push(Case {
        name: "huge",
        rows: vec![
            vec![1000.0, -500.0, 999.0, 20.0],
            vec![-1000.0, 800.0, -999.0, 1000.0],
            vec![1000.0, 100.0, -1000.0, 900.0],
        ],
        y: vec![0, 3, 0],
    });
    out.push(Case { name: "all equal", rows: vec![vec![2.0; 5], vec![0.0; 5], vec![-3.0; 5]], y: vec![0, 2, 4] });
    out
}

mod brute {
    /// log p of softmax(z): z − logsumexp(z), stable for any scale.
    pub fn log_softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        z.iter().map(|v| v - lse).collect()
    }
    /// Logits with f_y / tau1 and f_c / tau2.
    pub fn ats_logits(f: &[f64], y: usize, tau1: f64, tau2: f64) -> Vec<f64> {
        f.iter().enumerate().map(|(c, v)| if c == y { v / tau1 } else { v / tau2 }).collect()
    }
    /// Population variance of the non-GT probabilities of softmax(z).
    pub fn nongt_var(z: &[f64], y: usize) -> f64 {
        let q: Vec<f64> = log_softmax(z).iter().enumerate().filter(|(c, _)| *c != y).map(|(_, l)| l.exp()).collect();
        let m = q.iter().sum::<f64>() / q.len() as f64;
        q.iter().map(|v| (v - m).powi(2)).sum::<f64>() / q.len() as f64
    }
    /// log p_y − max_{c≠y} log p_c of softmax(z).
    pub fn gap(z: &[f64], y: usize) -> f64 {
        let l = log_softmax(z);
        l[y] - l.iter().enumerate().filter(|(c, _)| *c != y).map(|(_, v)| *v).fold(f64::MIN, f64::max)
    }
    /// 20,000 log-spaced values over [lo, hi].
    pub fn log_grid(lo: f64, hi: f64) -> Vec<f64> {
        (0..20_000).map(|k| (lo.ln() + (hi.ln() - lo.ln()) * k as f64 / 19_999.0).exp()).collect()
    }
    /// The largest value of `f` over `xs`.
    pub fn best(xs: &[f64], f: impl Fn(f64) -> f64) -> f64 {
        xs.iter().map(|x| f(*x)).fold(f64::MIN, f64::max)
    }
}

/// `chosen` is at least the brute-force maximum, up to rounding.
fn at_least(chosen: f64, best: f64, what: &str) {
    assert!(chosen >= best * (1.0 - 1e-7) - 1e-300, "{what}: variance {chosen:e} < brute-force maximum {best:e}");
}

#[test]
fn isats_rules_match_a_brute_force_search() {
    for case in cases() {
        let (te, y) = (case.teacher(), case.labels());
        for (tau1, tau2_min) in [(4.0, 0.5), (2.0, 1.0), (8.0, 0.25)] {
            let tag = |rule: &str, i: usize| format!("{} row {i}, {rule}, τ1 {tau1}, τ2_min {tau2_min}", case.name);
            let get =
                |rule, margin| Vec::<f64>::try_from(isats::choose_tau2(rule, &te, &y, tau1, tau2_min, margin)).unwrap();
            // The margin is used by `order` only.
            let (bounded, ts) = (get(Rule::Bounded, 0.5), get(Rule::Ts, 0.5));
            let orders: Vec<(f64, Vec<f64>)> =
                [isats::DEFAULT_MARGIN, 0.5].into_iter().map(|mg| (mg, get(Rule::Order, mg))).collect();
            let ts_orders: Vec<(f64, Vec<f64>)> =
                [isats::DEFAULT_MARGIN, 0.5].into_iter().map(|mg| (mg, get(Rule::TsOrder, mg))).collect();
            let star = Vec::<f64>::try_from(isats::ts_temperature(&te, &y)).unwrap();
            for (i, f) in case.rows.iter().enumerate() {
                let yi = case.y[i] as usize;
                let var = |tau2: f64| brute::nongt_var(&brute::ats_logits(f, yi, tau1, tau2), yi);
                let gap = |tau2: f64| brute::gap(&brute::ats_logits(f, yi, tau1, tau2), yi);
                let grid = brute::log_grid(tau2_min, tau1);
                for (rule, v) in [("bounded", bounded[i]), ("ts", ts[i])] {
                    assert!((tau2_min..=tau1).contains(&v), "{}: τ2 {v} outside the bounds", tag(rule, i));
                }
                // bounded: the unconstrained maximum over [τ2_min, τ1].
                at_least(var(bounded[i]), brute::best(&grid, var), &tag("bounded", i));
                // order: the maximum over the τ2 that keep the true class first by the margin; τ1
                // where even τ1 does not.
                for (margin, order) in &orders {
                    let (tau2, what) = (order[i], tag(&format!("order margin {margin}"), i));
                    assert!((tau2_min..=tau1).contains(&tau2), "{what}: τ2 {tau2} outside the bounds");
                    if gap(tau1) < *margin {
                        assert_eq!(tau2, tau1, "{what}: the fallback");
                    } else {
                        let feasible: Vec<f64> = grid.iter().cloned().filter(|t| gap(*t) >= *margin).collect();
                        assert!(
                            gap(tau2) >= margin * (1.0 - 1e-9) - 1e-12,
                            "{what}: τ2 {tau2} leaves a gap {} below the margin",
                            gap(tau2)
                        );
                        at_least(var(tau2), brute::best(&feasible, var), &what);
                    }
                }
                // ts: τ* maximises the symmetric variance over [0.05, 50]; τ2 is τ* clamped, or τ1
                // where the teacher is wrong.
                let sym = |tau: f64| brute::nongt_var(&f.iter().map(|v| v / tau).collect::<Vec<_>>(), yi);
                let (lo, hi) = isats::TS_RANGE;
                assert!((lo..=hi).contains(&star[i]), "{}: τ* {}", tag("ts", i), star[i]);
                at_least(sym(star[i]), brute::best(&brute::log_grid(lo, hi), sym), &tag("ts τ*", i));
                let right = (0..f.len()).all(|c| c == yi || f[c] < f[yi]);
                let want = if right { star[i].clamp(tau2_min, tau1) } else { tau1 };
                assert!((ts[i] - want).abs() <= 1e-12 * want, "{}: τ2 {} vs {want}", tag("ts", i), ts[i]);
                // ts_order: τ* clamped into the order rule's feasible interval (the smallest τ2 of
                // the fine grid that keeps the gap), τ1 where even τ1 does not keep it.
                for (margin, v) in &ts_orders {
                    let what = tag(&format!("ts_order margin {margin}"), i);
                    let tau2 = v[i];
                    if gap(tau1) < *margin {
                        assert_eq!(tau2, tau1, "{what}: the fallback");
                        continue;
                    }
                    assert!(gap(tau2) >= margin * (1.0 - 1e-9) - 1e-12, "{what}: τ2 {tau2} gap {}", gap(tau2));
                    let floor = grid.iter().cloned().find(|t| gap(*t) >= *margin).unwrap_or(tau1);
                    let want = star[i].clamp(floor.min(tau1), tau1);
                    assert!((tau2 - want).abs() <= 1e-3 * want, "{what}: τ2 {tau2} vs {want} (τ* {})", star[i]);
                }
            }
        }
    }
}

#[test]
fn isats_order_keeps_the_true_class_first_in_the_target() {
    use kdlab::methods::ats::{log_ats, true_class_gap};
    for case in cases() {
        let settings = [(Kind::Double, 1e-3), (Kind::Float, 1e-3), (Kind::Float, 1.0)];
        for ((kind, margin), rule) in settings.into_iter().flat_map(|k| [(k, Rule::Order), (k, Rule::TsOrder)]) {
            let (te, y) = (case.teacher().to_kind(kind), case.labels());
            let (tau1, tau2_min) = (4.0, 0.25);
            let tau2 = isats::choose_tau2(rule, &te, &y, tau1, tau2_min, margin);
            let gaps = Vec::<f64>::try_from(
                true_class_gap(&log_ats(&te, &y, tau1, &tau2.unsqueeze(1)), &y).to_kind(Kind::Double),
            )
            .unwrap();
            let tau2 = Vec::<f64>::try_from(tau2.to_kind(Kind::Double)).unwrap();
            for (i, f) in case.rows.iter().enumerate() {
                let yi = case.y[i] as usize;
                let m = (0..f.len()).filter(|c| *c != yi).map(|c| f[c]).fold(f64::MIN, f64::max);
                assert!((tau2_min..=tau1 * (1.0 + 1e-6)).contains(&tau2[i]), "{} row {i}: τ2 {}", case.name, tau2[i]);
                if (f[yi] - m) / tau1 >= margin {
                    // float32 rounds f/τ by ~1e-7 relative: the margin absorbs it.
                    let tol =
                        if kind == Kind::Float { 1e-7 * f[yi].abs().max(m.abs()) / tau2_min * 4.0 } else { 1e-12 };
                    assert!(
                        gaps[i] >= margin - tol && gaps[i] > 0.0,
                        "{} row {i} ({kind:?}, {rule:?}): target gap {} with τ2 {}",
                        case.name,
                        gaps[i],
                        tau2[i]
                    );
                }
            }
        }
    }
}

#[test]
fn isats_and_ats_gradients_reach_only_the_student() {
    let (s, te) = (data(11, 2.0), data(12, 5.0));
    let y = Tensor::from_slice(&Y);
    let mut cases: Vec<(&str, methods::Table)> = vec![("ats", p(|m| m.center_logits = Some(true)))];
    for rule in ["order", "ts", "ts_order", "bounded"] {
        for center in [false, true] {
            cases.push((
                "isats",
                p(|m| {
                    m.rule = Some(rule.into());
                    m.center_logits = Some(center)
                }),
            ));
        }
    }
    for (name, prm) in cases {
        let mut m = methods::build(name, &prm).unwrap();
        let sv = t(&s).set_requires_grad(true);
        // A teacher tensor that would collect a gradient if any reached it.
        let tv = t(&te).set_requires_grad(true);
        let total =
            m.terms(&LossInput::logits(&sv, &tv, &y, 1.0)).into_iter().map(|(_, v)| v).reduce(|a, b| a + b).unwrap();
        total.backward();
        assert!(!tv.grad().defined(), "{name} {prm:?}: a gradient reached the teacher");
        let g: Vec<f64> = Vec::try_from(sv.grad().view(-1)).unwrap();
        assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0), "{name} {prm:?}: {g:?}");
    }
}

#[test]
fn the_ats_flip_counter_by_hand() {
    // τ1 = 4, τ2 = 1, y = 0 throughout; the target compares f_0/4 with max_{c≠0} f_c.
    let rows = [
        [4.0, 2.0, 0.0],    // teacher right; 1 < 2: flipped
        [8.0, 1.0, 0.0],    // teacher right; 2 > 1: kept
        [1.0, 3.0, 0.0],    // teacher wrong; still wrong
        [-1.0, -0.9, -5.0], // teacher wrong; −0.25 > −0.9: fixed by the target
        [2.0, 2.0, 0.0],    // a tie at the top counts as wrong; 0.5 < 2: wrong
    ];
    let te = Tensor::from_slice(&rows.concat()).view([5, 3]);
    let s = Tensor::zeros([5, 3], (Kind::Double, tch::Device::Cpu));
    let y = Tensor::zeros([5], (Kind::Int64, tch::Device::Cpu));
    let mut m = methods::build(
        "ats",
        &p(|m| {
            m.tau1 = Some(4.0);
            m.tau2 = Some(1.0)
        }),
    )
    .unwrap();
    // Two batches in one epoch (the first three rows, then the last two), then a fresh epoch.
    let (a, b) = (te.narrow(0, 0, 3), te.narrow(0, 3, 2));
    m.terms(&LossInput::logits(&s.narrow(0, 0, 3), &a, &y.narrow(0, 0, 3), 1.0));
    m.terms(&LossInput::logits(&s.narrow(0, 3, 2), &b, &y.narrow(0, 3, 2), 1.0));
    let e = m.end_epoch().unwrap();
    let f = &e["ats_target"];
    assert_eq!(f["samples"], 5, "{e}");
    let share = |k: &str| f[k].as_f64().unwrap();
    assert_eq!(share("teacher_wrong"), 3.0 / 5.0, "{e}");
    assert_eq!(share("flipped_where_teacher_right"), 1.0 / 5.0, "{e}");
    assert_eq!(share("fixed_where_teacher_wrong"), 1.0 / 5.0, "{e}");
    assert_eq!(share("target_not_true_class"), 3.0 / 5.0, "{e}");
    m.terms(&LossInput::logits(&s.narrow(0, 1, 1), &te.narrow(0, 1, 1), &y.narrow(0, 1, 1), 2.0));
    let e = m.end_epoch().unwrap();
    assert_eq!(e["ats_target"]["samples"], 1, "{e}");
    assert_eq!(e["ats_target"]["target_not_true_class"].as_f64(), Some(0.0), "{e}");
    // ISATS on the same rows: `order` never flips a sample the teacher gets right, `bounded` does.
    for (rule, flipped) in [("order", 0.0), ("bounded", 1.0 / 5.0)] {
        let mut m = methods::build(
            "isats",
            &p(|m| {
                m.rule = Some(rule.into());
                m.tau2_min = Some(1.0)
            }),
        )
        .unwrap();
        m.terms(&LossInput::logits(&s, &te, &y, 1.0));
        let e = m.end_epoch().unwrap();
        assert_eq!(e["ats_target"]["flipped_where_teacher_right"].as_f64(), Some(flipped), "{rule}: {e}");
        assert_eq!(e["ats_target"]["teacher_wrong"].as_f64(), Some(3.0 / 5.0), "{rule}: {e}");
        let t = &e["isats_tau2"];
        let parts: f64 =
            ["fallback", "at_floor", "at_tau2_min", "at_tau1", "interior"].iter().map(|k| t[k].as_f64().unwrap()).sum();
        assert!((parts - 1.0).abs() < 1e-12, "{rule}: {t}");
        if rule == "order" {
            // Row 0: floor 4·2/(4 − 0.004) > 1 = τ2_min; rows 2–4 wrong or tied: the fallback.
            assert_eq!(t["fallback"].as_f64(), Some(3.0 / 5.0), "{t}");
            assert!(t["at_floor"].as_f64().unwrap() >= 1.0 / 5.0, "{t}");
        }
    }
}

#[test]
fn ats_depends_on_a_logit_offset_unless_centred() {
    let (s, mut te) = (data(13, 2.0), data(14, 3.0));
    // A teacher right on every sample, so that no ISATS rule falls back to τ2 = τ1 (plain KD,
    // which is invariant).
    for (i, y) in Y.iter().enumerate() {
        te[i * C + *y as usize] += 6.0;
    }
    let shifted: Vec<f64> = te.iter().map(|v| v + 7.0).collect();
    let mut params: Vec<(&str, methods::Table)> = vec![("ats", p(|_| {}))];
    for rule in ["order", "ts", "ts_order", "bounded"] {
        params.push(("isats", p(|m| m.rule = Some(rule.into()))));
    }
    for (name, prm) in params {
        let kd = |prm: &methods::Table, te: &[f64]| -> f64 {
            let terms = kdlab_terms(name, prm, &s, te, 1.0);
            terms.iter().find(|(k, _)| k == "kd").unwrap().1
        };
        let (a, b) = (kd(&prm, &te), kd(&prm, &shifted));
        assert!((a - b).abs() > 1e-3 * a.abs(), "{name} {prm:?}: raw logits, {a} vs {b} after +7");
        let mut centred = prm.clone();
        centred.insert("center_logits".into(), true.into());
        let (a, b) = (kd(&centred, &te), kd(&centred, &shifted));
        assert!((a - b).abs() <= 1e-10 * a.abs(), "{name} {prm:?}: centred, {a} vs {b} after +7");
        // Centring is plain ATS on the centred logits.
        let by_hand: Vec<f64> = (0..N)
            .flat_map(|i| {
                let r = plain::row(&te, i);
                let mean = r.iter().sum::<f64>() / C as f64;
                r.into_iter().map(move |v| v - mean)
            })
            .collect();
        let c = kd(&prm, &by_hand);
        assert!((a - c).abs() <= 1e-10 * a.abs(), "{name} {prm:?}: {a} vs {c}");
    }
}

/// Where `order` puts τ2 on logits like a trained teacher's: f = 8·onehot(y) + N(0, 1.5²), C = 10.
/// Run with `--nocapture` to see the quantiles.
#[test]
fn isats_order_on_realistic_logits() {
    let (n, c) = (4000usize, 10usize);
    let mut r = kdlab::util::rng::Rng::new(5);
    let y: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    let f: Vec<f64> =
        (0..n).flat_map(|i| (0..c).map(|k| if k as i64 == y[i] { 8.0 } else { 0.0 }).collect::<Vec<_>>()).collect();
    let f: Vec<f64> = f.into_iter().map(|v| v + 1.5 * normal(&mut r)).collect();
    let te = Tensor::from_slice(&f).view([n as i64, c as i64]).to_kind(Kind::Float);
    let s = Tensor::zeros([n as i64, c as i64], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::from_slice(&y);
    for (rule, margin) in [
        ("order", None),
        ("order", Some(0.5)),
        ("order", Some(1.0)),
        ("ts", None),
        ("ts_order", None),
        ("ts_order", Some(0.5)),
        ("bounded", None),
    ] {
        for center in [false, true] {
            let mut m = methods::build(
                "isats",
                &p(|m| {
                    m.rule = Some(rule.into());
                    m.center_logits = Some(center);
                    m.margin = margin
                }),
            )
            .unwrap();
            m.terms(&LossInput::logits(&s, &te, &labels, 1.0));
            let rule = format!("{rule}{}", margin.map(|m| format!(" margin {m}")).unwrap_or_default());
            let e = m.end_epoch().unwrap();
            let (t, a) = (&e["isats_tau2"], &e["ats_target"]);
            println!(
                "{rule:16} center={center:5}: τ2 p10 {:.3} p50 {:.3} p90 {:.3} mean {:.3}; at τ2_min {:.3}, at floor {:.3}, at τ1 {:.3}, interior {:.3}, fallback {:.3}; teacher wrong {:.3}, flipped {:.3}",
                t["p10"].as_f64().unwrap(),
                t["p50"].as_f64().unwrap(),
                t["p90"].as_f64().unwrap(),
                t["mean"].as_f64().unwrap(),
                t["at_tau2_min"].as_f64().unwrap(),
                t["at_floor"].as_f64().unwrap(),
                t["at_tau1"].as_f64().unwrap(),
                t["interior"].as_f64().unwrap(),
                t["fallback"].as_f64().unwrap(),
                a["teacher_wrong"].as_f64().unwrap(),
                a["flipped_where_teacher_right"].as_f64().unwrap(),
            );
            if rule.starts_with("order") || rule.starts_with("ts_order") {
                assert_eq!(a["flipped_where_teacher_right"].as_f64(), Some(0.0), "{e}");
            }
        }
    }
}

/// `kdlab loss` takes --rule and --center-logits, records them, and names the valid rules.
#[test]
fn kdlab_loss_takes_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (n, c) = (8usize, 5usize);
    let mut r = kdlab::util::rng::Rng::new(31);
    let student: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 4.0) as f32).collect();
    let teacher: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 12.0) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|i| (i % c) as i64).collect();
    kdlab::data::npy::write_f32(&dir.path().join("s.npy"), &[n, c], &student).unwrap();
    kdlab::data::npy::write_f32(&dir.path().join("t.npy"), &[n, c], &teacher).unwrap();
    kdlab::data::npy::write_i64(&dir.path().join("y.npy"), &[n], &labels).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .args(["loss", "--method", "isats", "--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"])
            .args(extra)
            .args(["--json", "--per-sample"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    for rule in ["order", "ts", "ts_order", "bounded"] {
        for center in [false, true] {
            let mut args = vec!["--rule", rule];
            if center {
                args.push("--center-logits");
            }
            let o = run(&args);
            assert!(o.status.success(), "{rule}: {}", String::from_utf8_lossy(&o.stderr));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["hyper"]["rule"], rule, "{v}");
            assert_eq!(v["hyper"]["center_logits"], center, "{v}");
            assert!(v["terms"]["kd"].as_f64().unwrap().is_finite() && v["terms"]["ce"].as_f64().unwrap() > 0.0);
            assert_eq!(v["per_sample"]["tau2"].as_array().unwrap().len(), n);
        }
    }
    let o = run(&[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hyper"]["rule"], "ts_order", "the default rule: {v}");
    let o = run(&["--rule", "largest"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("unknown ISATS rule 'largest'")
            && err.contains("order, ts, ts_order, bounded"),
        "{err}"
    );
}

/// The τ* memo is exact only if the search treats every row on its own: a row's τ* computed alone,
/// within its batch, or within another batch has the same bits (float32, as in training). And the
/// memo returns `ts_temperature`'s bits for batches that mix remembered and new rows.
#[test]
fn tau_star_is_row_independent_and_the_memo_returns_its_bits() {
    let mut r = kdlab::util::rng::Rng::new(91);
    for (n, c, scale) in [(64usize, 10usize, 4.0), (33, 100, 8.0), (7, 2, 30.0)] {
        let rows: Vec<f64> = (0..n * c).map(|_| scale * normal(&mut r)).collect();
        let te = Tensor::from_slice(&rows).view([n as i64, c as i64]).to_kind(Kind::Float);
        let y = Tensor::from_slice(&(0..n).map(|i| (i % c) as i64).collect::<Vec<_>>());
        let bits = |t: &Tensor| Vec::<f32>::try_from(t).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let whole = bits(&isats::ts_temperature(&te, &y));
        for i in 0..n as i64 {
            let alone = bits(&isats::ts_temperature(&te.narrow(0, i, 1), &y.narrow(0, i, 1)));
            assert_eq!(alone[0], whole[i as usize], "n {n} c {c} row {i}: alone vs in its batch");
        }
        // The memo: the first half first, then the whole batch (half remembered), then a shuffled
        // repeat (all remembered).
        let mut memo = isats::TauStarMemo::default();
        let half = (n / 2) as i64;
        let first = bits(&memo.tau_star(&te.narrow(0, 0, half), &y.narrow(0, 0, half)));
        assert_eq!(first, whole[..half as usize], "n {n} c {c}: memo, first half");
        assert_eq!(bits(&memo.tau_star(&te, &y)), whole, "n {n} c {c}: memo, half remembered");
        let perm = Tensor::from_slice(&(0..n as i64).rev().collect::<Vec<_>>());
        let again = bits(&memo.tau_star(&te.index_select(0, &perm), &y.index_select(0, &perm)));
        assert_eq!(again, whole.iter().rev().copied().collect::<Vec<_>>(), "n {n} c {c}: memo, reversed");
        assert_eq!((memo.misses, memo.hits), (n as u64, (n + half as usize) as u64), "n {n} c {c}: counts");
        // A different label is a different sample.
        let y2 = (&y + 1).remainder(c as i64);
        let _ = memo.tau_star(&te, &y2);
        assert_eq!(memo.misses, 2 * n as u64, "n {n} c {c}: labels are part of the key");
    }
}
