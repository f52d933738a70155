//! The training engine: the loop shared by `train` and `distill`, what it minimises (objectives),
//! the optimiser with saveable state, learning-rate schedules, evaluation, and the model wrapper.
pub mod amp;
pub mod eval;
pub mod model;
pub mod objective;
pub mod schedule;
pub mod sgd;
pub mod trainer;
