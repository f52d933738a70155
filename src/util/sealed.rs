//! JSON files that carry their own checksum: every JSON file kdlab writes and reads back
//! (`run.json`, `spec.json`, the checkpoint sidecars `last.json`, `best.json` and
//! `checkpoints/epoch-N.json`, a study's `probe*.json`) holds, as its first key,
//!
//! ```text
//! {
//!   "kdlab_checksum": "sha256:<64 hex digits>",
//!   ...
//! ```
//!
//! the SHA-256 of the file's text without that line. Reading verifies it before the contents are
//! parsed, so a flipped digit that still parses (an accuracy, an epoch count, a checksum of
//! weights) is caught and the file named. The file stays plain JSON for people and other tools.
//!
//! A file written before kdlab sealed its JSON has no such line: it is accepted, unverified, and
//! the first one a process reads says so on stderr; kdlab seals it when it next writes the file.
//! A damaged seal line cannot pass for an old file: a second line that names the key or holds a
//! `sha256:` value is a seal and must be exact, and an unsealed file with the key is refused.
use super::atomic;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub const KEY: &str = "kdlab_checksum";

/// The sealed text of a value: pretty JSON with the checksum line after the opening brace.
pub(crate) fn seal<T: serde::Serialize>(value: &T) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    let Some(first) = text.find('\n').filter(|_| text.starts_with("{\n")) else {
        bail!("only a JSON object can carry a checksum line")
    };
    let sum = super::hash::sha256_hex(text.as_bytes());
    text.insert_str(first + 1, &format!("  \"{KEY}\": \"sha256:{sum}\",\n"));
    Ok(text)
}

/// Writes a value as sealed JSON, atomically (see `atomic`).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic::write_bytes(path, seal(value)?.as_bytes())
}

/// Whether a file's checksum was verified, or it predates sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seal {
    Verified,
    Unsealed,
}

/// Checks `text` (the contents of `path`) and returns the JSON without its seal line.
pub(crate) fn unseal(path: &Path, text: &str) -> Result<(String, Seal)> {
    let lines: Vec<&str> = text.splitn(3, '\n').collect();
    if let [first, second, rest] = lines[..] {
        if second.contains(KEY) || second.contains("sha256:") {
            let sum = second
                .strip_prefix(&format!("  \"{KEY}\": \"sha256:"))
                .and_then(|s| s.strip_suffix("\","))
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                .with_context(|| format!("{}: its checksum line is damaged ({second:?})", path.display()))?;
            let body = format!("{first}\n{rest}");
            let actual = super::hash::sha256_hex(body.as_bytes());
            if actual != sum {
                bail!(
                    "{}: the contents do not match the checksum the file carries (sha256 {actual}, recorded {sum}): \
                     the file is damaged",
                    path.display()
                );
            }
            return Ok((body, Seal::Verified));
        }
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("{}: not valid JSON (the file is damaged)", path.display()))?;
    if value.get(KEY).is_some() {
        bail!("{}: its checksum line is out of place: the file is damaged", path.display());
    }
    Ok((text.to_string(), Seal::Unsealed))
}

static TOLD: AtomicBool = AtomicBool::new(false);

/// The first line of a sealed text file (the copy of the study file a study directory keeps): a
/// comment, so the file stays valid TOML, with the SHA-256 of the rest of the file.
const TEXT_SEAL: &str = "# kdlab_checksum sha256:";
const TEXT_NOTE: &str = "(of the lines below: kdlab's copy of the study file; edit the original instead)";

/// `text` with a first line that seals it (see [`read_text`]).
pub(crate) fn seal_text(text: &str) -> String {
    format!("{TEXT_SEAL}{} {TEXT_NOTE}\n{text}", super::hash::sha256_hex(text.as_bytes()))
}

/// Reads a text file that may be sealed by [`seal_text`]: a sealed file is verified and returned
/// without its seal line; any other file (a study file as its author wrote it) as it is.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    if !(first.contains("kdlab_checksum") || first.contains("sha256:")) {
        return Ok(text);
    }
    let recorded = first
        .strip_prefix(TEXT_SEAL)
        .and_then(|s| s.strip_suffix(&format!(" {TEXT_NOTE}")))
        .filter(|s| s.len() == 64)
        .with_context(|| format!("{}: its checksum line is damaged ({first:?})", path.display()))?;
    let actual = super::hash::sha256_hex(rest.as_bytes());
    if actual != recorded {
        bail!(
            "{}: the contents do not match the checksum on its first line (sha256 {actual}, recorded {recorded}): the \
             file is damaged, or was edited (it is kdlab's copy of the study file: edit the original, or delete this \
             copy's first line to accept the edit)",
            path.display()
        );
    }
    Ok(rest.to_string())
}

/// Reads and verifies a sealed JSON file and parses it as `T`; `what` names the kind of file in
/// errors ("a kdlab run record"). An unsealed (older) file is accepted with a note.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text (the file is damaged)", path.display()))?;
    let (body, seal) = unseal(path, &text)?;
    if seal == Seal::Unsealed && !TOLD.swap(true, Ordering::Relaxed) {
        eprintln!(
            "note: {} was written by an older kdlab without a checksum; it and files like it are read unverified \
             until kdlab writes them again",
            path.display()
        );
    }
    serde_json::from_str(&body).with_context(|| format!("{}: not {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flip_each_byte(text: &str) -> usize {
        let p = Path::new("x.json");
        let mut caught = 0;
        for i in 0..text.len() {
            let mut b = text.as_bytes().to_vec();
            b[i] ^= 0x04;
            let Ok(t) = String::from_utf8(b) else { continue };
            match unseal(p, &t) {
                Err(e) => {
                    assert!(format!("{e:#}").contains("x.json"), "{e:#}");
                    caught += 1
                }
                Ok((body, Seal::Unsealed)) => {
                    panic!("byte {i}: a damaged sealed file passed for an old one: {body}")
                }
                Ok((_, Seal::Verified)) => panic!("byte {i}: a damaged file passed its checksum"),
            }
        }
        caught
    }

    #[test]
    fn every_single_flipped_byte_is_caught() {
        let v = json!({"epoch": 3, "test_acc": 0.8125, "history": [{"lr": 0.05}], "name": "r"});
        let text = seal(&v).unwrap();
        assert!(text.starts_with("{\n  \"kdlab_checksum\": \"sha256:"), "{text}");
        let (body, seal) = unseal(Path::new("x.json"), &text).unwrap();
        assert_eq!(seal, Seal::Verified);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), v);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["epoch"], 3, "still plain JSON");
        assert_eq!(flip_each_byte(&text), text.len());
    }

    #[test]
    fn a_sealed_text_reads_back_as_written_and_a_changed_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("study.toml");
        let text = "name = 'x'\nseeds = [0, 1]\n";
        std::fs::write(&p, seal_text(text)).unwrap();
        assert_eq!(read_text(&p).unwrap(), text);
        let sealed = seal_text(text).into_bytes();
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 0x02;
            std::fs::write(&p, &b).unwrap();
            match read_text(&p) {
                Ok(t) => panic!("byte {i}: read as {t:?}"),
                Err(e) => assert!(format!("{e:#}").contains("study.toml"), "{e:#}"),
            }
        }
        std::fs::write(&p, text).unwrap();
        assert_eq!(read_text(&p).unwrap(), text, "a study file as its author wrote it");
    }

    #[test]
    fn an_old_file_without_a_seal_is_accepted_as_unsealed() {
        let text = serde_json::to_string_pretty(&json!({"epoch": 3})).unwrap();
        let (body, seal) = unseal(Path::new("old.json"), &text).unwrap();
        assert_eq!((body.as_str(), seal), (text.as_str(), Seal::Unsealed));
        let err = unseal(Path::new("old.json"), "{\"kdlab_checksum\": \"x\", \"epoch\": 3}").unwrap_err();
        assert!(format!("{err:#}").contains("out of place"), "{err:#}");
    }
}
