//! `kill -9` during the long operations that read files from outside or build caches of them
//! (issue 25): `kdlab import`, the image-folder cache's build, the top-k cache's build on a
//! streamed folder, and `kdlab report`. Each is killed at several moments spread over an
//! undisturbed run's duration (and, for the caches, once their temporary file exists); the same
//! command again must give byte-identical files, with no temporary file left behind.
mod common;

use common::{kdlab, text, write_folder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every file below `dir` (relative path → bytes), skipping `skip`ped names (locks, databases).
fn files(dir: &Path, skip: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.iter().any(|s| name.contains(s)) {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Names of temporary files (`.NAME.tmp-PID`) below `dir`.
fn temps(dir: &Path) -> Vec<String> {
    files(dir, &[]).into_keys().filter(|n| n.contains(".tmp-")).collect()
}

fn run_ok(mut c: Command) -> Duration {
    let t = Instant::now();
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    t.elapsed()
}

/// Starts `c` and sends it SIGKILL after `delay`, or as soon as `now()` holds (checked every
/// millisecond), whichever comes first. Returns whether it was still running when killed.
fn kill(mut c: Command, delay: Duration, now: impl Fn() -> bool) -> bool {
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < delay && !now() {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    killed
}

/// Kill moments: fractions of an undisturbed run's time, from kdlab's own random stream.
fn moments(seed: u64, clean: Duration) -> Vec<Duration> {
    let mut r = kdlab::util::rng::Rng::new(seed);
    (0..3).map(|_| clean.mul_f64(0.2 + 0.7 * r.unit())).collect()
}

/// Trials of `cmd`: undisturbed, then killed at each moment (after `reset`), then the same
/// command again; the files `outputs()` lists must equal the undisturbed ones byte for byte, and
/// no temporary file may remain under `dirs`.
fn trials(
    what: &str,
    seed: u64,
    cmd: &dyn Fn() -> Command,
    reset: &dyn Fn(),
    outputs: &dyn Fn() -> BTreeMap<String, Vec<u8>>,
    dirs: &[PathBuf],
    writing: &dyn Fn() -> bool,
) {
    // The first run loads LibTorch and the files cold; the second, warm, times the moments.
    reset();
    run_ok(cmd());
    reset();
    let clean_time = run_ok(cmd());
    let clean = outputs();
    assert!(!clean.is_empty(), "{what}: no outputs");
    let mut killed = 0;
    let never = || false;
    let mut plan: Vec<(Duration, &dyn Fn() -> bool)> =
        moments(seed, clean_time).into_iter().map(|d| (d, &never as &dyn Fn() -> bool)).collect();
    // Once more, as soon as a temporary file appears (the cache or report being written).
    plan.push((clean_time * 3, writing));
    for (delay, now) in plan {
        reset();
        killed += kill(cmd(), delay, now) as usize;
        run_ok(cmd());
        for d in dirs {
            assert!(temps(d).is_empty(), "{what}: left behind in {}: {:?}", d.display(), temps(d));
        }
        let again = outputs();
        assert_eq!(again.keys().collect::<Vec<_>>(), clean.keys().collect::<Vec<_>>(), "{what}");
        for (name, bytes) in &clean {
            assert!(again[name] == *bytes, "{what}: {name} differs from the undisturbed run's after a kill");
        }
    }
    // The kills are timed from an undisturbed run, so on a loaded machine one may come after the
    // command has finished; the test is not vacuous as long as some hit it.
    eprintln!("{what}: {killed} of 4 kills hit the running command");
    assert!(killed >= 1, "{what}: no kill hit the running command");
}

fn any_temp(dir: PathBuf) -> impl Fn() -> bool {
    move || !temps(&dir).is_empty()
}

#[test]
fn a_killed_import_then_the_same_command_gives_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    // A resnet20 state dict (100 classes) as torch.save writes it, with kdlab's own initial values.
    let model = kdlab::train::model::Model::new(
        "resnet20",
        kdlab::data::Shape { c: 3, h: 32, w: 32 },
        100,
        tch::Device::Cpu,
        7,
    )
    .unwrap();
    let vars: Vec<(String, Vec<usize>, Vec<f32>)> = model
        .named_variables()
        .into_iter()
        .map(|(n, t)| {
            let shape = t.size().iter().map(|&s| s as usize).collect();
            (n, shape, Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap())
        })
        .collect();
    let refs: Vec<(&str, &[usize], &[f32])> = vars.iter().map(|(n, s, v)| (n.as_str(), &s[..], &v[..])).collect();
    std::fs::write(d.join("r20.pth"), kdlab::train::pth::encode_state_dict(&refs)).unwrap();
    let out = d.join("imported");
    let cmd = || {
        let mut c = kdlab();
        c.args(["import", "--checkpoint", "r20.pth", "--model", "resnet20", "--classes", "100", "--input", "3x32x32"])
            .args(["--out", "imported", "--device", "cpu", "--threads", "1"])
            .current_dir(&d);
        c
    };
    let reset = || {
        let _ = std::fs::remove_dir_all(&out);
    };
    trials("import", 1, &cmd, &reset, &|| files(&out, &[]), std::slice::from_ref(&out), &any_temp(out.clone()));
}

#[test]
fn a_killed_image_cache_build_then_the_same_command_gives_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    write_folder(&d.join("imgs"), 60, 10);
    let cache = d.join("data/image-cache");
    let cmd = || {
        let mut c = kdlab();
        c.args(["train", "--model", "mlp_16x1", "--data", "imgs:size=48,channels=3", "--epochs", "1"])
            .args(["--out", "run", "--device", "cpu", "--threads", "1", "--quiet"])
            .env("KDLAB_DATA", d.join("data"))
            .env("KDLAB_LOADER_THREADS", "1")
            .current_dir(&d);
        c
    };
    let reset = || {
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(d.join("run"));
    };
    trials(
        "image cache",
        2,
        &cmd,
        &reset,
        &|| files(&cache, &[]),
        std::slice::from_ref(&cache),
        &any_temp(cache.clone()),
    );
}

#[test]
fn a_killed_topk_cache_build_on_a_streamed_folder_then_the_same_command_gives_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    write_folder(&d.join("imgs"), 40, 4);
    let data = "imgs:transform=imagenet,size=16,resize=18,channels=1,store=stream";
    let mut teacher = kdlab();
    teacher
        .args(["train", "--model", "cnn_w1", "--data", data, "--epochs", "1", "--batch-size", "16", "--out", "teacher"])
        .args(["--device", "cpu", "--threads", "1", "--quiet"])
        .current_dir(&d);
    run_ok(teacher);
    let caches = d.join("teacher/logit-cache");
    let cmd = || {
        let mut c = kdlab();
        c.args(["cache", "build", "--run", "teacher", "--data", data, "--topk", "2", "--seed", "4", "--epochs", "3"])
            .args(["--device", "cpu", "--threads", "1"])
            .env("KDLAB_LOADER_THREADS", "2")
            .current_dir(&d);
        c
    };
    let reset = || {
        for (name, _) in files(&caches, &[".lock"]) {
            std::fs::remove_file(caches.join(name)).unwrap();
        }
    };
    let outputs = || files(&caches, &[".lock"]);
    trials("top-k cache", 3, &cmd, &reset, &outputs, std::slice::from_ref(&caches), &any_temp(caches.clone()));
}

#[test]
fn a_killed_report_then_the_same_command_gives_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    std::fs::write(
        d.join("study.toml"),
        "name = 'tiny'\ndata = 'fashion-mnist-mini'\ntrain_subset = 6\nseeds = [0, 1]\n\
         [teachers]\nmodels = ['mlp_16x1']\nepochs = 1\n\
         [students]\nmodels = ['mlp_16x1']\nepochs = 1\naugment = false\n\
         [[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n",
    )
    .unwrap();
    let mut sweep = kdlab();
    sweep.args(["sweep", "study.toml", "--out", "s", "--workers", "2", "--quiet"]).current_dir(&d);
    run_ok(sweep);
    let report = d.join("s/report");
    let cmd = || {
        let mut c = kdlab();
        c.args(["report", "s"]).current_dir(&d);
        c
    };
    let reset = || {
        let _ = std::fs::remove_dir_all(&report);
    };
    trials(
        "report",
        4,
        &cmd,
        &reset,
        &|| files(&report, &[]),
        &[report.clone(), d.join("s")],
        &any_temp(report.clone()),
    );
}
