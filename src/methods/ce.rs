//! `ce`: cross-entropy only — the student trained without a teacher, the baseline every method is
//! compared with.
use super::common::cross_entropy;
use super::{LossInput, Method, MethodParams};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// ce takes no hyper-parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {}

impl MethodParams for Params {
    const NEEDS_TEACHER: bool = false;
    fn build(self) -> Result<Box<dyn Method>> {
        Ok(Box::new(Ce))
    }
}

/// The student alone: also the objective teachers are trained with.
pub const NAME: &str = "ce";

pub(crate) struct Ce;

impl Method for Ce {
    fn name(&self) -> &'static str {
        "ce"
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, tch::Tensor)> {
        vec![("ce".into(), cross_entropy(x.student, x.labels))]
    }
}
