//! `kdlab report`: the study's results as `report.md`, a self-contained `report.html`, SVG plots
//! and CSV files. Everything in it is a function of the finished runs (no timestamps, no wall
//! times: those go to `timing.csv`), so the report of a resumed study equals an uninterrupted one.
//! The results are loaded once ([`StudyResults`]); the report is the list of
//! [`sections::SECTIONS`](super::sections::SECTIONS), written in order.
use super::doc::{self, Block};
pub use super::results::{Stat, StudyResults};
use super::sections::{self, Output};
use crate::util::atomic;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A written report: its files and its content.
pub struct Report {
    pub files: Vec<PathBuf>,
    pub blocks: Vec<Block>,
}

/// Writes the report of the study in `dir` into `out`.
pub fn write(dir: &Path, out: &Path) -> Result<Report> {
    let results = StudyResults::load(dir)?;
    write_results(&results, out)
}

/// Writes the report of loaded results into `out`.
pub fn write_results(r: &StudyResults, out: &Path) -> Result<Report> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // A report killed while writing leaves its temporary files (named by the dead writer's pid).
    let stale = atomic::remove_stale_temps(out);
    if stale > 0 {
        eprintln!("note: removed {stale} unfinished report file(s) left in {} by an interrupted report", out.display());
    }
    let mut o = Output::new(out);
    sections::write_all(r, sections::SECTIONS, &mut o)?;
    let Output { blocks, mut files, .. } = o;
    let md = out.join("report.md");
    atomic::write_bytes(&md, doc::markdown(&blocks).as_bytes())?;
    let html = out.join("report.html");
    atomic::write_bytes(&html, doc::html(&format!("kdlab study {}", r.name), &blocks).as_bytes())?;
    files.push(md);
    files.push(html);
    Ok(Report { files, blocks })
}
