//! The method contract's taps, modules and state, proved with FitNet: its regressor is a trainable
//! module optimised and checkpointed with the student, a killed run resumes bit-identically (the
//! regressor, its BatchNorm statistics and its momentum included), a pairing without the tap is
//! refused by name, and its keys reach the CLI, `kdlab loss` and study grids from its file alone.
use kdlab::data::{self, Dataset};
use kdlab::methods::{self, REGISTRY};
use kdlab::train::checkpoint;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::Distill;
use kdlab::train::objective::CrossEntropy;
use kdlab::train::run::EpochMetrics;
use kdlab::train::teacher::Teacher;
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use std::process::{Command, Output};
use tch::Device;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(2);
    guard
}

fn small_data() -> Dataset {
    data::embedded::load().unwrap().head(600, 200)
}

fn cfg(model: &str, epochs: usize) -> TrainConfig {
    TrainConfig { model: model.into(), epochs, batch_size: 64, save_every: 1, seed: 3, ..Default::default() }
}

fn quiet(dir: &Path, kind: &str) -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::new(dir, Device::Cpu, kind) }
}

fn numbers(h: &[EpochMetrics]) -> Vec<(usize, f64, f64, f64, f64)> {
    h.iter().map(|m| (m.epoch, m.train_loss, m.test_acc, m.terms["ce"], m.terms["feat"])).collect()
}

fn fitnet(teacher: &Path, params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    let m = methods::MethodSpec::parse("fitnet", params.parse().unwrap()).unwrap();
    Distill::new(t, &m, None).unwrap()
}

fn kdlab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdlab")).args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn fitnet_trains_its_regressor_and_resumes_bit_identically() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("resnet8", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();

    let c = cfg("cnn_w1", 3);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // cnn_w1's stage2 is 16×7×7 and resnet8's 32×14×14 on 28×28 inputs: a transposed regressor.
    let full = train(&c, &data, &mut fitnet(t.path(), ""), &quiet(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(b.path(), "distill") };
    train(&c, &data, &mut fitnet(t.path(), ""), &stop).unwrap();
    let resumed = train(&c, &data, &mut fitnet(t.path(), ""), &quiet(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    assert_eq!(numbers(&full.history), numbers(&resumed.history));
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()), "student, regressor and momentum identical after resume");

    // The regressor, its BatchNorm statistics and its momentum are in the checkpoint, and they
    // were trained: the feature term falls.
    let meta = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    let saved = checkpoint::read_tensors(&a.path().join("last.json"), &meta).unwrap();
    for key in [
        "method.regressor.conv.weight",
        "method.regressor.bn.running_mean",
        "optim.momentum.method.regressor.conv.weight",
    ] {
        assert!(saved.contains_key(key), "{key} missing from {:?}", saved.keys().collect::<Vec<_>>());
    }
    let h = &full.history;
    assert!(h[2].terms["feat"] < h[0].terms["feat"], "feature term {} → {}", h[0].terms["feat"], h[2].terms["feat"]);
    // The student's own weights load as a plain model: the method's modules stay out of it.
    let (student, _, _) = checkpoint::load_model(a.path().to_str().unwrap(), Device::Cpu).unwrap();
    assert_eq!(student.params(), kdlab::models::param_count("cnn_w1", data.shape(), 10).unwrap());

    // A resume by another method (no regressor to restore into) is refused, not silently mixed.
    let err = train(&cfg("cnn_w1", 4), &data, &mut fitnet(t.path(), "hint = 'stage1'"), &quiet(a.path(), "distill"));
    assert!(err.is_err());

    // A student without the tap: refused before training, naming method, model and its taps.
    let m = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        train(&cfg("mlp_16x1", 1), &data, &mut fitnet(t.path(), ""), &quiet(m.path(), "distill")).unwrap_err()
    );
    assert!(e.contains("method 'fitnet' needs tap 'stage2' of student mlp_16x1, which has: hidden1"), "{e}");
}

/// FitNet is one file and one registry line: its own keys are named nowhere else in the sources,
/// yet `kdlab distill`, `kdlab loss` and study grids take them.
#[test]
fn fitnets_keys_reach_the_cli_loss_and_study_grids_from_its_file_alone() {
    let entry = methods::entry_of("fitnet").unwrap();
    let others: Vec<&str> = REGISTRY.iter().filter(|e| e.name != "fitnet").flat_map(|e| e.keys().to_vec()).collect();
    let own: Vec<&str> = entry.keys().iter().copied().filter(|k| !others.contains(k)).collect();
    assert!(own.contains(&"hint") && own.contains(&"feat_weight"), "{own:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for f in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if f.is_dir() {
                stack.push(f);
            } else if f != src.join("methods/fitnet.rs") {
                let text = std::fs::read_to_string(&f).unwrap();
                for k in ["feat_weight", "\"hint\""] {
                    assert!(!text.contains(k), "{} names {k}: FitNet's keys belong in its file", f.display());
                }
            }
        }
    }

    // kdlab distill: a generated flag reaches the method's checks.
    let dir = tempfile::tempdir().unwrap();
    let distill = ["distill", "--teacher", "no-such-run", "--student", "cnn_w1", "--method", "fitnet"];
    let o = kdlab(&[&distill[..], &["--feat-weight", "-1"]].concat(), dir.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("feat_weight must be ≥ 0, got -1"), "{e}");

    // A study grid over the hint: one run per tap.
    let text = "data = 'fashion-mnist-mini'\nseeds = [0]\n[teachers]\nmodels = ['resnet8']\nepochs = 1\n\
                [students]\nmodels = ['cnn_w1']\nepochs = 1\n[[methods]]\nname = 'fitnet'\nhint = ['stage1', 'stage2']\n";
    let s = kdlab::study::config::StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap();
    let runs = kdlab::study::plan::expand(&s, Path::new("/tmp/unused")).unwrap();
    let hints: Vec<String> = runs
        .iter()
        .filter(|r| r.kind == kdlab::study::plan::Kind::Student)
        .map(|r| r.hyper["hint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hints, ["stage1", "stage2"]);

    // kdlab loss with taps: vector taps go through a linear regressor, whose loss is checked
    // against a plain-f64 computation in the method's unit tests; here: the keys and the taps
    // reach it, and a missing tap is named.
    let (n, c, d) = (4usize, 3usize, 5usize);
    let mut r = kdlab::util::rng::Rng::new(5);
    let mut f = |k: usize| -> Vec<f32> { (0..k).map(|_| (r.unit() - 0.5) as f32).collect() };
    let npy = |name: &str, shape: &[usize], v: &[f32]| data::npy::write_f32(&dir.path().join(name), shape, v).unwrap();
    npy("s.npy", &[n, c], &f(n * c));
    npy("t.npy", &[n, c], &f(n * c));
    npy("fs.npy", &[n, d], &f(n * d));
    npy("ft.npy", &[n, d + 1], &f(n * (d + 1)));
    data::npy::write_i64(&dir.path().join("y.npy"), &[n], &[0, 1, 2, 0]).unwrap();
    let base =
        ["loss", "--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy", "--json", "--method", "fitnet"];
    let taps = ["--hint", "embedding", "--student-tap", "embedding=fs.npy", "--teacher-tap", "embedding=ft.npy"];
    let o = kdlab(&[&base[..], &taps[..]].concat(), dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hyper"]["hint"], "embedding");
    assert!(v["terms"]["feat"].as_f64().unwrap() > 0.0, "{v}");
    let o = kdlab(&[&base[..], &["--student-tap", "embedding=fs.npy"]].concat(), dir.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("method 'fitnet' needs tap 'stage2' of --student-tap, which has: embedding"), "{e}");
}
