//! Training: configuration, learning-rate schedules, the SGD optimiser with saveable state,
//! checkpoints, evaluation, and the training loop shared by `train` and `distill`.
pub mod cache;
pub mod calibrate;
pub mod checkpoint;
pub mod config;
pub mod distill;
pub mod eval;
pub mod import;
pub mod model;
pub mod objective;
pub mod pth;
pub mod run;
pub mod schedule;
pub mod sgd;
pub mod teacher;
pub mod topk_cache;
pub mod trainer;
