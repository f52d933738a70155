//! `kdlab import` (issue 15): PyTorch checkpoints of RepDistiller-style CIFAR ResNets — a bare
//! state dict, RepDistiller's {"model": …} wrapper, nn.DataParallel keys under "state_dict" — into
//! run directories whose models give PyTorch's logits and teach; checkpoints that do not fit are
//! refused with the list of what does not.
mod common;

use common::text;
use std::path::Path;
use std::process::Command;

use common::{kdlab_cpu as kdlab, max_abs_diff, read_json as sidecar, venv_python};

#[test]
fn pytorch_checkpoints_import_into_runs_that_give_pytorchs_logits() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    common::write_test_images(&d.join("images.npy"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import_fixture.py");
    let o = Command::new(&py).arg(&script).arg(d).arg(d.join("images.npy")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // resnet20 for CIFAR-100 inputs, bare and wrapped: the same weights, PyTorch's logits.
    let r20 = ["--model", "resnet20", "--classes", "100", "--input", "3x32x32"];
    for (file, out) in [("r20.pth", "runs/r20"), ("r20_wrapped.pth", "runs/r20w")] {
        let o = kdlab(&[&["import", "--checkpoint", file, "--out", out][..], &r20].concat(), d);
        assert!(o.status.success(), "{file}: {}", text(&o));
    }
    let sha = |run: &str| sidecar(&d.join(run).join("last.json"))["weights_sha256"].clone();
    assert_eq!(sha("runs/r20"), sha("runs/r20w"));
    let (model, meta, _) =
        kdlab::train::checkpoint::load_model(&d.join("runs/r20").display().to_string(), tch::Device::Cpu).unwrap();
    assert_eq!((meta.model.as_str(), meta.classes), ("resnet20", 100));
    let (n, _, x) = kdlab::data::npy::read_logits(&d.join("r20_inputs.npy")).unwrap();
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let x = tch::Tensor::from_slice(&x).view([n as i64, 3, 32, 32]);
    let logits = model.infer(&x).to_kind(tch::Kind::Double).contiguous().view(-1);
    let (_, c, want) = kdlab::data::npy::read_logits(&d.join("r20_logits.npy")).unwrap();
    assert_eq!(c, 100);
    let diff = max_abs_diff(&Vec::<f64>::try_from(logits).unwrap(), &want);
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
