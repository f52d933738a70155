//! The 2023–2024 logit methods (ttm, wttm, normkd, dtkd, ctkd): `kdlab loss` and its gradient (and
//! CTKD's reversed temperature gradient) against the float64 NumPy reference
//! `scripts/logit_reference.py` (written from the papers, complex-step gradients), on logits
//! generated here; small cases by hand; the identities each method must
//! satisfy; and DTKD's fallback where a largest logit is not positive.
use kdlab::methods::{self, LossInput};
use std::path::Path;
use tch::{Kind, Tensor};
mod common;
use common::reference::{flat, json_of, normal, python, terms_and_total, worst_rel};

/// Writes s.npy, t.npy, y.npy: trained-looking teacher rows (a lead on a class, right on most
/// samples), a student of another scale, and `negative` student rows whose logits are all below 0.
fn write_case(dir: &Path, seed: u64, n: usize, c: usize, t_scale: f64, negative: usize) {
    let mut r = kdlab::util::rng::Rng::new(seed);
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    let mut teacher = vec![0f32; n * c];
    let mut student = vec![0f32; n * c];
    for i in 0..n {
        // The teacher leads on the true class for 3 samples in 4, on another class otherwise.
        let lead = if i % 4 == 3 { (labels[i] as usize + 1) % c } else { labels[i] as usize };
        for k in 0..c {
            let bump = if k == lead { 2.5 * t_scale } else { 0.0 };
            teacher[i * c + k] = (bump + t_scale * normal(&mut r)) as f32;
            let shift = if i < negative { -10.0 } else { 0.0 };
            student[i * c + k] = (shift + 2.0 * normal(&mut r)) as f32;
        }
    }
    kdlab::data::npy::write_f32(&dir.join("s.npy"), &[n, c], &student).unwrap();
    kdlab::data::npy::write_f32(&dir.join("t.npy"), &[n, c], &teacher).unwrap();
    kdlab::data::npy::write_i64(&dir.join("y.npy"), &[n], &labels).unwrap();
}

/// The must-show check: every term, the total and the gradient with respect to the student's
/// logits agree with the reference to 1e-6 relative, in float64, on several data sets.
#[test]
fn kdlab_loss_and_its_gradient_match_the_float64_reference() {
    let Some(py) = python() else {
        eprintln!("skipping: no NumPy environment");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/logit_reference.py");
    let cases: &[&[&str]] = &[
        &["--method", "ttm"],
        &["--method", "ttm", "--beta", "45"],
        &["--method", "ttm", "--tau", "2.5", "--alpha", "0.5", "--beta", "3"],
        &["--method", "wttm"],
        &["--method", "wttm", "--tau", "1.5", "--beta", "7"],
        &["--method", "normkd"],
        &["--method", "normkd", "--tau-norm", "0.7", "--alpha", "1", "--beta", "2"],
        &["--method", "dtkd"],
        &["--method", "dtkd", "--epoch", "5"],
        &["--method", "dtkd", "--tau", "2", "--alpha", "1", "--beta", "0.5", "--warmup", "0"],
        // CTKD: the loss at its learnt temperature and the reversed gradient that reaches θ, at
        // the end of the curriculum (λ = 1), early in it, and with other bounds and weights.
        &["--method", "ctkd"],
        &["--method", "ctkd", "--epoch", "3"],
        &["--method", "ctkd", "--theta-init", "-2", "--tau-min", "2", "--tau-range", "5", "--epoch", "1"],
        &[
            "--method",
            "ctkd",
            "--theta-init",
            "0.4",
            "--lambda-epochs",
            "0",
            "--lambda-max",
            "0.5",
            "--alpha",
            "1",
            "--beta",
            "2",
        ],
        &["--method", "ctkd", "--theta-init", "3", "--lambda-min", "0.2", "--epoch", "7"],
    ];
    let mut worst = 0f64;
    // (seed, N, C, teacher scale, student rows with negative logits): CIFAR-like, a small wide
    // batch, a large teacher scale, and C = 2.
    for (seed, n, c, scale, negative) in
        [(11, 24, 10, 2.0, 3), (12, 7, 100, 3.0, 1), (13, 16, 5, 25.0, 0), (14, 9, 2, 1.5, 2)]
    {
        let dir = tempfile::tempdir().unwrap();
        write_case(dir.path(), seed, n, c, scale, negative);
        let files = ["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"];
        for case in cases {
            let what = format!("{case:?} on data {seed}");
            let ours = json_of(
                std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
                    .arg("loss")
                    .args(*case)
                    .args(files)
                    .args(["--json", "--grad"])
                    .current_dir(dir.path()),
                &what,
            );
            let theirs = json_of(
                std::process::Command::new(&py).arg(&script).args(*case).args(files).current_dir(dir.path()),
                &what,
            );
            let (a, b) = terms_and_total(&ours, &theirs, &what);
            let terms = worst_rel(&a, &b);
            let mut grad = worst_rel(&flat(&ours["grad"]), &flat(&theirs["grad"]));
            // A method's trainable modules (CTKD's θ): the gradient the optimiser sees.
            assert_eq!(ours.get("var_grad").is_some(), theirs.get("var_grad").is_some(), "{what}: var_grad");
            if let Some(m) = theirs.get("var_grad").and_then(|m| m.as_object()) {
                for (k, want) in m {
                    let got = &ours["var_grad"][k];
                    let (got, want) = (flat(&serde_json::json!([got])), flat(&serde_json::json!([want])));
                    assert!(want.iter().all(|g| g.abs() > 1e-9), "{what}: {k}'s gradient {want:?} is worth comparing");
                    grad = grad.max(worst_rel(&got, &want));
                }
            }
            assert!(
                terms <= 1e-6 && grad <= 1e-6,
                "{what}: worst relative difference, terms {terms:e}, gradient {grad:e}"
            );
            worst = worst.max(terms).max(grad);
        }
    }
    println!("worst relative difference over every case, term and gradient entry: {worst:e}");
}

// ---- By hand and identities, through the library's f64 path -----------------------------------

fn table(pairs: &[(&str, f64)]) -> methods::Table {
    pairs.iter().map(|(k, v)| (k.to_string(), toml::Value::Float(*v))).collect()
}

fn rows(v: &[&[f64]]) -> Tensor {
    Tensor::from_slice(&v.concat()).view([v.len() as i64, v[0].len() as i64])
}

/// The method's terms as (name, value).
fn terms(method: &str, p: &methods::Table, s: &Tensor, t: &Tensor, y: &[i64], epoch: f64) -> Vec<(String, f64)> {
    let mut m = methods::build(method, p).unwrap();
    let y = Tensor::from_slice(y);
    m.terms(&LossInput::logits(s, t, &y, epoch)).into_iter().map(|(k, v)| (k, v.double_value(&[]))).collect()
}

fn term(all: &[(String, f64)], name: &str) -> f64 {
    all.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no term {name} in {all:?}")).1
}

fn random(seed: u64, n: i64, c: i64, scale: f64) -> Tensor {
    let mut r = kdlab::util::rng::Rng::new(seed);
    let v: Vec<f64> = (0..n * c).map(|_| scale * normal(&mut r)).collect();
    Tensor::from_slice(&v).view([n, c])
}

#[test]
fn ttm_is_kd_with_the_student_at_temperature_one() {
    let (s, t) = (random(1, 6, 7, 2.0), random(2, 6, 7, 5.0));
    let y = [0, 1, 2, 3, 4, 5];
    for tau in [1.0, 3.0, 10.0] {
        let ttm = terms("ttm", &table(&[("tau", tau), ("alpha", 0.7), ("beta", 5.0)]), &s, &t, &y, 1.0);
        let kd =
            terms("kd", &table(&[("tau", tau), ("student_tau", 1.0), ("alpha", 0.7), ("beta", 5.0)]), &s, &t, &y, 1.0);
        assert_eq!(ttm.len(), 2);
        for ((ka, a), (kb, b)) in ttm.iter().zip(&kd) {
            assert_eq!(ka, kb);
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "τ {tau} {ka}: ttm {a} vs kd {b}");
        }
    }
}

#[test]
fn wttm_by_hand() {
    // Teacher p = [.1, .2, .3, .4], τ = 2 (γ = 1/2): U = Σ √p; target √p / U; a student of equal
    // logits predicts 1/4 each: KL = Σ p̃ ln(4 p̃). Student logits of zero: CE = ln 4.
    let p = [0.1f64, 0.2, 0.3, 0.4];
    let t = rows(&[&p.map(f64::ln)]);
    let s = Tensor::zeros([1, 4], (Kind::Double, tch::Device::Cpu));
    let u: f64 = p.iter().map(|v| v.sqrt()).sum();
    let kl: f64 = p.iter().map(|v| v.sqrt() / u).map(|q| q * (4.0 * q).ln()).sum();
    let got = terms("wttm", &table(&[("tau", 2.0), ("alpha", 0.5), ("beta", 3.0)]), &s, &t, &[2], 1.0);
    assert!((term(&got, "ce") - 0.5 * 4f64.ln()).abs() < 1e-12, "{got:?}");
    assert!((term(&got, "kd") - 3.0 * u * kl).abs() < 1e-12, "{got:?}: want {}", 3.0 * u * kl);
    // The weight spans [1, C^(1−γ)]: a uniform teacher gets C^(1−γ), a near-one-hot one about 1;
    // so WTTM is TTM with each sample's KL multiplied by its weight.
    let (c, gamma) = (10i64, 0.2);
    let uniform = Tensor::zeros([1, c], (Kind::Double, tch::Device::Cpu));
    let w = kdlab::methods::wttm::power_sum(&uniform, gamma).double_value(&[0]);
    assert!((w - (c as f64).powf(1.0 - gamma)).abs() < 1e-12, "{w}");
    let sharp = rows(&[&[200.0, 0.0, 0.0, 0.0]]);
    assert!((kdlab::methods::wttm::power_sum(&sharp, gamma).double_value(&[0]) - 1.0).abs() < 1e-12);
    let (s, t) = (random(3, 5, 6, 2.0), random(4, 5, 6, 4.0));
    for i in 0..5 {
        let (si, ti) = (s.narrow(0, i, 1), t.narrow(0, i, 1));
        let wt = term(&terms("wttm", &table(&[("tau", 5.0)]), &si, &ti, &[1], 1.0), "kd");
        let tt = term(&terms("ttm", &table(&[("tau", 5.0), ("beta", 4.0)]), &si, &ti, &[1], 1.0), "kd");
        let u = kdlab::methods::wttm::power_sum(&ti, gamma).double_value(&[0]);
        assert!((wt - u * tt).abs() <= 1e-12 * wt.abs(), "row {i}: wttm {wt} vs U·ttm {}", u * tt);
    }
}

#[test]
fn normkd_ignores_scale_and_shift_except_for_the_teachers_squared_temperature() {
    let (s, t) = (random(5, 8, 10, 2.0), random(6, 8, 10, 4.0));
    let y = [0, 1, 2, 3, 4, 5, 6, 7];
    let kd = |s: &Tensor, t: &Tensor| term(&terms("normkd", &table(&[]), s, t, &y, 1.0), "kd");
    let base = kd(&s, &t);
    // Shifting either network's logits changes nothing; scaling the student's changes nothing;
    // scaling the teacher's by a multiplies the term by a² (its weight T_t²).
    for (what, got, want) in [
        ("shift", kd(&(&s + 3.0), &(&t - 7.0)), base),
        ("student scale", kd(&(&s * 5.0), &t), base),
        ("teacher scale", kd(&s, &(&t * 3.0)), 9.0 * base),
    ] {
        assert!((got - want).abs() <= 1e-10 * want.abs(), "{what}: {got} vs {want}");
    }
    // By hand, one row: t = [0, 1, 2], s = [0, 0, 3]: σ_t = 1, σ_s = √3 (Bessel), τ_norm = 2.
    let (t1, s1) = (rows(&[&[0.0, 1.0, 2.0]]), rows(&[&[0.0, 0.0, 3.0]]));
    let soft = |z: [f64; 3], tau: f64| {
        let e = z.map(|v| (v / tau).exp());
        let sum: f64 = e.iter().sum();
        e.map(|v| v / sum)
    };
    let (p, q) = (soft([0.0, 1.0, 2.0], 2.0), soft([0.0, 0.0, 3.0], 2.0 * 3f64.sqrt()));
    let kl: f64 = p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum();
    let got = term(&terms("normkd", &table(&[]), &s1, &t1, &[2], 1.0), "kd");
    assert!((got - 0.9 * 4.0 * kl).abs() < 1e-12, "{got} vs {}", 0.9 * 4.0 * kl);
    // A student row of equal logits: a uniform prediction and a finite gradient.
    let flat = rows(&[&[0.5, 0.5, 0.5]]).set_requires_grad(true);
    let all = methods::build("normkd", &table(&[])).unwrap().terms(&LossInput::logits(
        &flat,
        &t1,
        &Tensor::from_slice(&[2i64]),
        1.0,
    ));
    let total = all.into_iter().map(|(_, v)| v).reduce(|a, b| a + b).unwrap();
    total.backward();
    let g = Vec::<f64>::try_from(flat.grad().view(-1)).unwrap();
    assert!(total.double_value(&[]).is_finite() && g.iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn dtkd_temperatures_by_hand_and_its_fallback() {
    let tau = 4.0;
    // m_s = 2, m_t = 6: T_s = 2·2/8·4 = 2, T_t = 2·6/8·4 = 6. Row 2: a student whose logits are all
    // negative falls back to τ for both; row 3, a teacher's likewise.
    let s = rows(&[&[2.0, -1.0, 0.5], &[-1.0, -2.0, -0.5], &[1.0, 0.0, 0.2]]);
    let t = rows(&[&[6.0, 1.0, 0.0], &[4.0, 0.0, 1.0], &[-0.1, -3.0, -2.0]]);
    let (ts, tt, fallback) = kdlab::methods::dtkd::temperatures(&s, &t, tau);
    let v = |x: &Tensor| Vec::<f64>::try_from(x.view(-1)).unwrap();
    assert_eq!(v(&ts), [2.0, tau, tau]);
    assert_eq!(v(&tt), [6.0, tau, tau]);
    assert_eq!(Vec::<bool>::try_from(fallback.view(-1)).unwrap(), [false, true, true]);
    // The first row's term by hand: T_t·T_s·KL(softmax(t/6) ‖ softmax(s/2)), at the full weight.
    let soft = |z: [f64; 3], tau: f64| {
        let e = z.map(|v| (v / tau).exp());
        let sum: f64 = e.iter().sum();
        e.map(|v| v / sum)
    };
    let (p, q) = (soft([6.0, 1.0, 0.0], 6.0), soft([2.0, -1.0, 0.5], 2.0));
    let kl: f64 = p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum();
    let one = terms("dtkd", &table(&[]), &s.narrow(0, 0, 1), &t.narrow(0, 0, 1), &[0], 20.0);
    assert!((term(&one, "dtkd") - 3.0 * 12.0 * kl).abs() < 1e-12, "{one:?} vs {}", 36.0 * kl);
    // A fallback row's dtkd term is its KD term (both τ²·KL at τ), in the ratio α : β.
    for i in [1, 2] {
        let r = terms("dtkd", &table(&[]), &s.narrow(0, i, 1), &t.narrow(0, i, 1), &[0], 20.0);
        assert!((term(&r, "dtkd") - 3.0 * term(&r, "kd")).abs() < 1e-12, "row {i}: {r:?}");
    }
    // The warm-up: at epoch 5 of 20 both distillation terms are a quarter of their settled value.
    let (early, late) =
        (terms("dtkd", &table(&[]), &s, &t, &[0, 1, 2], 5.0), terms("dtkd", &table(&[]), &s, &t, &[0, 1, 2], 40.0));
    for k in ["dtkd", "kd"] {
        assert!((term(&early, k) - 0.25 * term(&late, k)).abs() < 1e-12, "{k}");
    }
    assert_eq!(term(&early, "ce"), term(&late, "ce"));
    // The epoch's record: 2 of 3 samples fell back; the mean temperatures.
    let mut m = methods::build("dtkd", &table(&[])).unwrap();
    m.terms(&LossInput::logits(&s, &t, &Tensor::from_slice(&[0i64, 1, 2]), 1.0));
    let e = m.end_epoch().unwrap();
    assert_eq!(e["dtkd"]["samples"], 3.0, "{e}");
    assert!((e["dtkd"]["fallback"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12, "{e}");
    assert!((e["dtkd"]["tau_student_mean"].as_f64().unwrap() - 10.0 / 3.0).abs() < 1e-12, "{e}");
    assert!((e["dtkd"]["tau_teacher_mean"].as_f64().unwrap() - 14.0 / 3.0).abs() < 1e-12, "{e}");
    assert!(m.end_epoch().is_none(), "the record resets");
}

#[test]
fn dtkd_with_equal_maxima_is_kd_twice_weighted() {
    // Where m_s = m_t both temperatures are τ: the dtkd term is α/β times the KD term.
    let t = random(7, 6, 8, 3.0);
    let s = random(8, 6, 8, 1.0);
    let (ms, _) = s.max_dim(1, true);
    let (mt, _) = t.max_dim(1, true);
    let s = &s - &ms + &mt.abs() + 0.5;
    let t = &t - &mt + &mt.abs() + 0.5;
    let r = terms("dtkd", &table(&[("alpha", 2.0), ("beta", 0.5)]), &s, &t, &[0, 1, 2, 3, 4, 5], 30.0);
    assert!((term(&r, "dtkd") - 4.0 * term(&r, "kd")).abs() <= 1e-12 * term(&r, "kd"), "{r:?}");
}

/// `kdlab loss --grad` on cross-entropy alone: (softmax(s) − onehot(y)) / N, by hand.
#[test]
fn kdlab_loss_grad_of_cross_entropy_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let s = [1.0f32, 2.0, 0.0, 0.0, 0.0, 0.0];
    kdlab::data::npy::write_f32(&dir.path().join("s.npy"), &[2, 3], &s).unwrap();
    kdlab::data::npy::write_f32(&dir.path().join("t.npy"), &[2, 3], &[0.0; 6]).unwrap();
    kdlab::data::npy::write_i64(&dir.path().join("y.npy"), &[2], &[0, 2]).unwrap();
    let v = json_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .args(["loss", "--method", "ce", "--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"])
            .args(["--json", "--grad"])
            .current_dir(dir.path()),
        "ce",
    );
    let z = 1f64.exp() + 2f64.exp() + 1.0;
    let want = [
        (1f64.exp() / z - 1.0) / 2.0,
        2f64.exp() / z / 2.0,
        1.0 / z / 2.0,
        1.0 / 6.0,
        1.0 / 6.0,
        (1.0 / 3.0 - 1.0) / 2.0,
    ];
    let got = flat(&v["grad"]);
    assert!(worst_rel(&got, &want) < 1e-12, "{got:?} vs {want:?}");
}

#[test]
fn the_help_names_each_new_method_with_its_source() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kdlab")).args(["distill", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for line in [
        "ttm: transformed teacher matching (Zheng & Yang, ICLR 2024)",
        "wttm: weighted TTM (Zheng & Yang, ICLR 2024)",
        "normkd: NormKD (Chi et al., arXiv 2023)",
        "dtkd: dynamic temperature KD (Wei & Bai, arXiv 2024)",
        "ctkd: curriculum temperature KD (Li et al., AAAI 2023)",
    ] {
        assert!(help.contains(line), "{line} missing from:\n{help}");
    }
    assert!(help.contains("--tau-norm"), "normkd's key has its flag");
}
