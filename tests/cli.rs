//! The `kdlab` binary as a user runs it.
mod common;

use common::text;
use std::path::Path;
use std::process::{Command, Output};

fn kdlab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdlab"))
        .args(args)
        .current_dir(cwd)
        .env("KDLAB_DATA", cwd.join("data"))
        .output()
        .unwrap()
}

/// Writes an IDX data set the reader has never seen: 3 classes with known counts, raw files.
fn write_idx(dir: &Path, train: &[u8], test: &[u8]) {
    let enc = |dims: &[u32], data: &[u8]| {
        let mut v = vec![0u8, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    };
    for (p, labels) in [("train", train), ("t10k", test)] {
        let px: Vec<u8> = (0..labels.len() * 64).map(|i| (i * 7) as u8).collect();
        std::fs::write(dir.join(format!("{p}-images-idx3-ubyte")), enc(&[labels.len() as u32, 8, 8], &px)).unwrap();
        std::fs::write(dir.join(format!("{p}-labels-idx1-ubyte")), enc(&[labels.len() as u32], labels)).unwrap();
    }
}

#[test]
fn data_info_counts_an_unseen_idx_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mine");
    std::fs::create_dir(&d).unwrap();
    write_idx(&d, &[2, 0, 2, 2, 1, 0, 2], &[1, 1, 0]);
    let o = kdlab(&["data", "info", d.to_str().unwrap(), "--json"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["train"], 7);
    assert_eq!(v["classes"], 3);
    let counts: Vec<(u64, u64)> = v["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["train"].as_u64().unwrap(), c["test"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, vec![(2, 1), (1, 2), (4, 0)]);
    // A truncated label file: a clear error naming it, and a failing exit code.
    let lab = d.join("train-labels-idx1-ubyte");
    let bytes = std::fs::read(&lab).unwrap();
    std::fs::write(&lab, &bytes[..bytes.len() - 2]).unwrap();
    let o = kdlab(&["data", "info", d.to_str().unwrap()], tmp.path());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("train-labels-idx1-ubyte") && t.contains("truncated"), "{t}");
}

#[test]
fn unknown_config_keys_are_named_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("run.toml"), "model = 'resnet8'\nbatchsize = 64\n").unwrap();
    let o = kdlab(&["train", "--config", "run.toml"], tmp.path());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("run.toml") && t.contains("'batchsize'") && t.contains("batch_size"), "{t}");
}

#[test]
fn offline_fetch_says_where_to_put_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = kdlab(&["data", "fetch", "cifar10", "--from", empty.to_str().unwrap()], tmp.path());
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("cifar-10-binary.tar.gz"), "{t}");
    let o = kdlab(&["train", "--model", "resnet8", "--data", "cifar100", "--epochs", "1"], tmp.path());
    let t = text(&o);
    assert!(!o.status.success() && t.contains("kdlab data fetch cifar100"), "{t}");
}

/// Train from a TOML config with a flag overriding it, then save logits and read them with NumPy.
#[test]
fn train_config_eval_and_logits_that_numpy_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("idx");
    std::fs::create_dir(&d).unwrap();
    let train: Vec<u8> = (0..96).map(|i| (i % 3) as u8).collect();
    let test: Vec<u8> = (0..30).map(|i| (i % 3) as u8).collect();
    write_idx(&d, &train, &test);
    std::fs::write(
        tmp.path().join("run.toml"),
        format!("model = 'cnn_w1'\ndata = '{}'\nepochs = 5\nbatch_size = 16\n", d.display()),
    )
    .unwrap();
    let o =
        kdlab(&["train", "--config", "run.toml", "--epochs", "2", "--out", "runs/c1", "--device", "cpu"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("runs/c1/run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["epochs"], 2, "the flag overrides the file");
    assert_eq!(rec["config"]["batch_size"], 16, "the file's keys are kept");
    let o = kdlab(&["eval", "--run", "runs/c1", "--json"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["per_class"].as_array().unwrap().len(), 3);
    assert_eq!(ev["accuracy"], rec["final_test_acc"]);
    let o = kdlab(&["logits", "--run", "runs/c1", "--split", "test", "--out", "out/logits.npy"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    // Read back with our own reader...
    let (n, c, _) = kdlab::data::npy::read_logits(&tmp.path().join("out/logits.npy")).unwrap();
    assert_eq!((n, c), (30, 3));
    // ...and with NumPy, where the PyTorch environment (which has it) is installed.
    let venv = std::env::var("KDLAB_TORCH_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/kdlab-torch-venv", std::env::var("HOME").unwrap_or_default()));
    let py = Path::new(&venv).join("bin/python");
    if !py.exists() {
        eprintln!("skipping the NumPy check: no {}", py.display());
        return;
    }
    let o = Command::new(py)
        .args(["-c", "import numpy as np; l = np.load('out/logits.npy'); y = np.load('out/labels.npy'); print(l.shape, l.dtype, y.shape, y.dtype, int(y.sum()))"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "(30, 3) float32 (30,) int64 30");
}

/// Errors name the file and the flag (issue 14): the labels file whose length or values are wrong,
/// and a negative number given to a numeric flag reaches kdlab's own range check instead of
/// clap's "unexpected argument '-1'" — for every floating-point flag of every command, and as
/// clap's "invalid value" for the unsigned ones.
#[test]
fn bad_labels_and_negative_numbers_are_reported_by_file_and_flag() {
    use kdlab::data::npy;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 11) as f32 / 3.0).collect();
    npy::write_f32(&d.join("ok.npy"), &[50, 10], &logits).unwrap();
    npy::write_i64(&d.join("y.npy"), &[50], &[1; 50]).unwrap();
    npy::write_i64(&d.join("y_short.npy"), &[40], &[1; 40]).unwrap();
    let mut bad = vec![1i64; 50];
    bad[4] = 17;
    npy::write_i64(&d.join("y_bad.npy"), &[50], &bad).unwrap();
    let probe = ["probe", "--logits", "ok.npy", "--labels"];
    let loss = ["loss", "--method", "kd", "--student", "ok.npy", "--teacher", "ok.npy", "--labels", "y.npy"];
    let distill = ["distill", "--teacher", "no-such-run", "--student", "mlp_16x1"];
    let train = ["train", "--model", "mlp_16x1", "--epochs", "1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&probe[..], &["y_short.npy"]].concat(), "ok has 50 samples but y_short.npy has 40 labels"),
        ([&probe[..], &["y_bad.npy"]].concat(), "y_bad.npy: label 17 at sample 4 is out of range for 10 classes"),
        (
            [&probe[..], &["y.npy", "--tau", "-1"]].concat(),
            "--tau: every temperature must be a positive number, got -1",
        ),
        (
            [&probe[..], &["y.npy", "--tau", "-1,2"]].concat(),
            "--tau: every temperature must be a positive number, got -1",
        ),
        ([&probe[..], &["y.npy", "--table-tau", "-4"]].concat(), "--table-tau must be a positive number, got -4"),
        ([&probe[..], &["y.npy", "--chunk", "-1"]].concat(), "invalid value '-1' for '--chunk <CHUNK>'"),
        ([&loss[..], &["--tau", "-1"]].concat(), "tau must be a positive number, got -1"),
        ([&loss[..], &["--epoch", "-2"]].concat(), "--epoch must be a number ≥ 0 (epochs are 1-based), got -2"),
        ([&train[..], &["--lr", "-0.1"]].concat(), "lr must be a positive number"),
        ([&train[..], &["--momentum", "-0.5"]].concat(), "momentum must be in [0, 1)"),
        ([&train[..], &["--weight-decay", "-1e-4"]].concat(), "weight_decay must be ≥ 0"),
        ([&train[..], &["--gamma", "-1"]].concat(), "gamma must be in (0, 1]"),
        ([&train[..], &["--lr", "-inf"]].concat(), "lr must be a positive number"),
        ([&train[..], &["--milestones", "-1,2"]].concat(), "invalid value '-1' for '--milestones <MILESTONES>'"),
        (vec!["train", "--model", "mlp_16x1", "--epochs", "-3"], "invalid value '-3' for '--epochs <EPOCHS>'"),
        ([&train[..], &["--threads", "-1"]].concat(), "invalid value '-1' for '--threads <THREADS>'"),
        ([&distill[..], &["--method", "kd", "--tau", "-1"]].concat(), "tau must be a positive number, got -1"),
        ([&distill[..], &["--method", "kd", "--alpha", "-1"]].concat(), "alpha must be ≥ 0, got -1"),
        ([&distill[..], &["--method", "kd", "--student-tau", "-1"]].concat(), "student_tau must be a positive number"),
        ([&distill[..], &["--method", "dkd", "--beta", "-1"]].concat(), "beta must be ≥ 0, got -1"),
        ([&distill[..], &["--method", "dkd", "--warmup", "-1"]].concat(), "warmup must be ≥ 0, got -1"),
        ([&distill[..], &["--method", "dist", "-p", "gamma=-1"]].concat(), "gamma must be ≥ 0, got -1"),
        // --gamma is the training key whatever the method: the learning rate's decay.
        ([&distill[..], &["--method", "dist", "--gamma", "-1"]].concat(), "gamma must be in (0, 1]"),
        ([&distill[..], &["--method", "ats", "--tau1", "-1"]].concat(), "tau1 must be a positive number, got -1"),
        ([&distill[..], &["--method", "ats", "--tau2", "-1"]].concat(), "tau2 must be a positive number, got -1"),
        ([&distill[..], &["--method", "isats", "--tau2-min", "-1"]].concat(), "tau2_min must be a positive number"),
        ([&distill[..], &["--method", "isats", "--margin", "-1"]].concat(), "margin must be a positive number"),
        ([&distill[..], &["--method", "isats", "--lambda", "-1"]].concat(), "lambda must be ≥ 0, got -1"),
    ];
    for (args, says) in cases {
        let o = kdlab(&args, d);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {t}");
        assert!(t.contains(says) && !t.contains("unexpected argument"), "{args:?}: expected '{says}', got: {t}");
    }
}

/// A run records the memory layout it was trained in and resumes only in it: the layout changes
/// the kernels' float rounding, so continuing in the other would not be the same run.
#[test]
fn a_run_resumes_only_in_the_memory_layout_it_was_trained_in() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .args(["train", "--model", "cnn_w1", "--data", "fashion-mnist-mini", "--train-subset", "30"])
            .args(["--epochs", "1", "--threads", "1", "--device", "cpu", "--quiet", "--out", "runs/l"])
            .args(["--memory-format", format])
            .current_dir(tmp.path())
            .output()
            .unwrap()
    };
    let o = run("channels-last");
    assert!(o.status.success(), "{}", text(&o));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("runs/l/run.json")).unwrap()).unwrap();
    assert_eq!(rec["memory_format"], "channels-last");
    let o = run("contiguous");
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("runs/l") && t.contains("--memory-format channels-last"), "{t}");
    let o = run("channels-last");
    assert!(o.status.success(), "{}", text(&o));
}
