//! Faults while kdlab writes its derived files, and damage to what it wrote (issue 14):
//! - a full disk while SQLite commits a change of the study index, and while the teacher-logit
//!   cache is written; a `kill -9` in the middle of writing the cache. Afterwards the same command
//!   ends with the numbers of an undisturbed run.
//! - bit rot: a byte flipped in every kind of file kdlab writes and reads back is found before the
//!   file is used — an error naming the file, or, for what can be derived again (the logit cache,
//!   the probe results, the study index), a message and a rebuild.
mod common;

use common::{kdlab, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn failed(o: Output) -> String {
    assert!(!o.status.success(), "expected a failure: {}", text(&o));
    text(&o)
}

/// A study of five one-epoch runs on 60 images of the embedded subset: a teacher (which keeps its
/// epoch-1 checkpoint and is probed) and CE and KD students, the KD ones through the logit cache.
fn tiny_study(dir: &Path) -> PathBuf {
    let p = dir.join("study.toml");
    std::fs::write(
        &p,
        "name = 'tiny'\ndata = 'fashion-mnist-mini'\ntrain_subset = 6\nseeds = [0, 1]\n\
         [teachers]\nmodels = ['mlp_16x1']\nepochs = 1\nsave_every = 1\n\
         [students]\nmodels = ['mlp_16x1']\nepochs = 1\naugment = false\nteacher_cache = true\n\
         [[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n",
    )
    .unwrap();
    p
}

fn sweep_cmd(study: &Path, out: &Path) -> Command {
    let mut c = kdlab();
    c.args(["sweep", study.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "2", "--quiet"]);
    c
}

/// The report's per-run results, without wall-clock columns.
fn results(out: &Path) -> String {
    ok(kdlab().args(["report", out.to_str().unwrap()]).output().unwrap());
    std::fs::read_to_string(out.join("report/results.csv")).unwrap()
}

fn status(out: &Path) -> String {
    ok(kdlab().args(["status", out.to_str().unwrap()]).output().unwrap())
}

fn run_dirs(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// A full disk while SQLite writes the study index's WAL, at two points of a sweep (after 44 and
/// after 40 writes: when this test was written, while it recorded the teacher's completion and,
/// in the next sweep, while it marked a run as started).
/// Each time the sweep stops with an error naming the index, the index stays consistent, and the
/// same command, with space again, finishes the study with the undisturbed sweep's results;
/// every run trained exactly one history. (The faulty sweeps run one worker, so that the N-th
/// write to the WAL falls on the same change every time.)
#[test]
fn a_full_disk_while_the_index_commits_stops_the_sweep_and_a_rerun_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tiny_study(tmp.path());
    let clean = tmp.path().join("clean");
    ok(sweep_cmd(&study, &clean).output().unwrap());
    let want = results(&clean);
    assert_eq!(want.lines().count(), 1 + 5, "{want}");

    let full = tmp.path().join("full");
    // The first N writes succeed, then the disk is full for good.
    // Which change the N-th write falls on depends on how much the index stores (it grows as
    // kdlab records more), so the test asks only that some commit of the sweep met the full disk.
    for after in [44, 40] {
        let o = kdlab()
            .args(["sweep", study.to_str().unwrap(), "--out", full.to_str().unwrap(), "--workers", "1", "--quiet"])
            .env("KDLAB_FAILPOINT_ENOSPC", "study.sqlite-wal")
            .env("KDLAB_FAILPOINT_ENOSPC_AFTER_WRITES", after.to_string())
            .output()
            .unwrap();
        let t = failed(o);
        let index = full.join("study.sqlite").display().to_string();
        assert!(
            t.contains("no space left on device while") && t.contains(&index) && t.contains("rolled back"),
            "after {after} writes: {t}"
        );
        // The index is consistent after the failed commit: it opens and passes its checks.
        assert!(!status(&full).contains("damaged"));
    }
    ok(sweep_cmd(&study, &full).output().unwrap());
    assert_eq!(results(&full), want, "the interrupted study's results equal the undisturbed one's");
    assert!(status(&full).lines().any(|l| l.starts_with("student") && l.contains(" 4 ")), "{}", status(&full));
    for dir in run_dirs(&full) {
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 2, "{}: {csv}", dir.display());
    }
}

/// Trains a one-epoch teacher on 60 images of the embedded subset into `dir/t`.
fn teacher(dir: &Path) {
    ok(kdlab()
        .args(["train", "--model", "cnn_w1", "--data", "fashion-mnist-mini", "--train-subset", "60", "--epochs", "1"])
        .args(["--threads", "1", "--quiet", "--out", "t"])
        .current_dir(dir)
        .output()
        .unwrap());
}

/// `kdlab distill` from `t` through the teacher-logit cache (50 views per image) into `out`.
fn distill(dir: &Path, out: &str) -> Command {
    let mut c = kdlab();
    c.args(["distill", "--teacher", "t", "--student", "mlp_16x1", "--method", "kd", "--data", "fashion-mnist-mini"])
        .args(["--train-subset", "60", "--epochs", "1", "--teacher-cache", "--threads", "1", "--quiet", "--out", out])
        .current_dir(dir);
    c
}

fn cache_dir_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("t/logit-cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

/// The numbers of a finished run (its history and final weights' checksum).
fn outcome(dir: &Path) -> String {
    let meta = kdlab::train::checkpoint::read_meta(&dir.join("last.json")).unwrap();
    let rows: Vec<String> =
        meta.history.iter().map(|m| format!("{} {} {}", m.train_loss, m.test_loss, m.test_acc)).collect();
    format!("{} {rows:?}", meta.weights_sha256)
}

/// A full disk while the teacher-logit cache is written, and a `kill -9` in the middle of
/// writing it: the first is an error naming the file with nothing left behind, the second leaves
/// a partial temporary file that the next build removes (and says so); both times the same
/// command then builds the cache byte for byte as an undisturbed build and distils to the same
/// numbers.
#[test]
fn a_full_disk_or_a_kill_while_the_cache_is_written_then_the_same_command_gives_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    teacher(dir);
    ok(distill(dir, "d-clean").output().unwrap());
    let [cache] = &cache_dir_files(dir)[..] else { panic!("{:?}", cache_dir_files(dir)) };
    let cache_path = dir.join("t/logit-cache").join(cache);
    let good = std::fs::read(&cache_path).unwrap();
    let clean = outcome(&dir.join("d-clean"));

    // ENOSPC while the cache is written (after half of it, the seam of `util::atomic`).
    std::fs::remove_file(&cache_path).unwrap();
    let t = failed(distill(dir, "d-full").env("KDLAB_FAILPOINT_ENOSPC", ".kdlc").output().unwrap());
    assert!(t.contains("no space left on device while writing") && t.contains(cache.as_str()), "{t}");
    assert!(cache_dir_files(dir).is_empty(), "left behind: {:?}", cache_dir_files(dir));
    ok(distill(dir, "d-full").output().unwrap());
    assert!(std::fs::read(&cache_path).unwrap() == good, "the rebuilt cache equals the undisturbed one");
    assert_eq!(outcome(&dir.join("d-full")), clean);

    // kill -9 while the cache is being written: once its temporary file has its first bytes.
    std::fs::remove_file(&cache_path).unwrap();
    let mut child = distill(dir, "d-killed").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let partial = loop {
        let tmp_file = cache_dir_files(dir).into_iter().find(|n| n.contains(".tmp-"));
        let size =
            tmp_file.as_ref().and_then(|n| std::fs::metadata(dir.join("t/logit-cache").join(n)).ok()).map(|m| m.len());
        if let (Some(name), Some(size)) = (tmp_file, size) {
            if size > 0 {
                child.kill().unwrap(); // SIGKILL
                break name;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the build finished before it could be interrupted");
        assert!(started.elapsed() < Duration::from_secs(60), "no cache was written");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.wait().unwrap();
    let left = std::fs::metadata(dir.join("t/logit-cache").join(&partial)).unwrap().len();
    assert!(left > 0 && left < good.len() as u64, "a partial file: {left} of {} bytes", good.len());
    assert!(!cache_path.exists(), "no cache file appeared under the final name");
    let t = ok(distill(dir, "d-killed").output().unwrap());
    assert!(t.contains("removed 1 unfinished teacher-logit cache file"), "{t}");
    assert_eq!(cache_dir_files(dir), vec![cache.clone()]);
    assert!(std::fs::read(&cache_path).unwrap() == good, "the rebuilt cache equals the undisturbed one");
    assert_eq!(outcome(&dir.join("d-killed")), clean);
}

type Edit = fn(&mut [u8]);
type BoxedEdit = Box<dyn Fn(&mut [u8])>;

/// Changes one digit of the last number in a JSON file to another digit: the file still parses.
fn change_a_digit(bytes: &mut [u8]) {
    let at = bytes.iter().rposition(u8::is_ascii_digit).expect("a number");
    bytes[at] = b'0' + (bytes[at] - b'0' + 1) % 10;
}

fn flip_middle(bytes: &mut [u8]) {
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
}

/// The offset of a stored accuracy in an SQLite file (a REAL is 8 big-endian bytes).
fn find_real(db: &[u8], value: f64) -> usize {
    db.windows(8).position(|w| w == value.to_be_bytes()).expect("the accuracy is stored in the database file")
}

fn damage(path: &Path, how: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let good = std::fs::read(path).unwrap();
    let mut bad = good.clone();
    how(&mut bad);
    assert_ne!(bad, good);
    std::fs::write(path, &bad).unwrap();
    good
}

/// Bit rot: a byte changed in each kind of file kdlab writes and reads back — `run.json`,
/// `spec.json`, the study directory's copy of the study file, checkpoint sidecars and weights, the teacher-logit cache, the study's probe
/// results, the study index, saved logits and labels — is found before the file is used. Files
/// whose loss costs work (run records, checkpoints, specs, saved arrays) are refused with an
/// error naming them; derived ones (the cache, the probe results, the index) are rebuilt with a
/// message, to the same contents. (`metrics.csv` and the logs are written for people; kdlab
/// never reads them back.)
#[test]
fn a_changed_byte_in_any_file_kdlab_reads_back_is_found_before_it_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tiny_study(tmp.path());
    let out = tmp.path().join("out");
    ok(sweep_cmd(&study, &out).output().unwrap());
    let want = results(&out);
    let want_status = status(&out);
    let dirs = run_dirs(&out);
    let teacher = dirs.iter().find(|d| d.join("logit-cache").exists()).expect("the teacher keeps a cache").clone();
    let student =
        dirs.iter().find(|d| std::fs::read_to_string(d.join("spec.json")).unwrap().contains("\"kd\"")).unwrap();
    let t = teacher.to_str().unwrap().to_string();
    let report = || kdlab().args(["report", out.to_str().unwrap()]).output().unwrap();
    let expect_refused = |path: &Path, o: Output, says: &str| {
        let t = failed(o);
        assert!(t.contains(&path.display().to_string()) && t.contains(says), "{}: {t}", path.display());
    };

    // Records and checkpoints: refused, naming the file; restored, all is as before.
    let refused: [(PathBuf, Edit, &str); 6] = [
        (teacher.join("run.json"), |b| change_a_digit(b), "do not match the checksum"),
        (teacher.join("last.json"), |b| change_a_digit(b), "do not match the checksum"),
        (teacher.join("checkpoints/epoch-0001.json"), |b| change_a_digit(b), "do not match the checksum"),
        (teacher.join("last.safetensors"), |b| flip_middle(b), "the weights are damaged"),
        (student.join("spec.json"), |b| change_a_digit(b), "do not match the checksum"),
        (out.join("study.toml"), |b| change_a_digit(b), "do not match the checksum on its first line"),
    ];
    for (path, how, says) in refused {
        let good = damage(&path, how);
        let o = match path.file_name().unwrap().to_str().unwrap() {
            "spec.json" => kdlab().args(["sweep-run", path.to_str().unwrap(), "--threads", "1"]).output().unwrap(),
            "epoch-0001.json" => kdlab().args(["eval", "--run", &format!("{t}@epoch1")]).output().unwrap(),
            "last.safetensors" => kdlab().args(["eval", "--run", &t]).output().unwrap(),
            _ => report(),
        };
        expect_refused(&path, o, says);
        std::fs::write(&path, good).unwrap();
    }
    assert_eq!(results(&out), want);

    // The teacher-logit cache: rebuilt, to the same bytes.
    let cache_dir = teacher.join("logit-cache");
    let cache = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "kdlc"))
        .unwrap();
    let good = damage(&cache, flip_middle);
    let said =
        ok(kdlab().args(["cache", "build", "--run", &t, "--augment", "false", "--threads", "1"]).output().unwrap());
    assert!(said.contains("fails its checksum") && said.contains("rebuilding it"), "{said}");
    assert!(std::fs::read(&cache).unwrap() == good);

    // The probe results: the report refuses them, naming the file and the remedy; the sweep
    // probes the teachers again, to the same bytes.
    let probe = out.join("probe.json");
    let good = damage(&probe, change_a_digit);
    expect_refused(&probe, report(), "run the study's sweep again");
    let said = ok(sweep_cmd(&study, &out).output().unwrap());
    assert!(said.contains("probe.json") && said.contains("probing the teachers again"), "{said}");
    assert!(std::fs::read(&probe).unwrap() == good, "the probe results were written anew, the same");
    assert_eq!(results(&out), want);

    // The study index: a stored accuracy changed (SQLite itself cannot tell), and a page of
    // SQLite's own structure damaged. `status` says so, sets the file aside, and rebuilds the
    // index from the run directories.
    let db = out.join("study.sqlite");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(teacher.join("run.json")).unwrap()).unwrap();
    let acc = rec["final_test_acc"].as_f64().unwrap();
    let page_size = 4096;
    let index_damage: [(&str, BoxedEdit); 2] = [
        (
            "fails its checksum",
            Box::new(move |b: &mut [u8]| {
                let at = find_real(b, acc);
                b[at + 7] ^= 0x01;
            }),
        ),
        (
            "quick_check",
            Box::new(move |b: &mut [u8]| {
                // Page 2's b-tree page header: its cell count.
                b[page_size + 3] ^= 0x40;
            }),
        ),
    ];
    for (says, how) in index_damage {
        for stale in ["study.sqlite-wal", "study.sqlite-shm", "study.sqlite.damaged"] {
            let _ = std::fs::remove_file(out.join(stale));
        }
        damage(&db, |b| how(b));
        let o = kdlab().args(["status", out.to_str().unwrap()]).output().unwrap();
        let t = ok(o);
        assert!(
            t.contains("the study index is damaged")
                && t.contains(says)
                && t.contains("rebuilt from the run directories"),
            "{says}: {t}"
        );
        assert!(out.join("study.sqlite.damaged").exists());
        assert_eq!(status(&out), want_status, "{says}");
        assert_eq!(results(&out), want, "{says}");
    }

    // Saved logits and labels: refused, naming the file and its checksum file.
    let npy = tmp.path().join("t.npy");
    ok(kdlab().args(["logits", "--run", &t, "--out", npy.to_str().unwrap()]).output().unwrap());
    let labels = tmp.path().join("labels.npy");
    let probe_npy = || {
        kdlab()
            .args(["probe", "--logits", npy.to_str().unwrap(), "--labels", labels.to_str().unwrap()])
            .output()
            .unwrap()
    };
    ok(probe_npy());
    for path in [&npy, &labels] {
        let good = damage(path, flip_middle);
        expect_refused(path, probe_npy(), "differs from the one kdlab recorded in");
        std::fs::write(path, good).unwrap();
    }
    ok(probe_npy());
}

/// A rebuilt index keeps the failures the runs recorded in their directories: a run whose
/// `run.json` says it failed (as the trainer writes it on a NaN loss or a full disk) is shown
/// failed, not queued, after the index is lost, and is trained again only with `--retry-failed`.
#[test]
fn a_rebuilt_index_keeps_the_failures_recorded_in_run_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let (study, out) = (tiny_study(tmp.path()), tmp.path().join("out"));
    ok(sweep_cmd(&study, &out).output().unwrap());
    // A student's record, turned into the record of a failed run.
    let student = run_dirs(&out)
        .into_iter()
        .find(|d| kdlab::train::run::read_record(d).unwrap().is_some_and(|r| r.kind == "distill"))
        .expect("a distilled student");
    let mut rec = kdlab::train::run::read_record(&student).unwrap().unwrap();
    rec.status = kdlab::train::run::RunStatus::Failed;
    rec.error = Some("loss is NaN at epoch 1 step 1 (planted)".into());
    kdlab::train::run::write_record(&student, &rec).unwrap();
    std::fs::remove_file(out.join("study.sqlite")).unwrap();
    let s = status(&out);
    assert!(s.contains("planted"), "the recorded error is shown: {s}");
    ok(sweep_cmd(&study, &out).output().unwrap());
    let after = kdlab::train::run::read_record(&student).unwrap().unwrap();
    assert_eq!(after.status, kdlab::train::run::RunStatus::Failed, "the failed run was trained again");
    let row = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("student"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row(&status(&out)).starts_with("student 3 0 1 0"), "{}", status(&out));
    let mut retry = sweep_cmd(&study, &out);
    ok(retry.arg("--retry-failed").output().unwrap());
    assert!(row(&status(&out)).starts_with("student 4 0 0 0"), "{}", status(&out));
}
