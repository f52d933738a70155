//! kdlab: a knowledge-distillation laboratory on LibTorch (through tch).
//!
//! The crate is organised by stage of the data flow: `data` (readers, augmentation, loader) →
//! `models` (the zoo) → `train` (objectives, SGD, checkpoints, the training loop, distillation
//! glue, the teacher-logit cache) with `methods` (one file per distillation method) → `probe`
//! (dark-knowledge metrics over logits) → `study` (sweeps and their SQLite index) → `report`
//! (SVG charts, Markdown/HTML) → `bench` (throughput against PyTorch) → `cli`.
pub mod bench;
pub mod cli;
pub mod data;
pub mod methods;
pub mod models;
pub mod probe;
pub mod report;
pub mod study;
pub mod train;
pub mod util;

/// kdlab's version, recorded in every run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
