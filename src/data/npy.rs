//! NumPy's .npy format (version 1.0 written; 1.0, 2.0 and 3.0 read), so that logits and labels
//! travel between kdlab and any Python tool. Reading accepts float32/float64 arrays and every
//! integer dtype, little- or big-endian; Fortran-ordered arrays are refused rather than silently
//! transposed.
use anyhow::{bail, Context, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Builds a version 1.0 header for `descr` and `shape`, padded so the data starts on a 64-byte
/// boundary as NumPy does.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Encodes a float32 array.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let mut out = header("<f4", shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes an int64 array.
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let mut out = header("<i8", shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 array atomically, with its checksum file (see [`sum_path`]).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_with_sum(path, &encode_f32(shape, data))
}

/// Writes an int64 array atomically, with its checksum file (see [`sum_path`]).
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    write_with_sum(path, &encode_i64(shape, data))
}

/// The checksum file kdlab writes beside every .npy it writes: `NAME.npy.sha256`, one line in
/// `sha256sum`'s format (so `sha256sum -c` checks it too). kdlab verifies a .npy against it
/// before reading the array; a .npy without one (written by NumPy, say) is read as it is.
pub(crate) fn sum_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{name}.sha256"))
}

fn write_with_sum(path: &Path, bytes: &[u8]) -> Result<()> {
    let sums = sum_path(path);
    // A crash between the two writes leaves no checksum rather than a stale one.
    match std::fs::remove_file(&sums) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", sums.display()))
        }
        _ => {}
    }
    crate::util::atomic::write_bytes(path, bytes)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::util::atomic::write_bytes(&sums, format!("{}  {name}\n", super::sha256_hex(bytes)).as_bytes())
}

/// Checks a .npy's contents against the checksum kdlab wrote beside it, if there is one.
fn verify_sum(path: &Path, actual: impl FnOnce() -> Result<String>) -> Result<()> {
    let sums = sum_path(path);
    let Ok(text) = std::fs::read_to_string(&sums) else { return Ok(()) };
    let recorded = text.split_whitespace().next().unwrap_or_default();
    let actual = actual()?;
    if recorded != actual {
        bail!(
            "{}: its sha256 {actual} differs from the one kdlab recorded in {} ({recorded}): the file is damaged (or \
             was changed after kdlab wrote it; delete {} to read it anyway)",
            path.display(),
            sums.display(),
            sums.display()
        );
    }
    Ok(())
}

/// The sha256 of a file, read in pieces.
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(super::hex(&h.finalize()))
}

/// The element type of an array, from its `descr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    Int { bytes: usize, signed: bool },
}

/// A parsed array: shape, element type, byte order, and its raw data bytes.
#[derive(Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub descr: String,
    big_endian: bool,
    data: Vec<u8>,
}

impl Array {
    pub fn len(&self) -> usize {
        // The data length was checked against the header, so this cannot overflow.
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn word<const N: usize>(&self, i: usize) -> [u8; N] {
        let mut b: [u8; N] = self.data[i * N..(i + 1) * N].try_into().unwrap();
        if self.big_endian {
            b.reverse();
        }
        b
    }

    /// The elements as f64 (float arrays only).
    pub fn to_f64(&self, file: &Path) -> Result<Vec<f64>> {
        match self.dtype {
            Dtype::F32 => Ok((0..self.len()).map(|i| f32::from_le_bytes(self.word::<4>(i)) as f64).collect()),
            Dtype::F64 => Ok((0..self.len()).map(|i| f64::from_le_bytes(self.word::<8>(i))).collect()),
            Dtype::Int { .. } => {
                bail!(
                    "{}: dtype {} is an integer type; float32 or float64 logits are needed",
                    file.display(),
                    self.descr
                )
            }
        }
    }

    /// The elements as f32 (float arrays only; float64 is rounded).
    pub fn to_f32(&self, file: &Path) -> Result<Vec<f32>> {
        Ok(self.to_f64(file)?.into_iter().map(|v| v as f32).collect())
    }

    /// The elements as i64 (integer arrays only; unsigned 64-bit values above i64::MAX fail).
    pub fn to_i64(&self, file: &Path) -> Result<Vec<i64>> {
        let Dtype::Int { bytes, signed } = self.dtype else {
            bail!("{}: dtype {} is not an integer type; labels must be integers", file.display(), self.descr)
        };
        (0..self.len())
            .map(|i| {
                let v: i128 = match (bytes, signed) {
                    (1, true) => self.data[i] as i8 as i128,
                    (1, false) => self.data[i] as i128,
                    (2, true) => i16::from_le_bytes(self.word::<2>(i)) as i128,
                    (2, false) => u16::from_le_bytes(self.word::<2>(i)) as i128,
                    (4, true) => i32::from_le_bytes(self.word::<4>(i)) as i128,
                    (4, false) => u32::from_le_bytes(self.word::<4>(i)) as i128,
                    (8, true) => i64::from_le_bytes(self.word::<8>(i)) as i128,
                    _ => u64::from_le_bytes(self.word::<8>(i)) as i128,
                };
                i64::try_from(v)
                    .map_err(|_| anyhow::anyhow!("{}: value {v} at index {i} does not fit in i64", file.display()))
            })
            .collect()
    }
}

/// What a .npy header says: shape, element type, byte order, and where the data starts.
#[derive(Debug, Clone)]
pub struct Header {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub descr: String,
    pub big_endian: bool,
    pub data_offset: usize,
}

impl Header {
    pub(crate) fn elem_size(&self) -> usize {
        match self.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::Int { bytes, .. } => bytes,
        }
    }
    /// Bytes of data the header declares (saturating: an absurd shape never matches a file).
    pub(crate) fn data_len(&self) -> usize {
        self.shape.iter().try_fold(self.elem_size(), |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// Parses .npy bytes; `file` names the source in every error.
pub fn parse(bytes: &[u8], file: &Path) -> Result<Array> {
    let h = parse_header(bytes, file)?;
    let body = &bytes[h.data_offset..];
    check_body_len(&h, body.len() as u64, file)?;
    Ok(Array { shape: h.shape, dtype: h.dtype, descr: h.descr, big_endian: h.big_endian, data: body.to_vec() })
}

fn check_body_len(h: &Header, len: u64, file: &Path) -> Result<()> {
    let want = h.data_len() as u64;
    if len != want {
        bail!(
            "{}: the header declares shape {:?} of {} ({want} bytes) but the file holds {len} bytes of data{}",
            file.display(),
            h.shape,
            h.descr,
            if len < want { " (truncated)" } else { "" }
        );
    }
    Ok(())
}

/// Parses the header at the start of `bytes` (which need not hold the data).
pub(crate) fn parse_header(bytes: &[u8], file: &Path) -> Result<Header> {
    let name = file.display();
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("{name}: not a NumPy .npy file (it does not start with \\x93NUMPY)");
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => bail!("{name}: unsupported .npy format version {v}"),
    };
    if bytes.len() < hstart + hlen {
        bail!("{name}: truncated .npy header");
    }
    let text =
        std::str::from_utf8(&bytes[hstart..hstart + hlen]).with_context(|| format!("{name}: header is not text"))?;
    let descr = dict_value(text, "descr").with_context(|| format!("{name}: header lacks 'descr': {text}"))?;
    let descr = descr.trim().trim_matches('\'').trim_matches('"').to_string();
    let fortran = dict_value(text, "fortran_order").with_context(|| format!("{name}: header lacks 'fortran_order'"))?;
    if fortran.trim() == "True" {
        bail!("{name}: the array is in Fortran (column-major) order; save it with np.ascontiguousarray(a) first");
    }
    let shape_s = dict_value(text, "shape").with_context(|| format!("{name}: header lacks 'shape'"))?;
    let shape: Vec<usize> = shape_s
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{name}: bad shape {shape_s}"))?;
    // `descr` comes from the file: never index it without checking (an empty or non-ASCII descr
    // once made this panic; found by tests/fuzz_readers.rs).
    let (order, code) = match (descr.get(..1), descr.get(1..)) {
        (Some(o), Some(c)) if !c.is_empty() => (o, c),
        _ => bail!("{name}: unsupported dtype '{descr}'"),
    };
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => bail!("{name}: unsupported dtype '{descr}'"),
    };
    let dtype = match code {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "i1" | "i2" | "i4" | "i8" | "u1" | "u2" | "u4" | "u8" => {
            Dtype::Int { bytes: code[1..].parse().unwrap(), signed: code.starts_with('i') }
        }
        _ => bail!("{name}: unsupported dtype '{descr}' (float32, float64 or an integer type expected)"),
    };
    Ok(Header { shape, dtype, descr, big_endian, data_offset: hstart + hlen })
}

/// Reads an (N, C) float matrix a block of rows at a time, so that arrays larger than memory
/// (ImageNet-size logits) can be streamed.
pub(crate) struct RowReader {
    file: std::io::BufReader<std::fs::File>,
    path: std::path::PathBuf,
    header: Header,
    pub rows: usize,
    pub cols: usize,
    next_row: usize,
}

impl RowReader {
    pub fn open(path: &Path) -> Result<RowReader> {
        use std::io::{Read, Seek, SeekFrom};
        verify_sum(path, || file_sha256(path))?;
        let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let len = f.metadata()?.len();
        let mut head = vec![0u8; (len as usize).min(1 << 16)];
        let mut file = std::io::BufReader::with_capacity(1 << 20, f);
        file.read_exact(&mut head).with_context(|| format!("reading {}", path.display()))?;
        let header = parse_header(&head, path)?;
        check_body_len(&header, len - header.data_offset as u64, path)?;
        let [rows, cols] = header.shape[..] else {
            bail!("{}: logits must be a 2-D (N, C) array, found shape {:?}", path.display(), header.shape)
        };
        if matches!(header.dtype, Dtype::Int { .. }) {
            bail!(
                "{}: dtype {} is an integer type; float32 or float64 logits are needed",
                path.display(),
                header.descr
            );
        }
        file.seek(SeekFrom::Start(header.data_offset as u64))?;
        Ok(RowReader { file, path: path.to_path_buf(), header, rows, cols, next_row: 0 })
    }

    /// The next `n` rows (fewer at the end) as f64, refusing NaN and infinities with the row's index.
    pub(crate) fn read_rows(&mut self, n: usize) -> Result<Vec<f64>> {
        use std::io::Read;
        let n = n.min(self.rows - self.next_row);
        let elem = self.header.elem_size();
        let mut raw = vec![0u8; n * self.cols * elem];
        self.file.read_exact(&mut raw).with_context(|| format!("reading {}", self.path.display()))?;
        let mut out = Vec::with_capacity(n * self.cols);
        for w in raw.chunks_exact(elem) {
            let mut b = [0u8; 8];
            b[..elem].copy_from_slice(w);
            if self.header.big_endian {
                b[..elem].reverse();
            }
            out.push(match self.header.dtype {
                Dtype::F32 => f32::from_le_bytes(b[..4].try_into().unwrap()) as f64,
                _ => f64::from_le_bytes(b),
            });
        }
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: row {} holds a non-finite value ({})",
                self.path.display(),
                self.next_row + i / self.cols.max(1),
                out[i]
            );
        }
        self.next_row += n;
        Ok(out)
    }
}

/// The text after `'key':` up to the next top-level comma (shapes hold commas inside parentheses).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(&format!("'{key}'")).or_else(|| text.find(&format!("\"{key}\"")))? + key.len() + 2;
    let rest = text[start..].trim_start().strip_prefix(':')?;
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Reads and parses a .npy file.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    verify_sum(path, || Ok(super::sha256_hex(&bytes)))?;
    parse(&bytes, path)
}

/// Reads an (N, C) float logit matrix as f64, refusing NaN and infinities (naming the first bad row).
pub fn read_logits(path: &Path) -> Result<(usize, usize, Vec<f64>)> {
    let a = read(path)?;
    let [n, c] = a.shape[..] else {
        bail!("{}: logits must be a 2-D (N, C) array, found shape {:?}", path.display(), a.shape)
    };
    let v = a.to_f64(path)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{}: row {} holds a non-finite value ({})", path.display(), i / c.max(1), v[i]);
    }
    Ok((n, c, v))
}

/// Reads an (N,) integer label vector.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let a = read(path)?;
    if a.shape.len() != 1 {
        bail!("{}: labels must be a 1-D (N,) array, found shape {:?}", path.display(), a.shape);
    }
    a.to_i64(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.npy")
    }

    #[test]
    fn round_trips_and_aligns_the_header() {
        let bytes = encode_f32(&[2, 3], &[1.0, -2.5, 3.0, 4.0, 5.0, 6.25]);
        let data_start = bytes.len() - 6 * 4;
        assert_eq!(data_start % 64, 0);
        let a = parse(&bytes, p()).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f64(p()).unwrap(), vec![1.0, -2.5, 3.0, 4.0, 5.0, 6.25]);
        let l = parse(&encode_i64(&[3], &[0, 7, -1]), p()).unwrap();
        assert_eq!(l.shape, vec![3]);
        assert_eq!(l.to_i64(p()).unwrap(), vec![0, 7, -1]);
    }

    fn with_header(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_other_dtypes_and_byte_orders() {
        let be = with_header(
            "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }\n",
            &[0, 0, 1, 2, 255, 255, 255, 255],
        );
        assert_eq!(parse(&be, p()).unwrap().to_i64(p()).unwrap(), vec![258, -1]);
        let u1 = with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }\n", &[0, 9, 200]);
        assert_eq!(parse(&u1, p()).unwrap().to_i64(p()).unwrap(), vec![0, 9, 200]);
        let f8 = with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }\n", &0.1f64.to_le_bytes());
        assert_eq!(parse(&f8, p()).unwrap().to_f64(p()).unwrap(), vec![0.1]);
    }

    #[test]
    fn refuses_bad_arrays_with_reasons() {
        let e = |b: &[u8]| format!("{:#}", parse(b, p()).unwrap_err());
        assert!(e(b"PK\x03\x04 not npy").contains("not a NumPy"));
        let fortran = with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }\n", &[0; 4]);
        assert!(e(&fortran).contains("Fortran"));
        let complex = with_header("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n", &[0; 8]);
        assert!(e(&complex).contains("unsupported dtype"));
        // Regression (fuzzer): an empty or non-ASCII dtype is an error, not a panic.
        let empty = with_header("{'descr': '', 'fortran_order': False, 'shape': (1,), }\n", &[0; 4]);
        assert!(e(&empty).contains("unsupported dtype"));
        let wide = with_header("{'descr': 'é4', 'fortran_order': False, 'shape': (1,), }\n", &[0; 4]);
        assert!(e(&wide).contains("unsupported dtype"));
        let short = with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n", &[0; 12]);
        assert!(e(&short).contains("truncated"));
        let ints = parse(&encode_i64(&[1], &[3]), p()).unwrap();
        assert!(format!("{:#}", ints.to_f64(p()).unwrap_err()).contains("integer"));
    }

    #[test]
    fn logits_with_nan_name_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.npy");
        write_f32(&f, &[3, 2], &[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0]).unwrap();
        let e = format!("{:#}", read_logits(&f).unwrap_err());
        assert!(e.contains("row 2") && e.contains("l.npy"), "{e}");
        write_f32(&f, &[6], &[0.0; 6]).unwrap();
        assert!(format!("{:#}", read_logits(&f).unwrap_err()).contains("2-D"));
    }
}
