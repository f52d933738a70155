//! The teacher-logit cache: what it stores is what the teacher computes, and distilling from it
//! follows distilling from the live teacher up to f16 rounding.
use kdlab::data::augment::Augment;
use kdlab::methods;
use kdlab::train::cache::{self, LogitCache};
use kdlab::train::config::TrainConfig;
use kdlab::train::distill::{Cached, Distill, Teacher};
use kdlab::train::objective::CrossEntropy;
use kdlab::train::trainer::{train, RunOptions};
use tch::{Device, Tensor};

#[test]
fn cached_logits_equal_a_live_forward_and_distillation_agrees() {
    tch::set_num_threads(2);
    let data = kdlab::data::embedded::load().unwrap().head(384, 128);
    let tmp = tempfile::tempdir().unwrap();
    let tdir = tmp.path().join("teacher");
    let cfg =
        |m: &str, e: usize| TrainConfig { model: m.into(), epochs: e, batch_size: 64, seed: 1, ..Default::default() };
    train(
        &cfg("cnn_w2", 1),
        &data,
        &mut CrossEntropy,
        &RunOptions { quiet: true, ..RunOptions::new(&tdir, Device::Cpu, "train") },
    )
    .unwrap();
    let teacher = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
    let c = cache::open_or_build(&tdir, &teacher.model, &teacher.meta, &data, true, true).unwrap();
    assert_eq!(c.header.views, 50, "25 crop offsets × 2 flips at 28×28 with padding 2");
    // Every view of a few samples against the live teacher.
    let aug = Augment::new(&data.profile, true);
    let shape = data.shape();
    for &i in &[0u32, 17, 383] {
        for v in [0u32, 13, 24, 25, 49] {
            let mut x = vec![0f32; shape.numel()];
            aug.apply(data.train.image(i as usize), shape, aug.view(v as usize), &mut x);
            let live = teacher.model.infer(&Tensor::from_slice(&x).view([1, 1, 28, 28]));
            let cached = c.lookup(&[i], &[v]);
            let diff = (live - &cached).abs().max().double_value(&[]);
            let scale = cached.abs().max().double_value(&[]).max(1.0);
            assert!(diff <= scale * 1e-3, "sample {i} view {v}: differs by {diff}");
        }
    }
    // Opening again reuses the file; a different teacher gets its own file.
    let again = cache::open_or_build(&tdir, &teacher.model, &teacher.meta, &data, true, true).unwrap();
    assert_eq!(again.path, c.path);
    assert!(LogitCache::open(&c.path).is_ok());
    // Distilling with and without the cache: the same curve up to f16 effects; and twice from the
    // cache: the same numbers exactly.
    let mut curves = vec![];
    for use_cache in [false, true, true] {
        let t = Teacher::load(tdir.to_str().unwrap(), Device::Cpu).unwrap();
        let cache = use_cache.then(|| cache::open_or_build(&tdir, &t.model, &t.meta, &data, true, true).unwrap());
        let mut obj =
            Distill::new(t, &methods::MethodSpec::default_of("kd").unwrap(), cache.map(Cached::Logits)).unwrap();
        let out = tmp.path().join(format!("student-{use_cache}-{}", curves.len()));
        let r = train(
            &cfg("cnn_w1", 2),
            &data,
            &mut obj,
            &RunOptions { quiet: true, ..RunOptions::new(&out, Device::Cpu, "distill") },
        )
        .unwrap();
        curves.push(r.history);
    }
    let numbers = |h: &[kdlab::train::run::EpochMetrics]| {
        h.iter().map(|m| (m.train_loss, m.test_acc, m.terms.clone())).collect::<Vec<_>>()
    };
    assert_eq!(numbers(&curves[1]), numbers(&curves[2]), "the same cache, the same seed: identical runs");
    for (a, b) in curves[0].iter().zip(&curves[1]) {
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-2 * a.train_loss,
            "epoch {}: loss {} vs {}",
            a.epoch,
            a.train_loss,
            b.train_loss
        );
        assert!(
            (a.test_acc - b.test_acc).abs() <= 0.02,
            "epoch {}: accuracy {} vs {}",
            a.epoch,
            a.test_acc,
            b.test_acc
        );
    }
}
