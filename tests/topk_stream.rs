//! The top-k teacher cache (FKD) on a streamed image folder (`transform=imagenet`): its records
//! are the random-resized crops the student's loader draws, with the live teacher's top-k on
//! them; a distillation reads it end to end; crops that differ from the records are refused.
mod common;

use common::{text, write_folder};
use half::f16;
use kdlab::data::loader::{Batch, Loader, LoaderSpec};
use kdlab::data::Dataset;
use kdlab::methods;
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::{Cached, Distill, Teacher};
use kdlab::train::objective::CrossEntropy;
use kdlab::train::topk_cache::{self, top_k, CropRecord, Request, TopKCache};
use kdlab::train::trainer::{train, RunOptions};
use std::path::Path;
use tch::{Device, Tensor};

const DATA: &str = "imgs:transform=imagenet,size=16,resize=18,channels=1,store=memory";

/// A streamed folder of 3 × 8 training images and a one-epoch teacher trained on it.
fn setup(tmp: &Path) -> (Dataset, std::path::PathBuf, Teacher) {
    write_folder(&tmp.join("imgs"), 8, 2);
    let data = kdlab::data::source::load(&tmp.join(DATA).to_string_lossy()).unwrap();
    let tdir = tmp.join("teacher");
    let cfg = TrainConfig { model: "cnn_w1".into(), epochs: 1, batch_size: 8, seed: 1, ..Default::default() };
    let opts = RunOptions { quiet: true, ..RunOptions::new(&tdir, Device::Cpu, "train") };
    train(&cfg, &data, &mut CrossEntropy, &opts).unwrap();
    let t = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
    (data, tdir, t)
}

fn open(tdir: &Path, t: &Teacher, data: &Dataset, seed: u64) -> TopKCache {
    let req = Request { meta: &t.meta, data, augment: true, seed, epochs: 2, k: 2 };
    topk_cache::open_or_build(tdir, &t.model, &req, true).unwrap()
}

/// The student's training batches of `epoch` (shuffled, batch size 8, as the trainer draws them).
fn student_batches(data: &Dataset, seed: u64, epoch: u64) -> Vec<Batch> {
    let spec = LoaderSpec { batch_size: 8, shuffle: true, seed, drop_last: false };
    let mut loader = Loader::from_feed(data.feed("train", true).unwrap(), spec, epoch);
    let batches: Vec<Batch> = loader.by_ref().collect();
    loader.finish().unwrap();
    batches
}

#[test]
fn records_are_the_students_crops_with_the_live_teachers_top_k() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let (data, tdir, t) = setup(tmp.path());
    let c = open(&tdir, &t, &data, 5);
    assert_eq!((c.header.epochs, c.header.samples, c.header.k), (2, 24, 2));
    assert!(c.header.crop_draw.contains("file feed"), "{}", c.header.crop_draw);
    let mut crops_per_epoch = vec![];
    for epoch in 0..2 {
        let mut crops = vec![None; 24];
        for b in student_batches(&data, 5, epoch as u64) {
            c.check_crops(epoch, &b.indices, &b.crops).unwrap();
            let x = Tensor::from_slice(&b.images).view([b.len() as i64, 1, 16, 16]);
            let live = Vec::<f32>::try_from(t.model.infer(&x).view(-1)).unwrap();
            for ((&i, &crop), row) in b.indices.iter().zip(&b.crops).zip(live.chunks_exact(3)) {
                let (recorded, top) = c.record(epoch, i as usize);
                assert_eq!(Some(recorded), CropRecord::of_box(crop), "epoch {epoch} sample {i}");
                crops[i as usize] = Some(crop);
                // The stored top-k is the live teacher's on this crop, rounded to f16 (within one
                // f16 step: the builder's batches differ, so float sums may round apart).
                let want = top_k(row, 2);
                assert_eq!(top.classes, want.classes, "epoch {epoch} sample {i}");
                for (got, live) in top.logits.iter().zip(&want.logits).chain([(&top.fill, &want.fill)]) {
                    let rounded = f16::from_f32(*live).to_f32();
                    let step = f16::from_f32(*live).to_f32().abs().max(1.0) * f16::EPSILON.to_f32();
                    assert!((got - rounded).abs() <= step, "{got} vs f16({live}) = {rounded}");
                }
            }
        }
        assert!(crops.iter().filter(|c| c.is_some()).count() >= 23, "one sample may wait for the next epoch");
        crops_per_epoch.push(crops);
    }
    assert_ne!(crops_per_epoch[0], crops_per_epoch[1], "each epoch draws new crops");

    // Another seed's loader draws other crops: they are refused, naming the cache and sample.
    let other = student_batches(&data, 6, 0);
    let e = format!("{:#}", c.check_crops(0, &other[0].indices, &other[0].crops).unwrap_err());
    assert!(
        e.contains(&c.path.display().to_string()) && e.contains("recorded the crop") && e.contains("rebuild"),
        "{e}"
    );
    // A run with that seed gets a cache of its own, whose records are its crops.
    let c6 = open(&tdir, &t, &data, 6);
    assert_ne!(c6.path, c.path);
    for b in &other {
        c6.check_crops(0, &b.indices, &b.crops).unwrap();
    }
    // A box one pixel off the record is refused as well.
    let moved = kdlab::data::transform::CropBox { y: other[0].crops[0].y + 1, ..other[0].crops[0] };
    assert!(c6.check_crops(0, &other[0].indices[..1], &[moved]).is_err());

    // A distillation whose loader draws other crops than the cache's (seed 6 against seed 5's
    // records) stops at its first batch with that error; with the cache's seed it runs.
    let student = |seed| TrainConfig { model: "mlp_16x1".into(), epochs: 2, batch_size: 8, seed, ..Default::default() };
    for (run, cache) in [c, c6].into_iter().enumerate() {
        let seed = 6;
        let teacher = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
        let method = methods::MethodSpec::default_of("kd").unwrap();
        let mut obj = Distill::new(teacher, &method, Some(Cached::TopK(cache))).unwrap();
        let out = tmp.path().join(format!("student-{run}"));
        let opts = RunOptions { quiet: true, ..RunOptions::new(&out, Device::Cpu, "distill") };
        let got = train(&student(seed), &data, &mut obj, &opts);
        if let Some(Cached::TopK(c)) = &obj.cache {
            if c.header.seed == seed {
                assert_eq!(got.unwrap().history.len(), 2);
            } else {
                let e = format!("{:#}", got.unwrap_err());
                assert!(e.contains("recorded the crop") && e.contains("epoch 1"), "{e}");
            }
        }
    }
}

#[test]
fn a_distillation_reads_a_streamed_top_k_cache_end_to_end() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (_, _, _) = setup(cwd);
    let kdlab =
        |args: &[&str]| common::kdlab().args(args).current_dir(cwd).env("KDLAB_LOADER_THREADS", "1").output().unwrap();
    let built =
        kdlab(&["cache", "build", "--run", "teacher", "--data", DATA, "--topk", "2", "--seed", "4", "--epochs", "2"]);
    assert!(built.status.success(), "{}", text(&built));
    assert!(text(&built).contains("2 epochs × 24 samples, top-2 of 3 classes"), "{}", text(&built));
    let run = ["distill", "--teacher", "teacher", "--student", "mlp_16x1", "--data", DATA];
    let quick = ["--epochs", "2", "--batch-size", "8", "--seed", "4", "--device", "cpu", "--quiet"];
    let o = kdlab(&[&run[..], &["--out", "s"], &quick, &["--teacher-cache", "topk:2"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("built the top-k"), "the cache built above is read, not rebuilt: {}", text(&o));
    let rec = common::read_json(&cwd.join("s/run.json"));
    let cache = &rec["extra"]["teacher_cache"];
    assert_eq!((cache["k"].as_u64(), cache["seed"].as_u64()), (Some(2), Some(4)), "{cache}");
    assert!(text(&built).contains(cache["file"].as_str().unwrap()), "the run read the cache built above");
    assert!(rec["final_test_acc"].as_f64().unwrap().is_finite());
    // The full-logit cache stays refused for continuous views, pointing to topk:K.
    let o = kdlab(&[&run[..], &["--out", "s2"], &quick, &["--teacher-cache"]].concat());
    assert!(
        !o.status.success() && text(&o).contains("continuous views") && text(&o).contains("topk:K"),
        "{}",
        text(&o)
    );
}
