//! Small pieces shared by every layer of kdlab: durable file writes, a stable random-number
//! generator, JSON files that carry their own checksum, device and thread selection, number formatting, and allocator settings.
pub mod atomic;
pub mod device;
pub mod fmt;
pub mod hash;
pub mod malloc;
pub mod progress;
pub mod rng;
pub mod sealed;
pub mod svg;
pub mod tensorboard;
pub mod text;
