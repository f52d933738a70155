//! `kdlab import` (issue 15): PyTorch checkpoints of RepDistiller-style CIFAR models (ResNets, Wide
//! ResNet, VGG, MobileNetV2) and of torchvision's resnet18 — a bare state dict, RepDistiller's
//! {"model": …} wrapper, nn.DataParallel keys under "state_dict" — into run directories whose models
//! give PyTorch's logits and teach; TorchScript exports of the same models give them too;
//! checkpoints that do not fit are refused with the list of what does not.
mod common;

use common::text;
use std::path::Path;
use std::process::Command;

use common::{kdlab_cpu as kdlab, max_abs_diff, read_json as sidecar, venv_python};

/// Runs `scripts/import_fixture.py MODE DIR ARGS…` with the PyTorch environment's Python.
fn fixture(py: &Path, mode: &str, dir: &Path, args: &[&Path]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import_fixture.py");
    let o = Command::new(py).arg(&script).arg(mode).arg(dir).args(args).output().unwrap();
    let out = text(&o);
    assert!(
        !out.contains("No module named 'torchvision'"),
        "{} has no torchvision: `make torch` installs it (the Makefile's environment has it since issue 15)",
        py.display()
    );
    assert!(o.status.success(), "import_fixture.py {mode}: {out}");
}

/// The weights file's sha256 recorded for a run directory's last checkpoint.
fn weights_sha(run: &Path) -> serde_json::Value {
    sidecar(&run.join("last.json"))["weights_sha256"].clone()
}

/// An imported run's eval-mode logits on `inputs` ((N, C·H·W) float32 .npy) against PyTorch's in
/// `want` ((N, classes) .npy): the largest absolute difference.
fn logits_diff_in_process(run: &Path, inputs: &Path, want: &Path) -> f64 {
    tch::set_num_threads(1); // small batches; the tests run beside others on few cores
    let (model, meta, _) = kdlab::train::checkpoint::load_model(&run.display().to_string(), tch::Device::Cpu).unwrap();
    let (n, _, x) = kdlab::data::npy::read_logits(inputs).unwrap();
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (c, h, w) = (meta.input.c as i64, meta.input.h as i64, meta.input.w as i64);
    let x = tch::Tensor::from_slice(&x).view([n as i64, c, h, w]);
    let logits = model.infer(&x).to_kind(tch::Kind::Double).contiguous().view(-1);
    let (_, classes, want) = kdlab::data::npy::read_logits(want).unwrap();
    assert_eq!(classes, meta.classes);
    max_abs_diff(&Vec::<f64>::try_from(logits).unwrap(), &want)
}

/// The logits in a .npy file depend on the input: rows differ from the first by 0.01 on average, a
/// hundred times the tolerance, so a network that ignored part of its input would not pass.
fn assert_input_dependent(path: &Path) {
    let (n, c, v) = kdlab::data::npy::read_logits(path).unwrap();
    let spread =
        (1..n).flat_map(|i| (0..c).map(move |j| (i, j))).map(|(i, j)| (v[i * c + j] - v[j]).abs()).sum::<f64>()
            / ((n - 1) * c) as f64;
    assert!(spread > 0.01, "{}: the reference logits barely depend on the input ({spread})", path.display());
}

#[test]
fn pytorch_checkpoints_import_into_runs_that_give_pytorchs_logits() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    common::write_test_images(&d.join("images.npy"));
    fixture(&py, "resnet", d, &[&d.join("images.npy")]);

    // resnet20 for CIFAR-100 inputs, bare and wrapped: the same weights, PyTorch's logits.
    let r20 = ["--model", "resnet20", "--classes", "100", "--input", "3x32x32"];
    for (file, out) in [("r20.pth", "runs/r20"), ("r20_wrapped.pth", "runs/r20w")] {
        let o = kdlab(&[&["import", "--checkpoint", file, "--out", out][..], &r20].concat(), d);
        assert!(o.status.success(), "{file}: {}", text(&o));
    }
    assert_eq!(weights_sha(&d.join("runs/r20")), weights_sha(&d.join("runs/r20w")));
    let meta = sidecar(&d.join("runs/r20/last.json"));
    assert_eq!((meta["model"].as_str(), meta["classes"].as_u64()), (Some("resnet20"), Some(100)));
    let diff = logits_diff_in_process(&d.join("runs/r20"), &d.join("r20_inputs.npy"), &d.join("r20_logits.npy"));
    eprintln!("resnet20: max abs difference from PyTorch {diff:e}");
    assert!(diff <= 1e-4, "resnet20's logits differ from PyTorch's by {diff}");

    // resnet8 from nn.DataParallel, checked on data, then a teacher for logits, probe and distill.
    let r8 = ["--model", "resnet8", "--classes", "10", "--input", "1x28x28"];
    let o = kdlab(
        &[&["import", "--checkpoint", "r8_dp.pth", "--out", "runs/r8", "--data", "fashion-mnist-mini"][..], &r8]
            .concat(),
        d,
    );
    assert!(o.status.success() && text(&o).contains("test accuracy"), "{}", text(&o));
    let ds = ["--data", "fashion-mnist-mini"];
    let o = kdlab(&[&["logits", "--run", "runs/r8", "--out", "r8k.npy"][..], &ds].concat(), d);
    assert!(o.status.success(), "{}", text(&o));
    let (_, _, got) = kdlab::data::npy::read_logits(&d.join("r8k.npy")).unwrap();
    let (_, _, want) = kdlab::data::npy::read_logits(&d.join("r8_logits.npy")).unwrap();
    let diff = max_abs_diff(&got, &want);
    eprintln!("resnet8: max abs difference from PyTorch {diff:e}");
    assert!(diff <= 1e-4, "resnet8's logits differ from PyTorch's by {diff}");
    let o = kdlab(&[&["probe", "--run", "runs/r8"][..], &ds].concat(), d);
    assert!(o.status.success(), "{}", text(&o));
    let distill = ["distill", "--teacher", "runs/r8", "--student", "mlp_16x1", "--train-subset", "20", "--epochs", "1"];
    let o = kdlab(&[&distill[..], &ds, &["--quiet", "--out", "runs/s"]].concat(), d);
    assert!(o.status.success(), "{}", text(&o));

    // Checkpoints that do not fit: every tensor that does not is listed; damaged files are named.
    let bytes = std::fs::read(d.join("r20.pth")).unwrap();
    std::fs::write(d.join("r20_cut.pth"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(d.join("notes.pth"), b"hello").unwrap();
    for (args, want) in [
        (
            vec!["--checkpoint", "r20.pth", "--model", "resnet8", "--classes", "100", "--input", "3x32x32"],
            vec!["r20.pth: does not fit kdlab's resnet8", "unexpected", "layer1.1.conv1.weight [16, 16, 3, 3]"],
        ),
        (
            vec!["--checkpoint", "r20.pth", "--model", "resnet20", "--classes", "10", "--input", "3x32x32"],
            vec!["misshaped (2)", "fc.weight: checkpoint [100, 64], model [10, 64]", "fc.bias"],
        ),
        (
            vec!["--checkpoint", "r20.pth", "--model", "resnet32", "--classes", "100", "--input", "3x32x32"],
            vec![
                "missing (the model has them, the checkpoint does not) (60)",
                "layer1.3.bn1.bias [16]",
                "… and 44 more",
            ],
        ),
        (
            vec!["--checkpoint", "r20_cut.pth", "--model", "resnet20", "--classes", "100", "--input", "3x32x32"],
            vec!["r20_cut.pth"],
        ),
        (
            vec!["--checkpoint", "notes.pth", "--model", "resnet20", "--classes", "100", "--input", "3x32x32"],
            vec!["notes.pth: not a PyTorch zip checkpoint"],
        ),
    ] {
        let o = kdlab(&[&["import", "--out", "runs/bad"][..], &args].concat(), d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && want.iter().all(|w| err.contains(w)), "{args:?}: want {want:?}, got {err}");
    }
}

/// The acceptance test of issue 15 for the CIFAR zoo: RepDistiller's resnet56, wrn_40_2, vgg13,
/// mobile_half (kdlab's mobilenetv2_x0_5) and resnet32x4, saved as state dicts (resnet56 and
/// wrn_40_2 also in RepDistiller's wrapper and as TorchScript), give PyTorch's logits once imported
/// (in process: the command line's import is tested above) and through `kdlab logits --run FILE.pt`.
#[test]
fn repdistiller_models_import_and_export_with_pytorchs_logits() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(&py, "zoo", d, &[]);
    let cifar = kdlab::data::Shape { c: 3, h: 32, w: 32 };
    let import = |file: &str, arch: &str, run: &str| {
        kdlab::train::import::import(&d.join(file), arch, 100, cifar, &d.join(run), None).map(|_| d.join(run))
    };
    let agree = |what: &str, diff: f64| {
        eprintln!("{what}: max abs difference from PyTorch {diff:e}");
        assert!(diff <= 1e-4, "{what}: kdlab's logits differ from PyTorch's by {diff}");
    };
    for name in ["resnet56", "wrn_40_2", "vgg13", "mobilenetv2_x0_5", "resnet32x4"] {
        let reference = d.join(format!("{name}_logits.npy"));
        assert_input_dependent(&reference);
        let run = import(&format!("{name}.pth"), name, &format!("runs/{name}")).unwrap();
        agree(name, logits_diff_in_process(&run, &d.join("cifar_inputs.npy"), &reference));
    }
    for name in ["resnet56", "wrn_40_2"] {
        let wrapped = import(&format!("{name}_wrapped.pth"), name, &format!("runs/{name}-wrapped")).unwrap();
        assert_eq!(weights_sha(&d.join("runs").join(name)), weights_sha(&wrapped), "{name}_wrapped.pth");
        // The TorchScript export, on the CIFAR-100 files (kdlab normalises them with the profile).
        let o = kdlab(&["logits", "--run", &format!("{name}.pt"), "--data", "cifar", "--out", "ts.npy"], d);
        assert!(o.status.success(), "{name}.pt: {}", text(&o));
        let (_, _, got) = kdlab::data::npy::read_logits(&d.join("ts.npy")).unwrap();
        let (_, _, want) = kdlab::data::npy::read_logits(&d.join(format!("{name}_logits.npy"))).unwrap();
        agree(&format!("{name}.pt (TorchScript)"), max_abs_diff(&got, &want));
    }
    // A WRN checkpoint offered as a ResNet lists RepDistiller's names that do not fit.
    let err = format!("{:#}", import("wrn_40_2.pth", "resnet56", "runs/bad").unwrap_err());
    assert!(err.contains("unexpected") && err.contains("block1.layer.0.convShortcut.weight"), "{err}");
}

/// torchvision's resnet18 at 3x224x224 and resnet50 (bottleneck blocks) at 3x64x64, random weights
/// and BatchNorm statistics, import under their own parameter names and give PyTorch's logits in
/// eval mode: to 1e-4, or to twice PyTorch's own float32 rounding error (its distance from the
/// same network in float64) where that is larger — for this random resnet50 it is about 1e-4.
#[test]
fn torchvision_resnets_import_with_pytorchs_logits() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(&py, "torchvision", d, &[]);
    let read = |file: String| kdlab::data::npy::read_logits(&d.join(file)).unwrap().2;
    for (name, side) in [("resnet18", 224), ("resnet50", 64)] {
        let reference = d.join(format!("tv_{name}_logits.npy"));
        assert_input_dependent(&reference);
        let (input, run) = (kdlab::data::Shape { c: 3, h: side, w: side }, d.join("runs").join(name));
        kdlab::train::import::import(&d.join(format!("tv_{name}.pth")), name, 1000, input, &run, None).unwrap();
        let diff = logits_diff_in_process(&run, &d.join(format!("tv_{name}_inputs.npy")), &reference);
        let rounding = max_abs_diff(&read(format!("tv_{name}_logits.npy")), &read(format!("tv_{name}_logits64.npy")));
        let tolerance = 1e-4f64.max(2.0 * rounding);
        eprintln!("torchvision {name} at {side}x{side}: max abs difference from PyTorch {diff:e} (PyTorch's float32 rounding {rounding:e})");
        assert!(diff <= tolerance, "{name}'s logits differ from PyTorch's by {diff} (tolerance {tolerance})");
    }
}
