//! Run directories: a run's configuration (`TrainConfig`), its record (`run.json`, `metrics.csv`)
//! and its checkpoints.
pub mod checkpoint;
pub mod config;
pub mod events;
pub mod run;
