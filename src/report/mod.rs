//! Reports: SVG charts, a small document model rendered as Markdown and HTML, and the study report
//! (its results loaded once, then its sections in order).
pub mod doc;
pub mod from_files;
pub mod results;
pub mod sections;
pub mod study;
/// The SVG charts live in `util` (the probe draws them too); this is their old path.
pub use crate::util::svg;
