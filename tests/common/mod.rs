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

/// `kdlab ARGS --device cpu` run in `cwd`.
pub fn kdlab_cpu(args: &[&str], cwd: &Path) -> std::process::Output {
    kdlab().args(args).args(["--device", "cpu"]).current_dir(cwd).output().unwrap()
}

/// The Python of the Makefile's PyTorch environment ($KDLAB_TORCH_VENV, else
/// ~/.cache/kdlab-torch-venv), or None: the reference checks that need it are then skipped.
pub fn venv_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var("KDLAB_TORCH_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/kdlab-torch-venv", std::env::var("HOME").unwrap_or_default()));
    let py = Path::new(&venv).join("bin/python");
    py.exists().then_some(py)
}

/// Writes the embedded Fashion-MNIST subset's test images as (N, 1, 28, 28) raw pixel values
/// (float32 .npy), for a PyTorch script to normalise itself.
pub fn write_test_images(path: &Path) -> usize {
    let data = kdlab::data::embedded::load().unwrap();
    let pixels: Vec<f32> = data.test.images.iter().map(|&p| p as f32).collect();
    kdlab::data::npy::write_f32(path, &[data.test.len(), 1, 28, 28], &pixels).unwrap();
    data.test.len()
}

/// A JSON file kdlab wrote (its checksum line is an ordinary field).
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The largest absolute difference between two equally long vectors.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Writes an image folder of `train`/`val` images per class of three Fashion-MNIST classes, each
/// placed at a random spot of a grey canvas of its own size (28–40 × 28–40 pixels), as PNG and JPEG
/// in turn.
pub fn write_folder(root: &Path, train: usize, val: usize) {
    let ds = kdlab::data::embedded::load().unwrap();
    let mut rng = kdlab::util::rng::Rng::new(11);
    for (split, folder, per_class) in [(&ds.train, "train", train), (&ds.test, "val", val)] {
        for (name, label) in [("bag", 8u16), ("sandal", 5), ("trouser", 1)] {
            let dir = root.join(folder).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let idx = (0..split.len()).filter(|&i| split.labels[i] == label).take(per_class);
            for (k, i) in idx.enumerate() {
                let (h, w) = (28 + rng.below(13) as usize, 28 + rng.below(13) as usize);
                let (oy, ox) = (rng.below((h - 27) as u64) as usize, rng.below((w - 27) as u64) as usize);
                let mut canvas = vec![60u8; h * w];
                for y in 0..28 {
                    canvas[(oy + y) * w + ox..(oy + y) * w + ox + 28]
                        .copy_from_slice(&split.image(i)[y * 28..(y + 1) * 28]);
                }
                let jpeg = k % 2 == 1;
                let path = dir.join(format!("{i:05}.{}", if jpeg { "jpg" } else { "png" }));
                kdlab::data::imagefolder::write_image(&path, &canvas, kdlab::data::Shape { c: 1, h, w }, jpeg).unwrap();
            }
        }
    }
}

/// The feed of a streamed image folder's split with `threads` decoding threads.
pub fn feed_with_threads(
    data: &kdlab::data::Dataset,
    split: &str,
    augment: bool,
    threads: usize,
) -> kdlab::data::loader::Feed {
    use kdlab::data::loader::Feed;
    match data.feed(split, augment).unwrap() {
        Feed::Files(f) => {
            let mut f = std::sync::Arc::try_unwrap(f).unwrap();
            f.threads = threads;
            Feed::Files(std::sync::Arc::new(f))
        }
        Feed::Memory { .. } => panic!("transform=imagenet feeds from files"),
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test at a time within a test binary, on `threads` LibTorch threads: the tests that train
/// compare numbers bit for bit, and the thread count changes the order of float reductions.
pub fn serial_on(threads: i32) -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(threads);
    guard
}

/// `serial_on(2)`.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    serial_on(2)
}

/// What the float64 reference checks share: the NumPy scripts' interpreter, their JSON, and the
/// comparison.
pub mod reference {
    use std::path::{Path, PathBuf};

    /// A standard normal draw (Box–Muller) from kdlab's generator, for test tensors.
    pub fn normal(r: &mut kdlab::util::rng::Rng) -> f64 {
        let (u, v) = (1.0 - r.unit(), r.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// The venv's Python (with NumPy), where the Makefile installed it.
    pub fn python() -> Option<PathBuf> {
        let venv = std::env::var("KDLAB_TORCH_VENV")
            .unwrap_or_else(|_| format!("{}/.cache/kdlab-torch-venv", std::env::var("HOME").unwrap_or_default()));
        let py = Path::new(&venv).join("bin/python");
        py.exists().then_some(py)
    }

    /// The JSON a command prints, failing the test with its stderr when it fails.
    pub fn json_of(cmd: &mut std::process::Command, what: &str) -> serde_json::Value {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// |a − b| relative to |b|, with a floor at 10⁻⁹ of the largest |b| of the set (an entry that
    /// is zero in exact arithmetic is compared at the scale of the others).
    pub fn worst_rel(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-9 * scale)).fold(0.0, f64::max)
    }

    /// The named loss terms and the total of `kdlab loss --json` (`ours`) and of a reference
    /// (`theirs`), in the reference's order; fails unless both name the same terms.
    pub fn terms_and_total(ours: &serde_json::Value, theirs: &serde_json::Value, what: &str) -> (Vec<f64>, Vec<f64>) {
        let names: Vec<&String> = theirs["terms"].as_object().unwrap().keys().collect();
        let ours_names: Vec<&String> = ours["terms"].as_object().unwrap().keys().collect();
        assert_eq!(ours_names, names, "{what}: term names");
        let (mut a, mut b) = (vec![], vec![]);
        for k in names {
            a.push(ours["terms"][k].as_f64().unwrap());
            b.push(theirs["terms"][k].as_f64().unwrap());
        }
        a.push(ours["total"].as_f64().unwrap());
        b.push(theirs["total"].as_f64().unwrap());
        (a, b)
    }

    /// A JSON number, or nested lists of them, flattened in order.
    pub fn flat(v: &serde_json::Value) -> Vec<f64> {
        match v {
            serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
            v => vec![v.as_f64().unwrap()],
        }
    }
}
