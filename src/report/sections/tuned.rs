//! Hyper-parameters tuned per teacher on the validation split: which setting each method gets.
use super::{Output, StudentView};
use crate::report::doc::Block;
use crate::report::results::{Stat, Student, StudyResults, Teacher};
use anyhow::Result;
use std::collections::BTreeMap;

/// Per teacher, the chosen setting: teacher → (series, mean final validation accuracy).
pub(crate) type Choice = BTreeMap<String, (String, f64)>;

/// Per method with several settings (series) for the same teachers, the setting whose runs have
/// the highest mean final validation accuracy, per teacher: method → teacher → (series, val acc).
/// ESKD, TAKD and relabelled series are not candidates (they change the teacher, not a setting).
pub(crate) fn tuned_on_validation(series: &[(String, Vec<&Student>)], teachers: &[&Teacher]) -> Vec<(String, Choice)> {
    let mut by_method: BTreeMap<String, Vec<(&String, &Vec<&Student>)>> = BTreeMap::new();
    for (name, runs) in series {
        // A fit level or a calibrated teacher changes the teacher too (the fit section tunes those).
        let altered = ["(ESKD", "(TAKD", "(fit ", "(calibrated)"].iter().any(|m| name.contains(m));
        let tunable = !altered && runs.iter().all(|s| s.val_acc.is_some());
        if let (true, Some(first)) = (tunable, runs.first()) {
            by_method.entry(first.method.clone()).or_default().push((name, runs));
        }
    }
    by_method
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(m, candidates)| {
            let mut choice = BTreeMap::new();
            for t in teachers {
                let best = candidates
                    .iter()
                    .filter_map(|(name, runs)| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter(|s| s.teacher.as_deref() == Some(t.name.as_str()))
                            .filter_map(|s| s.val_acc)
                            .collect();
                        (!v.is_empty()).then(|| ((*name).clone(), Stat::of(&v).mean))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                if let Some(b) = best {
                    choice.insert(t.name.clone(), b);
                }
            }
            (m, choice)
        })
        .collect()
}

/// The table of the settings chosen on validation accuracy.
pub fn write(_: &StudyResults, v: &StudentView, out: &mut Output) -> Result<()> {
    if v.tuned.is_empty() {
        return Ok(());
    }
    out.push(Block::Heading(3, "Hyper-parameters tuned on validation".into()));
    out.push(Block::Para(format!("Hyper-parameters tuned per teacher: for each method with several settings, the setting with the highest mean final **validation** accuracy (images held out of the training set, never the test set) for each teacher; its test accuracy is drawn as the curve '<method> (tuned on val)'. Student `{}`, chosen setting (mean validation accuracy in %):", v.model)));
    out.push(Block::Table(
        std::iter::once("method".to_string()).chain(v.tnames.iter().map(|t| t.name.clone())).collect(),
        v.tuned
            .iter()
            .map(|(m, choice)| {
                std::iter::once(format!("{m} (tuned on val)"))
                    .chain(v.tnames.iter().map(|t| {
                        choice.get(&t.name).map_or("-".into(), |(series, val)| format!("{series} ({:.2})", 100.0 * val))
                    }))
                    .collect()
            })
            .collect(),
    ));
    Ok(())
}
