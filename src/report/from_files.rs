//! A study's results read back from a report directory, for studies whose runs are gone (the
//! committed reports in `docs/` keep their report, not their study): `results.csv` (every run's
//! accuracies), `timing.csv` (every planned run's state), the probes' JSON files, and from
//! `report.md` the study file, the kdlab version and the ATS-family target statistics (which no
//! CSV holds); without the probes' JSON files, the probe numbers `teachers.csv` summarises. `kdlab report --from-report DIR` renders such results with the current code.
//!
//! Every file here may be hostile: a malformed line is an error naming the file and line.
use super::results::{RunState, Student, StudyResults, Teacher, PROBES};
use crate::probe::{ProbeReport, TauReport, TeacherReport};
use crate::study::store::Status;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The fields of one CSV line (double quotes group a field; `""` inside is a quote).
fn fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (vec![], String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A CSV file's rows as maps from its header's names; every row must have the header's width
/// and the header must hold `needed`.
pub fn read_csv(path: &Path, needed: &[&str]) -> Result<Vec<BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(&text, path, needed)
}

/// [`read_csv`] of a file's text.
fn parse_csv(text: &str, path: &Path, needed: &[&str]) -> Result<Vec<BTreeMap<String, String>>> {
    let mut lines = text.lines();
    let header = fields(lines.next().with_context(|| format!("{} is empty", path.display()))?);
    if let Some(k) = needed.iter().find(|k| !header.iter().any(|h| h == *k)) {
        bail!("{}: no column '{k}' in its header (is it a kdlab report's CSV?)", path.display());
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let f = fields(l);
            if f.len() != header.len() {
                bail!("{} line {}: {} fields, the header has {}", path.display(), i + 2, f.len(), header.len());
            }
            Ok(header.iter().cloned().zip(f).collect())
        })
        .collect()
}

/// A column's value parsed, or an error naming the file, line and column.
fn get<T: std::str::FromStr>(row: &BTreeMap<String, String>, k: &str, path: &Path, line: usize) -> Result<T> {
    row[k].parse().map_err(|_| anyhow::anyhow!("{} line {line}: '{k}' is not valid: {:?}", path.display(), row[k]))
}

/// An optional column: empty is None.
fn opt<T: std::str::FromStr>(row: &BTreeMap<String, String>, k: &str, path: &Path, line: usize) -> Result<Option<T>> {
    match row.get(k).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(_) => get(row, k, path, line).map(Some),
    }
}

/// The study file and the kdlab version, from the report's "Reproduce" section.
fn reproduce(md: &str, path: &Path) -> Result<(String, String)> {
    let at = md.find("\n## Reproduce\n").with_context(|| format!("{}: no '## Reproduce' section", path.display()))?;
    let rest = &md[at..];
    let version = rest
        .lines()
        .find_map(|l| l.strip_prefix("kdlab ").and_then(|v| v.split(';').next()))
        .with_context(|| format!("{}: the Reproduce section names no kdlab version", path.display()))?;
    let start =
        rest.find("\n```\n").with_context(|| format!("{}: the Reproduce section has no study file", path.display()))?
            + 5;
    let end =
        rest[start..].find("\n```\n").with_context(|| format!("{}: the study file is not closed", path.display()))?;
    // The report writes the study file trimmed at its end, with one newline.
    Ok((format!("{}\n", &rest[start..start + end]), version.to_string()))
}

/// The ATS-family target table of `report.md`, per (series, teacher): the statistics as the
/// runs' `final_extra` holds them (shares as fractions), so the section renders them again.
fn ats_targets(md: &str, path: &Path) -> Result<BTreeMap<(String, String), serde_json::Value>> {
    let mut out = BTreeMap::new();
    let Some(at) = md.find("| series | teacher | teacher wrong % |") else { return Ok(out) };
    // By the header's names: older reports have fewer columns.
    let names = [
        ("teacher wrong %", "ats_target", "teacher_wrong", 100.0),
        ("flipped %", "ats_target", "flipped_where_teacher_right", 100.0),
        ("τ2 median", "isats_tau2", "p50", 1.0),
        ("at τ2_min %", "isats_tau2", "at_tau2_min", 100.0),
        ("at floor %", "isats_tau2", "at_floor", 100.0),
        ("at τ1 %", "isats_tau2", "at_tau1", 100.0),
        ("fallback %", "isats_tau2", "fallback", 100.0),
        ("interior %", "isats_tau2", "interior", 100.0),
    ];
    let mut lines = md[at..].lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_matches('|').split(" | ").map(str::trim).collect();
    let columns: Vec<(&str, &str, f64)> = header[2..]
        .iter()
        .map(|h| {
            names
                .iter()
                .find(|n| n.0 == *h)
                .map(|n| (n.1, n.2, n.3))
                .with_context(|| format!("{}: unknown ATS-target column '{h}'", path.display()))
        })
        .collect::<Result<_>>()?;
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() != header.len() {
            bail!(
                "{}: an ATS-target row with {} cells, the header has {}: {line}",
                path.display(),
                cells.len(),
                header.len()
            );
        }
        let mut extra = serde_json::json!({"ats_target": {}, "isats_tau2": {}});
        for ((group, key, scale), cell) in columns.iter().zip(&cells[2..]) {
            if *cell != "-" {
                let v: f64 = cell
                    .parse()
                    .with_context(|| format!("{}: '{cell}' in the ATS-target row {line}", path.display()))?;
                extra[group][key] = serde_json::json!(v / scale);
            }
        }
        if extra["isats_tau2"].as_object().is_some_and(|o| o.is_empty()) {
            extra["isats_tau2"] = serde_json::Value::Null;
        }
        out.insert((cells[0].to_string(), cells[1].to_string()), extra);
    }
    Ok(out)
}

/// The probes as `teachers.csv` summarises them, for a report directory without the probes'
/// JSON files: per probed set, each teacher's accuracy, its cross-entropy at τ = 1 and its
/// numbers at the report's τ, all the report shows (what the file does not hold is NaN).
fn probes_from_csv(dir: &Path) -> Result<Vec<(&'static str, ProbeReport)>> {
    let path = dir.join("teachers.csv");
    if !path.exists() {
        return Ok(vec![]);
    }
    // Older reports wrote the probed set's name unquoted, commas and all.
    let mut text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (_, label) in PROBES.iter().filter(|(_, l)| l.contains(',')) {
        text = text.replace(&format!(",{label},"), &format!(",\"{label}\","));
    }
    let rows = parse_csv(
        &text,
        &path,
        &[
            "teacher",
            "params",
            "probed_on",
            "samples",
            "accuracy",
            "nll_at_tau1",
            "tau",
            "p_true",
            "nongt_mean",
            "nongt_std",
            "nongt_entropy",
        ],
    )?;
    let mut out: Vec<(&'static str, ProbeReport)> = vec![];
    for (i, r) in rows.iter().enumerate() {
        let line = i + 2;
        let label = PROBES
            .iter()
            .map(|(_, l)| *l)
            .find(|l| *l == r["probed_on"])
            .with_context(|| format!("{} line {line}: unknown probed set {:?}", path.display(), r["probed_on"]))?;
        let tau: f64 = get(r, "tau", &path, line)?;
        let blank = TauReport {
            tau: 1.0,
            p_true: f64::NAN,
            nongt_mean: f64::NAN,
            nongt_std: f64::NAN,
            nongt_var: f64::NAN,
            nongt_entropy: f64::NAN,
            nll: get(r, "nll_at_tau1", &path, line)?,
            ece: f64::NAN,
        };
        let at = TauReport {
            tau,
            p_true: get(r, "p_true", &path, line)?,
            nongt_mean: get(r, "nongt_mean", &path, line)?,
            nongt_std: get(r, "nongt_std", &path, line)?,
            nongt_entropy: get(r, "nongt_entropy", &path, line)?,
            nll: if tau == 1.0 { blank.nll } else { f64::NAN },
            ..blank.clone()
        };
        let teacher = TeacherReport {
            name: r["teacher"].clone(),
            classes: 0,
            samples: get(r, "samples", &path, line)?,
            params: Some(get(r, "params", &path, line)?),
            accuracy: get(r, "accuracy", &path, line)?,
            logit_gap: f64::NAN,
            logit_nongt_std: f64::NAN,
            best_tau_nll: f64::NAN,
            per_tau: if tau == 1.0 { vec![at] } else { vec![blank, at] },
        };
        match out.iter_mut().find(|(l, _)| *l == label) {
            Some((_, p)) => p.teachers.push(teacher),
            None => out.push((label, ProbeReport { teachers: vec![teacher], pairs: vec![] })),
        }
    }
    Ok(out)
}

/// The teacher is changed (ESKD's early checkpoint, TAKD's assistant): the study names such a
/// series so (`study::plan`), and no CSV column says it otherwise.
fn altered(series: &str) -> bool {
    series.contains("(ESKD") || series.contains("(TAKD")
}

impl StudyResults {
    /// The results a report directory holds (see the module's documentation).
    pub fn from_report(dir: &Path) -> Result<StudyResults> {
        let md_path = dir.join("report.md");
        let md = std::fs::read_to_string(&md_path).with_context(|| format!("reading {}", md_path.display()))?;
        let (study_toml, version) = reproduce(&md, &md_path)?;
        let super::results::Settings { name, probe_tau, families, featured } =
            super::results::study_settings(&study_toml, dir).with_context(|| format!("{}", md_path.display()))?;
        let family_of =
            |name: &str| families.get(name).cloned().unwrap_or_else(|| crate::models::family(name).to_string());
        let targets = ats_targets(&md, &md_path)?;

        let path = dir.join("results.csv");
        let rows = read_csv(
            &path,
            &[
                "id",
                "kind",
                "student",
                "teacher",
                "teacher_params",
                "series",
                "method",
                "hyper",
                "seed",
                "final_acc",
                "best_acc",
                "best_epoch",
            ],
        )?;
        let (mut teachers, mut students) = (vec![], vec![]);
        for (i, r) in rows.iter().enumerate() {
            let line = i + 2;
            match r["kind"].as_str() {
                "teacher" => teachers.push(Teacher {
                    id: (!r["id"].is_empty()).then(|| r["id"].clone()),
                    seed: opt(r, "seed", &path, line)?,
                    name: r["teacher"].clone(),
                    params: get(r, "teacher_params", &path, line)?,
                    final_acc: get(r, "final_acc", &path, line)?,
                    best_acc: opt(r, "best_acc", &path, line)?.unwrap_or(f64::NAN),
                    // The family the report recorded (it may come from the study file), else the zoo's.
                    family: match r.get("teacher_family").filter(|f| !f.is_empty()) {
                        Some(f) => f.clone(),
                        None => family_of(&r["teacher"]),
                    },
                }),
                "student" => {
                    let teacher = (!r["teacher"].is_empty()).then(|| r["teacher"].clone());
                    let hyper = if r["hyper"].is_empty() {
                        serde_json::Value::Null
                    } else {
                        // The report wrote the JSON with ' for " (a CSV cell without escapes).
                        serde_json::from_str(&r["hyper"].replace('\'', "\""))
                            .with_context(|| format!("{} line {line}: 'hyper' is not JSON", path.display()))?
                    };
                    students.push(Student {
                        id: r["id"].clone(),
                        student: r["student"].clone(),
                        altered_teacher: teacher.is_some() && altered(&r["series"]),
                        extra: teacher.as_ref().and_then(|t| targets.get(&(r["series"].clone(), t.clone())).cloned()),
                        teacher,
                        series: r["series"].clone(),
                        method: r["method"].clone(),
                        hyper,
                        seed: get(r, "seed", &path, line)?,
                        final_acc: get(r, "final_acc", &path, line)?,
                        best_acc: get(r, "best_acc", &path, line)?,
                        best_epoch: get(r, "best_epoch", &path, line)?,
                        val_acc: opt(r, "final_val_acc", &path, line)?,
                        // A report's own files do not keep the runs' fit records: the size-versus-fit
                        // section needs the run directories.
                        teacher_fit: None,
                        teacher_stats: None,
                        final_test_loss: None,
                    })
                }
                k => bail!("{} line {line}: unknown kind '{k}'", path.display()),
            }
        }
        let from_csv = probes_from_csv(dir)?;
        let probes: Vec<(&'static str, ProbeReport)> = PROBES
            .iter()
            .map(|(stem, label)| {
                // The oldest reports kept the test-set probe in probe/probe.json.
                let old = (*stem == PROBES[0].0 && !dir.join("probe.json").exists()).then(|| dir.join("probe"));
                Ok(match super::results::read_probe(old.as_deref().unwrap_or(dir), stem)? {
                    Some(p) => Some((*label, p)),
                    None => from_csv.iter().find(|(l, _)| l == label).cloned(),
                })
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        if let Some((_, p)) = probes.iter().find(|(label, _)| *label == PROBES[0].1) {
            for t in &p.teachers {
                if !teachers.iter().any(|x: &Teacher| x.name == t.name) {
                    teachers.push(Teacher {
                        id: None,
                        seed: None,
                        name: t.name.clone(),
                        params: t.params.unwrap_or(0),
                        final_acc: t.accuracy,
                        best_acc: f64::NAN,
                        family: family_of(&t.name),
                    });
                }
            }
        }
        teachers.sort_by_key(|t| t.params);

        let path = dir.join("timing.csv");
        let runs = read_csv(&path, &["id", "name", "status", "wall_time_s"])?
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let status = Status::ALL
                    .into_iter()
                    .find(|s| s.as_str() == r["status"])
                    .with_context(|| format!("{} line {}: unknown status {:?}", path.display(), i + 2, r["status"]))?;
                Ok(RunState {
                    id: r["id"].clone(),
                    name: r["name"].clone(),
                    status,
                    error: None,
                    wall_time_s: opt(r, "wall_time_s", &path, i + 2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // results.csv lists students sorted; the store's order is the plan's, which timing.csv keeps.
        let order: BTreeMap<&str, usize> = runs.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
        students.sort_by_key(|s| order.get(s.id.as_str()).copied().unwrap_or(usize::MAX));
        Ok(StudyResults { name, probe_tau, version, study_toml, teachers, students, probes, runs, featured })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_keep_quoted_commas() {
        assert_eq!(fields(r#"a,"{'x':1,'y':2}",,"say ""hi""""#), ["a", "{'x':1,'y':2}", "", "say \"hi\""]);
    }

    #[test]
    fn a_malformed_results_csv_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("report.md"),
            "# Study `x`\n\n## Reproduce\n\nkdlab 0.1.0; sweep\n\n```\nname = \"x\"\n```\n",
        )
        .unwrap();
        let header = "id,kind,student,teacher,teacher_params,series,method,hyper,seed,final_acc,best_acc,best_epoch,final_val_acc\n";
        for (body, needle) in [
            ("t,teacher,,cnn_w1,lots,teacher,ce,,0,0.8,0.8,,\n", "line 2: 'teacher_params' is not valid"),
            ("t,teacher,,cnn_w1\n", "line 2: 4 fields, the header has 13"),
            ("t,robot,,cnn_w1,1,teacher,ce,,0,0.8,0.8,,\n", "line 2: unknown kind 'robot'"),
        ] {
            std::fs::write(dir.path().join("results.csv"), format!("{header}{body}")).unwrap();
            let e = format!("{:#}", StudyResults::from_report(dir.path()).unwrap_err());
            assert!(e.contains("results.csv") && e.contains(needle), "{e}");
        }
    }
}
