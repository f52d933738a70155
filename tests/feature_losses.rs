//! The feature methods at and sdd: `kdlab loss --grad` with the taps given as saved tensors, its terms
//! and its gradients (with respect to the student's logits and to each student tap) against the
//! float64 NumPy reference `scripts/feature_reference.py` (written from the papers and the authors'
//! code, complex-step gradients), on tensors generated here: maps of unequal sizes (each pooled
//! way: the student's larger, the teacher's larger, sizes that do not divide, non-square maps),
//! unequal channel counts, and SDD maps smaller than its finest scale.
use std::path::Path;
mod common;
use common::reference::{flat, json_of, normal, python, terms_and_total, worst_rel};

/// A case: N samples, C classes, and each tap's name with the student's and the teacher's shape
/// (batch left out).
struct Case {
    seed: u64,
    n: usize,
    c: usize,
    taps: Vec<(&'static str, Vec<usize>, Vec<usize>)>,
}

/// Writes s.npy, t.npy, y.npy and s_NAME.npy, t_NAME.npy. A teacher `logit_map` leads on the true
/// class at most positions (on another class at some, so that its regions disagree with its global
/// prediction), as a trained teacher's does; features are signed (|f|^p reads their magnitude).
fn write(dir: &Path, case: &Case) -> Vec<String> {
    let mut r = kdlab::util::rng::Rng::new(case.seed);
    let (n, c) = (case.n, case.c);
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    let mut f = |k: usize, scale: f64| -> Vec<f32> { (0..k).map(|_| (scale * normal(&mut r)) as f32).collect() };
    let npy = |name: &str, shape: &[usize], v: &[f32]| kdlab::data::npy::write_f32(&dir.join(name), shape, v).unwrap();
    npy("s.npy", &[n, c], &f(n * c, 2.0));
    npy("t.npy", &[n, c], &f(n * c, 3.0));
    kdlab::data::npy::write_i64(&dir.join("y.npy"), &[n], &labels).unwrap();
    let mut args = vec![];
    for (name, ss, ts) in &case.taps {
        for (who, shape) in [("s", ss), ("t", ts)] {
            if shape.is_empty() {
                continue; // the tap of the other network only
            }
            let per: usize = shape.iter().product();
            let mut v = f(n * per, 1.5);
            if *name == "logit_map" && who == "t" {
                let (k, hw) = (shape[0], shape[1] * shape[2]);
                for i in 0..n {
                    for p in 0..hw {
                        let lead = if (i + p) % 3 == 0 { (labels[i] as usize + 1) % k } else { labels[i] as usize };
                        v[i * per + lead * hw + p] += 2.5;
                    }
                }
            }
            let file = format!("{who}_{name}.npy");
            npy(&file, &[&[n], &shape[..]].concat(), &v);
            args.push(format!("--{}-tap", if who == "s" { "student" } else { "teacher" }));
            args.push(format!("{name}={file}"));
        }
    }
    args
}

#[test]
fn kdlab_loss_and_its_gradients_match_the_float64_reference() {
    let Some(py) = python() else {
        eprintln!("skipping: no NumPy environment");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/feature_reference.py");
    let at_case = Case {
        seed: 21,
        n: 5,
        c: 4,
        taps: vec![
            // The student's map larger (8 → 4), the teacher's larger and not a multiple (7 → 3),
            // non-square maps pooled in one dimension each (6×5 and 3×4 → 3×4).
            ("stage1", vec![3, 8, 8], vec![6, 4, 4]),
            ("stage2", vec![4, 3, 3], vec![2, 7, 7]),
            ("stage3", vec![5, 6, 5], vec![3, 3, 4]),
        ],
    };
    let sdd_cases = [
        // CIFAR-like 8×8 map against a 4×4 teacher map.
        Case { seed: 22, n: 6, c: 10, taps: vec![("logit_map", vec![10, 8, 8], vec![10, 4, 4])] },
        // 7×7 (overlapping 4×4 bins) against 6×6, and a map smaller than the finest scale.
        Case { seed: 23, n: 4, c: 5, taps: vec![("logit_map", vec![5, 7, 7], vec![5, 6, 6])] },
        Case { seed: 24, n: 3, c: 3, taps: vec![("logit_map", vec![3, 3, 3], vec![3, 2, 2])] },
    ];
    let runs: Vec<(&Case, Vec<&str>)> = vec![
        (&at_case, vec!["--method", "at"]),
        (&at_case, vec!["--method", "at", "--stages", "2", "--power", "3", "--feat-weight", "50"]),
        (&at_case, vec!["--method", "at", "--stages", "1", "--power", "1", "--ce-weight", "0.5"]),
        (&sdd_cases[0], vec!["--method", "sdd"]),
        (&sdd_cases[0], vec!["--method", "sdd", "--max-scale", "2", "--comp-weight", "3", "--tau", "2"]),
        (&sdd_cases[1], vec!["--method", "sdd"]),
        (&sdd_cases[1], vec!["--method", "sdd", "--max-scale", "1", "--alpha", "1", "--beta", "2"]),
        (&sdd_cases[2], vec!["--method", "sdd"]),
    ];
    let mut worst = 0f64;
    let mut complementary = vec![];
    for (case, method) in runs {
        let dir = tempfile::tempdir().unwrap();
        let taps = write(dir.path(), case);
        let what = format!("{method:?} on data {}", case.seed);
        let files = ["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"];
        let ours = json_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
                .arg("loss")
                .args(&method)
                .args(files)
                .args(&taps)
                .args(["--json", "--grad"])
                .current_dir(dir.path()),
            &what,
        );
        let theirs = json_of(
            std::process::Command::new(&py).arg(&script).args(&method).args(files).args(&taps).current_dir(dir.path()),
            &what,
        );
        let (a, b) = terms_and_total(&ours, &theirs, &what);
        assert!(b.iter().all(|v| *v > 0.0), "{what}: every term is positive on these data: {b:?}");
        let terms = worst_rel(&a, &b);
        let grad = worst_rel(&flat(&ours["grad"]), &flat(&theirs["grad"]));
        // Every student tap the method reads has a gradient, and only those (stages = 1 reads one).
        let theirs_taps = theirs["tap_grad"].as_object().unwrap();
        let ours_taps = ours["tap_grad"].as_object().expect("tap_grad");
        let mut tap = 0f64;
        for (name, g) in theirs_taps {
            let want = flat(g);
            if want.iter().all(|v| *v == 0.0) {
                assert!(ours_taps.get(name).is_none_or(|o| flat(o).iter().all(|v| *v == 0.0)), "{what}: {name}");
                continue;
            }
            assert!(want.iter().any(|v| *v != 0.0));
            tap = tap.max(worst_rel(&flat(&ours_taps[name]), &want));
        }
        assert!(
            terms <= 1e-6 && grad <= 1e-6 && tap <= 1e-6,
            "{what}: worst relative difference, terms {terms:e}, logit gradient {grad:e}, tap gradients {tap:e}"
        );
        worst = worst.max(terms).max(grad).max(tap);
        if let Some(f) = theirs["complementary"].as_f64() {
            complementary.push(f);
        }
    }
    // The data exercise both of SDD's weights (some pairs complementary, some consistent), and with
    // max_scale = 1 (the global region alone) none is complementary.
    assert!(complementary.iter().filter(|f| **f > 0.0 && **f < 1.0).count() >= 3, "{complementary:?}");
    assert_eq!(complementary.iter().filter(|f| **f == 0.0).count(), 1, "{complementary:?}");
    println!("worst relative difference over every case, term and gradient entry: {worst:e}");
}

/// ReviewKD: its ABF modules are initialised inside kdlab (`--modules-seed`), so `kdlab loss
/// --modules` prints them and the reference reads them; BatchNorm in training mode couples the
/// samples, so the reference perturbs one (sample, entry) at a time. Maps upsampled (the
/// embedding's 1 × 1 to 2 × 2, the student's 2 × 2 to the teacher's 4 × 4) and downsampled
/// (8 × 8 to 4 × 4), with the warm-up both settled and a quarter through.
#[test]
fn reviewkd_loss_and_its_gradients_match_the_float64_reference() {
    let Some(py) = python() else {
        eprintln!("skipping: no NumPy environment");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/feature_reference.py");
    let cases = [
        (
            Case {
                seed: 31,
                n: 4,
                c: 5,
                taps: vec![
                    ("embedding", vec![6], vec![5]),
                    ("stage2", vec![3, 2, 2], vec![]),
                    ("stage2_preact", vec![], vec![4, 4, 4]),
                    ("stage1", vec![2, 8, 8], vec![]),
                    ("stage1_preact", vec![], vec![3, 4, 4]),
                ],
            },
            vec!["--method", "reviewkd", "--stages", "2"],
        ),
        (
            Case {
                seed: 32,
                n: 3,
                c: 4,
                taps: vec![("embedding", vec![4], vec![7]), ("stage1", vec![2, 3, 3], vec![3, 6, 6])],
            },
            vec![
                "--method",
                "reviewkd",
                "--stages",
                "1",
                "--teacher-preact",
                "false",
                "--epoch",
                "5",
                "--feat-weight",
                "2",
            ],
        ),
    ];
    let mut worst = 0f64;
    for (case, method) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let taps = write(dir.path(), case);
        let what = format!("{method:?} on data {}", case.seed);
        let files = ["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"];
        let ours = json_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
                .arg("loss")
                .args(method)
                .args(files)
                .args(&taps)
                .args(["--json", "--grad", "--modules", "--modules-seed", "7"])
                .current_dir(dir.path()),
            &what,
        );
        assert!(ours["modules"]["abf1.att.weight"].is_object(), "{what}: the fusion modules are printed");
        std::fs::write(dir.path().join("modules.json"), ours.to_string()).unwrap();
        let theirs = json_of(
            std::process::Command::new(&py)
                .arg(&script)
                .args(method)
                .args(files)
                .args(&taps)
                .args(["--modules", "modules.json"])
                .current_dir(dir.path()),
            &what,
        );
        let (mut a, mut b) = (vec![], vec![]);
        for k in ["ce", "feat"] {
            a.push(ours["terms"][k].as_f64().unwrap());
            b.push(theirs["terms"][k].as_f64().unwrap());
        }
        a.push(ours["total"].as_f64().unwrap());
        b.push(theirs["total"].as_f64().unwrap());
        assert!(b.iter().all(|v| *v > 0.0), "{what}: {b:?}");
        let terms = worst_rel(&a, &b);
        let grad = worst_rel(&flat(&ours["grad"]), &flat(&theirs["grad"]));
        let mut tap = 0f64;
        let theirs_taps = theirs["tap_grad"].as_object().unwrap();
        assert_eq!(theirs_taps.len(), ours["tap_grad"].as_object().unwrap().len(), "{what}");
        for (name, g) in theirs_taps {
            let want = flat(g);
            assert!(want.iter().any(|v| *v != 0.0), "{what}: {name}");
            tap = tap.max(worst_rel(&flat(&ours["tap_grad"][name]), &want));
        }
        assert!(
            terms <= 1e-6 && grad <= 1e-6 && tap <= 1e-6,
            "{what}: worst relative difference, terms {terms:e}, logit gradient {grad:e}, tap gradients {tap:e}"
        );
        worst = worst.max(terms).max(grad).max(tap);
    }
    println!("reviewkd: worst relative difference over every case, term and gradient entry: {worst:e}");
}
