//! Image folders (torchvision's ImageFolder layout) through the `kdlab` binary: exported from the
//! embedded Fashion-MNIST subset as PNG and JPEG files, then trained on, evaluated, distilled from
//! and probed, with the decoded images cached.
mod common;

use common::text;
use std::path::Path;
use std::process::Output;

fn kdlab(args: &[&str], cwd: &Path) -> Output {
    common::kdlab().args(args).current_dir(cwd).env("KDLAB_DATA", cwd.join("data")).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = kdlab(args, cwd);
    assert!(o.status.success(), "kdlab {}: {}", args.join(" "), text(&o));
    text(&o)
}

#[test]
fn an_image_folder_trains_evaluates_distils_and_probes_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let out = ok(
        &[
            "data",
            "export",
            "fashion-mnist-mini",
            "--out",
            "imgs",
            "--train-per-class",
            "24",
            "--test-per-class",
            "6",
            "--format",
            "mixed",
        ],
        cwd,
    );
    assert!(out.contains("wrote 300 images"), "{out}");
    assert!(cwd.join("imgs/train/0-T-shirt-top/000001.png").exists());
    assert!(cwd.join("imgs/val/9-Ankle boot").is_dir());
    // Class order is the sorted folder names, which the export's NN- prefixes make the original order.
    let o = kdlab(&["data", "info", "imgs", "--json"], cwd);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (info["classes"].as_u64(), info["train"].as_u64(), info["test"].as_u64()),
        (Some(10), Some(240), Some(60))
    );
    assert_eq!(info["shape"], "1x28x28");
    assert_eq!(info["per_class"][0]["name"], "0-T-shirt-top");
    assert_eq!(info["per_class"][9]["name"], "9-Ankle boot");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sorted folder-name order") && err.contains("decoded, cached in"), "{err}");

    let out = ok(
        &[
            "train",
            "--data",
            "imgs",
            "--model",
            "cnn_w1",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--out",
            "runs/t",
            "--device",
            "cpu",
            "--quiet",
        ],
        cwd,
    );
    assert!(out.contains("read from the cache"), "the second load uses the cache: {out}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("runs/t/run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["data"], "imgs");
    assert_eq!(rec["data"]["fingerprint"], info["fingerprint"]);
    let acc = rec["final_test_acc"].as_f64().unwrap();
    assert!(acc > 0.0 && acc <= 1.0, "{acc}");

    // The run's own data spec is loaded again for evaluation, distillation and probes.
    let o = kdlab(&["eval", "--run", "runs/t", "--json", "--device", "cpu"], cwd);
    assert!(o.status.success(), "{}", text(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["accuracy"].as_f64(), Some(acc));
    ok(
        &[
            "distill",
            "--teacher",
            "runs/t",
            "--student",
            "mlp_16x1",
            "--method",
            "kd",
            "--epochs",
            "1",
            "--data",
            "imgs",
            "--out",
            "runs/s",
            "--device",
            "cpu",
            "--quiet",
        ],
        cwd,
    );
    let out = ok(&["probe", "--run", "runs/t", "--run", "runs/s", "--device", "cpu"], cwd);
    assert!(!text_has_warning(&out), "{out}");

    // Options travel in the spec: resized, three channels.
    let o = kdlab(&["data", "info", "imgs:size=16x16,channels=3", "--json"], cwd);
    assert!(o.status.success(), "{}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["shape"], "3x16x16");
}

fn text_has_warning(s: &str) -> bool {
    s.contains("differs from what")
}
