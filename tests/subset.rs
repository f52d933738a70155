//! Class-balanced training subsets and validation splits (`train_subset`, `val_per_class`): the
//! counts, disjointness, determinism, the untouched test set, the run record, and the
//! identity of runs that do not use them.
use kdlab::data::{self, Dataset};
use kdlab::train::config::{self, TrainConfig};
use std::collections::HashSet;

fn images(d: &data::Split) -> Vec<&[u8]> {
    (0..d.len()).map(|i| d.image(i)).collect()
}

/// Position in the full training set of each image of `part` (the embedded set has no duplicate
/// images among its first 10,000, which the test checks).
fn positions(full: &Dataset, part: &data::Split) -> Vec<usize> {
    let index: std::collections::HashMap<&[u8], usize> =
        images(&full.train).into_iter().enumerate().map(|(i, img)| (img, i)).collect();
    assert_eq!(index.len(), full.train.len(), "the embedded training images are distinct");
    images(part).iter().map(|img| *index.get(img).expect("a carved image comes from the training set")).collect()
}

#[test]
fn subsets_are_class_balanced_disjoint_and_deterministic() {
    let full = data::embedded::load().unwrap();
    let d = full.carve(50, 10, 3).unwrap();
    assert_eq!(d.train.class_counts(full.classes), vec![50; full.classes]);
    let val = d.val.as_ref().expect("a validation split was asked for");
    assert_eq!(val.class_counts(full.classes), vec![10; full.classes]);
    assert_eq!(d.test.labels, full.test.labels, "the test set stays whole");
    assert_eq!(d.test.images, full.test.images);
    let (tp, vp) = (positions(&full, &d.train), positions(&full, val));
    let tset: HashSet<usize> = tp.iter().copied().collect();
    assert!(vp.iter().all(|i| !tset.contains(i)), "validation images are not training images");
    assert!(tp.windows(2).all(|w| w[0] < w[1]), "the subset keeps the original order");
    for (i, &p) in tp.iter().enumerate() {
        assert_eq!(d.train.labels[i], full.train.labels[p], "labels travel with their images");
    }
    // Same seed → same subset; another seed → another subset.
    let again = full.carve(50, 10, 3).unwrap();
    assert_eq!(again.train.images, d.train.images);
    assert_eq!(again.fingerprint(), d.fingerprint());
    let other = full.carve(50, 10, 4).unwrap();
    assert_ne!(other.train.images, d.train.images);
    assert_ne!(other.fingerprint(), d.fingerprint());
    // A subset is not the first images of each class.
    let first: Vec<usize> = (0..full.classes)
        .flat_map(|c| {
            full.train.labels.iter().enumerate().filter(move |(_, &y)| y as usize == c).map(|(i, _)| i).take(50)
        })
        .collect();
    assert_ne!(tp.iter().copied().collect::<HashSet<_>>(), first.into_iter().collect::<HashSet<_>>());
    // Validation only: every other image trains.
    let v_only = full.carve(0, 10, 3).unwrap();
    assert_eq!(v_only.train.len() + 10 * full.classes, full.train.len());
    // No carving: the data set as it was.
    assert_eq!(full.carve(0, 0, 9).unwrap().fingerprint(), full.fingerprint());
}

#[test]
fn asking_for_more_images_than_a_class_has_names_the_class() {
    let full = data::embedded::load().unwrap();
    let e = format!("{:#}", full.carve(995, 10, 0).unwrap_err());
    assert!(e.contains("class 0") && e.contains("1000 training images") && e.contains("train_subset = 995"), "{e}");
    assert!(full.split("val").is_err());
}

#[test]
fn runs_without_carving_keep_their_identity() {
    let cfg = TrainConfig { model: "mlp_32x1".into(), ..Default::default() };
    let id = cfg.identity();
    for key in ["train_subset", "val_per_class", "subset_seed"] {
        assert!(id.get(key).is_none(), "{key} at its default is not part of the identity");
    }
    let carved = TrainConfig { train_subset: 100, ..cfg.clone() }.identity();
    assert_eq!(carved["train_subset"], 100);
    assert_ne!(carved, id);
    // A record written before the keys existed matches a new one.
    let mut old = serde_json::to_value(&cfg).unwrap();
    old.as_object_mut().unwrap().retain(|k, _| !["train_subset", "val_per_class", "subset_seed"].contains(&k.as_str()));
    assert_eq!(config::identity_of(old), id);
}

#[test]
fn a_run_on_a_subset_records_it_and_reports_validation_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: "mlp_32x1".into(),
        epochs: 2,
        batch_size: 64,
        augment: false,
        train_subset: 30,
        val_per_class: 20,
        save_every: 0,
        ..Default::default()
    };
    let data = cfg.load_data().unwrap();
    assert_eq!(data.train.len(), 300);
    let opts = kdlab::train::trainer::RunOptions {
        quiet: true,
        ..kdlab::train::trainer::RunOptions::new(dir.path(), tch::Device::Cpu, "train")
    };
    kdlab::train::trainer::train(&cfg, &data, &mut kdlab::train::objective::CrossEntropy, &opts).unwrap();
    let rec = kdlab::train::run::read_record(dir.path()).unwrap().unwrap();
    assert_eq!(rec.config["train_subset"], 30);
    assert_eq!(rec.config["val_per_class"], 20);
    assert_eq!(rec.data.train_samples, 300);
    let v = rec.final_val_acc.expect("validation accuracy recorded");
    assert!((0.0..=1.0).contains(&v) && v > 0.1, "val acc {v} (a trained model beats chance)");
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("val_acc"), "{csv}");
}
