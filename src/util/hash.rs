//! Checksums as hex strings: the files kdlab writes (sealed JSON, checkpoints, caches) and the
//! files it reads from outside are identified by their sha256.

/// Lower-case hexadecimal of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a byte string, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}
