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
    let m = methods::build("fitnet", &params.parse().unwrap()).unwrap();
    Distill::new(t, m, None)
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

/// A method file whose own `Params` declares one of FitNet's key names (at's `feat_weight`): it
/// names its own key, not FitNet's.
fn shares_keys(f: &Path) -> bool {
    let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    f.parent().is_some_and(|d| d.ends_with("src/methods"))
        && methods::entry_of(name).is_ok_and(|e| e.keys().contains(&"feat_weight"))
}

/// FitNet is one file and one registry line: its own keys are named nowhere else in the sources,
/// yet `kdlab distill`, `kdlab loss` and study grids take them.
#[test]
fn fitnets_keys_reach_the_cli_loss_and_study_grids_from_its_file_alone() {
    let entry = methods::entry_of("fitnet").unwrap();
    let others: Vec<&str> = REGISTRY.iter().filter(|e| e.name != "fitnet").flat_map(|e| e.keys().to_vec()).collect();
    let own: Vec<&str> = entry.keys().iter().copied().filter(|k| !others.contains(k)).collect();
    // feat_weight is at's key too (each method's own field; the search below skips its file).
    assert!(own.contains(&"hint") && entry.keys().contains(&"feat_weight"), "{own:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for f in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if f.is_dir() {
                stack.push(f);
            } else if f != src.join("methods/fitnet.rs") && !shares_keys(&f) {
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

// ---- at and sdd ---------------------------------------------------------------------------------

fn distill(teacher: &Path, method: &str, params: &str) -> Distill {
    let t = Teacher::load(teacher.to_str().unwrap(), Device::Cpu).unwrap();
    Distill::new(t, methods::build(method, &params.parse().unwrap()).unwrap(), None)
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
