//! What the trainer minimises. An objective turns the student's logits for a batch into named loss
//! terms; the trainer sums them, logs each one, and backpropagates the sum. Plain training uses
//! cross-entropy; the distillation methods implement the same trait.
use crate::data::augment::Augment;
use crate::data::loader::Batch;
use crate::data::Shape;
use crate::models::Taps;
use anyhow::Result;
use tch::{nn, Tensor};

/// Everything an objective may need besides the student's logits.
pub struct StepInput<'a> {
    /// The normalised inputs (N, C, H, W) on the training device.
    pub images: &'a Tensor,
    /// Labels (N,) as int64 on the training device.
    pub labels: &'a Tensor,
    /// The host-side batch: sample indices and augmentation views.
    pub batch: &'a Batch,
    /// 0-based epoch, step within it, and steps per epoch.
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    /// The run's seed (a method's random draws are seeded from it, the epoch and the step).
    pub seed: u64,
    /// The student's taps that `Objective::student_taps` named (with gradient).
    pub taps: &'a Taps,
}

pub trait Objective {
    /// The method's name as recorded in run.json.
    fn name(&self) -> String;
    /// Prepares the objective for `student` before the first step: a method creates its
    /// trainable modules and state under `vars` (optimised and checkpointed with the student).
    /// `labels` holds each training sample's label (their number is a memory bank's size).
    fn setup(&mut self, _student: &crate::train::model::Model, _vars: nn::Path, _labels: &[u16]) -> Result<()> {
        Ok(())
    }
    /// The student taps the objective reads (the trainer records them in the forward pass).
    fn student_taps(&self) -> Vec<String> {
        vec![]
    }
    /// Named loss terms (each a scalar tensor); their sum is minimised.
    fn terms(&mut self, logits: &Tensor, input: &StepInput) -> Result<Vec<(String, Tensor)>>;
    /// Hyper-parameters and anything else that defines the objective, for run.json.
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "method": self.name() })
    }
    /// The view of every training sample in `epoch` when the objective prescribes them (a top-k
    /// teacher cache replays the crops it recorded); None: the loader draws them from the seed.
    fn replay_views(&self, _epoch: usize, _augment: &Augment, _shape: Shape) -> Result<Option<Vec<u32>>> {
        Ok(None)
    }
    /// Per-sample values of the step just computed (ISATS: each sample's τ2), named; the run's
    /// event file keeps a histogram of them per epoch.
    fn per_sample(&self) -> Option<(String, Vec<f64>)> {
        None
    }
    /// Per-epoch statistics worth keeping (e.g. ISATS's chosen temperatures); called once at the
    /// end of every epoch.
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        None
    }
}

/// The name of the task term, the cross-entropy with the labels that every method names `ce`;
/// every other term is distillation. DOT (`optimizer = "dot"`) gives the two their own momenta,
/// so a method that wants its task loss treated as such names it `ce`.
pub const TASK_TERM: &str = "ce";

/// Mean cross-entropy over the batch (defined with the methods, which use it too).
pub use crate::methods::common::cross_entropy;

/// Plain supervised training.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn name(&self) -> String {
        "ce".into()
    }
    fn terms(&mut self, logits: &Tensor, input: &StepInput) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![("ce".into(), cross_entropy(logits, input.labels))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        // logits [[1, 2, 3], [0, 0, 0]], labels [2, 1]:
        // −log softmax: row 0 → log(e¹+e²+e³) − 3 = 0.4076059644; row 1 → log 3 = 1.0986122887.
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0]).view([2, 3]);
        let labels = Tensor::from_slice(&[2i64, 1]);
        let got = cross_entropy(&logits, &labels).double_value(&[]);
        let want = (0.4076059644 + 1.0986122887) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
