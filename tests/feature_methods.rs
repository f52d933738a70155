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

fn kd_numbers(h: &[EpochMetrics]) -> Vec<(usize, f64, f64, f64, f64, String)> {
    h.iter()
        .map(|m| {
            let extra = m.extra.as_ref().map(|e| e.to_string()).unwrap_or_default();
            (m.epoch, m.train_loss, m.test_acc, m.terms["ce"], m.terms["kd"], extra)
        })
        .collect()
}

fn ctkd(teacher: &Path, params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    Distill::new(t, &methods::MethodSpec::parse("ctkd", params.parse().unwrap()).unwrap(), None).unwrap()
}

/// Trains `c` with CTKD whole, and again killed after its first epoch and resumed: the histories
/// (the learnt temperature of each epoch included) and the final checkpoints must be identical.
/// Returns the whole run's directory.
fn ctkd_resumes_bit_identically(teacher: &Path, c: &kdlab::train::config::TrainConfig) -> tempfile::TempDir {
    let data = small_data();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = "lambda_epochs = 2";
    let full = train(c, &data, &mut ctkd(teacher, p), &quiet(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(b.path(), "distill") };
    train(c, &data, &mut ctkd(teacher, p), &stop).unwrap();
    let resumed = train(c, &data, &mut ctkd(teacher, p), &quiet(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    assert_eq!(kd_numbers(&full.history), kd_numbers(&resumed.history));
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()), "student, θ and momenta identical after resume");
    a
}

/// CTKD's θ is a scalar in the method's VarStore: trained (through the reversal layer), saved with
/// its momentum, restored on resume; each epoch records τ, θ and λ.
#[test]
fn ctkd_learns_its_temperature_and_resumes_bit_identically() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("cnn_w1", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();
    let a = ctkd_resumes_bit_identically(t.path(), &cfg("mlp_16x1", 3));
    let meta = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    let saved = checkpoint::read_tensors(&a.path().join("last.json"), &meta).unwrap();
    for key in ["method.theta", "optim.momentum.method.theta"] {
        assert!(saved.contains_key(key), "{key} missing from {:?}", saved.keys().collect::<Vec<_>>());
    }
    let theta = saved["method.theta"].double_value(&[]);
    assert!(theta != 1.0 && theta.is_finite(), "θ was trained: {theta}");
    let extra = |e: usize| meta.history[e].extra.as_ref().unwrap()["ctkd"].clone();
    // λ: (1 − cos(π/2))/2 = 1/2 at epoch 1 of a 2-epoch ramp, then 1.
    assert!((extra(0)["lambda"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{}", extra(0));
    assert_eq!(extra(2)["lambda"].as_f64().unwrap(), 1.0);
    let tau = extra(2)["tau"].as_f64().unwrap();
    assert!((tau - (1.0 + 20.0 / (1.0 + (-theta).exp()))).abs() < 1e-5, "τ {tau} vs θ {theta}");
    assert!(tau > 1.0 && tau < 21.0);
}

/// DOT (`optimizer = "dot"`): a killed run resumes bit-identically, both momenta checkpointed; θ,
/// which only the distillation term reaches, has only the distillation momentum; the optimiser
/// changes the run (not SGD by another name), and an SGD run directory refuses to resume as DOT.
#[test]
fn dot_keeps_two_momenta_and_resumes_bit_identically() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("cnn_w1", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();
    let dot = kdlab::train::config::TrainConfig { optimizer: kdlab::train::sgd::Optimizer::Dot, ..cfg("mlp_16x1", 3) };
    let a = ctkd_resumes_bit_identically(t.path(), &dot);
    let meta = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    assert_eq!((meta.optimizer.kind.as_str(), meta.optimizer.dot_delta), ("dot", Some(0.075)));
    let saved = checkpoint::read_tensors(&a.path().join("last.json"), &meta).unwrap();
    let keys: Vec<&String> = saved.keys().collect();
    assert!(saved.contains_key("optim.momentum_distill.method.theta"), "{keys:?}");
    assert!(!saved.contains_key("optim.momentum.method.theta"), "CE does not reach θ: {keys:?}");
    let student_params = saved.keys().filter(|k| k.starts_with("model.") && !k.contains("running")).count();
    // Every student parameter has both (CE and the KD term reach each).
    let student = |prefix: &str| saved.keys().filter(|k| k.starts_with(prefix) && !k.contains(".method.")).count();
    let (task, distill) = (student("optim.momentum."), student("optim.momentum_distill."));
    assert!(task == student_params && distill == student_params, "{keys:?}");

    // The same run under SGD ends elsewhere; and its directory is not resumed as DOT.
    let s = tempfile::tempdir().unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(s.path(), "distill") };
    train(&cfg("mlp_16x1", 3), &data, &mut ctkd(t.path(), "lambda_epochs = 2"), &stop).unwrap();
    let first = |d: &Path| checkpoint::read_meta(&d.join("checkpoints/epoch-0001.json")).unwrap().weights_sha256;
    assert_ne!(first(s.path()), first(a.path()), "DOT and SGD take different steps");
    let e = format!(
        "{:#}",
        train(&dot, &data, &mut ctkd(t.path(), "lambda_epochs = 2"), &quiet(s.path(), "distill")).unwrap_err()
    );
    assert!(e.contains("optimizer"), "{e}");
}

/// CTKD's keys and DOT's training keys reach `kdlab distill`/`kdlab train` flags and study files:
/// a study grid over CTKD's ramp, and `optimizer = "dot"` in `[students]`, which changes the
/// students' ids and leaves the teachers' alone.
#[test]
fn ctkd_and_dot_keys_reach_the_cli_and_study_grids() {
    let dir = tempfile::tempdir().unwrap();
    let distill = ["distill", "--teacher", "no-such-run", "--student", "mlp_16x1"];
    let e = |o: Output| String::from_utf8_lossy(&o.stderr).to_string();
    let o = kdlab(&[&distill[..], &["--method", "ctkd", "--tau-range", "-1"]].concat(), dir.path());
    assert!(e(o.clone()).contains("tau_range must be a positive number, got -1"), "{}", e(o));
    let o =
        kdlab(&[&distill[..], &["--method", "kd", "--optimizer", "dot", "--dot-delta", "0.5"]].concat(), dir.path());
    assert!(e(o.clone()).contains("dot_delta must keep both of DOT's momenta"), "{}", e(o));
    let train = ["train", "--model", "mlp_16x1", "--optimizer", "dot", "--nesterov", "true"];
    let o = kdlab(&train, dir.path());
    assert!(e(o.clone()).contains("nesterov is not defined for optimizer = \"dot\""), "{}", e(o));

    let study = |students: &str| {
        let text = format!(
            "data = 'fashion-mnist-mini'\nseeds = [0]\n[teachers]\nmodels = ['cnn_w1']\nepochs = 1\n\
             [students]\nmodels = ['mlp_16x1']\nepochs = 1\n{students}\n[[methods]]\nname = 'ctkd'\nlambda_epochs = [5, 10]\n"
        );
        let s = kdlab::study::config::StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap();
        kdlab::study::plan::expand(&s, Path::new("/tmp/unused")).unwrap()
    };
    let (sgd, dot) = (study(""), study("optimizer = 'dot'"));
    let students = |runs: &[kdlab::study::plan::RunSpec]| -> Vec<(String, f64, kdlab::train::sgd::Optimizer)> {
        runs.iter()
            .filter(|r| r.kind == kdlab::study::plan::Kind::Student)
            .map(|r| (r.id.clone(), r.hyper["lambda_epochs"].as_f64().unwrap(), r.train.optimizer))
            .collect()
    };
    let (a, b) = (students(&sgd), students(&dot));
    assert_eq!(a.iter().map(|r| r.1).collect::<Vec<_>>(), [5.0, 10.0]);
    assert!(a.iter().all(|r| r.2 == kdlab::train::sgd::Optimizer::Sgd));
    assert!(b.iter().all(|r| r.2 == kdlab::train::sgd::Optimizer::Dot));
    assert!(a.iter().zip(&b).all(|(x, y)| x.0 != y.0), "DOT students are other runs");
    let teacher = |runs: &[kdlab::study::plan::RunSpec]| {
        runs.iter().find(|r| r.kind == kdlab::study::plan::Kind::Teacher).unwrap().id.clone()
    };
    assert_eq!(teacher(&sgd), teacher(&dot));
}
