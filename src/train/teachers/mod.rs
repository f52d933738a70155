//! Serving a teacher: kdlab runs and TorchScript files (`teacher`), PyTorch checkpoints imported
//! as kdlab runs (`import`, reading `.pth` files with `pth`), and the two caches of its outputs
//! (`cache`: every view's logits; `topk_cache`: each epoch's crops with the top-k logits), and a
//! run's in-memory store of its taps (`tap_store`) for the methods that read features.
pub mod cache;
pub mod calibrate;
pub mod import;
pub mod pth;
pub mod tap_store;
pub mod teacher;
pub mod topk_cache;
