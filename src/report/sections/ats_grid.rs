//! Heat-maps of the grids the registry names (`MethodParams::GRID`: ATS's τ1 × τ2). The grid is
//! found from the runs' hyper-parameters, not from series labels: per method and teacher, the
//! student's plain runs (the method, the final teacher, not the grid's variant), whatever series
//! they are in, grouped by the two keys; a heat-map where there are at least two values of each.
use super::{Output, StudentView, ACCURACIES};
use crate::methods::{GridKeys, REGISTRY};
use crate::report::doc::Block;
use crate::report::results::{Stat, Student, StudyResults, Teacher};
use crate::util::svg::Heatmap;
use anyhow::Result;
use std::collections::BTreeSet;

/// One teacher's grid of one method for a student: the two keys' values in thousandths, and the runs.
pub struct AtsGrid<'a> {
    pub method: &'static str,
    pub keys: GridKeys,
    pub teacher: &'a Teacher,
    pub tau1: Vec<i64>,
    pub tau2: Vec<i64>,
    pub runs: Vec<&'a Student>,
}

/// A run's two grid values in thousandths, if it is a plain run of `method`.
fn grid_point(s: &Student, method: &str, keys: &GridKeys) -> Option<(i64, i64)> {
    let variant = keys.variant.is_some_and(|k| s.hyper.get(k).and_then(|c| c.as_bool()) == Some(true));
    if s.method != method || s.altered_teacher || variant {
        return None;
    }
    let milli = |k: &str| s.hyper.get(k)?.as_f64().filter(|v| v.is_finite()).map(|v| (v * 1000.0).round() as i64);
    Some((milli(keys.rows)?, milli(keys.cols)?))
}

impl AtsGrid<'_> {
    /// The runs of one cell (values in thousandths).
    pub fn cell(&self, row: i64, col: i64) -> Vec<&Student> {
        self.runs.iter().copied().filter(|s| grid_point(s, self.method, &self.keys) == Some((row, col))).collect()
    }
}

/// The student's grids, per method with one and per teacher that has one, in registry and
/// teacher order.
pub fn ats_grids<'a>(v: &StudentView<'a>) -> Vec<AtsGrid<'a>> {
    let mut grids = vec![];
    for (method, keys) in REGISTRY.iter().filter_map(|e| e.grid.map(|g| (e.name, g))) {
        for t in &v.tnames {
            let runs: Vec<&Student> = v
                .by_series
                .values()
                .flatten()
                .copied()
                .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()) && grid_point(s, method, &keys).is_some())
                .collect();
            let points: Vec<(i64, i64)> = runs.iter().filter_map(|s| grid_point(s, method, &keys)).collect();
            let rows: BTreeSet<i64> = points.iter().map(|p| p.0).collect();
            let cols: BTreeSet<i64> = points.iter().map(|p| p.1).collect();
            if rows.len() >= 2 && cols.len() >= 2 {
                grids.push(AtsGrid {
                    method,
                    keys,
                    teacher: t,
                    tau1: rows.into_iter().collect(),
                    tau2: cols.into_iter().collect(),
                    runs,
                });
            }
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
        let (m, k) = (g.method, &g.keys);
        let upper = m.to_uppercase();
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
                title: format!("{upper} {sm} ← {t}: {label} accuracy (%)"),
                rows: g.tau1.iter().map(|a| format!("{}={}", k.row_symbol, *a as f64 / 1000.0)).collect(),
                cols: g.tau2.iter().map(|b| format!("{}={}", k.col_symbol, *b as f64 / 1000.0)).collect(),
                values,
                annotate: true,
            };
            let caption = format!(
                "{upper} grid, student {sm} from teacher {t}: {label}-epoch accuracy, mean over seeds (empty cells: {}).",
                k.empty
            );
            out.figure(&format!("{m}_grid_{sm}_{t}_{label}.svg"), hm.to_svg(), &caption)?;
        }
    }
    Ok(())
}
