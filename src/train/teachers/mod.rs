//! Serving a teacher: kdlab runs and TorchScript files (`teacher`), PyTorch checkpoints imported
//! as kdlab runs (`import`, reading `.pth` files with `pth`), and the two caches of its outputs
//! (`cache`: every view's logits; `topk_cache`: each epoch's crops with the top-k logits).
pub mod cache;
pub mod calibrate;
pub mod import;
pub mod pth;
pub mod teacher;
pub mod topk_cache;
