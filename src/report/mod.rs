//! Reports: SVG charts, a small document model rendered as Markdown and HTML, and the study report.
pub mod doc;
pub mod study;
pub mod svg;
