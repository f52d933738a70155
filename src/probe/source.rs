//! Where logits come from: .npy files (read a block of rows at a time), or a teacher (a trained
//! run or a TorchScript file) evaluated batch by batch on a split (optionally on augmented views).
use crate::data::loader::{Feed, Loader, LoaderSpec};
use crate::data::npy::RowReader;
use crate::train::teacher::TeacherModel;
use anyhow::Result;
use std::path::Path;

pub trait LogitSource {
    fn name(&self) -> &str;
    fn classes(&self) -> usize;
    fn samples(&self) -> usize;
    fn params(&self) -> Option<u64> {
        None
    }
    /// The next `n` rows of logits, row-major (n × classes).
    fn next_rows(&mut self, n: usize) -> Result<Vec<f64>>;
}

/// Logits saved as an (N, C) float32 or float64 .npy file.
pub(crate) struct NpySource {
    name: String,
    reader: RowReader,
}

impl NpySource {
    pub fn open(path: &Path) -> Result<Self> {
        let name =
            path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        Ok(NpySource { name, reader: RowReader::open(path)? })
    }
}

impl LogitSource for NpySource {
    fn name(&self) -> &str {
        &self.name
    }
    fn classes(&self) -> usize {
        self.reader.cols
    }
    fn samples(&self) -> usize {
        self.reader.rows
    }
    fn next_rows(&mut self, n: usize) -> Result<Vec<f64>> {
        self.reader.read_rows(n)
    }
}

/// A teacher (a trained run or a TorchScript model) evaluated on a split in order, in inference mode; with augmentation, every
/// sample gets the view that the seed picks (the same view for every teacher).
pub(crate) struct RunSource {
    name: String,
    model: TeacherModel,
    loader: Loader,
    pending: Vec<f64>,
    samples: usize,
}

impl RunSource {
    /// A teacher run over a data set's feed (`Dataset::feed`), which may stream files.
    pub fn from_feed(name: String, model: impl Into<TeacherModel>, feed: Feed, seed: u64) -> Self {
        let samples = feed.len();
        let spec = LoaderSpec { batch_size: crate::train::eval::EVAL_BATCH, shuffle: false, seed, drop_last: false };
        RunSource { name, model: model.into(), loader: Loader::from_feed(feed, spec, 0), pending: vec![], samples }
    }
}

impl LogitSource for RunSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn classes(&self) -> usize {
        self.model.classes()
    }
    fn samples(&self) -> usize {
        self.samples
    }
    fn params(&self) -> Option<u64> {
        Some(self.model.params())
    }
    fn next_rows(&mut self, n: usize) -> Result<Vec<f64>> {
        let c = self.model.classes();
        while self.pending.len() < n * c {
            let Some(batch) = self.loader.next() else {
                self.loader.finish()?;
                break;
            };
            let (x, _) = crate::train::eval::to_tensors(&batch, self.model.input(), self.model.device());
            let logits = self.model.infer(&x).to_device(tch::Device::Cpu).to_kind(tch::Kind::Double).contiguous();
            self.pending.extend(Vec::<f64>::try_from(logits.view(-1))?);
        }
        let take = (n * c).min(self.pending.len());
        Ok(self.pending.drain(..take).collect())
    }
}
