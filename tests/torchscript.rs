//! TorchScript teachers (issue 15): a model exported with torch.jit.trace or torch.jit.script is a
//! teacher for `logits`, `probe`, `cache build` and `distill`, its logits equal PyTorch's, and a
//! file that does not fit the data is refused with an error naming it.
mod common;

use common::text;
use std::path::Path;
use std::process::Command;

use common::{kdlab_cpu as kdlab, read_json as json, venv_python};

/// The largest difference between two saved logit files of the same shape.
fn logits_diff(a: &Path, b: &Path) -> f64 {
    let (na, ca, va) = kdlab::data::npy::read_logits(a).unwrap();
    let (nb, cb, vb) = kdlab::data::npy::read_logits(b).unwrap();
    assert_eq!((na, ca), (nb, cb), "{} vs {}", a.display(), b.display());
    common::max_abs_diff(&va, &vb)
}

#[test]
fn torchscript_teachers_give_pytorchs_logits_and_teach() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The embedded test images, raw, for PyTorch to normalise itself.
    let n = common::write_test_images(&d.join("images.npy"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torchscript_teacher.py");
    let o = Command::new(&py).arg(&script).arg(d).arg(d.join("images.npy")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Logits: traced and scripted exports, with the data's profile (the default) and with flags.
    let ds = ["--data", "fashion-mnist-mini"];
    for (model, extra, reference) in [
        ("traced.pt", vec![], "logits_profile.npy"),
        ("scripted.pt", vec![], "logits_profile.npy"),
        ("traced.pt", vec!["--teacher-mean", "0.5", "--teacher-std", "0.5"], "logits_half.npy"),
    ] {
        let args = [&["logits", "--run", model, "--out", "out/l.npy"][..], &ds, &extra].concat();
        let o = kdlab(&args, d);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        let diff = logits_diff(&d.join("out/l.npy"), &d.join(reference));
        eprintln!("{model} {extra:?}: max abs difference from PyTorch {diff:e}");
        assert!(diff <= 1e-5, "{model} {extra:?}: kdlab's logits differ from PyTorch's by {diff}");
    }

    // Probe: two TorchScript teachers side by side (the same weights: they agree everywhere).
    let o = kdlab(
        &[&["probe", "--teacher", "traced.pt", "--teacher", "scripted.pt", "--json", "p.json"][..], &ds].concat(),
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let p = json(&d.join("p.json"));
    assert_eq!(p["teachers"].as_array().unwrap().len(), 2);
    assert_eq!(p["teachers"][0]["samples"], n);
    assert_eq!(p["pairs"][0]["top1_agree"], 1.0);

    // The logit cache lives beside the file, keyed on its sha256.
    let o = kdlab(&[&["cache", "build", "--run", "traced.pt", "--augment", "false"][..], &ds].concat(), d);
    assert!(o.status.success(), "{}", text(&o));
    let caches = |d: &Path| {
        std::fs::read_dir(d.join("logit-cache"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "kdlc"))
            .count()
    };
    assert_eq!(caches(d), 1);

    // Distillation from the TorchScript teacher, through its cache and directly.
    let distill = [
        "distill",
        "--teacher",
        "traced.pt",
        "--student",
        "mlp_16x1",
        "--train-subset",
        "20",
        "--epochs",
        "1",
        "--quiet",
    ];
    let o = kdlab(&[&distill[..], &ds, &["--teacher-cache", "--out", "runs/cached"]].concat(), d);
    assert!(o.status.success(), "{}", text(&o));
    let sha = kdlab::data::sha256_hex(&std::fs::read(d.join("traced.pt")).unwrap());
    let rec = json(&d.join("runs/cached/run.json"));
    assert_eq!(rec["extra"]["teacher"]["sha256"], sha.as_str(), "{}", rec["extra"]["teacher"]);
    assert_eq!(rec["extra"]["teacher"]["input_norm"]["from"], "data profile");
    assert!(
        rec["extra"]["teacher_cache"]["file"].as_str().unwrap().contains("logit-cache"),
        "{}",
        rec["extra"]["teacher_cache"]
    );
    assert_eq!(caches(d), 2, "the augmented views of the 200-image subset are a second cache");
    let o = kdlab(
        &[&distill[..], &ds, &["--teacher-mean", "0.5", "--teacher-std", "0.5", "--out", "runs/direct"]].concat(),
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let rec = json(&d.join("runs/direct/run.json"));
    assert_eq!(rec["extra"]["teacher"]["input_norm"]["from"], "flags");
    assert_eq!(rec["extra"]["teacher"]["input_norm"]["mean"][0], 0.5);
    assert!(rec["final_test_acc"].as_f64().is_some_and(|a| a > 0.0), "{rec}");
    // A feature method reads the teacher's taps, which a TorchScript program does not expose:
    // refused before training, naming the method, the tap and the teacher.
    let o = kdlab(&[&distill[..], &ds, &["--method", "crd", "--out", "runs/crd"]].concat(), d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(err.contains("method 'crd' needs tap 'embedding' of teacher"), "{err}");
    assert!(err.contains("which exposes no taps"), "{err}");

    // A changed file is a changed teacher: a run from the old file is not resumed with it, and
    // its cache is another file.
    std::fs::copy(d.join("scripted.pt"), d.join("traced.pt")).unwrap();
    let o = kdlab(&[&distill[..], &ds, &["--teacher-cache", "--out", "runs/cached"]].concat(), d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already holds a different run") && err.contains("sha256"), "{err}");
    let o = kdlab(&[&distill[..], &ds, &["--teacher-cache", "--out", "runs/changed"]].concat(), d);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(json(&d.join("runs/changed/run.json"))["extra"]["teacher"]["sha256"], sha.as_str());
    assert_eq!(caches(d), 3);

    // Files that do not fit, and missing or malformed settings: errors naming the file or flag.
    std::fs::write(d.join("junk.pt"), b"not a model").unwrap();
    for (args, want) in [
        (
            vec!["logits", "--run", "classes7.pt", "--out", "x.npy", "--data", "fashion-mnist-mini"],
            vec!["classes7.pt", "gives 7 logits", "fashion-mnist-mini has 10 classes"],
        ),
        (
            vec!["logits", "--run", "rgb.pt", "--out", "x.npy", "--data", "fashion-mnist-mini"],
            vec!["rgb.pt", "does not take 1x28x28 inputs"],
        ),
        (
            vec!["logits", "--run", "junk.pt", "--out", "x.npy", "--data", "fashion-mnist-mini"],
            vec!["junk.pt", "not a TorchScript model"],
        ),
        (
            vec!["logits", "--run", "scripted.pt", "--out", "x.npy"],
            vec!["scripted.pt is a TorchScript model", "--data"],
        ),
        (
            vec![
                "logits",
                "--run",
                "scripted.pt",
                "--out",
                "x.npy",
                "--data",
                "fashion-mnist-mini",
                "--teacher-mean",
                "0.5,0.5",
                "--teacher-std",
                "0.5",
            ],
            vec!["--teacher-mean has 2 values", "1 channels"],
        ),
        (
            vec!["probe", "--run", "scripted.pt", "--data", "fashion-mnist-mini", "--teacher-mean", "0.5"],
            vec!["both --teacher-mean and --teacher-std"],
        ),
        (
            vec![
                "distill",
                "--teacher",
                "classes7.pt",
                "--student",
                "mlp_16x1",
                "--data",
                "fashion-mnist-mini",
                "--epochs",
                "1",
            ],
            vec!["classes7.pt", "gives 7 logits"],
        ),
    ] {
        let o = kdlab(&args, d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && want.iter().all(|w| err.contains(w)), "{args:?}: want {want:?}, got {err}");
    }
}
