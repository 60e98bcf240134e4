//! TensorBoard event files, written by rotor: `RUN_DIR/tensorboard/events.out.tfevents.<secs>.<host>`,
//! TFRecord-framed (length, masked CRC-32C of the length, data, masked CRC-32C of the data) `Event`
//! protobufs: the first carries `file_version = "brain.Event:2"`, then one event per metrics line
//! (every numeric field as a `simple_value` scalar tagged `<split>/<name>`) and the validation
//! sample grids as PNG `Summary.Image`s. Point `tensorboard --logdir runs/` at the runs.
//!
//! Wire format (tensorflow/core/util/event.proto, summary.proto): `Event { double wall_time = 1;
//! int64 step = 2; string file_version = 3; Summary summary = 5; }`, `Summary { repeated Value
//! value = 1; }`, `Value { string tag = 1; float simple_value = 2; Image image = 4; }`,
//! `Image { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }`,
//! `SessionLog session_log = 7` of the event with `SessionLog { SessionStatus status = 1; }` (START = 1).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{TrainError, data::tfrecord::frame_record};

/// Appends event records to one event file.
pub struct TensorBoardWriter {
    path: PathBuf,
    file: File,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An `Event` with the given step and payload field (`file_version` or `summary`).
fn event(step: i64, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&now().to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    payload(&mut e);
    e
}

/// One `Summary.Value` holding a scalar.
fn scalar_value(tag: &str, value: f32) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(&mut v, 1, tag.as_bytes());
    key(&mut v, 2, 5);
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// One `Summary.Value` holding an encoded image.
fn image_value(tag: &str, png: &[u8], height: u32, width: u32, channels: u32) -> Vec<u8> {
    let mut img = Vec::new();
    key(&mut img, 1, 0);
    varint(&mut img, u64::from(height));
    key(&mut img, 2, 0);
    varint(&mut img, u64::from(width));
    key(&mut img, 3, 0);
    varint(&mut img, u64::from(channels));
    bytes_field(&mut img, 4, png);
    let mut v = Vec::new();
    bytes_field(&mut v, 1, tag.as_bytes());
    bytes_field(&mut v, 4, &img);
    v
}

impl TensorBoardWriter {
    /// Creates a new event file in `dir` (a new file per process start: TensorBoard reads them
    /// all, in order). `resumed_at`: the checkpoint step a resumed run continues from; a
    /// `SessionLog START` event at the next step makes TensorBoard drop what the interrupted run
    /// logged after it (steps about to be recomputed), as metrics.jsonl does.
    pub fn open(dir: &Path, resumed_at: Option<usize>) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| "localhost".into());
        let secs = now() as u64;
        let mut path = dir.join(format!("events.out.tfevents.{secs}.{host}"));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("events.out.tfevents.{secs}.{host}.{n}"));
            n += 1;
        }
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = Self { path, file };
        w.append(&event(0, |e| bytes_field(e, 3, b"brain.Event:2")))?;
        if let Some(step) = resumed_at {
            // SessionLog { status = START (1) } in Event field 7.
            let start = [0x08, 0x01];
            w.append(&event(step as i64 + 1, |e| bytes_field(e, 7, &start)))?;
        }
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, event: &[u8]) -> Result<(), TrainError> {
        let mut rec = Vec::with_capacity(event.len() + 16);
        frame_record(&mut rec, event);
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    fn summary(&mut self, step: i64, values: &[Vec<u8>]) -> Result<(), TrainError> {
        let mut summary = Vec::new();
        for v in values {
            bytes_field(&mut summary, 1, v);
        }
        self.append(&event(step, |e| bytes_field(e, 5, &summary)))
    }

    /// Scalars of one step, `(tag, value)`.
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> Result<(), TrainError> {
        let values: Vec<Vec<u8>> = values.iter().map(|(t, v)| scalar_value(t, *v)).collect();
        self.summary(step, &values)
    }

    /// A PNG image of one step.
    pub fn image(
        &mut self,
        step: i64,
        tag: &str,
        png: &[u8],
        [height, width, channels]: [u32; 3],
    ) -> Result<(), TrainError> {
        self.summary(step, &[image_value(tag, png, height, width, channels)])
    }

    /// A metrics line: every numeric field but `step` as a scalar `<split>/<name>` (split from
    /// the line's `split`, default `train`).
    pub fn metrics_line(&mut self, value: &serde_json::Value) -> Result<(), TrainError> {
        let Some(obj) = value.as_object() else {
            return Ok(());
        };
        let Some(step) = obj.get("step").and_then(|s| s.as_i64()) else {
            return Ok(());
        };
        let split = obj.get("split").and_then(|s| s.as_str()).unwrap_or("train");
        let scalars: Vec<(String, f32)> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| v.as_f64().map(|f| (format!("{split}/{k}"), f as f32)))
            .collect();
        if scalars.is_empty() {
            return Ok(());
        }
        self.scalars(step, &scalars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        v.clear();
        varint(&mut v, 0);
        assert_eq!(v, [0]);
    }
}
