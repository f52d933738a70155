//! Studies end to end through the `kdlab` binary: a sweep runs every planned run once, a sweep
//! killed with SIGKILL at random moments and started again finishes with no run lost or
//! duplicated and the same results as an uninterrupted sweep, added seeds run only the new runs,
//! and the report is written.
mod common;

use common::kdlab;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn study(dir: &Path, seeds: &str) -> PathBuf {
    let data = dir.join("data");
    if !data.exists() {
        common::write_small_idx(&data, 400, 100);
    }
    let p = dir.join(format!("study-{}.toml", seeds.len()));
    std::fs::write(
        &p,
        format!(
            "name = 'tiny'\ndata = '{}'\nseeds = [{seeds}]\n[teachers]\nmodels = ['cnn_w1', 'cnn_w2']\nepochs = 2\nwarmup_epochs = 1\nsave_every = 1\n\
             [students]\nmodels = ['mlp_16x1']\nepochs = 2\naugment = false\nteacher_cache = true\n\
             [[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n[[methods]]\nname = 'ats'\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

fn sweep(study: &Path, out: &Path) {
    let o = kdlab()
        .args(["sweep", study.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// The report's per-run results, which must not depend on interruptions.
fn results(out: &Path) -> String {
    let o = kdlab().args(["report", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("report/results.csv")).unwrap()
}

/// The counts `kdlab status` prints per kind of run.
fn statuses(out: &Path) -> Vec<(String, String)> {
    let o = kdlab().args(["status", out.to_str().unwrap()]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 5 && ["teacher", "student", "assistant"].contains(&cols[0])).then(|| {
                (
                    cols[0].to_string(),
                    format!("done={} running={} failed={} queued={}", cols[1], cols[2], cols[3], cols[4]),
                )
            })
        })
        .collect()
}

#[test]
fn a_killed_sweep_resumes_to_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "0, 1");
    // The reference: one uninterrupted sweep.
    let clean = tmp.path().join("clean");
    sweep(&s, &clean);
    let want = results(&clean);
    assert_eq!(want.lines().filter(|l| l.contains(",student,mlp_16x1,")).count(), 2 + 2 * 2 * 2, "{want}");
    assert_eq!(
        statuses(&clean),
        vec![
            ("teacher".into(), "done=2 running=0 failed=0 queued=0".into()),
            ("student".into(), "done=10 running=0 failed=0 queued=0".into())
        ]
    );
    // Running it again runs nothing.
    let t0 = Instant::now();
    sweep(&s, &clean);
    assert!(t0.elapsed() < Duration::from_secs(20), "a finished study reruns nothing");
    assert_eq!(results(&clean), want);

    // Kill -9 at pseudo-random moments (seeded, so the test is reproducible), then finish.
    let killed = tmp.path().join("killed");
    let mut rng = kdlab::util::rng::Rng::new(12345);
    for round in 0..3 {
        let mut child = kdlab()
            .args(["sweep", s.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--workers", "2", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(1500 + rng.below(4000));
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        eprintln!("round {round}: killed after {wait:?}");
    }
    sweep(&s, &killed);
    assert_eq!(statuses(&killed), statuses(&clean));
    let got = results(&killed);
    let strip = |t: &str| t.lines().map(|l| l.to_string()).collect::<Vec<_>>();
    assert_eq!(strip(&got), strip(&want), "the resumed study's results equal the uninterrupted one's");
    // Each run directory holds exactly one history of the configured length.
    for entry in std::fs::read_dir(killed.join("runs")).unwrap() {
        let dir = entry.unwrap().path();
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{}: {csv}", dir.display());
    }

    // Adding a seed runs only the new runs.
    let s3 = study(tmp.path(), "0, 1, 2");
    let o =
        kdlab().args(["sweep", s3.to_str().unwrap(), "--out", clean.to_str().unwrap(), "--dry-run"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("17 runs planned, 5 to run"), "{text}");

    // A label is presentation: relabelling a method block reruns nothing and renames its series.
    let relabelled = tmp.path().join("study-relabelled.toml");
    let toml = std::fs::read_to_string(&s).unwrap().replace("name = 'ats'\n", "name = 'ats'\nlabel = 'asymmetric'\n");
    std::fs::write(&relabelled, toml).unwrap();
    sweep(&relabelled, &clean);
    let got = results(&clean);
    assert_eq!(got.lines().filter(|l| l.contains(",asymmetric,ats,")).count(), 2 * 2, "{got}");
    assert!(!got.contains(",ats,ats,"), "{got}");
    assert_eq!(statuses(&clean), statuses(&killed), "nothing was trained again or lost");
    assert!(clean.join("report/report.md").exists() && clean.join("report/report.html").exists());
}

/// A worker that cannot be started (issue 14: the binary was rebuilt in place during a sweep and
/// every later spawn failed) is the sweep's failure, not the runs': the sweep stops, says why and
/// how to continue, and leaves the runs queued. A sweep whose own binary is deleted while it runs
/// goes on (its workers exec the sweep's image, not the path).
#[test]
fn a_worker_that_cannot_start_stops_the_sweep_and_fails_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "1");
    let out = tmp.path().join("out");
    let missing = tmp.path().join("gone").join("kdlab");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "2", "--quiet"])
        .env("KDLAB_WORKER_EXE", &missing)
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains(&missing.display().to_string()) && t.contains("No such file or directory"), "{t}");
    assert!(t.contains("No run was marked failed"), "{t}");
    let again = format!("kdlab sweep {} --out {} --workers 2", s.display(), out.display());
    assert!(t.contains(&again), "the command to continue is printed: {t}");
    assert_eq!(
        statuses(&out),
        vec![
            ("teacher".into(), "done=0 running=0 failed=0 queued=2".into()),
            ("student".into(), "done=0 running=0 failed=0 queued=5".into())
        ]
    );
    // The same sweep from a copy of the binary that is deleted once the first run has started.
    let exe = tmp.path().join("kdlab-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_kdlab"), &exe).unwrap();
    let mut child = std::process::Command::new(&exe)
        .args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut seen = vec![];
    for l in lines.by_ref() {
        let l = l.unwrap();
        let first_start = l.trim_start().starts_with("start ");
        seen.push(l);
        if first_start {
            std::fs::remove_file(&exe).unwrap();
            break;
        }
    }
    assert!(!exe.exists(), "a run started: {seen:?}");
    seen.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{}\n{err}", seen.join("\n"));
    assert_eq!(
        statuses(&out),
        vec![
            ("teacher".into(), "done=2 running=0 failed=0 queued=0".into()),
            ("student".into(), "done=5 running=0 failed=0 queued=0".into())
        ]
    );
}

/// `kdlab status` on a study whose `study.sqlite` was deleted (issue 14) rebuilds the index from
/// the run directories, as `sweep` and `report` do, and says so — also while a sweep holds the
/// study, in memory then, without touching the directory.
#[test]
fn status_rebuilds_a_deleted_index_from_the_run_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "1");
    let out = tmp.path().join("out");
    sweep(&s, &out);
    let all_done = vec![
        ("teacher".to_string(), "done=2 running=0 failed=0 queued=0".to_string()),
        ("student".to_string(), "done=5 running=0 failed=0 queued=0".to_string()),
    ];
    assert_eq!(statuses(&out), all_done);
    let delete_index = || {
        for f in ["study.sqlite", "study.sqlite-wal", "study.sqlite-shm"] {
            let _ = std::fs::remove_file(out.join(f));
        }
    };
    // While a sweep holds the study: rebuilt in memory, and nothing is written.
    delete_index();
    {
        let _held = kdlab::study::runner::lock(&out.join(".sweep.lock"), "held by the test").unwrap();
        let o = kdlab().args(["status", out.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", common::text(&o));
        assert!(common::text(&o).contains("rebuilt in memory"), "{}", common::text(&o));
        assert_eq!(statuses(&out), all_done);
        assert!(!out.join("study.sqlite").exists(), "status wrote the index while a sweep held the study");
    }
    // Otherwise: rebuilt on disk, said once.
    let o = kdlab().args(["status", out.to_str().unwrap()]).output().unwrap();
    let t = common::text(&o);
    assert!(o.status.success() && t.contains("study.sqlite is missing; rebuilding"), "{t}");
    assert!(out.join("study.sqlite").exists());
    let o = kdlab().args(["status", out.to_str().unwrap()]).output().unwrap();
    assert!(!common::text(&o).contains("missing"), "{}", common::text(&o));
    assert_eq!(statuses(&out), all_done);
    // A directory that is no study is an error, and gets no database.
    let o = kdlab().args(["status", tmp.path().join("data").to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && common::text(&o).contains("is not a study directory"), "{}", common::text(&o));
    assert!(!tmp.path().join("data/study.sqlite").exists());
}

/// `studies/imagenet-paper.toml` (issue 15) says the standard KD ImageNet protocol, and a dry run
/// plans its runs with no ImageNet present (the dry run loads no data).
#[test]
fn the_imagenet_study_is_the_standard_protocol_and_plans_without_data() {
    let study = Path::new(env!("CARGO_MANIFEST_DIR")).join("studies/imagenet-paper.toml");
    let cfg = kdlab::study::config::StudyConfig::load(&study).unwrap();
    assert_eq!(cfg.teachers.models, ["resnet34", "resnet50"]);
    assert_eq!(cfg.students.models, ["resnet18"]);
    for (who, t) in [("teachers", &cfg.teachers.train), ("students", &cfg.students.train)] {
        let recipe = (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.gamma, t.warmup_epochs);
        assert_eq!(recipe, (100, 256, 0.1, 0.9, 1e-4, 0.1, 0), "{who}");
        assert_eq!((t.schedule, t.milestones.as_slice()), (kdlab::train::schedule::Schedule::Step, &[30, 60, 90][..]));
    }
    let names: Vec<&str> = cfg.methods.iter().map(|m| m.name.as_str()).collect();
    for method in ["ce", "kd", "ats", "isats", "dkd", "dist"] {
        assert!(names.contains(&method), "{method} missing from {names:?}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let o = kdlab()
        .args(["sweep", study.to_str().unwrap(), "--out", "s", "--dry-run"])
        .env("KDLAB_DATA", tmp.path().join("no-data"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    // Two teachers; per seed one CE student and one run per (teacher, distillation block).
    let (seeds, distill_blocks) = (cfg.seeds.len(), names.iter().filter(|&&n| n != "ce").count());
    let planned = 2 + seeds * (1 + 2 * distill_blocks);
    assert!(text.contains(&format!("{planned} runs planned, {planned} to run")), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("resnet18 ← resnet50 dkd")).count(), seeds, "{text}");
    assert!(!tmp.path().join("imagenet").exists() && !tmp.path().join("no-data").exists());
}
