//! The training engine end to end on real (embedded Fashion-MNIST) data: the loss falls,
//! the same seed gives the same numbers, and a run stopped and resumed ends exactly where an
//! uninterrupted one does.
//!
//! The tests of this file take turns (`serial`): LibTorch's thread pool is shared by the whole
//! process, and runs that overlap in one process can round a reduction differently, which would
//! make the bit-for-bit comparisons below flaky for reasons that have nothing to do with kdlab.
use kdlab::data::{self, Dataset};
use kdlab::train::checkpoint;
use kdlab::train::config::TrainConfig;
use kdlab::train::objective::CrossEntropy;
use kdlab::train::run::EpochMetrics;
use kdlab::train::trainer::{train, RunOptions};
use tch::Device;
mod common;
use common::serial;

fn small_data() -> Dataset {
    data::embedded::load().unwrap().head(1200, 400)
}

fn cfg(model: &str, epochs: usize) -> TrainConfig {
    TrainConfig { model: model.into(), epochs, batch_size: 64, save_every: 1, seed: 7, ..Default::default() }
}

fn quiet(dir: &std::path::Path) -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::new(dir, Device::Cpu, "train") }
}

/// Everything but wall-clock times.
fn numbers(h: &[EpochMetrics]) -> Vec<(usize, f64, f64, f64, f64, f64, f64)> {
    h.iter().map(|m| (m.epoch, m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.terms["ce"])).collect()
}

#[test]
fn loss_falls_and_accuracy_beats_chance() {
    let _turn = serial();
    let dir = tempfile::tempdir().unwrap();
    let r = train(&cfg("cnn_w2", 4), &small_data(), &mut CrossEntropy, &quiet(dir.path())).unwrap();
    let h = &r.history;
    assert_eq!(h.len(), 4);
    assert!(h[3].train_loss < 0.7 * h[0].train_loss, "train loss {} → {}", h[0].train_loss, h[3].train_loss);
    assert!(r.final_test_acc > 0.6, "test accuracy {}", r.final_test_acc);
    // The files a later step reads are there and agree with the outcome.
    let rec = kdlab::train::run::read_record(dir.path()).unwrap().unwrap();
    assert_eq!(rec.status, kdlab::train::run::RunStatus::Done);
    assert_eq!(rec.final_test_acc, Some(r.final_test_acc));
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert_eq!(checkpoint::list_epochs(dir.path()), vec![1, 2, 3, 4]);
}

#[test]
fn same_seed_same_numbers_and_resume_is_exact() {
    // Same seed, same machine, same thread count → identical metrics, bit for bit.
    let _turn = serial();
    let data = small_data();
    let c = cfg("resnet8", 3);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let full = train(&c, &data, &mut CrossEntropy, &quiet(a.path())).unwrap();
    let stopped = train(&c, &data, &mut CrossEntropy, &RunOptions { stop_after: Some(1), ..quiet(b.path()) }).unwrap();
    assert!(!stopped.complete);
    assert_eq!(stopped.history.len(), 1);
    // The resumed part reads the loss back every 7 steps, as on a GPU: the numbers cannot change.
    let resumed = train(&c, &data, &mut CrossEntropy, &RunOptions { sync_every: Some(7), ..quiet(b.path()) }).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    assert_eq!(numbers(&full.history), numbers(&resumed.history));
    // The final weights are identical too.
    let wa = checkpoint::read_meta(&a.path().join("last.json")).unwrap();
    let wb = checkpoint::read_meta(&b.path().join("last.json")).unwrap();
    assert_eq!(wa.weights_sha256, wb.weights_sha256);
    // A different seed gives different numbers (the comparison above can fail).
    let d = tempfile::tempdir().unwrap();
    let other = train(&TrainConfig { seed: 8, ..c.clone() }, &data, &mut CrossEntropy, &quiet(d.path())).unwrap();
    assert_ne!(numbers(&full.history), numbers(&other.history));
    // Running a finished run again does nothing and reports the same result.
    let again = train(&c, &data, &mut CrossEntropy, &quiet(a.path())).unwrap();
    assert_eq!(again.resumed_at, 3);
    assert_eq!(numbers(&again.history), numbers(&full.history));
}

#[test]
fn a_run_directory_refuses_a_different_config() {
    let _turn = serial();
    let data = small_data().head(200, 100);
    let dir = tempfile::tempdir().unwrap();
    train(&cfg("cnn_w1", 1), &data, &mut CrossEntropy, &quiet(dir.path())).unwrap();
    let err =
        train(&TrainConfig { lr: 0.1, ..cfg("cnn_w1", 1) }, &data, &mut CrossEntropy, &quiet(dir.path())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("lr: 0.05 → 0.1"), "{msg}");
}

#[test]
fn checkpoints_load_for_inference_and_damage_is_detected() {
    let _turn = serial();
    let data = small_data().head(300, 200);
    let dir = tempfile::tempdir().unwrap();
    let r = train(&cfg("cnn_w1", 2), &data, &mut CrossEntropy, &quiet(dir.path())).unwrap();
    let spec = format!("{}@epoch1", dir.path().display());
    let (model, meta, _) = checkpoint::load_model(&spec, Device::Cpu).unwrap();
    assert_eq!(meta.epoch, 1);
    let (last, _, _) = checkpoint::load_model(dir.path().to_str().unwrap(), Device::Cpu).unwrap();
    let acc = kdlab::train::eval::evaluate(
        &last,
        std::sync::Arc::new(data.test.clone()),
        kdlab::train::eval::plain_augment(&data),
    )
    .acc;
    assert_eq!(acc, r.final_test_acc, "reloaded weights reproduce the recorded accuracy");
    assert_eq!(model.arch, "cnn_w1");
    let e = format!("{:#}", checkpoint::resolve(&format!("{}@epoch9", dir.path().display())).unwrap_err());
    assert!(e.contains("saved epochs: 1, 2"), "{e}");
    // Flip one byte of the weights: loading must refuse, naming the file.
    let w = dir.path().join("last.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&w, bytes).unwrap();
    let e = format!("{:#}", checkpoint::load_model(dir.path().to_str().unwrap(), Device::Cpu).unwrap_err());
    assert!(e.contains("last.safetensors") && e.contains("checksum"), "{e}");
}

/// `trace_steps` writes the first steps (1-based, across epochs) with every term and the gradient
/// norm, and the epoch's recorded norms agree with them: 1200 images in batches of 64 are 19
/// steps an epoch, so a trace of 25 steps holds all of epoch 1 and 6 steps of epoch 2.
#[test]
fn the_first_steps_are_traced_with_their_gradient_norms() {
    let _s = serial();
    let data = small_data();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let out =
        train(&cfg("mlp_32x1", 2), &data, &mut CrossEntropy, &RunOptions { trace_steps: 25, ..quiet(&dir) }).unwrap();
    let text = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "epoch,step,lr,loss,batch_acc,grad_norm,term_ce");
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 25);
    assert_eq!((rows[0][0], rows[0][1], rows[18][0], rows[19][0], rows[24][1]), (1.0, 1.0, 1.0, 2.0, 25.0));
    for r in &rows {
        assert!((r[3] - r[6]).abs() < 1e-6, "the loss is the sum of its one term: {r:?}");
        assert!(r[5] > 0.0 && r[5].is_finite());
    }
    let first = &out.history[0];
    let epoch1: Vec<f64> = rows[..19].iter().map(|r| r[5]).collect();
    let mean = epoch1.iter().sum::<f64>() / 19.0;
    assert!((first.grad_norm_mean.unwrap() - mean).abs() < 1e-5 * mean, "{:?} vs {mean}", first.grad_norm_mean);
    assert!((first.grad_norm_max.unwrap() - epoch1.iter().cloned().fold(0.0, f64::max)).abs() < 1e-5);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",grad_norm_mean,grad_norm_max"), "{csv}");
}
