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

/// The acceptance test: Fashion-MNIST images written as an image folder train and evaluate
/// like the IDX original. The IDX original here is the same images in the order the folder gives
/// them (class by class — ImageFolder's order — and by index within a class, which the export's
/// file names keep), written as IDX files. PNG is lossless, so the folder decodes to the same
/// pixels, labels and order: the strongest claim holds, the two data sets have one fingerprint and
/// a run on each gives the same accuracy and the same weights, bit for bit. JPEG (quality 95) changes
/// pixels by a few levels, so its run differs; its accuracy must be within noise of the IDX run's
/// (three standard errors of a difference of two accuracies on the same test images).
#[test]
fn fashion_mnist_as_png_and_jpeg_folders_train_like_the_idx_original() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (train_per_class, test_per_class) = (30, 10);
    let src = kdlab::data::embedded::load().unwrap();
    let idx_dir = cwd.join("idx");
    std::fs::create_dir_all(&idx_dir).unwrap();
    for (prefix, split, per_class) in [("train", &src.train, train_per_class), ("t10k", &src.test, test_per_class)] {
        let order: Vec<usize> =
            (0..10u16).flat_map(|c| (0..split.len()).filter(move |&i| split.labels[i] == c).take(per_class)).collect();
        let part = split.select(&order);
        let labels: Vec<u8> = part.labels.iter().map(|&y| y as u8).collect();
        let encode = kdlab::data::idx::encode;
        std::fs::write(
            idx_dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode(&[part.len(), 28, 28], &part.images),
        )
        .unwrap();
        std::fs::write(idx_dir.join(format!("{prefix}-labels-idx1-ubyte")), encode(&[part.len()], &labels)).unwrap();
    }
    let per_class = [train_per_class.to_string(), test_per_class.to_string()];
    for format in ["png", "jpeg"] {
        let export = ["data", "export", "fashion-mnist-mini", "--out", format, "--format", format];
        ok(&[&export[..], &["--train-per-class", &per_class[0], "--test-per-class", &per_class[1]]].concat(), cwd);
    }
    let info = |data: &str| -> serde_json::Value {
        let o = kdlab(&["data", "info", data, "--json"], cwd);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let counts = |v: &serde_json::Value| -> Vec<(u64, u64)> {
        v["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["train"].as_u64().unwrap(), c["test"].as_u64().unwrap()))
            .collect()
    };
    let (idx, png, jpeg) = (info("idx"), info("png"), info("jpeg"));
    assert_eq!(counts(&idx), vec![(30, 10); 10]);
    assert_eq!((counts(&png), counts(&jpeg)), (counts(&idx), counts(&idx)));
    assert_eq!(png["fingerprint"], idx["fingerprint"], "PNG: the same pixels, labels and order");
    assert_ne!(jpeg["fingerprint"], idx["fingerprint"]);

    let train = |data: &str| -> (f64, serde_json::Value) {
        let out = format!("runs/{data}");
        let args = ["train", "--data", data, "--model", "cnn_w1", "--epochs", "4", "--batch-size", "32"];
        ok(&[&args[..], &["--seed", "3", "--out", &out, "--device", "cpu", "--quiet"]].concat(), cwd);
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cwd.join(&out).join("run.json")).unwrap()).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cwd.join(&out).join("last.json")).unwrap()).unwrap();
        (rec["final_test_acc"].as_f64().unwrap(), last["weights_sha256"].clone())
    };
    let (acc_idx, w_idx) = train("idx");
    let (acc_png, w_png) = train("png");
    let (acc_jpeg, _) = train("jpeg");
    eprintln!("test accuracy: IDX {acc_idx}, PNG {acc_png}, JPEG {acc_jpeg}");
    assert!(acc_idx > 0.5, "the IDX run learns (chance is 0.1): {acc_idx}");
    assert_eq!((acc_png, w_png), (acc_idx, w_idx), "PNG folder and IDX: the same run");
    let n = (10 * test_per_class) as f64;
    let noise = 3.0 * (2.0 * acc_idx * (1.0 - acc_idx) / n).sqrt();
    assert!((acc_jpeg - acc_idx).abs() <= noise, "JPEG {acc_jpeg} vs IDX {acc_idx}: more than {noise} apart");
}
