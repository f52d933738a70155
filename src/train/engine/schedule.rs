//! Learning-rate schedules by epoch, with an optional linear warm-up. The rate is recomputed at
//! every step from the fractional epoch, so cosine decay and warm-up are smooth.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Multiply by `gamma` at each milestone epoch (the CIFAR recipe: ×0.1 at 150, 180, 210 of 240).
    Step,
    /// Cosine decay from the base rate to 0 over the run.
    Cosine,
    /// No decay.
    Constant,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LrSchedule {
    pub base: f64,
    pub kind: Schedule,
    /// Epoch counts after which the rate drops (0-based epoch index ≥ milestone ⇒ dropped).
    pub milestones: Vec<usize>,
    pub gamma: f64,
    pub warmup_epochs: usize,
    pub epochs: usize,
}

impl LrSchedule {
    /// Milestones used when none are given: 62.5%, 75% and 87.5% of the run, the proportions of
    /// the 150/180/210-of-240 CIFAR recipe.
    pub(crate) fn default_milestones(epochs: usize) -> Vec<usize> {
        let mut m: Vec<usize> = [0.625, 0.75, 0.875].iter().map(|f| (f * epochs as f64).round() as usize).collect();
        m.retain(|&e| e > 0 && e < epochs);
        m.dedup();
        m
    }

    /// The rate for step `step` (0-based) of `steps` in 0-based epoch `epoch`.
    pub fn lr(&self, epoch: usize, step: usize, steps: usize) -> f64 {
        let t = epoch as f64 + step as f64 / steps.max(1) as f64;
        let decayed = match self.kind {
            Schedule::Step => {
                self.base * self.gamma.powi(self.milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            Schedule::Cosine => 0.5 * self.base * (1.0 + (std::f64::consts::PI * t / self.epochs as f64).cos()),
            Schedule::Constant => self.base,
        };
        if (t as usize) < self.warmup_epochs {
            // Reaches the full rate at the end of the warm-up; never zero on the first step.
            let done = t + 1.0 / steps.max(1) as f64;
            decayed * (done / self.warmup_epochs as f64).min(1.0)
        } else {
            decayed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Schedule, warmup: usize) -> LrSchedule {
        LrSchedule { base: 0.1, kind, milestones: vec![150, 180, 210], gamma: 0.1, warmup_epochs: warmup, epochs: 240 }
    }

    #[test]
    fn step_schedule_drops_at_milestones() {
        let s = sched(Schedule::Step, 0);
        assert_eq!(s.lr(0, 0, 10), 0.1);
        assert_eq!(s.lr(149, 9, 10), 0.1);
        assert!((s.lr(150, 0, 10) - 0.01).abs() < 1e-12);
        assert!((s.lr(239, 0, 10) - 1e-4).abs() < 1e-12);
        assert_eq!(LrSchedule::default_milestones(240), vec![150, 180, 210]);
        assert_eq!(LrSchedule::default_milestones(15), vec![9, 11, 13]);
    }

    #[test]
    fn cosine_and_warmup() {
        let s = sched(Schedule::Cosine, 0);
        assert!((s.lr(120, 0, 10) - 0.05).abs() < 1e-12);
        assert!(s.lr(239, 9, 10) < 1e-5);
        let w = sched(Schedule::Step, 5);
        assert!((w.lr(0, 0, 10) - 0.1 * 0.1 / 5.0).abs() < 1e-12);
        assert!((w.lr(4, 9, 10) - 0.1).abs() < 1e-12);
        assert_eq!(w.lr(5, 0, 10), 0.1);
    }
}
