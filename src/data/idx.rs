//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes, an element-type
//! byte, the number of dimensions, then one u32 per dimension) followed by the raw elements,
//! row-major. Files may be gzipped. Only unsigned-byte elements (type 0x08) occur in these data sets.
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Refuse to inflate beyond this: no real IDX file comes near it, a corrupt or hostile one might.
const MAX_INFLATED: u64 = 8 << 30;

/// Reads a file, inflating it when it is gzip. A name ending in `.gz` must hold gzip.
pub(crate) fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let named_gz = path.extension().is_some_and(|e| e == "gz");
    if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 2);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_INFLATED)
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("{}: corrupt or truncated gzip data ({e})", path.display()))?;
        Ok(out)
    } else if named_gz {
        bail!(
            "{}: the name ends in .gz but the file is not gzip (it starts with {:02x?})",
            path.display(),
            &raw[..raw.len().min(4)]
        )
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `file` names the source in every error.
pub fn parse(bytes: &[u8], file: &Path) -> Result<IdxArray> {
    let name = file.display();
    if bytes.is_empty() {
        bail!("{name}: the file is empty (expected an IDX header)");
    }
    if bytes.len() < 4 {
        bail!("{name}: truncated IDX header ({} bytes; at least 4 needed)", bytes.len());
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        bail!(
            "{name}: not an IDX file (magic number {:02x}{:02x}{:02x}{:02x}; IDX files start with two zero bytes)",
            bytes[0],
            bytes[1],
            bytes[2],
            bytes[3]
        );
    }
    if bytes[2] != 0x08 {
        bail!("{name}: IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2]);
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        bail!("{name}: IDX header declares {ndim} dimensions (1 to 4 expected)");
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        bail!("{name}: truncated IDX header ({} bytes; {header} needed for {ndim} dimensions)", bytes.len());
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(expected) = expected else { bail!("{name}: IDX dimensions {dims:?} overflow") };
    let body = bytes.len() - header;
    if body < expected {
        bail!("{name}: truncated: the header declares dimensions {dims:?} ({expected} bytes of data) but the file has {body}");
    }
    if body > expected {
        bail!("{name}: the header declares dimensions {dims:?} ({expected} bytes of data) but the file has {} extra bytes", body - expected);
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Reads and parses an IDX file (raw or gzipped).
pub fn read(path: &Path) -> Result<IdxArray> {
    parse(&read_maybe_gzip(path)?, path)
}

/// Encodes an unsigned-byte IDX array (used to write the embedded subset and test files).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Reads an image file (N×H×W) and its label file (N), checking that they agree.
pub(crate) fn read_pair(images: &Path, labels: &Path) -> Result<(super::Split, usize)> {
    let img = read(images)?;
    let lab = read(labels)?;
    split_from_arrays(img, images, lab, labels)
}

/// Builds a split from parsed arrays; returns it with the number of classes its labels imply.
pub(crate) fn split_from_arrays(
    img: IdxArray,
    images: &Path,
    lab: IdxArray,
    labels: &Path,
) -> Result<(super::Split, usize)> {
    let shape = match img.dims[..] {
        [_, h, w] => super::Shape { c: 1, h, w },
        [_, c, h, w] => super::Shape { c, h, w },
        _ => {
            bail!("{}: an image file needs 3 (N×H×W) or 4 (N×C×H×W) dimensions, found {:?}", images.display(), img.dims)
        }
    };
    if lab.dims.len() != 1 {
        bail!("{}: a label file needs 1 dimension, found {:?}", labels.display(), lab.dims);
    }
    if img.dims[0] != lab.dims[0] {
        bail!(
            "{} holds {} images but {} holds {} labels",
            images.display(),
            img.dims[0],
            labels.display(),
            lab.dims[0]
        );
    }
    if shape.numel() == 0 {
        bail!("{}: images of size {shape} are empty", images.display());
    }
    let labels_u16: Vec<u16> = lab.data.iter().map(|&y| y as u16).collect();
    let classes = labels_u16.iter().map(|&y| y as usize + 1).max().unwrap_or(0);
    Ok((super::Split { images: img.data, labels: labels_u16, shape }, classes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("x-idx1-ubyte")
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse(&bytes, &p()).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    fn err(bytes: &[u8]) -> String {
        format!("{:#}", parse(bytes, &p()).unwrap_err())
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let good = encode(&[2, 3], &[0; 6]);
        assert!(err(&[]).contains("empty"));
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        assert!(err(&good[..6]).contains("truncated IDX header"));
        let mut extra = good.clone();
        extra.push(9);
        assert!(err(&extra).contains("1 extra bytes"));
        let mut magic = good.clone();
        magic[0] = 0x50;
        assert!(err(&magic).contains("not an IDX file"));
        let mut kind = good.clone();
        kind[2] = 0x0D;
        assert!(err(&kind).contains("0x0d is not supported"));
        assert!(err(&extra).contains("x-idx1-ubyte"), "errors name the file");
    }

    #[test]
    fn gzip_and_fake_gzip() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode(&[3], &[7, 8, 9]);
        let gz = dir.path().join("l.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read(&gz).unwrap().data, vec![7, 8, 9]);
        let fake = dir.path().join("fake.gz");
        std::fs::write(&fake, &bytes).unwrap();
        let e = format!("{:#}", read(&fake).unwrap_err());
        assert!(e.contains("fake.gz") && e.contains("not gzip"), "{e}");
        let cut = dir.path().join("cut.gz");
        let full = std::fs::read(&gz).unwrap();
        std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
        let e = format!("{:#}", read(&cut).unwrap_err());
        assert!(e.contains("cut.gz") && e.contains("gzip"), "{e}");
    }

    #[test]
    fn pair_mismatch_is_an_error() {
        let img = parse(&encode(&[2, 2, 2], &[0; 8]), Path::new("i")).unwrap();
        let lab = parse(&encode(&[3], &[0, 1, 2]), Path::new("l")).unwrap();
        let e = format!("{:#}", split_from_arrays(img, Path::new("i"), lab, Path::new("l")).unwrap_err());
        assert!(e.contains("2 images") && e.contains("3 labels"), "{e}");
    }
}
