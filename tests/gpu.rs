//! kdlab on GPUs, checked on a machine without one: a sweep's workers placed on a simulated list
//! of GPUs (at most K on each, a killed worker's run requeued, a dying GPU retired), a run never
//! resumed on another kind of device, the Slurm arrays of a GPU study, and bf16 autocast on the
//! CPU against float32. The tests that need CUDA itself are marked `#[ignore = "needs CUDA"]`;
//! `scripts/gpu_check.sh` runs them on a GPU machine.
mod common;

use common::kdlab;
use kdlab::train::amp::Amp;
use kdlab::train::config::TrainConfig;
use kdlab::train::objective::CrossEntropy;
use kdlab::train::trainer::{train, RunOptions};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A study of 2 teachers and (per seed) 5 students on a small real data set.
fn study(dir: &Path, seeds: &str, extra: &str) -> PathBuf {
    let data = dir.join("data");
    if !data.exists() {
        common::write_small_idx(&data, 300, 100);
    }
    let p = dir.join("study.toml");
    std::fs::write(
        &p,
        format!(
            "name = 'tiny'\ndata = '{}'\nseeds = [{seeds}]\n{extra}\n[teachers]\nmodels = ['cnn_w1', 'cnn_w2']\nepochs = 1\nsave_every = 1\n\
             [students]\nmodels = ['mlp_16x1']\nepochs = 1\naugment = false\nteacher_cache = true\n\
             [[methods]]\nname = 'ce'\n[[methods]]\nname = 'kd'\n[[methods]]\nname = 'ats'\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

/// A stand-in for the sweep's worker executable: it logs when it starts and ends on which GPU
/// (`CUDA_VISIBLE_DEVICES`, as the sweep set it), dies by SIGKILL on the GPU named by `$DIE_ON`,
/// and otherwise trains the run with the real kdlab on the CPU.
fn fake_worker(dir: &Path) -> PathBuf {
    let p = dir.join("fake-gpu-worker.sh");
    std::fs::write(
        &p,
        "#!/bin/bash\n\
         echo \"start $CUDA_VISIBLE_DEVICES $(date +%s.%N)\" >> \"$EVENTS\"\n\
         if [ \"$CUDA_VISIBLE_DEVICES\" = \"${DIE_ON:-none}\" ]; then\n\
           echo \"end $CUDA_VISIBLE_DEVICES $(date +%s.%N) killed\" >> \"$EVENTS\"; kill -9 $$\n\
         fi\n\
         args=(); for a in \"$@\"; do [ \"$a\" = cuda ] && a=cpu; args+=(\"$a\"); done\n\
         \"$REAL_KDLAB\" \"${args[@]}\"; rc=$?\n\
         echo \"end $CUDA_VISIBLE_DEVICES $(date +%s.%N)\" >> \"$EVENTS\"\n\
         exit $rc\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// (event, device, time, killed) from the fake worker's log.
fn events(path: &Path) -> Vec<(String, String, f64, bool)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].to_string(), c[1].to_string(), c[2].parse().unwrap(), c.len() > 3)
        })
        .collect()
}

/// The most workers that ran at once on each device.
fn peak_per_device(ev: &[(String, String, f64, bool)]) -> BTreeMap<String, usize> {
    let mut sorted = ev.to_vec();
    // At equal times an end comes first: the slot was free before the next start.
    sorted.sort_by(|a, b| a.2.total_cmp(&b.2).then((a.0 == "start").cmp(&(b.0 == "start"))));
    let (mut now, mut peak) = (BTreeMap::<String, usize>::new(), BTreeMap::<String, usize>::new());
    for (e, d, _, _) in &sorted {
        let n = now.entry(d.clone()).or_default();
        if e == "start" {
            *n += 1;
            let p = peak.entry(d.clone()).or_default();
            *p = (*p).max(*n);
        } else {
            *n -= 1;
        }
    }
    peak
}

#[test]
fn a_sweep_places_runs_on_simulated_gpus_at_most_k_each() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "0, 1", "");
    let out = tmp.path().join("out");
    let ev = tmp.path().join("events.txt");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--devices", "0,cuda:1", "--workers-per-device", "2", "--threads", "1"])
        .env("KDLAB_WORKER_EXE", fake_worker(tmp.path()))
        .env("REAL_KDLAB", env!("CARGO_BIN_EXE_kdlab"))
        .env("EVENTS", &ev)
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("4 worker(s)") && t.contains("on cuda:0,cuda:1 × 2 worker(s)"), "{t}");
    assert!(t.contains("12 of 12 runs done, 0 failed"), "{t}");
    let ev = events(&ev);
    assert_eq!(ev.iter().filter(|e| e.0 == "start").count(), 12, "each run started once");
    let peak = peak_per_device(&ev);
    assert_eq!(peak.keys().cloned().collect::<Vec<_>>(), vec!["0", "1"], "both GPUs used: {peak:?}");
    assert!(peak.values().all(|&p| p <= 2), "at most 2 workers per GPU: {peak:?}");
    // Each attempt's log section names its GPU.
    let logs: Vec<String> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|d| std::fs::read_to_string(d.unwrap().path().join("log.txt")).unwrap())
        .collect();
    assert_eq!(logs.len(), 12);
    assert!(logs
        .iter()
        .all(|l| l.contains("attempt started") && (l.contains(" on cuda:0") || l.contains(" on cuda:1"))));
}

#[test]
fn a_killed_gpu_worker_requeues_its_run_and_a_dying_gpu_is_retired() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "0", "");
    let out = tmp.path().join("out");
    let ev = tmp.path().join("events.txt");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--devices", "0,1", "--threads", "1"])
        .env("KDLAB_WORKER_EXE", fake_worker(tmp.path()))
        .env("REAL_KDLAB", env!("CARGO_BIN_EXE_kdlab"))
        .env("EVENTS", &ev)
        .env("DIE_ON", "1")
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("7 of 7 runs done, 0 failed"), "{t}");
    assert!(t.contains("its worker on cuda:1 was killed"), "{t}");
    assert!(t.contains("2 workers on cuda:1 died in a row; no more runs go to it"), "{t}");
    let ev = events(&ev);
    let on1: Vec<_> = ev.iter().filter(|e| e.1 == "1" && e.0 == "start").collect();
    assert_eq!(on1.len(), 2, "GPU 1 got two workers, then none: {ev:?}");
    let finished_on_0 = ev.iter().filter(|e| e.0 == "end" && e.1 == "0" && !e.3).count();
    assert_eq!(finished_on_0, 7, "every run finished once, on GPU 0");

    // Every GPU dying stops the sweep with the runs still queued, none failed.
    let out2 = tmp.path().join("out2");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--out", out2.to_str().unwrap(), "--devices", "1", "--threads", "1"])
        .env("KDLAB_WORKER_EXE", fake_worker(tmp.path()))
        .env("REAL_KDLAB", env!("CARGO_BIN_EXE_kdlab"))
        .env("EVENTS", tmp.path().join("events2.txt"))
        .env("DIE_ON", "1")
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("kept dying") && t.contains("--devices 1 --workers-per-device 1"), "{t}");
    assert!(t.contains("0 of 7 runs are done"), "{t}");
}

/// A run that trained epochs on a GPU is not continued on the CPU (nor the other way round).
#[test]
fn a_run_is_never_resumed_on_another_kind_of_device() {
    let tmp = tempfile::tempdir().unwrap();
    let s = study(tmp.path(), "0", "");
    let out = tmp.path().join("out");
    let o = kdlab()
        .args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    // Make one teacher look interrupted after an epoch on a GPU.
    let run = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join("spec.json")).unwrap().contains("\"teacher\""))
        .unwrap();
    let mut rec = common::read_json(&run.join("run.json"));
    rec["status"] = "running".into();
    rec["device"] = "cuda:0 (CUDA_VISIBLE_DEVICES=1)".into();
    kdlab::util::sealed::write_json(&run.join("run.json"), &rec).unwrap();
    let o = kdlab().args(["sweep", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dry-run"]).output().unwrap();
    let t = common::text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("1 run(s) started on another kind of device") && t.contains("Resume it with --device cuda"),
        "{t}"
    );
    // The worker itself refuses too (what a Slurm job runs).
    let o = kdlab()
        .args(["sweep-run", run.join("spec.json").to_str().unwrap(), "--device", "cpu", "--threads", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success() && common::text(&o).contains("would mix devices"), "{}", common::text(&o));
}

#[test]
fn slurm_arrays_of_a_gpu_study_ask_for_a_gpu_and_pass_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let emit = |extra: &str, flags: &[&str], name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let s = study(&dir, "0", extra);
        let slurm = dir.join("slurm");
        let o = kdlab()
            .args(["sweep", s.to_str().unwrap(), "--out", dir.join("out").to_str().unwrap()])
            .args(["--emit-slurm", slurm.to_str().unwrap()])
            .args(flags)
            .output()
            .unwrap();
        (
            o.status.success(),
            common::text(&o),
            std::fs::read_to_string(slurm.join("teachers.sbatch")).unwrap_or_default(),
        )
    };
    let (ok, t, cpu) = emit("", &[], "cpu");
    assert!(ok, "{t}");
    assert!(!cpu.contains("--gres") && cpu.contains("--device cpu\n"), "{cpu}");
    let (ok, t, gpu) = emit("", &["--device", "cuda"], "gpu");
    assert!(ok, "{t}");
    assert!(gpu.contains("#SBATCH --gres=gpu:1\n") && gpu.contains("--device cuda\n"), "{gpu}");
    let (ok, t, own) = emit("device = 'cuda'\ngres = 'gpu:a100:1'", &[], "own");
    assert!(ok, "{t}");
    assert!(own.contains("#SBATCH --gres=gpu:a100:1\n") && own.contains("--device cuda\n"), "{own}");
    // The study file's gres goes into a shell script: only a resource name gets through.
    let (ok, t, _) = emit("device = 'cuda'\ngres = \"gpu:1\\n#SBATCH --mem=1T\"", &[], "hostile");
    assert!(!ok && t.contains("'gres'") && t.contains("is not a Slurm resource"), "{t}");
    let (ok, t, _) = emit("device = 'tpu'", &[], "tpu");
    assert!(!ok && t.contains("'device'") && t.contains("tpu"), "{t}");
}

/// bf16 autocast on the CPU: a teacher of the demo's kind trained in bf16 lands within noise of
/// the same run in float32 (same seed, same batches), its checkpoint holds float32 weights, and
/// `amp` is part of the run's identity only when it is on.
#[test]
fn bf16_on_the_cpu_stays_within_noise_of_float32_and_checkpoints_stay_float32() {
    tch::set_num_threads(2);
    let data = kdlab::data::embedded::load().unwrap().head(1000, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = |amp| TrainConfig {
        model: "cnn_w2".into(),
        epochs: 3,
        batch_size: 64,
        warmup_epochs: 1,
        augment: false,
        seed: 3,
        amp,
        ..Default::default()
    };
    let mut acc = BTreeMap::new();
    for amp in [Amp::Off, Amp::Bf16] {
        let out = tmp.path().join(amp.as_str());
        let r = train(
            &cfg(amp),
            &data,
            &mut CrossEntropy,
            &RunOptions { quiet: true, ..RunOptions::new(&out, Device::Cpu, "train") },
        )
        .unwrap();
        acc.insert(amp.as_str(), (r.final_test_acc, r.history.iter().map(|m| m.train_loss).collect::<Vec<_>>()));
        let w = Tensor::read_safetensors(out.join("last.safetensors")).unwrap();
        assert!(!w.is_empty());
        for (name, t) in &w {
            if t.is_floating_point() {
                assert_eq!(t.kind(), Kind::Float, "{amp:?}: {name} is {:?}", t.kind());
            }
        }
    }
    let (f32_acc, f32_loss) = &acc["off"];
    let (bf_acc, bf_loss) = &acc["bf16"];
    // 1,000 test images: one standard error of an accuracy near 75% is 1.4 points.
    assert!(*f32_acc > 0.6 && *bf_acc > 0.6, "{acc:?}");
    assert!((f32_acc - bf_acc).abs() < 0.04, "bf16 {bf_acc} vs float32 {f32_acc}");
    // The two runs are different computations (bf16 rounding), not the same one twice.
    assert_ne!(f32_loss, bf_loss);
    for (a, b) in f32_loss.iter().zip(bf_loss) {
        assert!((a - b).abs() < 0.1 * a.max(*b), "train loss {a} vs {b}");
    }
    let id = |amp| cfg(amp).identity();
    assert!(id(Amp::Off).get("amp").is_none(), "float32 runs keep the identity they had before `amp` existed");
    assert_eq!(id(Amp::Bf16)["amp"], "bf16");
}

/// Batches reach the device through `upload`; on the CPU it is the very tensor (no copy), so the
/// CPU path's numbers cannot change.
#[test]
fn upload_on_the_cpu_is_the_tensor_itself() {
    let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25]);
    let u = kdlab::util::device::upload(&t, Device::Cpu);
    assert_eq!(u.data_ptr(), t.data_ptr());
    assert_eq!(Vec::<f32>::try_from(&u).unwrap(), vec![1.5, -2.0, 3.25]);
}

/// On a GPU: the pinned, non-blocking copy arrives intact (read back after the stream's work).
#[test]
#[ignore = "needs CUDA"]
fn cuda_upload_is_exact() {
    assert!(kdlab::util::device::cuda_available(), "no CUDA GPU");
    let t = Tensor::randn([513, 7], (Kind::Float, Device::Cpu));
    let u = kdlab::util::device::upload(&t, Device::Cuda(0));
    assert_eq!(u.device(), Device::Cuda(0));
    assert_eq!(u.to_device(Device::Cpu).eq_tensor(&t).all().int64_value(&[]), 1);
}

/// On a GPU: bf16 and fp16 autocast train, within noise of float32.
#[test]
#[ignore = "needs CUDA"]
fn cuda_amp_trains_within_noise_of_float32() {
    assert!(kdlab::util::device::cuda_available(), "no CUDA GPU");
    let data = kdlab::data::embedded::load().unwrap().head(2000, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let mut acc = vec![];
    for amp in [Amp::Off, Amp::Bf16, Amp::Fp16] {
        let cfg =
            TrainConfig { model: "resnet8".into(), epochs: 3, batch_size: 64, seed: 1, amp, ..Default::default() };
        let out = tmp.path().join(amp.as_str());
        let r = train(
            &cfg,
            &data,
            &mut CrossEntropy,
            &RunOptions { quiet: true, ..RunOptions::new(&out, Device::Cuda(0), "train") },
        )
        .unwrap();
        acc.push(r.final_test_acc);
    }
    assert!(acc.iter().all(|&a| a > 0.6 && (a - acc[0]).abs() < 0.04), "{acc:?}");
}

/// `scripts/gpu_check.sh --dry-run`: every step of the GPU check on the CPU (this test binary
/// lists the CUDA tests), ending in a results file with a kdlab/PyTorch ratio per model and
/// precision and the demo study planned. Skipped without the Makefile's PyTorch environment.
#[test]
fn the_gpu_check_script_passes_its_dry_run() {
    let Some(py) = common::venv_python() else {
        eprintln!("skipped: no PyTorch environment (make torch)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = root.join("../shared/bench/pytorch_ref.py");
    if !reference.exists() {
        eprintln!("skipped: no ../shared/bench/pytorch_ref.py");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results.md");
    let o = std::process::Command::new(root.join("scripts/gpu_check.sh"))
        .arg("--dry-run")
        .args(["--kdlab", env!("CARGO_BIN_EXE_kdlab")])
        .args(["--test-bin", std::env::current_exe().unwrap().to_str().unwrap()])
        .args(["--python", py.to_str().unwrap(), "--reference", reference.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    let r = std::fs::read_to_string(&out).unwrap();
    assert!(r.contains("DRY RUN") && r.contains("2 CUDA tests listed"), "{r}");
    for amp in ["off", "bf16"] {
        let row = r.lines().find(|l| l.starts_with(&format!("| resnet20 | {amp} |"))).unwrap_or_else(|| panic!("{r}"));
        let ratio: f64 = row.split('|').nth(6).unwrap().trim().parse().unwrap_or_else(|e| panic!("{row}: {e}"));
        assert!(ratio > 0.0 && ratio.is_finite(), "{row}");
    }
    assert!(r.contains("\"planned\": 29"), "the demo study is planned: {r}");
}
