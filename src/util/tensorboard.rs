//! TensorBoard event files, written and read without TensorFlow: the few protobuf messages a
//! scalar, a histogram and the HParams plugin need, declared by hand for prost (no protoc, no
//! generated code), and TFRecord framing with masked CRC-32C checksums.
//!
//! A TFRecord is `length (u64 LE) · masked_crc(length) (u32 LE) · data · masked_crc(data) (u32
//! LE)`, and each record's data is one serialized `Event`. Why not a TensorBoard crate: the ones on
//! crates.io are unmaintained and build on the `protobuf` 2.x crate, which carries a RustSec
//! advisory (RUSTSEC-2024-0437, unbounded recursion on hostile input); prost is maintained and the
//! messages needed here are a handful.
//!
//! The reader is for kdlab's own files (resuming a run, `kdlab watch`), but it treats them as
//! hostile: a torn last record (a process killed mid-write), a bad checksum or a length beyond the
//! file ends the readable part; nothing is trusted to allocate more than the file holds.
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// `tensorflow.Event` (tensorboard/compat/proto/event.proto), the fields kdlab writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The first event of a file names the format ("brain.Event:2").
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a tag and one of a scalar, a histogram or a tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "5")]
    pub histo: Option<HistogramProto>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`: which plugin owns a tag, and its data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.HistogramProto`: bucket `i` counts the values in (limit[i-1], limit[i]].
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramProto {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
}

/// `tensorflow.TensorProto`, only as the HParams plugin's placeholder (a float32 scalar 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// 1 = DT_FLOAT.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// An empty shape: a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {}

/// `tensorboard.hparams.HParamsPluginData` (plugins/hparams/plugin_data.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(message, optional, tag = "3")]
    pub session_start_info: Option<SessionStartInfo>,
    #[prost(message, optional, tag = "4")]
    pub session_end_info: Option<SessionEndInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: BTreeMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    pub group_name: String,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionEndInfo {
    /// `tensorboard.hparams.Status`: 1 success, 2 failure.
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// `google.protobuf.Value`, the scalar kinds an HParam takes.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoValue {
    #[prost(double, optional, tag = "2")]
    pub number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    pub string_value: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub bool_value: Option<bool>,
}

/// A hyper-parameter's value as the HParams dashboard shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// How a run ended, for the HParams dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionStatus {
    Success = 1,
    Failure = 2,
}

pub(crate) const SESSION_START_TAG: &str = "_hparams_/session_start_info";
pub(crate) const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// The CRC-32C of `data`, masked as TFRecord masks it (a CRC of data that holds CRCs is weak).
pub(crate) fn masked_crc(data: &[u8]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let c = CRC32C.checksum(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a file's valid prefix, each with the byte offset where its record ends, and
/// whether the file held more than that prefix (a torn or damaged tail).
pub fn read_events(path: &Path) -> Result<(Vec<(Event, u64)>, bool)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the event file {}", path.display()))?;
    Ok(decode_events(&bytes))
}

/// `read_events` on bytes already in memory.
pub(crate) fn decode_events(bytes: &[u8]) -> (Vec<(Event, u64)>, bool) {
    use prost::Message;
    let mut events = vec![];
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 12) else { break };
        let (len_bytes, len_crc) = head.split_at(8);
        if masked_crc(len_bytes).to_le_bytes() != len_crc {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        // Checked against what is there before anything is sized by it.
        let Some(end) = usize::try_from(len).ok().and_then(|l| (at + 12).checked_add(l)) else { break };
        let (Some(data), Some(crc)) = (bytes.get(at + 12..end), bytes.get(end..end.saturating_add(4))) else { break };
        if masked_crc(data).to_le_bytes() != crc {
            break;
        }
        let Ok(event) = Event::decode(data) else { break };
        at = end + 4;
        events.push((event, at as u64));
    }
    (events, at < bytes.len())
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Appends events to one file. Writes are buffered; `flush` (or dropping the writer) puts them
/// in the file, and the trainer flushes at least at every epoch's end.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `path` anew, starting with the file-version event TensorBoard expects first.
    pub fn create(path: &Path) -> Result<EventWriter> {
        let file = File::create(path).with_context(|| format!("creating the event file {}", path.display()))?;
        let mut w = EventWriter { path: path.to_path_buf(), out: BufWriter::new(file) };
        w.write(&Event { wall_time: now(), step: 0, file_version: Some("brain.Event:2".into()), summary: None })?;
        Ok(w)
    }

    /// Opens `path` to append to it; its content is kept as it is.
    pub fn append(path: &Path) -> Result<EventWriter> {
        let file = File::options()
            .append(true)
            .open(path)
            .with_context(|| format!("opening the event file {}", path.display()))?;
        Ok(EventWriter { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> Result<()> {
        use prost::Message;
        self.out
            .write_all(&frame(&event.encode_to_vec()))
            .map_err(|e| anyhow::anyhow!(super::atomic::describe_io(&e, "writing", &self.path)))
    }

    fn summary(&mut self, step: i64, value: SummaryValue) -> Result<()> {
        self.write(&Event { wall_time: now(), step, file_version: None, summary: Some(Summary { value: vec![value] }) })
    }

    /// A scalar (TensorBoard stores it as float32).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.scalars(step, &[(tag.to_string(), value)])
    }

    /// Several scalars of one step, in one event (a tag and a few bytes each, not an event each).
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue { tag: tag.clone(), simple_value: Some(*v as f32), ..Default::default() })
            .collect();
        self.write(&Event { wall_time: now(), step, file_version: None, summary: Some(Summary { value }) })
    }

    /// A histogram of `values` in `buckets` equal-width buckets between their extremes (non-finite
    /// values left out); nothing for no finite value.
    pub(crate) fn histogram(&mut self, tag: &str, step: i64, values: &[f64], buckets: usize) -> Result<()> {
        match histogram(values, buckets) {
            Some(h) => self.summary(step, SummaryValue { tag: tag.into(), histo: Some(h), ..Default::default() }),
            None => Ok(()),
        }
    }

    fn hparams(&mut self, tag: &str, data: HParamsPluginData) -> Result<()> {
        use prost::Message;
        let metadata = SummaryMetadata {
            plugin_data: Some(PluginData { plugin_name: "hparams".into(), content: data.encode_to_vec() }),
        };
        let tensor = TensorProto { dtype: 1, tensor_shape: Some(TensorShapeProto {}), float_val: vec![0.0] };
        self.summary(
            0,
            SummaryValue { tag: tag.into(), tensor: Some(tensor), metadata: Some(metadata), ..Default::default() },
        )
    }

    /// The run's hyper-parameters, as the HParams plugin's session start.
    pub(crate) fn session_start(&mut self, hparams: &BTreeMap<String, HParam>) -> Result<()> {
        let hparams = hparams
            .iter()
            .map(|(k, v)| {
                let mut p = ProtoValue::default();
                match v {
                    HParam::Number(x) => p.number_value = Some(*x),
                    HParam::Text(s) => p.string_value = Some(s.clone()),
                    HParam::Bool(b) => p.bool_value = Some(*b),
                }
                (k.clone(), p)
            })
            .collect();
        let start = SessionStartInfo { hparams, group_name: String::new(), start_time_secs: now() };
        self.hparams(
            SESSION_START_TAG,
            HParamsPluginData { version: 0, session_start_info: Some(start), ..Default::default() },
        )
    }

    /// How the run ended, as the HParams plugin's session end.
    pub(crate) fn session_end(&mut self, status: SessionStatus) -> Result<()> {
        let end = SessionEndInfo { status: status as i32, end_time_secs: now() };
        self.hparams(
            SESSION_END_TAG,
            HParamsPluginData { version: 0, session_end_info: Some(end), ..Default::default() },
        )
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| anyhow::anyhow!(super::atomic::describe_io(&e, "writing", &self.path)))
    }
}

/// Equal-width buckets between the finite values' extremes; None if there is none.
pub(crate) fn histogram(values: &[f64], buckets: usize) -> Option<HistogramProto> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if v.is_empty() {
        return None;
    }
    let buckets = buckets.max(1);
    let width = (max - min) / buckets as f64;
    let mut counts = vec![0.0; buckets];
    for &x in &v {
        // (limit[i-1], limit[i]]: a value on an inner edge belongs to the lower bucket.
        let i = if width > 0.0 { ((x - min) / width).ceil() as usize } else { 1 };
        counts[i.clamp(1, buckets) - 1] += 1.0;
    }
    let mut bucket_limit: Vec<f64> = (1..buckets).map(|i| min + width * i as f64).collect();
    bucket_limit.push(max);
    Some(HistogramProto {
        min,
        max,
        num: v.len() as f64,
        sum: v.iter().sum(),
        sum_squares: v.iter().map(|x| x * x).sum(),
        bucket_limit,
        bucket: counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tfrecord_reference_values() {
        // CRC-32C("123456789") is the catalogue's check value 0xE3069283; the mask rotates it
        // right by 15 bits and adds 0xa282ead8.
        let want = 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), want);
        // An empty record's length field (eight zero bytes).
        assert_eq!(masked_crc(&[0u8; 8]), crc_of_zero8().rotate_right(15).wrapping_add(0xa282_ead8));
    }

    /// CRC-32C of eight zero bytes, computed bit by bit here (independently of the crc crate).
    fn crc_of_zero8() -> u32 {
        let mut c = !0u32;
        for _ in 0..8 {
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_readable_part() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.out.tfevents.test");
        let mut w = EventWriter::create(&p).unwrap();
        for step in 1..=3 {
            w.scalar("loss", step, step as f64 / 2.0).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let whole = std::fs::read(&p).unwrap();
        let (events, damaged) = decode_events(&whole);
        assert!(!damaged);
        let values: Vec<(i64, f32)> = events
            .iter()
            .filter_map(|(e, _)| e.summary.as_ref().map(|s| (e.step, s.value[0].simple_value.unwrap())))
            .collect();
        assert_eq!(values, vec![(1, 0.5), (2, 1.0), (3, 1.5)]);
        assert_eq!(events.last().unwrap().1, whole.len() as u64);
        // Every cut inside the last record leaves the first three events readable, and says so.
        let third_end = events[2].1 as usize;
        for cut in third_end + 1..whole.len() {
            let (ev, damaged) = decode_events(&whole[..cut]);
            assert_eq!(ev.len(), 3, "cut at {cut}");
            assert!(damaged);
        }
        // A flipped bit in the last record's data is caught by its checksum.
        let mut bad = whole.clone();
        bad[third_end + 14] ^= 1;
        assert_eq!(decode_events(&bad).0.len(), 3);
        // A length that claims more than the file holds allocates nothing and reads nothing.
        let mut huge = whole[..third_end].to_vec();
        let len = u64::MAX.to_le_bytes();
        huge.extend_from_slice(&len);
        huge.extend_from_slice(&masked_crc(&len).to_le_bytes());
        assert_eq!(decode_events(&huge).0.len(), 3);
    }

    #[test]
    fn histogram_buckets_hold_every_value_once() {
        let values = [0.5, 1.0, 1.0, 2.0, 3.5, 4.0, f64::NAN];
        let h = histogram(&values, 7).unwrap();
        assert_eq!((h.min, h.max, h.num), (0.5, 4.0, 6.0));
        assert_eq!(h.bucket.iter().sum::<f64>(), 6.0);
        assert!((h.sum - 12.0).abs() < 1e-12 && (h.sum_squares - 34.5).abs() < 1e-12);
        // Width 0.5: (.., 1.0] holds 0.5, 1.0, 1.0; (1.5, 2.0] holds 2.0; (3.0, 3.5] 3.5; (3.5, 4] 4.
        assert_eq!(h.bucket, vec![3.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(h.bucket_limit.len(), 7);
        assert_eq!(histogram(&[2.0, 2.0], 5).unwrap().bucket, vec![2.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(histogram(&[f64::NAN], 5).is_none());
    }
}
