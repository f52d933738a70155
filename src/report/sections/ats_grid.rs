//! ATS τ1 × τ2 heat-maps. The grid is found from the runs' hyper-parameters, not from series
//! labels: per teacher, the student's plain ATS runs (method `ats`, the final teacher, no
//! `center_logits`), whatever series they are in, grouped by (τ1, τ2); a heat-map where there are
//! at least two values of each.
use super::{Output, StudentView, ACCURACIES};
use crate::report::doc::Block;
use crate::report::results::{Stat, Student, StudyResults, Teacher};
use crate::util::svg::Heatmap;
use anyhow::Result;
use std::collections::BTreeSet;

/// One teacher's ATS grid for a student: the τ values in thousandths, and the runs.
pub struct AtsGrid<'a> {
    pub teacher: &'a Teacher,
    pub tau1: Vec<i64>,
    pub tau2: Vec<i64>,
    pub runs: Vec<&'a Student>,
}

/// A run's τ1 and τ2 in thousandths, if it is a plain ATS run.
fn plain_ats_taus(s: &Student) -> Option<(i64, i64)> {
    if s.method != "ats" || s.altered_teacher || s.hyper.get("center_logits").and_then(|c| c.as_bool()) == Some(true) {
        return None;
    }
    let milli = |k: &str| s.hyper.get(k)?.as_f64().filter(|v| v.is_finite()).map(|v| (v * 1000.0).round() as i64);
    Some((milli("tau1")?, milli("tau2")?))
}

impl AtsGrid<'_> {
    /// The runs of one cell (τ values in thousandths).
    pub fn cell(&self, tau1: i64, tau2: i64) -> Vec<&Student> {
        self.runs.iter().copied().filter(|s| plain_ats_taus(s) == Some((tau1, tau2))).collect()
    }
}

/// The student's ATS grids, one per teacher that has one, in the teachers' order.
pub fn ats_grids<'a>(v: &StudentView<'a>) -> Vec<AtsGrid<'a>> {
    let mut grids = vec![];
    for t in &v.tnames {
        let runs: Vec<&Student> = v
            .by_series
            .values()
            .flatten()
            .copied()
            .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()) && plain_ats_taus(s).is_some())
            .collect();
        let taus: Vec<(i64, i64)> = runs.iter().filter_map(|s| plain_ats_taus(s)).collect();
        let tau1: BTreeSet<i64> = taus.iter().map(|p| p.0).collect();
        let tau2: BTreeSet<i64> = taus.iter().map(|p| p.1).collect();
        if tau1.len() >= 2 && tau2.len() >= 2 {
            grids.push(AtsGrid {
                teacher: t,
                tau1: tau1.into_iter().collect(),
                tau2: tau2.into_iter().collect(),
                runs,
            });
        }
    }
    grids
}

pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    let sm = &v.model;
    let grids = ats_grids(v);
    if !grids.is_empty() {
        out.push(Block::Heading(3, "ATS τ1 × τ2 grids".into()));
    }
    for g in grids {
        let t = &g.teacher.name;
        for (label, pick) in ACCURACIES {
            let values = g
                .tau1
                .iter()
                .flat_map(|a| g.tau2.iter().map(move |b| (*a, *b)))
                .map(|(a, b)| {
                    let v: Vec<f64> = g.cell(a, b).iter().map(|s| 100.0 * pick(s)).collect();
                    if v.is_empty() {
                        f64::NAN
                    } else {
                        Stat::of(&v).mean
                    }
                })
                .collect();
            let hm = Heatmap {
                title: format!("ATS {sm} ← {t}: {label} accuracy (%)"),
                rows: g.tau1.iter().map(|a| format!("τ1={}", *a as f64 / 1000.0)).collect(),
                cols: g.tau2.iter().map(|b| format!("τ2={}", *b as f64 / 1000.0)).collect(),
                values,
                annotate: true,
            };
            out.figure(&format!("ats_grid_{sm}_{t}_{label}.svg"), hm.to_svg(), &format!("ATS grid, student {sm} from teacher {t}: {label}-epoch accuracy, mean over seeds (empty cells: τ1 < τ2 is not ATS)."))?;
        }
    }
    Ok(())
}
