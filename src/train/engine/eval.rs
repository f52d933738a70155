//! Inference over a whole split: accuracy (overall and per class), mean loss, and logits.
use crate::data::augment::Augment;
use crate::data::loader::{Feed, Loader, LoaderSpec};
use crate::data::{Dataset, Split};
use crate::train::model::{Infer, Model};
use crate::util::device::upload;
use anyhow::Result;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Batch size for inference (no gradients, so larger batches fit easily).
pub(crate) const EVAL_BATCH: usize = 500;

#[derive(Clone, Debug)]
pub struct EvalResult {
    pub loss: f64,
    pub acc: f64,
    pub correct_per_class: Vec<usize>,
    pub total_per_class: Vec<usize>,
}

impl EvalResult {
    pub(crate) fn class_acc(&self) -> Vec<f64> {
        self.correct_per_class
            .iter()
            .zip(&self.total_per_class)
            .map(|(&c, &t)| if t == 0 { f64::NAN } else { c as f64 / t as f64 })
            .collect()
    }
}

/// The un-augmented, normalised inputs of a data set.
pub fn plain_augment(data: &Dataset) -> Arc<Augment> {
    Arc::new(Augment::new(&data.profile, false))
}

/// Converts a host batch to device tensors: images (N, C, H, W) and labels (N,).
pub(crate) fn to_tensors(
    batch: &crate::data::loader::Batch,
    shape: crate::data::Shape,
    device: tch::Device,
) -> (Tensor, Tensor) {
    let n = batch.len() as i64;
    let x = Tensor::from_slice(&batch.images).view([n, shape.c as i64, shape.h as i64, shape.w as i64]);
    let y = Tensor::from_slice(&batch.labels);
    (upload(&x, device), upload(&y, device))
}

/// Runs the model in inference mode over `split` in order, handing each batch's logits (on the
/// CPU, float32) and labels to `visit`.
pub fn for_each_batch(
    model: &impl Infer,
    split: Arc<Split>,
    augment: Arc<Augment>,
    visit: impl FnMut(&Tensor, &[i64]),
) {
    for_each_feed_batch(model, Feed::Memory { split, augment }, visit).expect("a decoded split has no files to fail")
}

/// As [`for_each_batch`], from either kind of feed; an image folder's file that cannot be
/// decoded is an error naming it.
pub(crate) fn for_each_feed_batch(
    model: &impl Infer,
    feed: Feed,
    mut visit: impl FnMut(&Tensor, &[i64]),
) -> Result<()> {
    let spec = LoaderSpec { batch_size: EVAL_BATCH, shuffle: false, seed: 0, drop_last: false };
    let shape = feed.shape();
    let mut loader = Loader::from_feed(feed, spec, 0);
    for batch in loader.by_ref() {
        let (x, _) = to_tensors(&batch, shape, model.device());
        let logits = model.infer(&x).to_device(tch::Device::Cpu).to_kind(Kind::Float);
        visit(&logits, &batch.labels);
    }
    loader.finish()
}

/// Accuracy, per-class accuracy and mean cross-entropy of `model` on `split`.
pub fn evaluate(model: &Model, split: Arc<Split>, augment: Arc<Augment>) -> EvalResult {
    evaluate_feed(model, Feed::Memory { split, augment }).expect("a decoded split has no files to fail")
}

/// As [`evaluate`], from either kind of feed.
pub(crate) fn evaluate_feed(model: &Model, feed: Feed) -> Result<EvalResult> {
    let classes = model.classes;
    let mut r =
        EvalResult { loss: 0.0, acc: 0.0, correct_per_class: vec![0; classes], total_per_class: vec![0; classes] };
    let n = feed.len();
    for_each_feed_batch(model, feed, |logits, labels| {
        let y = Tensor::from_slice(labels);
        r.loss += crate::train::objective::cross_entropy(logits, &y).double_value(&[]) * labels.len() as f64;
        let pred: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).expect("argmax to vec");
        for (&p, &t) in pred.iter().zip(labels) {
            r.total_per_class[t as usize] += 1;
            if p == t {
                r.correct_per_class[t as usize] += 1;
            }
        }
    })?;
    // Samples left out of their batches (bad=skip) count neither as right nor as wrong.
    let n = r.total_per_class.iter().sum::<usize>().min(n);
    let correct: usize = r.correct_per_class.iter().sum();
    r.loss /= n.max(1) as f64;
    r.acc = correct as f64 / n.max(1) as f64;
    Ok(r)
}

/// The (N × classes) float32 logits of `split`, row-major in split order.
pub fn logits(model: &impl Infer, split: Arc<Split>, augment: Arc<Augment>) -> Vec<f32> {
    logits_feed(model, Feed::Memory { split, augment }).expect("a decoded split has no files to fail")
}

/// As [`logits`], from either kind of feed.
pub(crate) fn logits_feed(model: &impl Infer, feed: Feed) -> Result<Vec<f32>> {
    let mut out = vec![];
    for_each_feed_batch(model, feed, |l, _| {
        out.extend(Vec::<f32>::try_from(l.contiguous().view(-1)).expect("logits to vec"));
    })?;
    Ok(out)
}
