//! The top-k teacher cache (FKD): it records the crops the loader draws and the live teacher's
//! top-k on them, a student replays exactly those crops, damage is named and rebuilt, and with
//! k = C it teaches the student the existing full-logit cache teaches.
use kdlab::data::augment::Augment;
use kdlab::data::loader::{epoch_plan, Batch, Loader, LoaderSpec};
use kdlab::data::Dataset;
use kdlab::methods;
use kdlab::train::cache;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::{Cached, Distill, DistillConfig, Teacher};
use kdlab::train::objective::CrossEntropy;
use kdlab::train::topk_cache::{self, top_k, CropRecord, Request, TopKCache};
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Tensor};

fn cfg(model: &str, epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig { model: model.into(), epochs, batch_size: 64, seed, ..Default::default() }
}

fn quiet(dir: &Path, kind: &str) -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::new(dir, Device::Cpu, kind) }
}

fn teacher(tmp: &Path, data: &Dataset) -> (std::path::PathBuf, Teacher) {
    let tdir = tmp.join("teacher");
    train(&cfg("cnn_w2", 1, 1), data, &mut CrossEntropy, &quiet(&tdir, "train")).unwrap();
    let t = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
    (tdir, t)
}

fn open(tdir: &Path, t: &Teacher, data: &Dataset, seed: u64, epochs: usize, k: usize) -> TopKCache {
    let req = Request { meta: &t.meta, data, augment: true, seed, epochs, k };
    topk_cache::open_or_build(tdir, &t.model, &req, true).unwrap()
}

#[test]
fn records_are_the_loaders_crops_with_the_live_teachers_top_k_and_replay_exactly() {
    tch::set_num_threads(2);
    let data = kdlab::data::embedded::load().unwrap().head(300, 64);
    let tmp = tempfile::tempdir().unwrap();
    let (tdir, t) = teacher(tmp.path(), &data);
    let c = open(&tdir, &t, &data, 5, 2, 3);
    assert_eq!((c.header.epochs, c.header.samples, c.header.k, c.header.row_bytes()), (2, 300, 3, 23));
    let aug = Augment::new(&data.profile, true);
    let shape = data.shape();
    let spec = LoaderSpec { batch_size: 64, shuffle: true, seed: 5, drop_last: false };
    for epoch in 0..2 {
        let (_, drawn) = epoch_plan(300, &spec, &aug, epoch as u64);
        for (i, &v) in drawn.iter().enumerate() {
            let (crop, top) = c.record(epoch, i);
            assert_eq!(crop, CropRecord::of_view(aug.view(v as usize), aug.pad, shape), "epoch {epoch} sample {i}");
            if i % 50 == 7 {
                // The stored top-k is the live teacher's on that crop (f16-rounded).
                let mut x = vec![0f32; shape.numel()];
                aug.apply(data.train.image(i), shape, aug.view(v as usize), &mut x);
                let live =
                    Vec::<f32>::try_from(t.model.infer(&Tensor::from_slice(&x).view([1, 1, 28, 28])).view(-1)).unwrap();
                let want = top_k(&live, 3);
                assert_eq!(top.classes, want.classes);
                for (a, b) in top.logits.iter().zip(&want.logits).chain([(&top.fill, &want.fill)]) {
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
        // The replaying loader yields the same batches as the drawing one (the records are the
        // seed's draws) ...
        let split = Arc::new(data.train.clone());
        let a = Arc::new(aug.clone());
        let views = c.view_ids(epoch, &aug, shape).unwrap();
        let replayed: Vec<Batch> = Loader::replay(split.clone(), a.clone(), spec, epoch as u64, views).collect();
        let drawn_batches: Vec<Batch> = Loader::new(split.clone(), a.clone(), spec, epoch as u64).collect();
        for (r, d) in replayed.iter().zip(&drawn_batches) {
            assert_eq!((&r.images, &r.indices, &r.views), (&d.images, &d.indices, &d.views));
        }
        // ... and another seed's records are replayed as recorded, not redrawn.
        let other = open(&tdir, &t, &data, 6, 2, 3);
        let views = other.view_ids(epoch, &aug, shape).unwrap();
        let mut differ = 0;
        for b in Loader::replay(split, a, spec, epoch as u64, views) {
            for (k, &i) in b.indices.iter().enumerate() {
                let crop = other.record(epoch, i as usize).0;
                let mut x = vec![0f32; shape.numel()];
                aug.apply(data.train.image(i as usize), shape, crop.to_view(aug.pad, shape).unwrap(), &mut x);
                assert_eq!(&b.images[k * shape.numel()..(k + 1) * shape.numel()], &x[..]);
                differ += usize::from(b.views[k] != drawn[i as usize]);
            }
        }
        assert!(differ > 250, "seed 6's crops are not seed 5's ({differ} of 300 differ)");
    }
    assert!(c.lookup(2, &[0]).unwrap_err().to_string().contains("records 2 epochs"));
}

#[test]
fn damage_is_named_and_rebuilt_and_more_epochs_rebuild() {
    tch::set_num_threads(2);
    let data = kdlab::data::embedded::load().unwrap().head(200, 64);
    let tmp = tempfile::tempdir().unwrap();
    let (tdir, t) = teacher(tmp.path(), &data);
    let c = open(&tdir, &t, &data, 0, 3, 2);
    let path = c.path.clone();
    let good = std::fs::read(&path).unwrap();
    let records: Vec<_> = (0..3).flat_map(|e| (0..200).map(move |i| (e, i))).map(|(e, i)| c.record(e, i)).collect();
    drop(c);
    let header_len = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
    let row = 11 + 4 * 2;
    // A byte in epoch 2's rows, a byte of the header, a truncation: each named.
    let damaged: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = good.clone();
                b[12 + header_len + 200 * row + 5] ^= 0x40;
                b
            },
            "epochs 0..=2",
        ),
        (
            {
                let mut b = good.clone();
                b[20] ^= 0x01;
                b
            },
            "damaged",
        ),
        (good[..good.len() - 9].to_vec(), "truncated"),
    ];
    for (bytes, what) in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", TopKCache::open(&path).err().expect("damage is found"));
        assert!(e.contains(&path.display().to_string()) && e.contains(what), "{e}");
        let rebuilt = open(&tdir, &t, &data, 0, 3, 2);
        assert_eq!(std::fs::read(&rebuilt.path).unwrap(), good, "rebuilt byte for byte");
    }
    // A run of fewer epochs reuses the file; one of more epochs rebuilds it.
    assert_eq!(open(&tdir, &t, &data, 0, 2, 2).header.epochs, 3);
    let longer = open(&tdir, &t, &data, 0, 4, 2);
    assert_eq!(longer.header.epochs, 4);
    let again: Vec<_> = (0..3).flat_map(|e| (0..200).map(move |i| (e, i))).map(|(e, i)| longer.record(e, i)).collect();
    assert_eq!(again, records, "the first epochs are recorded as before");
}

#[test]
fn full_k_teaches_what_the_full_logit_cache_teaches() {
    tch::set_num_threads(2);
    let data = kdlab::data::embedded::load().unwrap().head(384, 128);
    let tmp = tempfile::tempdir().unwrap();
    let (tdir, t) = teacher(tmp.path(), &data);
    let full = cache::open_or_build(&tdir, &t.model, &t.meta, &data, true, true).unwrap();
    let topk = open(&tdir, &t, &data, 3, 2, 10);
    // Every recorded teacher target equals the full cache's logits of that sample and view.
    let aug = Augment::new(&data.profile, true);
    let mut worst = 0f64;
    for epoch in 0..2 {
        let views = topk.view_ids(epoch, &aug, data.shape()).unwrap();
        let idx: Vec<u32> = (0..384).collect();
        let a = topk.lookup(epoch, &idx).unwrap();
        let b = full.lookup(&idx, &views);
        worst = worst.max((a - b).abs().max().double_value(&[]));
    }
    // Both store the f16 of the same forward pass; batches of other samples may move the last
    // float bit, which can cross an f16 rounding boundary: one f16 step (≤ 2^-7 at |l| < 16).
    assert!(worst <= 1.0 / 128.0, "top-10 vs full logits differ by {worst}");
    let mut histories = vec![];
    for cached in [Cached::Logits(full), Cached::TopK(topk)] {
        let t = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
        let mut obj = Distill::new(t, &methods::MethodSpec::default_of("kd").unwrap(), Some(cached)).unwrap();
        let out = tmp.path().join(format!("student-{}", histories.len()));
        histories.push(train(&cfg("cnn_w1", 2, 3), &data, &mut obj, &quiet(&out, "distill")).unwrap().history);
    }
    for (a, b) in histories[0].iter().zip(&histories[1]) {
        if worst == 0.0 {
            assert_eq!((a.train_loss, a.test_acc), (b.train_loss, b.test_acc), "identical targets, identical runs");
        }
        assert!((a.train_loss - b.train_loss).abs() <= 1e-3 * a.train_loss, "{} vs {}", a.train_loss, b.train_loss);
        assert!((a.test_acc - b.test_acc).abs() <= 1.0 / 128.0, "{} vs {}", a.test_acc, b.test_acc);
    }
}

#[test]
fn methods_that_read_the_non_target_classes_refuse_top_1() {
    let table = |method: &str, mode: &str| -> toml::Table {
        format!("student = 'mlp_16x1'\nteacher = 'runs/t'\nmethod = '{method}'\nteacher_cache = '{mode}'")
            .parse()
            .unwrap()
    };
    for method in ["nckd", "dkd", "isats"] {
        let e = format!("{:#}", DistillConfig::from_table(table(method, "topk:1"), "run.toml").unwrap_err());
        assert!(e.contains("run.toml") && e.contains(method) && e.contains("topk:2"), "{e}");
        DistillConfig::from_table(table(method, "topk:2"), "run.toml").unwrap();
    }
    for method in ["kd", "ats", "dist"] {
        DistillConfig::from_table(table(method, "topk:1"), "run.toml").unwrap();
    }
    let e = format!("{:#}", DistillConfig::from_table(table("kd", "top5"), "run.toml").unwrap_err());
    assert!(e.contains("'teacher_cache'") && e.contains("topk:K"), "{e}");
}

#[test]
fn the_cli_builds_and_distils_from_a_top_k_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
            .args(args)
            .args(["--threads", "1", "--device", "cpu"])
            .current_dir(d)
            .output()
            .unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let data = ["--data", "fashion-mnist-mini", "--train-subset", "40"];
    let (ok, out) =
        run(&[&["train", "--model", "cnn_w1", "--epochs", "1", "--quiet", "--out", "t"], &data[..]].concat());
    assert!(ok, "{out}");
    let (ok, out) = run(&["cache", "build", "--run", "t", "--topk", "2", "--seed", "4", "--epochs", "2"]);
    assert!(ok && out.contains("2 epochs × 400 samples, top-2 of 10 classes (19 bytes a record, seed 4)"), "{out}");
    let distill =
        [&["distill", "--teacher", "t", "--student", "mlp_16x1", "--epochs", "2", "--seed", "4"], &data[..]].concat();
    let (ok, out) = run(&[&distill[..], &["--teacher-cache", "topk:2", "--quiet", "--out", "s"]].concat());
    assert!(ok && !out.contains("built the top-k"), "the cache built above is reused: {out}");
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("s/run.json")).unwrap()).unwrap();
    let cache = &rec["extra"]["teacher_cache"];
    assert_eq!(
        (cache["mode"].as_str(), cache["k"].as_u64(), cache["seed"].as_u64()),
        (Some("topk:2"), Some(2), Some(4))
    );
    let (ok, out) = run(&[&distill[..], &["--method", "nckd", "--teacher-cache", "topk:1", "--out", "n"]].concat());
    assert!(!ok && out.contains("method 'nckd' cannot distil from teacher_cache = \"topk:1\""), "{out}");
}
