//! Writing image folders (`kdlab data export`, and the tests).
use super::*;

// ---- Writing image folders (kdlab data export, and the tests). ----

/// The file formats an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormat {
    Png,
    Jpeg,
    /// PNG and JPEG in turn (the first image of each class PNG).
    Mixed,
}

/// Writes one C×H×W image (C = 1 or 3, channel-planar) as PNG or JPEG (quality 95).
pub fn write_image(path: &Path, pixels: &[u8], shape: Shape, jpeg: bool) -> Result<()> {
    use image::ImageEncoder;
    let plane = shape.h * shape.w;
    let (interleaved, colour) = match shape.c {
        1 => (pixels.to_vec(), image::ExtendedColorType::L8),
        3 => ((0..plane * 3).map(|i| pixels[(i % 3) * plane + i / 3]).collect(), image::ExtendedColorType::Rgb8),
        c => bail!("{}: cannot write a {c}-channel image (1 or 3)", path.display()),
    };
    let mut bytes = vec![];
    let (w, h) = (shape.w as u32, shape.h as u32);
    if jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95).write_image(&interleaved, w, h, colour)?;
    } else {
        image::codecs::png::PngEncoder::new(&mut bytes).write_image(&interleaved, w, h, colour)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A class name made safe as a folder name, prefixed with its zero-padded index so that sorted
/// folder names keep the data set's class order.
pub(crate) fn class_folder(index: usize, classes: usize, name: &str) -> String {
    let width = (classes.max(2) - 1).to_string().len();
    let safe: String = name.chars().map(|ch| if ch == '/' || ch == '\\' || ch == ':' { '-' } else { ch }).collect();
    format!("{index:0width$}-{safe}")
}

/// Writes the first `train_per_class` / `test_per_class` images of each class (0: all) of `ds`
/// into `out` as an image folder (`train/`, `val/`). Returns the number of files written.
pub fn export(
    ds: &Dataset,
    out: &Path,
    train_per_class: usize,
    test_per_class: usize,
    format: ImageFormat,
) -> Result<usize> {
    if ds.stream.is_some() {
        bail!("{}: a folder under transform=imagenet holds no decoded images to export; export it with transform=fixed and size=", ds.source);
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{}: exists and is not empty (give a new folder)", out.display());
    }
    let mut written = 0;
    for (split, folder, per_class) in [(&ds.train, "train", train_per_class), (&ds.test, "val", test_per_class)] {
        let mut count = vec![0usize; ds.classes];
        for c in 0..ds.classes {
            std::fs::create_dir_all(out.join(folder).join(class_folder(c, ds.classes, &ds.class_names[c])))?;
        }
        for i in 0..split.len() {
            let c = split.labels[i] as usize;
            if per_class > 0 && count[c] >= per_class {
                continue;
            }
            let jpeg = match format {
                ImageFormat::Png => false,
                ImageFormat::Jpeg => true,
                ImageFormat::Mixed => count[c] % 2 == 1,
            };
            count[c] += 1;
            let name = format!("{i:06}.{}", if jpeg { "jpg" } else { "png" });
            let path = out.join(folder).join(class_folder(c, ds.classes, &ds.class_names[c])).join(name);
            write_image(&path, split.image(i), split.shape, jpeg)?;
            written += 1;
        }
    }
    Ok(written)
}
