//! Reports: SVG charts now; the study report (markdown, HTML, CSV) builds on them.
pub mod svg;
