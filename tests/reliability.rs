//! Faults injected from outside: `kill -9` at random moments, a full disk, a diverging loss. In
//! every case kdlab says what happened, keeps its last good checkpoint, and a rerun of the same
//! command ends with the numbers an undisturbed run gives (bit for bit on the CPU).
mod common;

use common::{kdlab, text, write_small_idx};
use kdlab::train::checkpoint;
use kdlab::train::config::TrainConfig;
use kdlab::train::objective::{cross_entropy, Objective, StepInput};
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Everything a finished run reports except wall-clock times, and its final weights' checksum.
fn outcome(dir: &Path) -> (String, Vec<(usize, String)>) {
    let meta = checkpoint::read_meta(&dir.join("last.json")).unwrap();
    let rows = meta
        .history
        .iter()
        .map(|m| {
            (m.epoch, format!("{} {} {} {} {} {:?}", m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.terms))
        })
        .collect();
    (meta.weights_sha256, rows)
}

/// Runs `args` to completion after killing it with SIGKILL at three pseudo-random moments.
fn run_with_kills(args: &[&str], cwd: &Path, seed: u64) {
    let mut rng = kdlab::util::rng::Rng::new(seed);
    for _ in 0..3 {
        let mut child =
            kdlab().args(args).current_dir(cwd).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(400 + rng.below(2500)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let o = kdlab().args(args).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Runs `args` once undisturbed into `{name}-clean` and once killed three times into
/// `{name}-killed`, and checks that both end with the same numbers and weights.
fn killed_run_matches_clean_run(args: &[&str], cwd: &Path, name: &str, seed: u64) {
    let with_out = |out: String| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(["--threads".into(), "1".into(), "--quiet".into(), "--out".into(), out])
            .collect()
    };
    let clean = with_out(format!("{name}-clean"));
    let o = kdlab().args(&clean).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let killed = with_out(format!("{name}-killed"));
    run_with_kills(&killed.iter().map(String::as_str).collect::<Vec<_>>(), cwd, seed);
    assert_eq!(outcome(&cwd.join(format!("{name}-killed"))), outcome(&cwd.join(format!("{name}-clean"))));
}

#[test]
fn kill_9_during_train_and_distill_then_rerun_gives_identical_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_idx(&tmp.path().join("fm"), 600, 150);
    let train =
        ["train", "--model", "cnn_w2", "--data", "fm", "--epochs", "4", "--save-every", "1", "--warmup-epochs", "1"];
    killed_run_matches_clean_run(&train, tmp.path(), "t", 7);
    let distill = [
        "distill",
        "--teacher",
        "t-clean",
        "--student",
        "mlp_32x1",
        "--method",
        "dkd",
        "--warmup",
        "2",
        "--data",
        "fm",
        "--epochs",
        "4",
    ];
    killed_run_matches_clean_run(&distill, tmp.path(), "d", 8);
}

#[test]
fn a_full_disk_is_reported_and_the_last_good_checkpoint_survives() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_idx(&tmp.path().join("fm"), 300, 100);
    let args = [
        "train",
        "--model",
        "cnn_w1",
        "--data",
        "fm",
        "--epochs",
        "3",
        "--save-every",
        "1",
        "--threads",
        "1",
        "--quiet",
    ];
    // The disk "fills up" while the epoch-2 checkpoint is written.
    let o = kdlab()
        .args(args)
        .args(["--out", "full"])
        .current_dir(tmp.path())
        .env("KDLAB_FAILPOINT_ENOSPC", "epoch-0002.safetensors")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("no space left on device") && t.contains("epoch-0002.safetensors"), "{t}");
    let dir = tmp.path().join("full");
    // The last good checkpoint is epoch 1, intact (its checksum verifies), with no half files.
    let (model, meta, _) = checkpoint::load_model(dir.to_str().unwrap(), tch::Device::Cpu).unwrap();
    assert_eq!(meta.epoch, 1);
    assert_eq!(model.arch, "cnn_w1");
    let stray: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["status"], "failed");
    // With space again, the same command resumes and ends where an undisturbed run ends.
    let o = kdlab().args(args).args(["--out", "full"]).current_dir(tmp.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = kdlab().args(args).args(["--out", "clean"]).current_dir(tmp.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(outcome(&dir), outcome(&tmp.path().join("clean")));
}

/// Cross-entropy that turns into NaN at one chosen step.
struct NanAt {
    epoch: usize,
    step: usize,
}

impl Objective for NanAt {
    fn name(&self) -> String {
        "nan-at".into()
    }
    fn terms(&mut self, logits: &tch::Tensor, input: &StepInput) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
        let ce = cross_entropy(logits, input.labels);
        Ok(vec![("ce".into(), if (input.epoch, input.step) == (self.epoch, self.step) { ce * f64::NAN } else { ce })])
    }
}

#[test]
fn a_nan_loss_stops_the_run_naming_epoch_and_step_and_keeps_the_checkpoint() {
    tch::set_num_threads(1);
    let data = kdlab::data::embedded::load().unwrap().head(320, 64);
    let cfg = TrainConfig { model: "cnn_w1".into(), epochs: 3, batch_size: 64, ..Default::default() };
    // Read back every step (the CPU default) and every 4 steps (as on a GPU): the NaN of step 3
    // is named step 3 either way, though the second finds it only after step 4.
    for sync_every in [None, Some(4)] {
        let tmp = tempfile::tempdir().unwrap();
        let err = train(
            &cfg,
            &data,
            &mut NanAt { epoch: 1, step: 2 },
            &RunOptions { quiet: true, sync_every, ..RunOptions::new(tmp.path(), tch::Device::Cpu, "train") },
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("NaN") && msg.contains("epoch 2 step 3 of 5"), "{sync_every:?}: {msg}");
        assert_eq!(checkpoint::read_meta(&tmp.path().join("last.json")).unwrap().epoch, 1);
        let rec = kdlab::train::run::read_record(tmp.path()).unwrap().unwrap();
        assert_eq!(rec.status, kdlab::train::run::RunStatus::Failed);
        assert!(rec.error.unwrap().contains("epoch 2 step 3"));
    }
}

#[test]
fn a_diverging_run_fails_alone_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_idx(&tmp.path().join("fm"), 300, 100);
    std::fs::write(
        tmp.path().join("s.toml"),
        "data = 'fm'\nseeds = [0]\n[teachers]\nmodels = ['cnn_w1']\nepochs = 1\n[students]\nmodels = ['mlp_16x1', 'mlp_32x1']\nepochs = 2\n\
         [students.overrides.mlp_16x1]\nlr = 1e30\n[[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n",
    )
    .unwrap();
    let first = kdlab()
        .args(["sweep", "s.toml", "--quiet"])
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second sweep of the same study while the first runs is refused.
    std::thread::sleep(Duration::from_millis(700));
    let second = kdlab().args(["sweep", "s.toml", "--quiet"]).current_dir(tmp.path()).output().unwrap();
    assert!(
        !second.status.success() && text(&second).contains("another sweep is already running"),
        "{}",
        text(&second)
    );
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = kdlab().args(["status", "s"]).current_dir(tmp.path()).output().unwrap();
    let t = text(&o);
    // mlp_16x1's two runs diverge; the teacher and mlp_32x1's two runs finish.
    assert!(t.lines().any(|l| l.starts_with("student") && l.split_whitespace().collect::<Vec<_>>()[1..5] == ["2", "0", "2", "0"]), "{t}");
    assert!(t.contains("failed:") && t.contains("the loss became"), "{t}");
    let o = kdlab().args(["report", "s"]).current_dir(tmp.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read_to_string(tmp.path().join("s/report/report.md")).unwrap().contains("## Failed runs"));
}

/// The `.kdlc` file of a teacher's logit cache.
fn cache_file(teacher: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(teacher.join("logit-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdlc"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

/// A damaged teacher-logit cache (issue 14) — bytes flipped in the logits, a byte flipped in the
/// checksum table, a file cut short, a cache in the old format without checksums — is caught
/// before any logit is used: the user is told, the cache is rebuilt (to the same bytes), and the
/// distillation ends with the numbers of a run from the undamaged cache.
#[test]
fn a_damaged_teacher_logit_cache_is_detected_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    write_small_idx(&tmp.path().join("fm"), 600, 150);
    let o = kdlab()
        .args([
            "train",
            "--model",
            "cnn_w1",
            "--data",
            "fm",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--quiet",
            "--out",
            "t",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let distill = |out: &str| {
        let o = kdlab()
            .args(["distill", "--teacher", "t", "--student", "mlp_16x1", "--method", "kd", "--data", "fm"])
            .args(["--epochs", "2", "--teacher-cache", "--threads", "1", "--quiet", "--out", out])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let first = distill("d0");
    assert!(!first.contains("rebuilding"), "{first}");
    let path = cache_file(&tmp.path().join("t"));
    let good = std::fs::read(&path).unwrap();
    let clean = outcome(&tmp.path().join("d0"));
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage, &str); 4] = [
        (
            "logits",
            |b| {
                let mid = b.len() / 2;
                b[mid..mid + 4].iter_mut().for_each(|x| *x ^= 0x5a)
            },
            "fails its checksum in block",
        ),
        (
            "table",
            |b| {
                let at = b.len() - 6;
                b[at] ^= 0x01
            },
            "its header or checksum table is damaged",
        ),
        ("truncated", |b| b.truncate(b.len() - 100), "truncated or damaged"),
        (
            "old format",
            |b| {
                let at = b.windows(19).position(|w| w == b"kdlab-logit-cache/2").unwrap();
                b[at + 18] = b'1';
                // Format 1 had no checksum table after the logits: 1 block here, 4 + 4 bytes.
                b.truncate(b.len() - 8);
            },
            "in format 'kdlab-logit-cache/1'",
        ),
    ];
    for (i, (what, damage, says)) in damages.into_iter().enumerate() {
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let err = kdlab::train::cache::LogitCache::open(&path).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains(says) && err.contains(&path.display().to_string()), "{what}: {err}");
        let out = format!("d{}", i + 1);
        let said = distill(&out);
        assert!(said.contains(says) && said.contains("rebuilding it"), "{what}: the user is told: {said}");
        assert!(std::fs::read(&path).unwrap() == good, "{what}: the rebuilt cache equals the first");
        assert_eq!(outcome(&tmp.path().join(&out)), clean, "{what}: the same numbers as from the undamaged cache");
    }
}
