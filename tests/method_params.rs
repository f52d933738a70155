//! Methods' hyper-parameters as tables: the registry reads each method's keys and defaults from its
//! own struct, and the CLI (`kdlab distill`, `kdlab loss`) and study grids pass tables through.
use kdlab::methods::{self, MethodSpec, REGISTRY};
use kdlab::study::config::{StudyConfig, BLOCK_KEYS};
use kdlab::study::plan::{self, Kind};
use kdlab::train::distill::{DistillConfig, DISTILL_KEYS};
use std::path::Path;
use std::process::{Command, Output};

fn kdlab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdlab")).args(args).current_dir(cwd).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Random logits and labels as `kdlab loss` reads them: s.npy, t.npy, y.npy in `dir`.
fn write_logits(dir: &Path) {
    let (n, c) = (12usize, 6usize);
    let mut r = kdlab::util::rng::Rng::new(77);
    let student: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 4.0) as f32).collect();
    let teacher: Vec<f32> = (0..n * c).map(|_| ((r.unit() - 0.5) * 10.0) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|i| (i % c) as i64).collect();
    kdlab::data::npy::write_f32(&dir.join("s.npy"), &[n, c], &student).unwrap();
    kdlab::data::npy::write_f32(&dir.join("t.npy"), &[n, c], &teacher).unwrap();
    kdlab::data::npy::write_i64(&dir.join("y.npy"), &[n], &labels).unwrap();
}

/// `kdlab loss --json` with `args` after the logit files.
fn loss(dir: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let base = ["loss", "--student", "s.npy", "--teacher", "t.npy", "--labels", "y.npy", "--json"];
    let o = kdlab(&[&base[..], args].concat(), dir);
    if !o.status.success() {
        return Err(stderr(&o));
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap())
}

fn study(methods: &str) -> anyhow::Result<StudyConfig> {
    let text = format!(
        "data = 'fashion-mnist-mini'\nseeds = [0]\n[teachers]\nmodels = ['cnn_w1']\nepochs = 1\n[students]\nmodels = ['mlp_32x1']\nepochs = 1\n{methods}"
    );
    StudyConfig::from_table(text.parse().unwrap(), "s.toml", "s")
}

/// The acceptance test of the method contract: `kd_curriculum`'s own keys are named nowhere in the
/// sources but its file, yet the study grid, `kdlab distill` and `kdlab loss` all take them.
#[test]
fn a_new_methods_keys_reach_the_cli_loss_and_study_grids_from_its_file_alone() {
    let entry = methods::entry_of("kd_curriculum").unwrap();
    let others: Vec<&str> = REGISTRY.iter().filter(|e| e.name != entry.name).flat_map(|e| e.keys().to_vec()).collect();
    let own: Vec<&str> = entry.keys().iter().copied().filter(|k| !others.contains(k)).collect();
    assert!(own.contains(&"ramp_epochs") && own.contains(&"tau_start"), "{own:?}");

    // Nothing else lists them: every other source file is free of the new keys.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for f in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if f.is_dir() {
                stack.push(f);
            } else if f != src.join("methods/kd_curriculum.rs") {
                let text = std::fs::read_to_string(&f).unwrap();
                for k in &own {
                    assert!(
                        !text.contains(k),
                        "{} names '{k}': the key should live in its method's file only",
                        f.display()
                    );
                }
            }
        }
    }

    // kdlab loss: a generated flag and -p; the curriculum at epoch 2 of a 4-epoch half-cosine ramp
    // from τ 2 to the default τ_end is halfway, and its loss is kd's at that temperature.
    let dir = tempfile::tempdir().unwrap();
    write_logits(dir.path());
    let tau_end = entry.defaults()["tau_end"].as_f64().unwrap();
    let v = loss(dir.path(), &["--method", "kd_curriculum", "--tau-start", "2", "-p", "ramp_epochs=4", "--epoch", "2"])
        .unwrap();
    assert_eq!(v["hyper"]["tau_start"], 2.0, "{v}");
    assert_eq!(v["hyper"]["ramp_epochs"], 4.0, "{v}");
    assert_eq!(v["hyper"]["tau_end"].as_f64(), Some(tau_end), "{v}");
    let mid = (2.0 + tau_end) / 2.0;
    let kd =
        loss(dir.path(), &["--method", "kd", "-p", &format!("tau={mid}"), "--alpha", "0.1", "--beta", "0.9"]).unwrap();
    for term in ["ce", "kd"] {
        let (a, b) = (v["terms"][term].as_f64().unwrap(), kd["terms"][term].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{term}: curriculum {a} vs kd at τ {mid} {b}");
    }
    // Its default epoch is the end of the ramp: τ_end.
    let settled = loss(dir.path(), &["--method", "kd_curriculum", "-p", "ramp_epochs=3"]).unwrap();
    let at_end = loss(dir.path(), &["--method", "kd", "--tau", &tau_end.to_string()]).unwrap();
    assert!((settled["terms"]["kd"].as_f64().unwrap() - at_end["terms"]["kd"].as_f64().unwrap()).abs() < 1e-6);

    // kdlab distill: the keys reach the method (its checks speak before the teacher is looked up).
    let distill = ["distill", "--teacher", "no-such-run", "--student", "mlp_16x1", "--method", "kd_curriculum"];
    let e = stderr(&kdlab(&[&distill[..], &["-p", "tau_end=-1"]].concat(), dir.path()));
    assert!(e.contains("tau_end must be a positive number, got -1"), "{e}");
    let e = stderr(&kdlab(&[&distill[..], &["--ramp-epochs", "-2"]].concat(), dir.path()));
    assert!(e.contains("ramp_epochs must be ≥ 0, got -2"), "{e}");

    // A study grid over a new key: one run per value, labelled by it; a bad value names key and file.
    let s = study("[[methods]]\nname = 'kd_curriculum'\ntau_end = [2, 6]\nramp_epochs = 10\n").unwrap();
    let runs = plan::expand(&s, Path::new("/tmp/unused")).unwrap();
    let students: Vec<_> = runs.iter().filter(|r| r.kind == Kind::Student).collect();
    assert_eq!(students.len(), 2);
    for (r, want) in students.iter().zip([2.0, 6.0]) {
        assert_eq!(r.hyper["tau_end"], want, "{}", r.hyper);
        assert_eq!(r.hyper["ramp_epochs"], 10.0, "{}", r.hyper);
        assert_eq!(r.series, format!("kd_curriculum tau_end={want}"));
    }
    let e = format!("{:#}", study("[[methods]]\nname = 'kd_curriculum'\nramp_epochs = [5, -1]\n").unwrap_err());
    assert!(e.contains("s.toml methods[0]") && e.contains("ramp_epochs must be ≥ 0, got -1"), "{e}");
}

#[test]
fn study_grids_skip_only_incompatible_combinations_and_say_so() {
    // ATS needs τ1 ≥ τ2: of 2 × 2 combinations, τ1 = 1 goes with neither τ2.
    let s = study("[[methods]]\nname = 'ats'\ntau1 = [1, 4]\ntau2 = [2, 3]\n").unwrap();
    let m = &s.methods[0];
    assert_eq!(m.grid.len(), 2);
    assert_eq!(m.skipped.len(), 2);
    let notes = s.skipped_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("methods[0] (ats): 2 of 4 combinations"), "{}", notes[0]);
    assert!(notes[0].contains("tau1 ≥ tau2") && notes[0].contains("tau1 = 1, tau2 = 3"), "{}", notes[0]);
    // ISATS: a margin goes with the rule `order` only.
    let s = study("[[methods]]\nname = 'isats'\nrule = ['order', 'ts']\nmargin = 0.5\n").unwrap();
    assert_eq!((s.methods[0].grid.len(), s.methods[0].skipped.len()), (1, 1));
    assert!(
        s.skipped_notes()[0].contains("margin applies to the ISATS rules 'order' and 'ts_order' only"),
        "{:?}",
        s.skipped_notes()
    );
    // A grid without skips says nothing.
    assert!(study("[[methods]]\nname = 'kd'\ntau = [2, 4]\n").unwrap().skipped_notes().is_empty());
    // Any other refusal is an error naming the key and the file, even when other values are fine.
    for (block, says) in [
        ("name = 'ats'\nlambda = [0.5, 2]", "lambda must be in [0, 1], got 2"),
        ("name = 'kd'\ntau = [2, -1]", "tau must be a positive number, got -1"),
        ("name = 'kd'\ntau = [2, 'x']", "tau"),
        ("name = 'kd'\nstandardize = [false, 1]", "standardize"),
        ("name = 'isats'\nrule = ['order', 'oder']", "unknown ISATS rule 'oder'"),
    ] {
        let e = format!("{:#}", study(&format!("[[methods]]\n{block}\n")).unwrap_err());
        assert!(e.contains("s.toml methods[0]") && e.contains(says), "{block}: {e}");
    }
    // A misspelt key: the nearest of the block's keys and the method's.
    let e = format!("{:#}", study("[[methods]]\nname = 'kd'\nteacher = ['cnn_w1']\n").unwrap_err());
    assert!(e.contains("unknown key 'teacher' (did you mean 'teachers'?)"), "{e}");
    // Every combination incompatible: an error, not an empty grid.
    let e = format!("{:#}", study("[[methods]]\nname = 'ats'\ntau1 = [1, 2]\ntau2 = 3\n").unwrap_err());
    assert!(e.contains("no combination in the grid is compatible") && e.contains("tau1 ≥ tau2"), "{e}");
}

#[test]
fn per_key_flags_and_p_pairs_build_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    write_logits(dir.path());
    let d = dir.path();
    let flags = loss(d, &["--method", "isats", "--tau1", "3", "--rule", "ts", "--center-logits"]).unwrap();
    let pairs = loss(d, &["--method", "isats", "-p", "tau1=3", "-p", "rule=ts", "-p", "center_logits=true"]).unwrap();
    assert_eq!(flags, pairs);
    assert_eq!(flags["hyper"]["tau1"], 3.0, "{flags}");
    assert_ne!(flags, loss(d, &["--method", "isats"]).unwrap(), "the flags changed nothing");
    for (args, says) in [
        (vec!["-p", "tau=2", "--tau", "3"], "the hyper-parameter tau is given twice"),
        (vec!["-p", "tau"], "-p takes KEY=VALUE (e.g. -p tau=4), got 'tau'"),
        (vec!["-p", "tua=2"], "unknown key 'tua' (did you mean 'tau'?)"),
        (vec!["-p", "standardize=1"], "expected a boolean in `standardize`"),
        (vec!["-p", "tau=warm"], "expected f64 in `tau`"),
        (vec!["--tau1", "2"], "method 'kd' does not take tau1"),
    ] {
        let e = loss(d, &[&["--method", "kd"][..], &args].concat()).unwrap_err();
        assert!(e.contains(says), "{args:?}: {e}");
    }
}

#[test]
fn every_method_builds_from_its_defaults_and_records_them() {
    for e in REGISTRY {
        let spec = MethodSpec::default_of(e.name).unwrap_or_else(|err| panic!("{}: {err:#}", e.name));
        assert_eq!(spec.build().unwrap().name(), e.name);
        let (hyper, defaults) = (spec.hyper(), e.defaults());
        for k in e.keys() {
            assert!(defaults.get(k).is_some(), "{}: no default for {k}", e.name);
            // The run record shows the default the struct declares (null: the method derives it).
            if !defaults[k].is_null() {
                assert_eq!(hyper[k], defaults[k], "{}: {k}", e.name);
            }
            // A method key must not shadow a key of a distillation config or a study's block.
            assert!(!DISTILL_KEYS.contains(k) && !BLOCK_KEYS.contains(k), "{}: '{k}' is reserved", e.name);
        }
        let typo = MethodSpec::parse(e.name, "no_such_key = 1".parse().unwrap());
        assert!(typo.is_err(), "{} accepted a key it does not declare", e.name);
    }
}

/// Method keys and training keys are separate namespaces: a flat key that is a training key is the
/// training configuration's, whatever the method takes (`gamma`: the rate's decay, and DIST's
/// intra-class weight, which `[params]` / `-p` gives); every other flat key some method takes is
/// the method's. Checked for every key of every method, so a new key cannot shadow either way.
#[test]
fn method_keys_and_training_keys_live_apart() {
    let cfg = |method: &str, text: &str| {
        // A guided method (dgkd) is refused without its assistants.
        let chain = if methods::entry_of(method).unwrap().guided { "assistant = 'mlp_32x1'\n" } else { "" };
        let t: toml::Table =
            format!("teacher = 'runs/t'\nstudent = 'mlp_16x1'\nmethod = '{method}'\n{chain}{text}").parse().unwrap();
        DistillConfig::from_table(t, "d.toml")
    };
    let training = kdlab::train::config::keys_of(&kdlab::train::config::TrainConfig::default());
    let mut shared = 0;
    for e in REGISTRY {
        let defaults = e.defaults();
        for &k in e.keys() {
            // A value the key takes (its default), written as TOML.
            let Some(v) = defaults.get(k).filter(|v| !v.is_null()) else { continue };
            let v = toml::Value::try_from(v).unwrap();
            let training_value = |c: &DistillConfig| serde_json::to_value(&c.train).unwrap()[k].clone();
            if training.iter().any(|t| t == k) {
                shared += 1;
                // Flat, it is the training key (0.5: a value training's gamma takes).
                let c =
                    cfg(e.name, &format!("{k} = 0.5")).unwrap_or_else(|err| panic!("{}: flat {k}: {err:#}", e.name));
                assert!(c.method.given().is_empty(), "{}: flat {k} reached the method", e.name);
                assert_eq!(training_value(&c), serde_json::json!(0.5), "{}: flat {k}", e.name);
                // The method's own value goes in [params], and the training one stays apart.
                let c = cfg(e.name, &format!("{k} = 0.5\n[params]\n{k} = {v}")).unwrap();
                assert_eq!(c.method.given().get(k), Some(&v), "{}: [params] {k}", e.name);
                assert_eq!(training_value(&c), serde_json::json!(0.5), "{}: [params] {k}", e.name);
            } else {
                let c =
                    cfg(e.name, &format!("{k} = {v}")).unwrap_or_else(|err| panic!("{}: flat {k}: {err:#}", e.name));
                assert_eq!(c.method.given().get(k), Some(&v), "{}: flat {k}", e.name);
                assert_eq!(c.train, cfg(e.name, "").unwrap().train, "{}: flat {k} changed training", e.name);
                let twice = cfg(e.name, &format!("{k} = {v}\n[params]\n{k} = {v}")).unwrap_err();
                assert!(format!("{twice:#}").contains("given twice"), "{twice:#}");
            }
        }
    }
    // DIST's gamma is today's one shared name; the check above covers any later one.
    assert!(shared >= 1, "the shared-name case is no longer exercised");
}
