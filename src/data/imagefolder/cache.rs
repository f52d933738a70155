//! The decoded-folder cache file: magic, version, a JSON header, the two splits, and the sha256 of
//! it all.
use super::*;

// ---- The cache file: magic, version, a JSON header, the two splits, and the sha256 of it all. ----

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct CacheHeader {
    pub(super) key: String,
    pub(super) shape: Shape,
    pub(super) train: usize,
    pub(super) test: usize,
    pub(super) note: String,
}

/// Writes the decoded splits to the cache file `path` for `key` (atomically).
pub fn write_cache(path: &Path, key: &str, train: &Split, test: &Split, note: &str) -> Result<()> {
    use sha2::{Digest, Sha256};
    let header = serde_json::to_vec(&CacheHeader {
        key: key.to_string(),
        shape: train.shape,
        train: train.len(),
        test: test.len(),
        note: note.to_string(),
    })?;
    let mut bytes =
        Vec::with_capacity(64 + header.len() + train.images.len() + test.images.len() + 2 * (train.len() + test.len()));
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for s in [train, test] {
        for y in &s.labels {
            bytes.extend_from_slice(&y.to_le_bytes());
        }
        bytes.extend_from_slice(&s.images);
    }
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    crate::util::atomic::write_via_path(path, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| anyhow::anyhow!(crate::util::atomic::describe_io(&e, "writing", tmp)))
    })
}

/// The cached splits when the file is valid and made for `key`; None when made for another key;
/// an error naming the file when it is damaged. The checksum is not a signature: a file that
/// passes it is still checked to be consistent (sizes that fit the file, a shape kdlab makes,
/// labels below `classes`) before any of it is used.
pub fn read_cache(path: &Path, key: &str, classes: usize) -> Result<Option<(Split, Split, String)>> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading the image cache {}", path.display()))?;
    let damaged = |what: &str| anyhow::anyhow!("the image cache {} is damaged ({what})", path.display());
    if bytes.len() < 20 + 32 || &bytes[..8] != CACHE_MAGIC {
        return Err(damaged("not a kdlab image cache"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(damaged("checksum mismatch"));
    }
    if u32::from_le_bytes(body[8..12].try_into().unwrap()) != CACHE_VERSION {
        return Ok(None);
    }
    let hlen = usize::try_from(u64::from_le_bytes(body[12..20].try_into().unwrap())).unwrap_or(usize::MAX);
    let header: CacheHeader = serde_json::from_slice(
        20usize.checked_add(hlen).and_then(|end| body.get(20..end)).ok_or_else(|| damaged("truncated header"))?,
    )
    .map_err(|e| damaged(&e.to_string()))?;
    if header.key != key {
        return Ok(None);
    }
    let shape = header.shape;
    if ![1, 3].contains(&shape.c) || shape.h == 0 || shape.w == 0 {
        return Err(damaged(&format!("its header gives the shape {shape}")));
    }
    let mut at = 20 + hlen;
    let mut take = |n: usize| -> Result<Split> {
        let need = shape
            .c
            .checked_mul(shape.h)
            .and_then(|p| p.checked_mul(shape.w))
            .and_then(|p| p.checked_add(2))
            .and_then(|p| p.checked_mul(n));
        let chunk = need.and_then(|need| body.get(at..at.checked_add(need)?)).ok_or_else(|| damaged("truncated"))?;
        at += chunk.len();
        let labels: Vec<u16> = chunk[..2 * n].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        if let Some(y) = labels.iter().find(|&&y| y as usize >= classes) {
            return Err(damaged(&format!("label {y} for {classes} classes")));
        }
        Ok(Split { images: chunk[2 * n..].to_vec(), labels, shape })
    };
    let train = take(header.train)?;
    let test = take(header.test)?;
    if at != body.len() {
        return Err(damaged("trailing bytes"));
    }
    Ok(Some((train, test, header.note)))
}
