//! The report's sections, in order ([`SECTIONS`]). Each appends blocks to the document and writes
//! its figures and files into the report directory. A study section runs once; a student section
//! runs once per student architecture, the consecutive student sections together for one student
//! before the next.
use super::doc::Block;
use super::results::{Stat, Student, StudyResults, Teacher};
use crate::methods;
use crate::probe::ProbeReport;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod ats_grid;
pub mod ats_targets;
pub mod correlation;
pub mod csv;
pub mod curves;
pub mod failures;
pub mod fit;
pub mod intro;
pub mod mismatch_drop;
pub mod reproduce;
pub mod tables;
pub mod teachers;
pub mod tuned;

/// What the sections write: the document's blocks and the files written so far.
pub struct Output<'a> {
    pub dir: &'a Path,
    pub blocks: Vec<Block>,
    pub files: Vec<PathBuf>,
}

impl<'a> Output<'a> {
    pub fn new(dir: &'a Path) -> Output<'a> {
        Output { dir, blocks: vec![], files: vec![] }
    }
    /// Writes an SVG file and adds it to the document as a figure.
    pub fn figure(&mut self, name: &str, svg: String, caption: &str) -> Result<()> {
        let p = self.dir.join(name);
        crate::util::svg::write_svg(&p, &svg)?;
        self.files.push(p);
        self.blocks.push(Block::Figure(name.to_string(), svg, caption.to_string()));
        Ok(())
    }
    /// Writes a file that is not part of the document (a CSV).
    pub fn file(&mut self, name: &str, text: &str) -> Result<()> {
        let p = self.dir.join(name);
        crate::util::atomic::write_bytes(&p, text.as_bytes())?;
        self.files.push(p);
        Ok(())
    }
    pub fn push(&mut self, b: Block) {
        self.blocks.push(b);
    }
}

/// A section of the report.
#[derive(Clone, Copy)]
pub enum Section {
    /// Written once for the study.
    Study(fn(&StudyResults, &mut Output) -> Result<()>),
    /// Written once per student architecture.
    Student(fn(&StudyResults, &StudentView, &mut Output) -> Result<()>),
}

/// The report, in order.
pub(crate) const SECTIONS: &[Section] = &[
    Section::Study(intro::write),
    Section::Study(teachers::write),
    Section::Student(intro::student_heading),
    Section::Student(tuned::write),
    Section::Student(curves::write),
    Section::Student(tables::write),
    Section::Student(correlation::write),
    Section::Student(mismatch_drop::write),
    Section::Student(ats_targets::write),
    Section::Student(ats_grid::write),
    Section::Student(fit::write),
    Section::Study(failures::write),
    Section::Study(reproduce::write),
    Section::Study(csv::write),
];

/// Writes `sections` in order: consecutive student sections run together for each student.
pub fn write_all(r: &StudyResults, sections: &[Section], out: &mut Output) -> Result<()> {
    let views: Vec<StudentView> = r.student_models().into_iter().map(|m| StudentView::new(r, m)).collect();
    let mut i = 0;
    while i < sections.len() {
        match sections[i] {
            Section::Study(f) => {
                f(r, out)?;
                i += 1;
            }
            Section::Student(_) => {
                let end =
                    sections[i..].iter().position(|s| matches!(s, Section::Study(_))).map_or(sections.len(), |p| i + p);
                for v in &views {
                    for s in &sections[i..end] {
                        if let Section::Student(f) = s {
                            f(r, v, out)?;
                        }
                    }
                }
                i = end;
            }
        }
    }
    Ok(())
}

/// One student architecture's runs, grouped once for all its sections.
pub struct StudentView<'a> {
    /// The student's architecture.
    pub model: String,
    /// Its runs without a teacher.
    pub baseline: Vec<&'a Student>,
    /// Its runs with a teacher, per series.
    pub by_series: BTreeMap<String, Vec<&'a Student>>,
    /// The teachers that taught it, family by family (as in `families`).
    pub tnames: Vec<&'a Teacher>,
    /// Per method with several settings: per teacher, the setting chosen on validation accuracy.
    pub tuned: Vec<(String, tuned::Choice)>,
    /// The series drawn as curves and table rows: the series that are not ATS grid points, then
    /// the tuned series ('<method> (tuned on val)').
    pub curve_series: Vec<(String, Vec<&'a Student>)>,
    /// The teachers that taught it per family (families in the order of their smallest teacher,
    /// teachers by size): capacity is compared within a family.
    pub families: Vec<(String, Vec<&'a Teacher>)>,
    /// The curve series the mismatch plot features (at most [`FEATURED_MAX`]); the others are in
    /// the tables.
    pub featured: Vec<String>,
}

/// How many series a mismatch plot features besides the student alone: more do not stay readable.
pub(crate) const FEATURED_MAX: usize = 5;

/// Below the student alone by more than this (final accuracy, mean over teachers), a series has
/// collapsed: featured by default, its curve would squash every other into one line.
const COLLAPSED: f64 = 0.10;

/// The series a plot features: the study file's `[report] featured` where it names curve series;
/// else the series tuned on validation (KD's first: the baseline every remedy is measured
/// against), then the series of methods with a single setting and the plain teacher that have
/// not collapsed, up to [`FEATURED_MAX`].
fn featured(
    wanted: &[String],
    curve_series: &[(String, Vec<&Student>)],
    tuned: &[(String, tuned::Choice)],
    baseline: Option<f64>,
) -> Vec<String> {
    let exists = |n: &str| curve_series.iter().any(|(name, _)| name == n);
    if wanted.iter().any(|w| exists(w)) {
        return wanted.iter().filter(|w| exists(w)).take(FEATURED_MAX).cloned().collect();
    }
    let tuned_methods: Vec<&str> = tuned.iter().map(|(m, _)| m.as_str()).collect();
    let mut v: Vec<String> = tuned.iter().map(|(m, _)| format!("{m} (tuned on val)")).collect();
    v.sort_by_key(|n| !tuned.iter().any(|(m, _)| methods::is_baseline(m) && *n == format!("{m} (tuned on val)")));
    v.extend(
        curve_series
            .iter()
            .filter(|(name, runs)| {
                let mean = Stat::of(&runs.iter().map(|s| s.final_acc).collect::<Vec<_>>()).mean;
                runs.first().is_some_and(|s| !tuned_methods.contains(&s.method.as_str()) && !s.altered_teacher)
                    && !name.ends_with("(tuned on val)")
                    && baseline.is_none_or(|b| mean >= b - COLLAPSED)
            })
            .map(|(name, _)| name.clone()),
    );
    v.truncate(FEATURED_MAX);
    v
}

/// A series the curves leave out: the points of an ATS τ1 × τ2 grid as the study file names them
/// (they get heat-maps), and any series whose runs mix settings for a teacher (a grid block given
/// one `label`), for a curve through them would average different settings.
fn off_curve(name: &str, runs: &[&Student]) -> bool {
    let grid_point = name.starts_with("ats τ1=") && name.contains(" τ2=");
    let mixed = runs.iter().any(|a| runs.iter().any(|b| a.teacher == b.teacher && a.hyper != b.hyper));
    grid_point || mixed
}

impl<'a> StudentView<'a> {
    pub fn new(r: &'a StudyResults, model: String) -> StudentView<'a> {
        let mine: Vec<&Student> = r.students.iter().filter(|s| s.student == model).collect();
        let baseline: Vec<&Student> = mine.iter().copied().filter(|s| s.teacher.is_none()).collect();
        let by_series: BTreeMap<String, Vec<&Student>> =
            mine.iter().filter(|s| s.teacher.is_some()).fold(BTreeMap::new(), |mut m, s| {
                m.entry(s.series.clone()).or_default().push(*s);
                m
            });
        let tnames: Vec<&Teacher> =
            r.teachers.iter().filter(|t| mine.iter().any(|s| s.teacher.as_deref() == Some(t.name.as_str()))).collect();
        let mut curve_series: Vec<(String, Vec<&Student>)> =
            by_series.iter().filter(|(k, v)| !off_curve(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let tuned = tuned::tuned_on_validation(&curve_series, &tnames);
        // The tuned curves as series of runs: per teacher, the chosen setting's runs.
        let tuned_runs: Vec<(String, Vec<&Student>)> = tuned
            .iter()
            .map(|(m, choice)| {
                let runs = curve_series
                    .iter()
                    .flat_map(|(name, runs)| {
                        runs.iter().copied().filter(move |s| {
                            s.teacher.as_ref().and_then(|t| choice.get(t)).is_some_and(|(c, _)| c == name)
                        })
                    })
                    .collect();
                (format!("{m} (tuned on val)"), runs)
            })
            .collect();
        curve_series.extend(tuned_runs);
        let alone =
            (!baseline.is_empty()).then(|| Stat::of(&baseline.iter().map(|s| s.final_acc).collect::<Vec<_>>()).mean);
        let featured = featured(&r.featured, &curve_series, &tuned, alone);
        let families = by_family(tnames.iter().copied());
        // The tables read family by family too.
        let tnames = families.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        StudentView { model, baseline, by_series, tnames, tuned, curve_series, families, featured }
    }
}

/// Teachers per family: families in the order of their smallest teacher, teachers by size (as
/// given: the results list them by size).
pub(crate) fn by_family<'a>(teachers: impl IntoIterator<Item = &'a Teacher>) -> Vec<(String, Vec<&'a Teacher>)> {
    let mut v: Vec<(String, Vec<&Teacher>)> = vec![];
    for t in teachers {
        match v.iter_mut().find(|(f, _)| *f == t.family) {
            Some((_, ts)) => ts.push(t),
            None => v.push((t.family.clone(), vec![t])),
        }
    }
    v
}

/// One of a student run's accuracies.
pub(crate) type Accuracy = fn(&Student) -> f64;

/// The two accuracies every student table and curve is drawn for, labelled.
pub(crate) const ACCURACIES: [(&str, Accuracy); 2] = [("final", |s| s.final_acc), ("best", |s| s.best_acc)];

/// Mean and spread over seeds of one accuracy of the runs taught by `teacher`; None if none was.
pub(crate) fn stat_from(runs: &[&Student], teacher: &str, pick: Accuracy) -> Option<Stat> {
    let v: Vec<f64> = runs.iter().filter(|s| s.teacher.as_deref() == Some(teacher)).map(|s| pick(s)).collect();
    (!v.is_empty()).then(|| Stat::of(&v))
}

/// One teacher's numbers at the temperature nearest `tau` in a probe.
pub(crate) fn probe_at(probe: &ProbeReport, name: &str, tau: f64) -> Option<(f64, crate::probe::TauReport)> {
    let t = probe.teachers.iter().find(|t| t.name == name)?;
    let i = crate::probe::nearest_tau(&t.per_tau.iter().map(|t| t.tau).collect::<Vec<_>>(), tau);
    Some((t.accuracy, t.per_tau[i].clone()))
}

/// Strings from string slices (table headers).
pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
