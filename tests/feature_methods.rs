//! The method contract's taps, modules and state, proved with FitNet: its regressor is a trainable
//! module optimised and checkpointed with the student, a killed run resumes bit-identically (the
//! regressor, its BatchNorm statistics and its momentum included), a pairing without the tap is
//! refused by name, and its keys reach the CLI, `kdlab loss` and study grids from its file alone.
//! And with CRD: memory banks and Z as state, the batch's sample indices and seeded negatives
//! (a killed run resumes bit-identically), and its loss and every gradient against the float64
//! reference `scripts/crd_reference.py`.
use kdlab::data::{self, Dataset};
use kdlab::methods::{self, REGISTRY};
use kdlab::train::checkpoint;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::Distill;
use kdlab::train::objective::CrossEntropy;
use kdlab::train::run::EpochMetrics;
use kdlab::train::tap_store::TapStore;
use kdlab::train::teacher::Teacher;
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use std::process::{Command, Output};
use tch::Device;
mod common;
use common::reference::{flat, json_of, normal, python, worst_rel};
use common::serial;

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
    numbers_of(h, "feat")
}

fn numbers_of(h: &[EpochMetrics], term: &str) -> Vec<(usize, f64, f64, f64, f64)> {
    h.iter().map(|m| (m.epoch, m.train_loss, m.test_acc, m.terms["ce"], m.terms[term])).collect()
}

fn fitnet(teacher: &Path, params: &str) -> Distill {
    distiller("fitnet", teacher, params)
}

fn distiller(method: &str, teacher: &Path, params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    let m = methods::MethodSpec::parse(method, params.parse().unwrap()).unwrap();
    Distill::new(t, &m, None).unwrap()
}

fn src_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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

/// With the teacher cached and one view per image, a feature method reads the teacher's taps from a
/// store filled once (resumed runs read the same store); run.json says how they were served.
#[test]
fn a_feature_method_reads_the_teachers_taps_from_a_store_where_each_image_has_one_view() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("resnet8", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();
    let stored = || {
        let mut d = fitnet(t.path(), "");
        d.tap_store = Some(TapStore::build(&d.teacher.model, &data, &d.taps.teacher).unwrap());
        d
    };
    let c = TrainConfig { augment: false, ..cfg("cnn_w1", 3) };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train(&c, &data, &mut stored(), &quiet(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(b.path(), "distill") };
    train(&c, &data, &mut stored(), &stop).unwrap();
    let resumed = train(&c, &data, &mut stored(), &quiet(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    assert_eq!(numbers(&full.history), numbers(&resumed.history));
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()));

    // From the command line: the store where the transfer set has one view per image.
    let tmp = tempfile::tempdir().unwrap();
    common::write_small_idx(&tmp.path().join("fm"), 256, 64);
    let teacher = ["train", "--model", "resnet8", "--data", "fm", "--epochs", "1", "--out", "t", "--quiet"];
    assert!(kdlab(&teacher, tmp.path()).status.success());
    let served = |augment: &str, out: &str| {
        let args = ["distill", "--teacher", "t", "--student", "cnn_w1", "--method", "fitnet", "--data", "fm"];
        let more = ["--epochs", "1", "--teacher-cache", "--augment", augment, "--out", out, "--quiet"];
        let o = kdlab(&[&args[..], &more[..]].concat(), tmp.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(out).join("run.json")).unwrap()).unwrap();
        rec["extra"]["teacher_cache"].as_str().unwrap_or_default().to_string()
    };
    let line = served("false", "plain");
    assert!(line.starts_with("the teacher's taps in memory (stage2, logits:"), "{line}");
    let line = served("true", "augmented");
    assert_eq!(
        line,
        "the teacher's taps served live: the transfer set is augmented (a view per step, not one per image)"
    );
}

/// FitNet is one file and one registry line: its own keys are named nowhere else in the sources,
/// yet `kdlab distill`, `kdlab loss` and study grids take them.
#[test]
fn fitnets_keys_reach_the_cli_loss_and_study_grids_from_its_file_alone() {
    let entry = methods::entry_of("fitnet").unwrap();
    let others: Vec<&str> = REGISTRY.iter().filter(|e| e.name != "fitnet").flat_map(|e| e.keys().to_vec()).collect();
    let own: Vec<&str> = entry.keys().iter().copied().filter(|k| !others.contains(k)).collect();
    assert!(own.contains(&"hint"), "{own:?}");
    // feat_weight is also CRD's (mdistiller's name for both): each method's own file may name it.
    let takes = |k: &str| -> Vec<std::path::PathBuf> {
        REGISTRY
            .iter()
            .filter(|e| e.keys().contains(&k))
            .map(|e| src_dir().join(format!("methods/{}.rs", e.name)))
            .collect()
    };
    let src = src_dir();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for f in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if f.is_dir() {
                stack.push(f);
            } else {
                let text = std::fs::read_to_string(&f).unwrap();
                for (k, key) in [("feat_weight", "feat_weight"), ("\"hint\"", "hint")] {
                    if !takes(key).contains(&f) {
                        assert!(!text.contains(k), "{} names {k}: a method's keys belong in its file", f.display());
                    }
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

// ---- CRD --------------------------------------------------------------------------------------

#[test]
fn crd_keeps_its_banks_and_z_as_state_and_resumes_bit_identically() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("resnet8", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();

    // The authors' defaults, K = 16384 included: on 600 samples the negatives are drawn with
    // replacement from the ~540 of other classes, as the authors' sampler does.
    let c = cfg("cnn_w1", 3);
    let crd = || distiller("crd", t.path(), "");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train(&c, &data, &mut crd(), &quiet(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(b.path(), "distill") };
    train(&c, &data, &mut crd(), &stop).unwrap();
    let resumed = train(&c, &data, &mut crd(), &quiet(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    assert_eq!(numbers_of(&full.history, "crd"), numbers_of(&resumed.history, "crd"));
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()), "student, heads, banks, Z and momentum identical after resume");
    // Z is estimated once: every epoch reports the same constants.
    let z: Vec<String> = full.history.iter().map(|m| m.extra.as_ref().unwrap()["crd"].to_string()).collect();
    assert!(z.iter().all(|v| *v == z[0]), "{z:?}");

    // The heads and their momentum, the banks and Z are in the checkpoint. Every training
    // sample's row was updated, so every row is a unit vector (the initial rows are not), and Z
    // was estimated (−1 until then).
    let meta = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    let saved = checkpoint::read_tensors(&a.path().join("last.json"), &meta).unwrap();
    for key in ["method.embed_s.weight", "method.embed_t.bias", "optim.momentum.method.embed_t.weight"] {
        assert!(saved.contains_key(key), "{key} missing from {:?}", saved.keys().collect::<Vec<_>>());
    }
    for bank in ["method.bank_s", "method.bank_t"] {
        let norms = saved[bank].square().sum_dim_intlist(1, false, tch::Kind::Double).sqrt();
        assert_eq!(norms.size(), [600]);
        let off = (norms - 1.0).abs().max().double_value(&[]);
        assert!(off < 1e-5, "{bank}: a row's norm is {off} from 1");
    }
    let z = Vec::<f64>::try_from(saved["method.z"].to_kind(tch::Kind::Double)).unwrap();
    assert!(z.iter().all(|&v| v > 0.0), "{z:?}");
    // Another seed draws other negatives (and other initial banks): other numbers.
    let other = tempfile::tempdir().unwrap();
    let o = train(&TrainConfig { seed: 4, ..cfg("cnn_w1", 1) }, &data, &mut crd(), &quiet(other.path(), "distill"));
    assert_ne!(o.unwrap().history[0].terms["crd"], full.history[0].terms["crd"]);
}

/// One CRD case's files: logits, labels, both embeddings, the batch's indices into a bank of
/// `samples` rows, K negatives per sample, both heads and both banks (unit rows, as trained banks
/// are), and Z where given. Returns the --method-var arguments.
#[allow(clippy::too_many_arguments)]
fn write_crd_case(
    dir: &Path,
    seed: u64,
    (n, c, ds, dt): (usize, usize, usize, usize),
    feat_dim: usize,
    samples: usize,
    k: usize,
    z: Option<[f64; 2]>,
) -> Vec<String> {
    let mut r = kdlab::util::rng::Rng::new(seed);
    let mut f = |len: usize, scale: f64| -> Vec<f64> { (0..len).map(|_| scale * normal(&mut r)).collect() };
    let f64s = |name: &str, shape: &[usize], v: &[f64]| {
        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        // float32 files: both sides read the same rounded values, in float64.
        data::npy::write_f32(&dir.join(name), shape, &v32).unwrap();
    };
    f64s("s.npy", &[n, c], &f(n * c, 2.0));
    f64s("t.npy", &[n, c], &f(n * c, 2.0));
    f64s("fs.npy", &[n, ds], &f(n * ds, 1.0));
    f64s("ft.npy", &[n, dt], &f(n * dt, 1.0));
    f64s("ws.npy", &[feat_dim, ds], &f(feat_dim * ds, 0.5));
    f64s("bs.npy", &[feat_dim], &f(feat_dim, 0.2));
    f64s("wt.npy", &[feat_dim, dt], &f(feat_dim * dt, 0.5));
    f64s("bt.npy", &[feat_dim], &f(feat_dim, 0.2));
    for bank in ["bank_s.npy", "bank_t.npy"] {
        let mut v = f(samples * feat_dim, 1.0);
        for row in v.chunks_mut(feat_dim) {
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        f64s(bank, &[samples, feat_dim], &v);
    }
    let mut r = kdlab::util::rng::Rng::new(seed + 100);
    let labels: Vec<i64> = (0..n).map(|_| r.below(c as u64) as i64).collect();
    data::npy::write_i64(&dir.join("y.npy"), &[n], &labels).unwrap();
    // Distinct bank rows for the batch, and negatives anywhere in the bank (the loss does not
    // care where they come from).
    let mut rows: Vec<i64> = (0..samples as i64).collect();
    r.shuffle(&mut rows);
    data::npy::write_i64(&dir.join("idx.npy"), &[n], &rows[..n]).unwrap();
    let neg: Vec<i64> = (0..n * k).map(|_| r.below(samples as u64) as i64).collect();
    data::npy::write_i64(&dir.join("neg.npy"), &[n, k], &neg).unwrap();
    let mut vars: Vec<String> = [
        "embed_s.weight=ws.npy",
        "embed_s.bias=bs.npy",
        "embed_t.weight=wt.npy",
        "embed_t.bias=bt.npy",
        "bank_s=bank_s.npy",
        "bank_t=bank_t.npy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(z) = z {
        f64s("z.npy", &[2], &z);
        vars.push("z=z.npy".into());
    }
    vars
}

/// The must-show check: CRD's terms, total, and the gradients with respect to the student's
/// logits, its embedding and both heads' parameters, against the float64 reference to 1e-6.
#[test]
fn crd_loss_and_gradients_match_the_float64_reference() {
    let Some(py) = python() else {
        eprintln!("skipping: no NumPy environment");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/crd_reference.py");
    // (seed, (N, C, D_s, D_t), feat_dim, samples, K, Z given, kdlab-only flags, flags both take)
    type Case<'a> =
        (u64, (usize, usize, usize, usize), usize, usize, usize, Option<[f64; 2]>, &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        // The authors' defaults (feat_dim 128, τ = 0.07), Z estimated from the batch.
        (21, (24, 10, 12, 20), 128, 40, 16, None, &[], &[]),
        // Other weights and temperature, Z given, K above the bank's rows (repeats).
        (
            22,
            (7, 3, 5, 9),
            8,
            30,
            45,
            Some([25.0, 60.0]),
            &["--feat-dim", "8"],
            &["--nce-t", "0.5", "--ce-weight", "0.5", "--feat-weight", "2"],
        ),
        // One negative, a wide bank.
        (23, (5, 4, 6, 6), 16, 200, 1, None, &["--feat-dim", "16"], &["--nce-t", "0.2"]),
    ];
    let mut worst = 0f64;
    for (seed, shape, feat_dim, samples, k, z, ours_only, both) in cases {
        let dir = tempfile::tempdir().unwrap();
        let vars = write_crd_case(dir.path(), *seed, *shape, *feat_dim, *samples, *k, *z);
        let samples = samples.to_string();
        let mut common = vec![
            "--student",
            "s.npy",
            "--labels",
            "y.npy",
            "--student-tap",
            "embedding=fs.npy",
            "--teacher-tap",
            "embedding=ft.npy",
            "--indices",
            "idx.npy",
            "--negatives",
            "neg.npy",
            "--samples",
            &samples,
        ];
        for v in &vars {
            common.extend(["--method-var", v.as_str()]);
        }
        common.extend(both.iter());
        let what = format!("case {seed}");
        let ours = json_of(
            Command::new(env!("CARGO_BIN_EXE_kdlab"))
                .args(["loss", "--method", "crd", "--teacher", "t.npy", "--json", "--grad"])
                .args(&common)
                .args(*ours_only)
                .current_dir(dir.path()),
            &what,
        );
        let theirs = json_of(Command::new(&py).arg(&script).args(&common).current_dir(dir.path()), &what);
        let mut pairs = vec![];
        for k in ["ce", "crd"] {
            pairs.push((
                format!("term {k}"),
                vec![ours["terms"][k].as_f64().unwrap()],
                vec![theirs["terms"][k].as_f64().unwrap()],
            ));
        }
        pairs.push(("total".into(), flat(&ours["total"]), flat(&theirs["total"])));
        pairs.push(("grad".into(), flat(&ours["grad"]), flat(&theirs["grad"])));
        pairs.push(("tap_grad".into(), flat(&ours["tap_grad"]["embedding"]), flat(&theirs["tap_grad"]["embedding"])));
        for v in ["embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"] {
            pairs.push((v.into(), flat(&ours["var_grad"][v]), flat(&theirs["var_grad"][v])));
        }
        for (name, a, b) in pairs {
            let d = worst_rel(&a, &b);
            assert!(d <= 1e-6, "{what}, {name}: worst relative difference {d:e}");
            assert!(b.iter().any(|&x| x != 0.0), "{what}, {name}: a reference of zeros checks nothing");
            worst = worst.max(d);
        }
        assert_eq!(ours["hyper"]["nce_k"], 16384, "given negatives set K; the key keeps its value");
    }
    println!("worst relative difference over every case, term and gradient entry: {worst:e}");
}

/// `kdlab loss --method crd` without given negatives draws them from the batch's labels with
/// `--draw-seed`: the same seed gives the same loss, another seed another; a bank larger than
/// the batch has unlabelled rows, and is refused without negatives.
#[test]
fn crd_draws_its_negatives_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    write_crd_case(dir.path(), 31, (20, 4, 6, 8), 128, 20, 5, None);
    let base = [
        "loss",
        "--method",
        "crd",
        "--student",
        "s.npy",
        "--teacher",
        "t.npy",
        "--labels",
        "y.npy",
        "--student-tap",
        "embedding=fs.npy",
        "--teacher-tap",
        "embedding=ft.npy",
        "--json",
        "--nce-k",
        "8",
    ];
    let crd = |extra: &[&str]| {
        let o = kdlab(&[&base[..], extra].concat(), dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["terms"]["crd"].as_f64().unwrap()
    };
    let (a, b, c) = (crd(&["--draw-seed", "1"]), crd(&["--draw-seed", "1"]), crd(&["--draw-seed", "2"]));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let o = kdlab(&[&base[..], &["--samples", "50"]].concat(), dir.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("give --negatives"), "{e}");
}

/// CRD's keys reach `kdlab distill` and study grids; a pairing without the tap is refused by
/// name (every zoo model has `embedding`; a TorchScript teacher has no taps, tests/torchscript.rs
/// runs that through `kdlab distill`).
#[test]
fn crds_keys_reach_the_cli_and_study_grids() {
    let dir = tempfile::tempdir().unwrap();
    let distill = ["distill", "--teacher", "no-such-run", "--student", "cnn_w1", "--method", "crd"];
    let o = kdlab(&[&distill[..], &["--nce-m", "1"]].concat(), dir.path());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("nce_m must be in [0, 1), got 1"), "{e}");
    let o = kdlab(&["distill", "--help"], dir.path());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("crd: contrastive representation distillation (Tian et al., ICLR 2020)"), "{help}");
    assert!(help.contains("--nce-k") && help.contains("--feat-dim"), "CRD's keys have their flags");
    let text = "data = 'fashion-mnist-mini'\nseeds = [0]\n[teachers]\nmodels = ['resnet8']\nepochs = 1\n\
                [students]\nmodels = ['cnn_w1']\nepochs = 1\n[[methods]]\nname = 'crd'\nnce_t = [0.07, 0.1]\n";
    let s = kdlab::study::config::StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap();
    let runs = kdlab::study::plan::expand(&s, Path::new("/tmp/unused")).unwrap();
    let taus: Vec<f64> = runs
        .iter()
        .filter(|r| r.kind == kdlab::study::plan::Kind::Student)
        .map(|r| r.hyper["nce_t"].as_f64().unwrap())
        .collect();
    assert_eq!(taus, [0.07, 0.1]);
    let m = methods::build("crd", &methods::Table::new()).unwrap();
    let need = m.taps();
    assert_eq!(
        (need.student.as_slice(), need.teacher.as_slice()),
        (&["embedding".to_string()][..], &["embedding".to_string()][..])
    );
    let e = kdlab::train::distill::check_taps("crd", "teacher model.pt (TorchScript)", &[], &need.teacher).unwrap_err();
    assert!(
        e.to_string()
            .contains("method 'crd' needs tap 'embedding' of teacher model.pt (TorchScript), which exposes no taps"),
        "{e}"
    );
}

// ---- at and sdd ---------------------------------------------------------------------------------

fn distill(teacher: &Path, method: &str, params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    Distill::new(t, &methods::MethodSpec::parse(method, params.parse().unwrap()).unwrap(), None).unwrap()
}

/// An epoch's number, loss, accuracy and every term (by name, sorted).
type Epoch = (usize, f64, f64, Vec<(String, f64)>);

/// Each epoch's loss, accuracy and every term, in a fixed order.
fn all_numbers(h: &[EpochMetrics]) -> Vec<Epoch> {
    h.iter()
        .map(|m| {
            let mut t: Vec<(String, f64)> = m.terms.iter().map(|(k, v)| (k.clone(), *v)).collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            (m.epoch, m.train_loss, m.test_acc, t)
        })
        .collect()
}

/// A run of `method` killed after its first epoch and resumed ends where the uninterrupted run
/// does: every epoch's numbers and the checkpoint's bytes. Returns the history and the
/// uninterrupted run's directory.
fn resumes_bit_identically(
    teacher: &Path,
    student: &str,
    method: &str,
    params: &str,
    data: &Dataset,
) -> (Vec<EpochMetrics>, tempfile::TempDir) {
    let c = cfg(student, 3);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = train(&c, data, &mut distill(teacher, method, params), &quiet(a.path(), "distill")).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..quiet(b.path(), "distill") };
    train(&c, data, &mut distill(teacher, method, params), &stop).unwrap();
    let resumed = train(&c, data, &mut distill(teacher, method, params), &quiet(b.path(), "distill")).unwrap();
    assert_eq!(resumed.resumed_at, 1, "{method}");
    assert_eq!(all_numbers(&full.history), all_numbers(&resumed.history), "{method}");
    let sha = |d: &Path| checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(a.path()), sha(b.path()), "{method}: checkpoints identical after resume");
    (full.history, a)
}

fn refusal(teacher: &Path, student: &str, method: &str, params: &str, data: &Dataset) -> String {
    let m = tempfile::tempdir().unwrap();
    let r = train(&cfg(student, 1), data, &mut distill(teacher, method, params), &quiet(m.path(), "distill"));
    format!("{:#}", r.unwrap_err())
}

#[test]
fn at_and_sdd_train_resume_bit_identically_and_refuse_students_without_their_taps() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("resnet8", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();

    // at: cnn_w1 has two stages (8×14×14, 16×7×7 on 28×28 inputs), resnet8 three (16×28×28,
    // 32×14×14, 64×7×7): stages = 2 pairs the first two, the teacher's maps pooled to the student's.
    let (h, _) = resumes_bit_identically(t.path(), "cnn_w1", "at", "stages = 2", &data);
    assert!(h[2].terms["feat"] < h[0].terms["feat"], "attention term {} → {}", h[0].terms["feat"], h[2].terms["feat"]);
    // The default three stages: refused, naming the stage the student lacks.
    let e = refusal(t.path(), "cnn_w1", "at", "", &data);
    assert!(e.contains("method 'at' needs tap 'stage3' of student cnn_w1, which has: stage1, stage2, prepool"), "{e}");
    let e = refusal(t.path(), "mlp_16x1", "at", "", &data);
    assert!(e.contains("method 'at' needs tap 'stage1' of student mlp_16x1, which has: hidden1"), "{e}");

    // sdd: resnet8 from resnet8, both with a 64×7×7 pre-pooling map and so a 10×7×7 logit_map.
    let (h, _) = resumes_bit_identically(t.path(), "resnet8", "sdd", "", &data);
    assert!(h[2].terms["kd"] < h[0].terms["kd"], "sdd term {} → {}", h[0].terms["kd"], h[2].terms["kd"]);
    // The plain CNN's classifier reads the flattened map, the MLP's a vector: no logit_map.
    let e = refusal(t.path(), "cnn_w1", "sdd", "", &data);
    assert!(e.contains("method 'sdd' needs tap 'logit_map' of student cnn_w1, which has: stage1, stage2, prepool, embedding, logits"), "{e}");
    let e = refusal(t.path(), "mlp_16x1", "sdd", "", &data);
    assert!(e.contains("method 'sdd' needs tap 'logit_map' of student mlp_16x1, which has: hidden1"), "{e}");
}

/// ReviewKD's ABF modules (convolutions, BatchNorm statistics, their momentum) are trained,
/// checkpointed and restored: a killed run resumes bit-identically. A student without its taps is
/// refused by name.
#[test]
fn reviewkd_trains_its_fusion_modules_and_resumes_bit_identically() {
    let _turn = serial();
    let data = small_data();
    let t = tempfile::tempdir().unwrap();
    train(&cfg("resnet8", 1), &data, &mut CrossEntropy, &quiet(t.path(), "train")).unwrap();
    // Warm-up of 1 epoch: the review term is at full weight from the first epoch (comparable).
    let (h, a) = resumes_bit_identically(t.path(), "resnet8", "reviewkd", "warmup = 1", &data);
    assert!(h[2].terms["feat"] < h[0].terms["feat"], "review term {} → {}", h[0].terms["feat"], h[2].terms["feat"]);
    let meta = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    let saved = checkpoint::read_tensors(&a.path().join("last.json"), &meta).unwrap();
    for key in [
        "method.abf0.conv1.weight",
        "method.abf1.att.weight",
        "method.abf3.bn2.running_mean",
        "optim.momentum.method.abf2.conv2.weight",
    ] {
        assert!(saved.contains_key(key), "{key} missing from {:?}", saved.keys().collect::<Vec<_>>());
    }
    // The MLP has an embedding but no stages: the first tap it lacks is named.
    let e = refusal(t.path(), "mlp_16x1", "reviewkd", "", &data);
    assert!(e.contains("method 'reviewkd' needs tap 'stage3' of student mlp_16x1, which has: hidden1"), "{e}");
}

/// `logit_map` is the classifier at every position: its mean over the positions is the model's
/// logits, for every family whose head pools globally.
#[test]
fn logit_map_pools_to_the_logits_in_every_pooling_family() {
    let _turn = serial();
    let _guard = tch::no_grad_guard();
    let shape = kdlab::data::Shape { c: 3, h: 32, w: 32 };
    for name in ["resnet8", "resnet8x4", "resnet18", "wrn_16_1", "vgg8", "mobilenetv2_x0_5"] {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = kdlab::models::build(&vs.root(), name, shape, 7).unwrap();
        let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
        let mut taps = kdlab::models::Taps::only(&["logit_map", "prepool"]);
        let logits = net.forward_taps(&x, false, &mut taps);
        let map = taps.get("logit_map").unwrap();
        let pre = taps.get("prepool").unwrap().size();
        assert_eq!(map.size(), [2, 7, pre[2], pre[3]], "{name}");
        let pooled = map.mean_dim([2, 3].as_slice(), false, tch::Kind::Float);
        let diff = (&pooled - &logits).abs().max().double_value(&[]);
        let scale = logits.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: {diff} (logits up to {scale})");
    }
}

/// at's, sdd's and reviewkd's keys reach `kdlab distill` flags (and the methods' checks), --help and study grids.
#[test]
fn at_sdd_and_reviewkd_keys_reach_the_cli_and_study_grids() {
    let dir = tempfile::tempdir().unwrap();
    let distill = ["distill", "--teacher", "no-such-run", "--student", "resnet8"];
    for (flags, want) in [
        (&["--method", "at", "--power", "-1"][..], "power must be a positive number, got -1"),
        (&["--method", "at", "--stages", "0"][..], "stages ≥ 1"),
        (&["--method", "sdd", "--comp-weight", "-2"][..], "comp_weight must be ≥ 0, got -2"),
        (&["--method", "sdd", "--max-scale", "3"][..], "max_scale of 1, 2 or 4"),
        (&["--method", "reviewkd", "--stages", "0"][..], "stages ≥ 1"),
        (&["--method", "reviewkd", "--teacher-preact", "maybe"][..], "teacher_preact"),
    ] {
        let o = kdlab(&[&distill[..], flags].concat(), dir.path());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{flags:?}: {e}");
    }

    let o = kdlab(&["distill", "--help"], dir.path());
    let help = String::from_utf8_lossy(&o.stdout);
    for line in [
        "at: attention transfer (Zagoruyko & Komodakis, ICLR 2017)",
        "sdd: scale decoupled distillation (Wei, Luo & Luo, CVPR 2024)",
        "reviewkd: knowledge review (Chen et al., CVPR 2021)",
    ] {
        assert!(help.contains(line), "{line} missing from:\n{help}");
    }
    for flag in ["--max-scale", "--comp-weight", "--power", "--teacher-preact"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }

    let text = "data = 'fashion-mnist-mini'\nseeds = [0]\n[teachers]\nmodels = ['resnet8']\nepochs = 1\n\
                [students]\nmodels = ['resnet8']\nepochs = 1\n[[methods]]\nname = 'at'\nstages = [1, 2]\n\
                [[methods]]\nname = 'sdd'\nmax_scale = [1, 2, 4]\ncomp_weight = [1, 2]\n\
                [[methods]]\nname = 'reviewkd'\nteacher_preact = [true, false]\n";
    let s = kdlab::study::config::StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s").unwrap();
    let runs = kdlab::study::plan::expand(&s, Path::new("/tmp/unused")).unwrap();
    let students: Vec<&serde_json::Value> =
        runs.iter().filter(|r| r.kind == kdlab::study::plan::Kind::Student).map(|r| &r.hyper).collect();
    let at: Vec<i64> = students.iter().filter_map(|h| h.get("power").map(|_| h["stages"].as_i64().unwrap())).collect();
    assert_eq!(at, [1, 2]);
    let mut sdd: Vec<(i64, f64)> = students
        .iter()
        .filter_map(|h| h.get("max_scale").map(|m| (m.as_i64().unwrap(), h["comp_weight"].as_f64().unwrap())))
        .collect();
    sdd.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(sdd, [(1, 1.0), (1, 2.0), (2, 1.0), (2, 2.0), (4, 1.0), (4, 2.0)]);
    let review: Vec<bool> =
        students.iter().filter_map(|h| h.get("teacher_preact").map(|v| v.as_bool().unwrap())).collect();
    assert_eq!(review, [true, false]);
    // Every run records the method's values in effect, defaults included.
    assert!(students.iter().any(|h| h.get("feat_weight").and_then(|v| v.as_f64()) == Some(1000.0)));
    assert!(students.iter().any(|h| h.get("tau").and_then(|v| v.as_f64()) == Some(4.0)));
}
