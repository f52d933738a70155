//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::Path;
use std::process::Command;

/// The `kdlab` binary under test.
pub fn kdlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdlab"))
}

/// Writes a small real data set — the first `train`/`test` images of the embedded Fashion-MNIST
/// subset — as raw IDX files into `dir`.
pub fn write_small_idx(dir: &Path, train: usize, test: usize) {
    use kdlab::data::idx::encode;
    let d = kdlab::data::embedded::load().unwrap().head(train, test);
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, split) in [("train", &d.train), ("t10k", &d.test)] {
        let labels: Vec<u8> = split.labels.iter().map(|&y| y as u8).collect();
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), encode(&[split.len(), 28, 28], &split.images))
            .unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), encode(&[split.len()], &labels)).unwrap();
    }
}

/// The output of a command, stdout then stderr.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
