//! One batch of samples as the loaders hand it out (in-memory and file-backed alike).
use super::transform::CropBox;

/// One batch, ready to become tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// N×C×H×W normalised inputs.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Index of each sample in its split.
    pub indices: Vec<u32>,
    /// The augmentation view of each sample (see `Augment::view`); 0 for continuous views.
    pub views: Vec<u32>,
    /// The crop box of each sample in its source image, for continuous views (file feeds);
    /// empty for the discrete views.
    pub crops: Vec<CropBox>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}
