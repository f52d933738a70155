//! `kdlab sweep --emit-slurm` without a cluster: the arrays ask for what the study's `[slurm]`
//! table and the flags say, hostile values are refused, and the array tasks — run here by hand,
//! in dependency order, as Slurm would run them — give the same results as a local sweep, run for
//! run, because each run's spec.json carries its thread count. (`make test-slurm` submits the
//! demo study to a real one-node Slurm cluster: scripts/test-slurm.sh.)
mod common;

use common::{kdlab, text};
use std::path::{Path, PathBuf};

fn study(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    if !data.exists() {
        common::write_small_idx(&data, 300, 100);
    }
    let p = dir.join("study.toml");
    std::fs::write(
        &p,
        format!(
            "name = 'tiny'\ndata = '{}'\nseeds = [0]\nthreads = 1\n{extra}\n[teachers]\nmodels = ['cnn_w1', 'cnn_w2']\nepochs = 2\nwarmup_epochs = 1\n\
             [students]\nmodels = ['mlp_16x1']\nepochs = 2\naugment = false\nteacher_cache = true\n\
             [[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n[[methods]]\nname = 'ats'\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

fn ok(args: &[&str]) -> String {
    let o = kdlab().args(args).output().unwrap();
    assert!(o.status.success(), "kdlab {args:?}: {}", text(&o));
    text(&o)
}

fn results(out: &Path) -> String {
    ok(&["report", out.to_str().unwrap()]);
    std::fs::read_to_string(out.join("report/results.csv")).unwrap()
}

/// Runs every task of an array script as Slurm would: `bash SCRIPT` with its task id set.
fn run_array(script: &Path) {
    let body = std::fs::read_to_string(script).unwrap();
    let n: usize = body
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array=1-"))
        .and_then(|r| r.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    for task in 1..=n {
        let o = std::process::Command::new("bash")
            .arg(script)
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            // The environment suggests another thread count than the study's (1): the run's
            // spec.json must win, or its numbers would differ from the local sweep's.
            .env("SLURM_CPUS_PER_TASK", "2")
            .env("OMP_NUM_THREADS", "2")
            .output()
            .unwrap();
        assert!(o.status.success(), "{} task {task}: {}", script.display(), text(&o));
    }
}

#[test]
fn array_tasks_compute_what_a_local_sweep_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(
        tmp.path(),
        "[slurm]\npartition = 'short'\ntime = '30:00'\nmem = '2G'\naccount = 'kd-lab'\nextra = ['--constraint=avx2']\n",
    );
    let local = tmp.path().join("local");
    ok(&["sweep", s.to_str().unwrap(), "--out", local.to_str().unwrap(), "--workers", "2", "--quiet"]);
    let want = results(&local);

    let on_slurm = tmp.path().join("slurm");
    let arrays = tmp.path().join("arrays");
    let said = ok(&[
        "sweep",
        s.to_str().unwrap(),
        "--out",
        on_slurm.to_str().unwrap(),
        "--emit-slurm",
        arrays.to_str().unwrap(),
        "--partition",
        "long",
        "--max-running",
        "3",
    ]);
    assert!(said.contains("7 runs, each with 1 thread(s) on 1 CPU(s)"), "{said}");
    let teachers = std::fs::read_to_string(arrays.join("teachers.sbatch")).unwrap();
    let students = std::fs::read_to_string(arrays.join("students.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=1-2%3\n",
        "#SBATCH --cpus-per-task=1\n",
        "#SBATCH --partition=long\n", // the flag over the study's 'short'
        "#SBATCH --time=30:00\n",
        "#SBATCH --mem=2G\n",
        "#SBATCH --account=kd-lab\n",
        "#SBATCH --constraint=avx2\n",
    ] {
        assert!(teachers.contains(want), "{want:?} missing from\n{teachers}");
    }
    assert!(
        students.contains("#SBATCH --array=1-5%3\n") && students.contains("--kill-on-invalid-dep=yes"),
        "{students}"
    );
    assert!(!teachers.contains("kill-on-invalid-dep"), "the first level waits for nothing");
    let submit = std::fs::read_to_string(arrays.join("submit.sh")).unwrap();
    assert!(
        submit.contains("students=$(sbatch --parsable --dependency=afterok:$teachers students.sbatch)"),
        "{submit}"
    );
    // Every run's spec fixes its threads.
    for line in std::fs::read_to_string(arrays.join("students.txt")).unwrap().lines() {
        let spec = common::read_json(Path::new(line));
        assert_eq!(spec["threads"], 1, "{line}");
    }

    run_array(&arrays.join("teachers.sbatch"));
    run_array(&arrays.join("students.sbatch"));
    // The import: a sweep finds every run done and trains nothing.
    let again = ok(&["sweep", s.to_str().unwrap(), "--out", on_slurm.to_str().unwrap(), "--dry-run"]);
    assert!(again.contains("7 runs planned, 0 to run"), "{again}");
    assert_eq!(results(&on_slurm), want, "the array tasks' results equal the local sweep's, run for run");
    // Emitting again writes no array (nothing is left) but a submit script that submits nothing.
    ok(&["sweep", s.to_str().unwrap(), "--out", on_slurm.to_str().unwrap(), "--emit-slurm", arrays.to_str().unwrap()]);
    assert!(!std::fs::read_to_string(arrays.join("submit.sh")).unwrap().contains("sbatch"));
}

#[test]
fn slurm_values_a_shell_would_run_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "[slurm]\npartition = 'cpu\\nrm -rf $HOME'\n");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--emit-slurm", "arrays"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("study.toml") && t.contains("slurm.partition"), "{t}");
    assert!(!tmp.path().join("arrays").exists(), "nothing written");

    let s = study(tmp.path(), "");
    for (flag, value, key) in [
        ("--time", "1 day", "slurm.time"),
        ("--sbatch-arg", "--x=`id`", "slurm.extra"),
        ("--cpus-per-task", "0", "cpus_per_task"),
    ] {
        let o = kdlab()
            .args(["sweep", s.to_str().unwrap(), "--emit-slurm", "arrays", &format!("{flag}={value}")])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let t = text(&o);
        assert!(!o.status.success() && t.contains(key), "{flag} {value}: {t}");
    }
    // Not while a sweep holds the study: two writers of its index.
    std::fs::create_dir_all(tmp.path().join("tiny")).unwrap();
    let held = std::fs::File::create(tmp.path().join("tiny/.sweep.lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns, released when `held` is dropped.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--emit-slurm", "arrays"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("a sweep is running"), "{}", text(&o));
    drop(held);
    ok(&[
        "sweep",
        s.to_str().unwrap(),
        "--out",
        tmp.path().join("tiny").to_str().unwrap(),
        "--emit-slurm",
        tmp.path().join("arrays").to_str().unwrap(),
    ]);
    // A Slurm flag without --emit-slurm is a mistake, not silently ignored.
    let o = kdlab().args(["sweep", s.to_str().unwrap(), "--partition", "cpu", "--dry-run"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--emit-slurm"), "{}", text(&o));
}
