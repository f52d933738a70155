//! Training, by concern: the engine (the loop, objectives, SGD, schedules, mixed precision,
//! evaluation), run directories (configs, records, checkpoints), teachers (sources, import,
//! caches), and the distillation glue that joins a teacher and a method into an objective.
//!
//! The modules are re-exported flat (`train::checkpoint`, `train::trainer`, …): the layers above
//! name what they use, not where it is filed.
pub mod distill;
pub mod engine;
pub mod runs;
pub mod takd;
pub mod teachers;

pub use engine::{amp, eval, model, objective, schedule, sgd, trainer};
pub use runs::{checkpoint, config, events, run};
pub use teachers::{cache, calibrate, import, pth, tap_store, teacher, topk_cache};
