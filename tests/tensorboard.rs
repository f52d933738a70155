//! TensorBoard event files: TensorBoard's own Python reader (EventAccumulator, PyPI `tensorboard`,
//! installed by the Makefile beside torch) reads what a teacher and an ISATS student wrote, and
//! `scripts/tensorboard_check.py` compares every value with metrics.csv, the checkpoint's history
//! and run.json; and a run resumed after an interrupted epoch (a deterministic one, and a real
//! SIGKILL) holds each step once, with the values of the epochs it trained.
mod common;

use common::serial;
use kdlab::data::{self, Dataset};
use kdlab::methods;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::{Distill, Teacher};
use kdlab::train::events;
use kdlab::train::objective::CrossEntropy;
use kdlab::train::trainer::{train, RunOptions};
use kdlab::util::tensorboard::{self, EventWriter};
use std::path::Path;
use std::time::{Duration, Instant};
use tch::Device;

fn small() -> Dataset {
    // 700 training images, a validation split of 10 per class carved out: 600 train, 10 steps of
    // 64 with a short last one (the weighted means must weigh it right).
    data::embedded::load().unwrap().head(700, 200).carve(0, 10, 0).unwrap()
}

fn cfg(model: &str, epochs: usize) -> TrainConfig {
    TrainConfig { model: model.into(), epochs, batch_size: 64, seed: 5, ..Default::default() }
}

fn opts(dir: &Path, kind: &str) -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::new(dir, Device::Cpu, kind) }
}

/// Runs the checker with TensorBoard's reader on `runs` (its arguments); None when there is no Python environment
/// (the reference checks are skipped without one, as elsewhere).
fn tensorboard_check(runs: &[&Path]) -> Option<String> {
    let Some(py) = common::venv_python() else {
        eprintln!("skipped: no PyTorch environment (make torch)");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard_check.py");
    let o = std::process::Command::new(py).arg(script).args(runs).output().unwrap();
    let text = common::text(&o);
    assert!(
        !text.contains("No module named 'tensorboard'"),
        "the Python environment lacks tensorboard: run `make torch` (the Makefile installs it)"
    );
    assert!(o.status.success(), "{text}");
    Some(text)
}

/// (step, value) of each scalar event with `tag`, read back with kdlab's own reader.
fn scalars(dir: &Path, tag: &str) -> Vec<(i64, f32)> {
    let (events, _) = tensorboard::read_events(&dir.join(events::FILE)).unwrap();
    events
        .iter()
        .filter_map(|(e, _)| {
            let v = e.summary.as_ref()?.value.iter().find(|v| v.tag == tag)?;
            Some((e.step, v.simple_value?))
        })
        .collect()
}

#[test]
fn tensorboards_reader_sees_every_metric_histogram_and_hyper_parameter() {
    let _s = serial();
    let data = small();
    let tmp = tempfile::tempdir().unwrap();
    let tdir = tmp.path().join("teacher");
    train(&cfg("cnn_w2", 2), &data, &mut CrossEntropy, &opts(&tdir, "train")).unwrap();
    let sdir = tmp.path().join("isats");
    let mut obj = Distill::new(
        Teacher::load(&tdir.display().to_string(), Device::Cpu).unwrap(),
        &methods::MethodSpec::default_of("isats").unwrap(),
        None,
    )
    .unwrap();
    let extra = serde_json::json!({"teacher": obj.teacher.record()});
    train(&cfg("mlp_16x1", 2), &data, &mut obj, &RunOptions { extra, ..opts(&sdir, "distill") }).unwrap();
    // Also the HParams dashboard of `tensorboard --logdir` on their parent: a session per run.
    let Some(out) = tensorboard_check(&[Path::new("--logdir"), tmp.path(), &tdir, &sdir]) else { return };
    assert!(out.contains("2 sessions"), "{out}");
    // The student's τ2 histograms were found and checked, one per epoch.
    assert!(out.contains("isats: 2 epochs, 20 steps, 2 histograms"), "{out}");
    assert!(out.contains("teacher: 2 epochs, 20 steps, 0 histograms"), "{out}");
}

#[test]
fn a_resumed_run_holds_each_step_once_with_the_values_it_trained() {
    let _s = serial();
    let data = small();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    train(&cfg("cnn_w1", 3), &data, &mut CrossEntropy, &opts(&whole, "train")).unwrap();

    // Interrupted after epoch 1, having written steps of epoch 2 (with values no run computed)
    // and half of another record, as a process killed mid-epoch leaves its file.
    let cut = tmp.path().join("cut");
    train(&cfg("cnn_w1", 3), &data, &mut CrossEntropy, &RunOptions { stop_after: Some(1), ..opts(&cut, "train") })
        .unwrap();
    let file = cut.join(events::FILE);
    let mut w = EventWriter::append(&file).unwrap();
    for step in 11..=14 {
        w.scalar("step/loss", step, 1e6).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let mut torn = std::fs::read(&file).unwrap();
    torn.extend_from_slice(&tensorboard::frame(b"half a record")[..9]);
    std::fs::write(&file, torn).unwrap();
    train(&cfg("cnn_w1", 3), &data, &mut CrossEntropy, &opts(&cut, "train")).unwrap();

    // Same seed, same machine: the resumed run's curves are the uninterrupted run's, step for step.
    let (a, b) = (scalars(&whole, "step/loss"), scalars(&cut, "step/loss"));
    assert_eq!(b.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    assert_eq!(a, b);
    assert_eq!(scalars(&whole, "epoch/test_acc"), scalars(&cut, "epoch/test_acc"));
    let (_, damaged) = tensorboard::read_events(&file).unwrap();
    assert!(!damaged, "the torn record was cut away");
    tensorboard_check(&[&whole, &cut]);
}

/// A `kdlab train` killed with SIGKILL in the middle of its second epoch, then run again.
#[test]
fn a_run_killed_mid_epoch_resumes_its_curves_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let args = [
        "train",
        "--model",
        "cnn_w1",
        "--data",
        "fashion-mnist-mini",
        "--train-subset",
        "300",
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
        "--threads",
        "1",
    ];
    // 3,000 images: 47 steps an epoch, flushed every second.
    let steps = 47;
    let mut child = common::kdlab().args(args).spawn().unwrap();
    let started = Instant::now();
    let killed_mid_epoch = loop {
        let written = if run.join(events::FILE).exists() { scalars(&run, "step/loss").len() } else { 0 };
        if written > steps + 2 {
            child.kill().unwrap();
            break written < 2 * steps;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no step of epoch 2 after 5 minutes");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.wait().unwrap();
    let done = kdlab::train::checkpoint::read_meta(&run.join("last.json")).unwrap().epoch;
    assert!((1..3).contains(&done), "killed with {done} epochs done");
    let o = common::kdlab().args(args).output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    let loss = scalars(&run, "step/loss");
    assert_eq!(loss.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=3 * steps as i64).collect::<Vec<_>>());
    if !killed_mid_epoch {
        eprintln!("note: the kill came after epoch 2's last step; the cut was tested at an epoch boundary");
    }
    tensorboard_check(&[&run]);
}
