//! The batch loader: shuffles, augments and normalises on a background thread, so the training
//! loop never waits on data. Every random choice comes from the run's seed and the epoch number,
//! so the batches of an epoch are the same however often it is run (this is what makes a resumed
//! run identical to an uninterrupted one).
//!
//! A loader draws from a [`Feed`]: a decoded split with the discrete views of [`Augment`], or an
//! image folder's files under the ImageNet recipe ([`FileFeed`]), decoded and transformed per
//! batch on a pool of threads.
use super::augment::Augment;
pub use super::batch::Batch;
use super::stream::FileFeed;
use super::{Shape, Split};
use crate::util::rng::{stream, Rng};
use anyhow::Result;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where a loader's samples come from.
#[derive(Clone, Debug)]
pub enum Feed {
    /// Decoded images in memory, each sample one of the augmentation's discrete views.
    Memory { split: Arc<Split>, augment: Arc<Augment> },
    /// Image files of any size, each sample a continuous view (random-resized crop, or resize and
    /// centre crop).
    Files(Arc<FileFeed>),
}

impl Feed {
    pub fn len(&self) -> usize {
        match self {
            Feed::Memory { split, .. } => split.len(),
            Feed::Files(f) => f.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The shape of one network input.
    pub fn shape(&self) -> Shape {
        match self {
            Feed::Memory { split, .. } => split.shape,
            Feed::Files(f) => f.shape(),
        }
    }
    /// The label of every sample, in split order.
    pub fn labels(&self) -> Vec<u16> {
        match self {
            Feed::Memory { split, .. } => split.labels.clone(),
            Feed::Files(f) => f.images.labels.clone(),
        }
    }
}

/// Batches a file-fed loader keeps ready: `$KDLAB_LOADER_PREFETCH`, default 2.
fn prefetch() -> usize {
    std::env::var("KDLAB_LOADER_PREFETCH").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2usize).max(1)
}

#[derive(Clone, Copy, Debug)]
pub struct LoaderSpec {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Drop a last batch smaller than `batch_size`. Regardless of this, a last batch of a single
    /// sample is dropped when training, since BatchNorm cannot normalise one sample.
    pub drop_last: bool,
}

/// The order of samples in an epoch and the view each one gets.
pub fn epoch_plan(n: usize, spec: &LoaderSpec, augment: &Augment, epoch: u64) -> (Vec<u32>, Vec<u32>) {
    let order = epoch_order(n, spec, epoch);
    let views = if augment.view_count() > 1 {
        let mut rng = Rng::for_stream(spec.seed, stream::AUGMENT, epoch);
        (0..n).map(|_| rng.below(augment.view_count() as u64) as u32).collect()
    } else {
        vec![augment.view_id(augment.identity()) as u32; n]
    };
    (order, views)
}

/// The order of samples in an epoch.
pub(crate) fn epoch_order(n: usize, spec: &LoaderSpec, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if spec.shuffle {
        Rng::for_stream(spec.seed, stream::SHUFFLE, epoch).shuffle(&mut order);
    }
    order
}

/// Number of batches an epoch yields.
pub(crate) fn batch_count(n: usize, spec: &LoaderSpec) -> usize {
    let full = n / spec.batch_size;
    let rest = n % spec.batch_size;
    full + usize::from(rest > 0 && !spec.drop_last && !(rest == 1 && spec.shuffle))
}

/// An epoch of batches, produced by a background thread.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    /// Why the producer stopped early (an image that cannot be decoded): see [`Loader::finish`].
    error: Option<anyhow::Error>,
}

impl Loader {
    /// Starts producing the batches of `epoch`. With `spec.shuffle` the loader is in training
    /// mode (shuffled, and a one-sample remainder dropped).
    pub fn new(split: Arc<Split>, augment: Arc<Augment>, spec: LoaderSpec, epoch: u64) -> Loader {
        Loader::from_feed(Feed::Memory { split, augment }, spec, epoch)
    }

    /// As `new`, but sample i gets the view `views[i]` (recorded crops replayed, as from a top-k
    /// teacher cache) instead of one drawn from the seed; the order is still the seed's.
    pub fn replay(split: Arc<Split>, augment: Arc<Augment>, spec: LoaderSpec, epoch: u64, views: Vec<u32>) -> Loader {
        assert_eq!(views.len(), split.len(), "one replayed view per sample");
        Loader::start(Feed::Memory { split, augment }, spec, epoch, Some(views))
    }

    /// As [`Loader::new`], from either kind of feed.
    pub fn from_feed(feed: Feed, spec: LoaderSpec, epoch: u64) -> Loader {
        Loader::start(feed, spec, epoch, None)
    }

    /// The producer thread of an epoch; `replay` (decoded feeds only) overrides the drawn views.
    fn start(feed: Feed, spec: LoaderSpec, epoch: u64, replay: Option<Vec<u32>>) -> Loader {
        let batches = batch_count(feed.len(), &spec);
        let capacity = if matches!(feed, Feed::Memory { .. }) { 3 } else { prefetch() };
        let (tx, rx) = sync_channel::<Result<Batch>>(capacity);
        let handle = std::thread::Builder::new()
            .name("kdlab-loader".into())
            .spawn(move || match feed {
                Feed::Memory { split, augment } => memory_batches(&split, &augment, spec, epoch, batches, &tx, replay),
                Feed::Files(files) => file_batches(&files, spec, epoch, batches, &tx),
            })
            .expect("spawning the loader thread");
        Loader { rx, handle: Some(handle), remaining: batches, error: None }
    }

    pub fn batches(&self) -> usize {
        self.remaining
    }

    /// After the last batch: the error that ended the epoch early, if any (the iterator then
    /// stopped before `batches()`).
    pub fn finish(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The producer of a decoded split: each sample's discrete view (drawn from the seed, or
/// `replay`ed), normalised.
fn memory_batches(
    split: &Split,
    augment: &Augment,
    spec: LoaderSpec,
    epoch: u64,
    batches: usize,
    tx: &SyncSender<Result<Batch>>,
    replay: Option<Vec<u32>>,
) {
    let (order, drawn) = epoch_plan(split.len(), &spec, augment, epoch);
    let views = replay.unwrap_or(drawn);
    let numel = split.shape.numel();
    for b in 0..batches {
        let lo = b * spec.batch_size;
        let hi = (lo + spec.batch_size).min(order.len());
        let idx = &order[lo..hi];
        let mut images = vec![0f32; idx.len() * numel];
        for (k, &i) in idx.iter().enumerate() {
            let v = augment.view(views[i as usize] as usize);
            augment.apply(split.image(i as usize), split.shape, v, &mut images[k * numel..(k + 1) * numel]);
        }
        let batch = Batch {
            images,
            labels: idx.iter().map(|&i| split.labels[i as usize] as i64).collect(),
            indices: idx.to_vec(),
            views: idx.iter().map(|&i| views[i as usize]).collect(),
            crops: vec![],
        };
        if tx.send(Ok(batch)).is_err() {
            return; // the consumer stopped early
        }
    }
}

/// The producer of a file feed: each batch decoded and transformed on the feed's pool.
fn file_batches(feed: &FileFeed, spec: LoaderSpec, epoch: u64, batches: usize, tx: &SyncSender<Result<Batch>>) {
    let order = epoch_order(feed.len(), &spec, epoch);
    for b in 0..batches {
        let lo = b * spec.batch_size;
        let hi = (lo + spec.batch_size).min(order.len());
        let batch = feed.batch(&order[lo..hi], spec.seed, epoch);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(b)) => {
                self.remaining -= 1;
                Some(b)
            }
            Ok(Err(e)) => {
                self.error = Some(e);
                self.remaining = 0;
                None
            }
            Err(_) => {
                // The producer ended without sending everything: it panicked. Surface that.
                if let Some(h) = self.handle.take() {
                    if let Err(p) = h.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                None
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails) before waiting for it.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Profile, Shape};

    fn split(n: usize) -> Arc<Split> {
        let shape = Shape { c: 1, h: 4, w: 4 };
        Arc::new(Split {
            images: (0..n * 16).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 3) as u16).collect(),
            shape,
        })
    }

    fn aug(on: bool) -> Arc<Augment> {
        Arc::new(Augment::new(&Profile { mean: vec![0.5], std: vec![0.25], pad: 1, flip: true }, on))
    }

    fn collect(spec: LoaderSpec, epoch: u64) -> Vec<Batch> {
        Loader::new(split(50), aug(true), spec, epoch).collect()
    }

    #[test]
    fn same_seed_and_epoch_give_identical_batches() {
        let spec = LoaderSpec { batch_size: 8, shuffle: true, seed: 5, drop_last: false };
        let a = collect(spec, 3);
        let b = collect(spec, 3);
        assert_eq!(a.len(), 7);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.images, y.images);
            assert_eq!(x.indices, y.indices);
            assert_eq!(x.views, y.views);
        }
        let c = collect(spec, 4);
        assert_ne!(a[0].indices, c[0].indices, "a new epoch reshuffles");
        let d = collect(LoaderSpec { seed: 6, ..spec }, 3);
        assert_ne!(a[0].indices, d[0].indices, "a new seed reshuffles");
    }

    #[test]
    fn an_epoch_covers_every_sample_once_with_matching_labels() {
        let spec = LoaderSpec { batch_size: 16, shuffle: true, seed: 1, drop_last: false };
        let batches = collect(spec, 0);
        let mut seen: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        for b in &batches {
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(b.labels[k], (i % 3) as i64);
            }
        }
    }

    #[test]
    fn evaluation_order_is_sequential_and_unaugmented() {
        let spec = LoaderSpec { batch_size: 20, shuffle: false, seed: 1, drop_last: false };
        let batches: Vec<Batch> = Loader::new(split(50), aug(false), spec, 0).collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![20, 20, 10]);
        assert_eq!(batches[0].indices, (0..20).collect::<Vec<_>>());
        // Identity view: the first pixel is (0/255 - 0.5)/0.25.
        assert!((batches[0].images[0] - (-2.0)).abs() < 1e-6);
    }

    #[test]
    fn a_single_sample_remainder_is_dropped_in_training() {
        let spec = LoaderSpec { batch_size: 7, shuffle: true, seed: 1, drop_last: false };
        assert_eq!(batch_count(50, &spec), 7); // 7×7 = 49, the 50th sample waits for next epoch
        assert_eq!(batch_count(50, &LoaderSpec { shuffle: false, ..spec }), 8);
        assert_eq!(batch_count(50, &LoaderSpec { drop_last: true, ..spec }), 7);
        let early: Vec<Batch> = Loader::new(split(50), aug(true), spec, 0).take(2).collect();
        assert_eq!(early.len(), 2); // dropping the loader early must not hang
    }
}
