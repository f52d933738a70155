//! Image folders under the ImageNet recipe (`DIR:transform=imagenet`): the resampling against
//! PyTorch's antialiased bilinear `interpolate`; batches that do not depend on the store (memory
//! or files) or the number of decoding threads; a streamed run that resumes exactly; and the
//! commands end to end (train, eval, distil with the teacher run on each batch, probe), with a
//! corrupt JPEG named or skipped.
//!
//! The tests of this file take turns (`serial`, as in train_engine.rs): runs compared bit for bit
//! must not share LibTorch's thread pool with another run.
mod common;

use common::{feed_with_threads, text, venv_python, write_folder};
use kdlab::data::loader::{Batch, Feed, Loader, LoaderSpec};
use kdlab::data::transform::{resample, Decoded, Resample};
use kdlab::data::Shape;
use std::path::Path;
fn serial() -> std::sync::MutexGuard<'static, ()> {
    common::serial_on(1)
}

#[test]
fn resampling_matches_pytorchs_antialiased_bilinear_interpolate() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no PyTorch environment (make torch)");
        return;
    };
    let (h, w, c) = (37usize, 53usize, 3usize);
    let pixels: Vec<u8> = (0..h * w * c).map(|i| ((i * 7919 + (i / 3) * 31 + i * i % 97) % 256) as u8).collect();
    let img = Decoded { h, w, c, pixels };
    let cases = [
        // A random-resized crop shrunk 2.3× and 2.4×; one enlarged; one enlarged in one direction
        // and shrunk in the other; a copy; resize (shorter side 24) and centre crop of the image.
        Resample { window: (3, 5, 30, 41), full: (13, 17), origin: (0, 0), out: (13, 17), flip: false },
        Resample { window: (20, 30, 10, 12), full: (24, 30), origin: (0, 0), out: (24, 30), flip: false },
        Resample { window: (0, 0, 37, 9), full: (11, 20), origin: (0, 0), out: (11, 20), flip: false },
        Resample { window: (1, 2, 8, 8), full: (8, 8), origin: (0, 0), out: (8, 8), flip: false },
        Resample { window: (0, 0, 37, 53), full: (24, 34), origin: (2, 7), out: (20, 20), flip: false },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let as_f32: Vec<f32> = img.pixels.iter().map(|&p| p as f32).collect();
    kdlab::data::npy::write_f32(&tmp.path().join("image.npy"), &[h, w, c], &as_f32).unwrap();
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|r| {
            serde_json::json!({"window": [r.window.0, r.window.1, r.window.2, r.window.3],
                "full": [r.full.0, r.full.1], "origin": [r.origin.0, r.origin.1], "out": [r.out.0, r.out.1]})
        })
        .collect();
    std::fs::write(tmp.path().join("cases.json"), serde_json::to_string(&json).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/resize_reference.py");
    let o = std::process::Command::new(&py)
        .arg(&script)
        .arg(tmp.path().join("image.npy"))
        .arg(tmp.path().join("cases.json"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for (i, r) in cases.iter().enumerate() {
        let file = tmp.path().join(format!("case{i}.npy"));
        let want = kdlab::data::npy::read(&file).unwrap().to_f32(&file).unwrap();
        let mut got = vec![0f32; c * r.out.0 * r.out.1];
        resample(&img, r, &[1.0; 3], &[0.0; 3], &mut got);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("case {i}: max abs difference {worst}");
        // Both compute in floating point: the difference is rounding (pixel values are 0..255).
        assert!(worst < 2e-3, "case {i} {r:?}: max |kdlab − PyTorch| = {worst}");
    }
}

/// The batches of one epoch: shuffled for training views, in order for evaluation views.
fn epoch(feed: Feed, epoch: u64) -> Vec<Batch> {
    let shuffle = matches!(&feed, Feed::Files(f) if f.random);
    let spec = LoaderSpec { batch_size: 8, shuffle, seed: 3, drop_last: false };
    let mut loader = Loader::from_feed(feed, spec, epoch);
    let batches: Vec<Batch> = loader.by_ref().collect();
    loader.finish().unwrap();
    batches
}

#[test]
fn batches_depend_on_seed_epoch_and_sample_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_folder(&root, 6, 2);
    let spec = |store: &str| format!("{}:transform=imagenet,size=24,channels=1,store={store}", root.display());
    let streamed = kdlab::data::source::load(&spec("stream")).unwrap();
    let held = kdlab::data::source::load(&spec("memory")).unwrap();
    assert!(!streamed.stream.as_ref().unwrap().in_memory() && held.stream.as_ref().unwrap().in_memory());
    assert_eq!(streamed.fingerprint(), held.fingerprint(), "the store does not change the data");
    assert_eq!(streamed.shape(), Shape { c: 1, h: 24, w: 24 });
    assert_eq!(streamed.train.class_counts(3), vec![6, 6, 6]);
    let a = epoch(feed_with_threads(&streamed, "train", true, 1), 4);
    let b = epoch(feed_with_threads(&streamed, "train", true, 3), 4);
    let m = epoch(feed_with_threads(&held, "train", true, 2), 4);
    assert_eq!(a.len(), 3);
    for ((x, y), z) in a.iter().zip(&b).zip(&m) {
        assert_eq!((&x.indices, &x.crops), (&y.indices, &y.crops));
        assert_eq!((&x.indices, &x.crops), (&z.indices, &z.crops));
        assert!(x.images == y.images && x.images == z.images, "pixels differ by store or thread count");
    }
    // Every crop lies inside its source image, and the next epoch draws other crops.
    assert!(a.iter().flat_map(|b| &b.crops).all(|c| c.h >= 1 && c.w >= 1 && c.y + c.h <= 40 && c.x + c.w <= 40));
    let next = epoch(feed_with_threads(&streamed, "train", true, 2), 5);
    assert_ne!(a[0].crops, next[0].crops);
    // Evaluation views are fixed: the same pixels every time, no crops drawn.
    let e1 = epoch(feed_with_threads(&streamed, "test", false, 1), 0);
    let e2 = epoch(feed_with_threads(&held, "test", false, 2), 7);
    assert_eq!(e1.iter().map(|b| b.len()).sum::<usize>(), 6);
    assert!(e1.iter().zip(&e2).all(|(x, y)| x.images == y.images));
}

#[test]
fn a_streamed_run_resumes_exactly() {
    use kdlab::train::config::TrainConfig;
    use kdlab::train::objective::CrossEntropy;
    use kdlab::train::trainer::{train, RunOptions};
    let _turn = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_folder(&root, 8, 3);
    let data =
        kdlab::data::source::load(&format!("{}:transform=imagenet,size=24,store=stream", root.display())).unwrap();
    let cfg = TrainConfig { model: "cnn_w1".into(), epochs: 2, batch_size: 8, seed: 5, ..Default::default() };
    let quiet = |d: &Path| RunOptions { quiet: true, ..RunOptions::new(d, tch::Device::Cpu, "train") };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let full = train(&cfg, &data, &mut CrossEntropy, &quiet(&a)).unwrap();
    let stopped = train(&cfg, &data, &mut CrossEntropy, &RunOptions { stop_after: Some(1), ..quiet(&b) }).unwrap();
    assert!(!stopped.complete);
    let resumed = train(&cfg, &data, &mut CrossEntropy, &quiet(&b)).unwrap();
    assert_eq!(resumed.resumed_at, 1);
    let numbers = |h: &[kdlab::train::run::EpochMetrics]| -> Vec<(f64, f64, f64)> {
        h.iter().map(|m| (m.train_loss, m.train_acc, m.test_loss)).collect()
    };
    assert_eq!(numbers(&full.history), numbers(&resumed.history));
    let sha = |d: &Path| kdlab::train::checkpoint::read_meta(&d.join("last.json")).unwrap().weights_sha256;
    assert_eq!(sha(&a), sha(&b));
}

fn kdlab(args: &[&str], cwd: &Path) -> std::process::Output {
    common::kdlab()
        .args(args)
        .current_dir(cwd)
        .env("KDLAB_DATA", cwd.join("data"))
        .env("KDLAB_LOADER_THREADS", "2")
        .output()
        .unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = kdlab(args, cwd);
    assert!(o.status.success(), "kdlab {}: {}", args.join(" "), text(&o));
    text(&o)
}

#[test]
fn a_streamed_folder_trains_evaluates_distils_and_probes_through_the_cli() {
    let _turn = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    write_folder(&cwd.join("imgs"), 10, 4);
    let data = "imgs:transform=imagenet,size=24,resize=28,store=stream";
    let quick = ["--epochs", "1", "--batch-size", "10", "--device", "cpu", "--quiet"];
    let out = ok(&[&["train", "--data", data, "--model", "cnn_w1", "--out", "runs/t"][..], &quick].concat(), cwd);
    assert!(out.contains("decoded per batch (store=stream)") && out.contains("resize to 28"), "{out}");
    let rec = common::read_json(&cwd.join("runs/t/run.json"));
    assert_eq!(rec["data"]["shape"], serde_json::json!({"c": 3, "h": 24, "w": 24}));
    let acc = rec["final_test_acc"].as_f64().unwrap();
    let o = kdlab(&["eval", "--run", "runs/t", "--json", "--device", "cpu"], cwd);
    assert!(o.status.success(), "{}", text(&o));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["accuracy"].as_f64(), Some(acc), "evaluation views are the same every time");
    // The teacher runs on each batch's crops; its logit cache is refused (views are continuous).
    let distil = ["distill", "--teacher", "runs/t", "--student", "mlp_16x1", "--data", data, "--out", "runs/s"];
    ok(&[&distil[..], &quick].concat(), cwd);
    let o = kdlab(&[&distil[..], &quick, &["--teacher-cache"]].concat(), cwd);
    assert!(!o.status.success() && text(&o).contains("continuous views"), "{}", text(&o));
    ok(&["probe", "--run", "runs/t", "--run", "runs/s", "--device", "cpu"], cwd);

    // A corrupt JPEG: indexing does not read it; the batch that holds it fails naming it, and
    // bad=skip leaves it out with a warning.
    let bad = cwd.join("imgs/train/bag/99999.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 not really a JPEG").unwrap();
    let o = kdlab(&[&["train", "--data", data, "--model", "cnn_w1", "--out", "runs/bad"][..], &quick].concat(), cwd);
    assert!(
        !o.status.success() && text(&o).contains("train/bag/99999.jpg") && text(&o).contains("bad=skip"),
        "{}",
        text(&o)
    );
    let skip = format!("{data},bad=skip");
    let out = ok(&[&["train", "--data", &skip, "--model", "cnn_w1", "--out", "runs/skip"][..], &quick].concat(), cwd);
    assert!(out.contains("warning: skipping") && out.contains("99999.jpg"), "{out}");
    // Options the recipe does not take are refused, naming them.
    let o = kdlab(&["data", "info", "imgs:transform=imagenet,pad=4"], cwd);
    assert!(!o.status.success() && text(&o).contains("pad="), "{}", text(&o));
    let o = kdlab(&["data", "info", "imgs:store=stream"], cwd);
    assert!(!o.status.success() && text(&o).contains("transform=imagenet"), "{}", text(&o));
}
