//! DGKD (Son et al., ICCV 2021), the guided method: `kdlab loss` with the guides' logits and a
//! keep mask, and its gradient, against the float64 NumPy reference `scripts/dgkd_reference.py`
//! (written from the paper); the keep masks drawn from a step's seed (the same seed, the same
//! masks); a killed DGKD run, its guides run on every batch, resumes bit-identically; and
//! `kdlab distill --method dgkd --assistant a,b` trains the dense chain, each link guided by the
//! assistants above it, with clear refusals.
mod common;

use common::reference::{flat, json_of, normal, python, terms_and_total, worst_rel};
use common::serial;
use kdlab::data::{self, Dataset};
use kdlab::methods::{self, dgkd::keep_mask};
use kdlab::train::checkpoint;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::{Distill, Teacher};
use kdlab::train::objective::CrossEntropy;
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use tch::Device;

/// Writes s.npy, t.npy, a.npy, b.npy, y.npy: a teacher that leads on the true class for most
/// samples, two assistants that follow it with more noise, and a student of another scale.
fn write_case(dir: &Path, seed: u64, n: usize, c: usize, scale: f64) {
    let mut r = kdlab::util::rng::Rng::new(seed);
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    let mut rows = vec![vec![0f32; n * c]; 4];
    for i in 0..n {
        let lead = if i % 4 == 3 { (labels[i] as usize + 1) % c } else { labels[i] as usize };
        for k in 0..c {
            let bump = if k == lead { 2.5 * scale } else { 0.0 };
            let t = bump + scale * normal(&mut r);
            rows[0][i * c + k] = (2.0 * normal(&mut r)) as f32;
            rows[1][i * c + k] = t as f32;
            rows[2][i * c + k] = (0.8 * t + normal(&mut r)) as f32;
            rows[3][i * c + k] = (0.5 * t + 1.5 * normal(&mut r)) as f32;
        }
    }
    for (name, v) in ["s.npy", "t.npy", "a.npy", "b.npy"].iter().zip(&rows) {
        kdlab::data::npy::write_f32(&dir.join(name), &[n, c], v).unwrap();
    }
    kdlab::data::npy::write_i64(&dir.join("y.npy"), &[n], &labels).unwrap();
}

fn loss_json(dir: &Path, args: &[&str], what: &str) -> serde_json::Value {
    json_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .arg("loss")
            .args(["--method", "dgkd", "--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"])
            .args(args)
            .args(["--json", "--grad"])
            .current_dir(dir),
        what,
    )
}

/// The must-show check: each term, the total and the gradient with respect to the student's
/// logits agree with the reference to 1e-6 relative, in float64, for several keep masks,
/// hyper-parameters and data sets.
#[test]
fn dgkd_loss_and_its_gradient_match_the_float64_reference() {
    let Some(py) = python() else {
        eprintln!("skipping: no NumPy environment");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dgkd_reference.py");
    let cases: &[(&[&str], &[&str])] = &[
        // (the guides and mask, the hyper-parameters): the published defaults, then others.
        (&["--guides", "a.npy,b.npy", "--keep", "1,1,1"], &[]),
        (&["--guides", "a.npy,b.npy", "--keep", "0,1,1"], &[]),
        (&["--guides", "a.npy,b.npy", "--keep", "1,0,1"], &["--tau", "4", "--alpha", "0.5", "--beta", "0.5"]),
        (&["--guides", "a.npy,b.npy", "--keep", "0,0,1"], &["--tau", "2", "--alpha", "0.1", "--beta", "3"]),
        (&["--guides", "a.npy", "--keep", "1,0"], &["--tau", "1", "--alpha", "1", "--beta", "0.9"]),
        (&["--keep", "1"], &["--tau", "3", "--alpha", "0.3", "--beta", "0.7"]),
    ];
    let mut worst = 0f64;
    for (seed, n, c, scale) in [(21, 24, 10, 2.0), (22, 7, 100, 3.0), (23, 16, 5, 20.0), (24, 9, 2, 1.5)] {
        let dir = tempfile::tempdir().unwrap();
        write_case(dir.path(), seed, n, c, scale);
        for (guides, hyper) in cases {
            let what = format!("{guides:?} {hyper:?} on data {seed}");
            let args: Vec<&str> = guides.iter().chain(hyper.iter()).copied().collect();
            let ours = loss_json(dir.path(), &args, &what);
            let theirs = json_of(
                std::process::Command::new(&py)
                    .arg(&script)
                    .args(["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"])
                    .args(&args)
                    .current_dir(dir.path()),
                &what,
            );
            let (a, b) = terms_and_total(&ours, &theirs, &what);
            let (terms, grad) = (worst_rel(&a, &b), worst_rel(&flat(&ours["grad"]), &flat(&theirs["grad"])));
            assert!(
                terms <= 1e-6 && grad <= 1e-6,
                "{what}: worst relative difference, terms {terms:e}, gradient {grad:e}"
            );
            worst = worst.max(terms).max(grad);
        }
    }
    println!("worst relative difference over every case, term and gradient entry: {worst:e}");
}

/// Without --keep the mask is drawn from --draw-seed: `keep_mask(seed, …)`, the same for the same
/// seed, one guide of three dropped by default; and the flags are refused where they do not apply.
#[test]
fn the_keep_mask_is_drawn_from_the_steps_seed() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), 31, 12, 10, 2.0);
    let kd = |args: &[&str]| loss_json(dir.path(), args, &format!("{args:?}"))["terms"]["kd"].as_f64().unwrap();
    let mut masks = vec![];
    for seed in [0u64, 1, 2, 3, 4, 5, 6, 7] {
        let mask = keep_mask(seed, 3, 1);
        assert_eq!(mask, keep_mask(seed, 3, 1), "the same seed, the same mask");
        assert_eq!(mask.iter().filter(|&&k| k).count(), 2, "{mask:?}");
        let keep: Vec<&str> = mask.iter().map(|&k| if k { "1" } else { "0" }).collect();
        let s = seed.to_string();
        let drawn = kd(&["--guides", "a.npy,b.npy", "--draw-seed", &s]);
        assert_eq!(drawn, kd(&["--guides", "a.npy,b.npy", "--draw-seed", &s]));
        assert_eq!(drawn, kd(&["--guides", "a.npy,b.npy", "--keep", &keep.join(",")]), "seed {seed}");
        masks.push(mask);
    }
    assert!(masks.iter().any(|m| m != &masks[0]), "the masks vary with the seed: {masks:?}");
    // drop = 0: every guide, whatever the seed.
    assert_eq!(
        kd(&["--guides", "a.npy,b.npy", "--drop", "0", "--draw-seed", "5"]),
        kd(&["--guides", "a.npy,b.npy", "--keep", "1,1,1"])
    );
    let refused = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .arg("loss")
            .args(["--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should be refused");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = refused(&["--method", "dgkd", "--guides", "a.npy", "--keep", "1,1,1"]);
    assert!(e.contains("--keep takes a 0 or 1 for the teacher and for each of the 1 guides"), "{e}");
    let e = refused(&["--method", "kd", "--guides", "a.npy"]);
    assert!(e.contains("method 'kd' learns from one teacher"), "{e}");
    let e = refused(&["--method", "dgkd", "--drop", "1.5"]);
    assert!(e.contains("drop must be a whole number"), "{e}");
}

fn small() -> Dataset {
    data::embedded::load().unwrap().head(600, 200)
}

fn cfg(model: &str, epochs: usize) -> TrainConfig {
    TrainConfig { model: model.into(), epochs, batch_size: 64, save_every: 1, seed: 3, ..Default::default() }
}

fn opts(dir: &Path, kind: &str) -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::new(dir, Device::Cpu, kind) }
}

fn dgkd(teacher: &Path, guides: &[&Path], params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    let m = methods::MethodSpec::parse("dgkd", params.parse().unwrap()).unwrap();
    let guides = guides.iter().map(|g| Teacher::load(g.to_str().unwrap(), Device::Cpu).unwrap()).collect();
    Distill { guides, ..Distill::new(t, &m, None).unwrap() }
}

/// A killed DGKD run resumes bit-identically: the guides dropped at each step come from the step's
/// seed, not from a generator carried across steps. The draws matter (drop = 0 trains otherwise),
/// and the same seed gives the same run.
#[test]
fn a_killed_dgkd_run_resumes_bit_identically() {
    let _turn = serial();
    let data = small();
    let (t, a1, a2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train(&cfg("cnn_w2", 1), &data, &mut CrossEntropy, &opts(t.path(), "train")).unwrap();
    train(&cfg("cnn_w1", 1), &data, &mut CrossEntropy, &opts(a1.path(), "train")).unwrap();
    train(&cfg("mlp_32x1", 1), &data, &mut CrossEntropy, &opts(a2.path(), "train")).unwrap();
    let guides = [a1.path(), a2.path()];
    let p = "alpha = 0.1\nbeta = 0.9";
    let c = cfg("mlp_16x1", 3);
    let (a, b, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train(&c, &data, &mut dgkd(t.path(), &guides, p), &opts(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..opts(b.path(), "distill") };
    train(&c, &data, &mut dgkd(t.path(), &guides, p), &stop).unwrap();
    let resumed = train(&c, &data, &mut dgkd(t.path(), &guides, p), &opts(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    let nums = |o: &kdlab::train::trainer::Outcome| {
        o.history.iter().map(|m| (m.epoch, m.train_loss, m.test_acc, m.terms["ce"], m.terms["kd"])).collect::<Vec<_>>()
    };
    assert_eq!(nums(&full), nums(&resumed));
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()), "student and momentum identical after resume");
    // Every guide kept at every step is another run.
    let dense =
        train(&c, &data, &mut dgkd(t.path(), &guides, "alpha = 0.1\nbeta = 0.9\ndrop = 0"), &opts(d.path(), "distill"))
            .unwrap();
    assert_ne!(nums(&full), nums(&dense), "the dropped guides change the run");
}

fn kdlab(args: &[&str], cwd: &Path) -> std::process::Output {
    common::kdlab().args(args).current_dir(cwd).output().unwrap()
}

fn run_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p.join("run.json")).unwrap()).unwrap()
}

/// `kdlab distill --method dgkd --assistant a,b`: the first assistant taught by the teacher alone,
/// the second by the teacher and the first, the student by all three; each link records its guides.
/// A guided method without assistants, or another method with several, is refused by name.
#[test]
fn cli_distill_dgkd_trains_the_dense_chain_and_refuses_by_name() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    common::write_small_idx(&tmp.path().join("fm"), 256, 64);
    let o = kdlab(
        &["train", "--model", "cnn_w2", "--data", "fm", "--epochs", "1", "--out", "runs/t", "--quiet"],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = ["distill", "--teacher", "runs/t", "--student", "mlp_16x1", "--epochs", "1", "--data", "fm", "--quiet"];
    fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(more).copied().collect()
    }
    let o =
        kdlab(&with(&base, &["--method", "dgkd", "--assistant", "cnn_w1,mlp_32x1", "--out", "runs/dgkd"]), tmp.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.path().join("runs/dgkd");
    let (a1, a2, s) =
        (run_json(&out.join("assistant1")), run_json(&out.join("assistant2")), run_json(&out.join("student")));
    assert_eq!(
        (a1["model"].as_str(), a2["model"].as_str(), s["model"].as_str()),
        (Some("cnn_w1"), Some("mlp_32x1"), Some("mlp_16x1"))
    );
    for r in [&a1, &a2, &s] {
        assert_eq!(r["objective"]["method"], "dgkd");
        assert!(
            r["extra"]["teacher"]["checkpoint"].as_str().unwrap().contains("runs/t"),
            "every link is taught by the teacher"
        );
        assert_eq!(r["extra"]["dgkd_teacher"], "runs/t");
    }
    assert_eq!(a1["extra"]["dgkd_guides"], serde_json::json!([]));
    assert!(a1["extra"].get("guides").is_none());
    assert_eq!(a2["extra"]["dgkd_guides"], serde_json::json!(["cnn_w1"]));
    assert_eq!(s["extra"]["dgkd_guides"], serde_json::json!(["cnn_w1", "mlp_32x1"]));
    let guided_by = |r: &serde_json::Value| -> Vec<String> {
        r["extra"]["guides"].as_array().unwrap().iter().map(|g| g["checkpoint"].as_str().unwrap().to_string()).collect()
    };
    let (g2, gs) = (guided_by(&a2), guided_by(&s));
    assert!(g2.len() == 1 && g2[0].contains("assistant1"), "{g2:?}");
    assert!(gs.len() == 2 && gs[0].contains("assistant1") && gs[1].contains("assistant2"), "{gs:?}");
    assert_eq!(s["extra"]["dgkd_role"], "student");

    let refused = |more: &[&str]| {
        let o = kdlab(&with(&base, more), tmp.path());
        assert!(!o.status.success(), "{more:?} should be refused");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = refused(&["--method", "dgkd"]);
    assert!(e.contains("method 'dgkd'") && e.contains("assistant"), "{e}");
    let e = refused(&["--method", "kd", "--assistant", "cnn_w1,mlp_32x1"]);
    assert!(e.contains("method 'kd' takes one assistant") && e.contains("assistant = cnn_w1,mlp_32x1"), "{e}");
}

/// A study's `assistants = [...]` block: the sweep trains the dense chain in dependency order (the
/// second assistant after the first, with two workers), each run guided by the assistants above it.
#[test]
fn a_study_sweeps_the_dense_chain() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_small_idx(&data, 300, 60);
    let study = tmp.path().join("s.toml");
    std::fs::write(
        &study,
        format!(
            "name = 'dense'\ndata = '{}'\nseeds = [0]\n[teachers]\nmodels = ['cnn_w2']\nepochs = 1\n\
             [students]\nmodels = ['mlp_16x1']\nepochs = 1\naugment = false\n\
             [[methods]]\nname = 'dgkd'\nassistants = ['cnn_w1', 'mlp_32x1']\nalpha = 0.1\nbeta = 0.9\n",
            data.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    // --emit-slurm: one array per link of the chain, each waiting for the one before.
    let arrays = tmp.path().join("arrays");
    let o = common::kdlab()
        .args(["sweep", study.to_str().unwrap(), "--out", tmp.path().join("slurm-out").to_str().unwrap()])
        .args(["--emit-slurm", arrays.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let submit = std::fs::read_to_string(arrays.join("submit.sh")).unwrap();
    let order: Vec<&str> = submit.lines().filter_map(|l| l.split_once("=$(sbatch").map(|(v, _)| v)).collect();
    assert_eq!(order, ["teachers", "assistants1", "assistants2", "students"], "{submit}");
    assert!(submit.contains("--dependency=afterok:$assistants1 assistants2.sbatch"), "{submit}");
    let listed = |name: &str| std::fs::read_to_string(arrays.join(format!("{name}.txt"))).unwrap().lines().count();
    assert_eq!((listed("teachers"), listed("assistants1"), listed("assistants2"), listed("students")), (1, 1, 1, 1));
    let o = common::kdlab()
        .args(["sweep", study.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let mut guides_of = std::collections::BTreeMap::new();
    for d in std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()) {
        let r = run_json(&d);
        if r["objective"]["method"] == "dgkd" {
            let g = r["extra"]["guides"].as_array().map_or(0, |g| g.len());
            guides_of.insert(r["model"].as_str().unwrap().to_string(), g);
        }
    }
    let want: std::collections::BTreeMap<String, usize> =
        [("cnn_w1", 0), ("mlp_32x1", 1), ("mlp_16x1", 2)].iter().map(|(m, g)| (m.to_string(), *g)).collect();
    assert_eq!(guides_of, want);
}
