//! TFRecord files and the `tf.Example` protobuf, as far as BAIR needs them.
//!
//! Framing of each record: `u64` length (little-endian), `u32` masked CRC-32C of those 8 bytes,
//! the data, `u32` masked CRC-32C of the data; `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`.
//! [`index_records`] walks a file reading only the length fields (checking their CRCs), so a
//! 44k-trajectory dataset opens without reading its frames; [`read_record`] checks the data's
//! CRC when a record is read. `tf.Example` = `Features` (field 1) = repeated map entries
//! (field 1: key string 1, `Feature` 2); `Feature` = `bytes_list` 1 | `float_list` 2 |
//! `int64_list` 3, each a list whose `value` is field 1 (floats and ints packed or not).

use std::{collections::BTreeMap, fs::File, os::unix::fs::FileExt, path::Path};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Where one record's data lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte offset of the record's length field.
    pub offset: u64,
    /// Data length.
    pub len: u64,
}

/// The records of a TFRecord file, and the reason the walk stopped early, if it did (a length
/// whose CRC fails or that runs past the end: the rest of the file cannot be framed).
pub fn index_records(path: &Path) -> std::io::Result<(Vec<RecordSpan>, Option<String>)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut spans = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let mut head = [0u8; 12];
        if offset + 12 > size {
            return Ok((
                spans,
                Some(format!(
                    "{}: truncated record header at byte {offset} ({} bytes left)",
                    path.display(),
                    size - offset
                )),
            ));
        }
        file.read_exact_at(&mut head, offset)?;
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
        if crc != masked_crc(&head[..8]) {
            return Ok((
                spans,
                Some(format!(
                    "{}: the length of the record at byte {offset} fails its CRC (the file is \
                     corrupt from there: {} bytes not read)",
                    path.display(),
                    size - offset
                )),
            ));
        }
        let end = offset + 12 + len + 4;
        if end > size {
            return Ok((
                spans,
                Some(format!(
                    "{}: the record at byte {offset} ({len} bytes) runs past the end of the file \
                     (truncated)",
                    path.display()
                )),
            ));
        }
        spans.push(RecordSpan { offset, len });
        offset = end;
    }
    Ok((spans, None))
}

/// Reads one record's data and checks its CRC; the error names the file and offset.
pub fn read_record(file: &File, path: &Path, span: RecordSpan) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; span.len as usize + 4];
    file.read_exact_at(&mut buf, span.offset + 12)
        .map_err(|e| format!("{}: record at byte {}: {e}", path.display(), span.offset))?;
    let crc = u32::from_le_bytes(buf[span.len as usize..].try_into().expect("4 bytes"));
    buf.truncate(span.len as usize);
    if crc != masked_crc(&buf) {
        return Err(format!(
            "{}: the record at byte {} fails its data CRC (corrupt)",
            path.display(),
            span.offset
        ));
    }
    Ok(buf)
}

/// Appends one framed record (used to write TFRecords, e.g. in tests).
pub fn frame_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// One `tf.train.Feature`.
#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// `bytes_list`.
    Bytes(Vec<Vec<u8>>),
    /// `float_list`.
    Float(Vec<f32>),
    /// `int64_list`.
    Int64(Vec<i64>),
}

/// A parsed `tf.train.Example`: its feature map.
pub type Example = BTreeMap<String, Feature>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| format!("field of {n} bytes runs past its message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: `(number, wire type, payload)`; varints and fixed values come back as
    /// their bytes.
    fn field(&mut self) -> Result<(u64, u8, &'a [u8]), String> {
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        let payload = match wire {
            0 => {
                let start = self.pos;
                self.varint()?;
                &self.buf[start..self.pos]
            }
            1 => self.bytes(8)?,
            2 => {
                let n = self.varint()? as usize;
                self.bytes(n)?
            }
            5 => self.bytes(4)?,
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok((key >> 3, wire, payload))
    }
}

fn parse_feature(buf: &[u8]) -> Result<Feature, String> {
    let mut r = Reader::new(buf);
    let mut out = None;
    while !r.done() {
        let (num, _, list) = r.field()?;
        let mut l = Reader::new(list);
        out = Some(match num {
            1 => {
                let mut v = Vec::new();
                while !l.done() {
                    let (n, _, b) = l.field()?;
                    if n == 1 {
                        v.push(b.to_vec());
                    }
                }
                Feature::Bytes(v)
            }
            2 => {
                let mut v = Vec::new();
                while !l.done() {
                    let (n, wire, b) = l.field()?;
                    if n != 1 {
                        continue;
                    }
                    // Packed (wire type 2) or one fixed32 (wire type 5): the payload is floats.
                    let _ = wire;
                    let chunks = b;
                    if chunks.len() % 4 != 0 {
                        return Err("float_list payload not a multiple of 4 bytes".into());
                    }
                    v.extend(
                        chunks
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
                    );
                }
                Feature::Float(v)
            }
            3 => {
                let mut v = Vec::new();
                while !l.done() {
                    let (n, wire, b) = l.field()?;
                    if n != 1 {
                        continue;
                    }
                    let mut p = Reader::new(b);
                    if wire == 2 {
                        while !p.done() {
                            v.push(p.varint()? as i64);
                        }
                    } else {
                        v.push(p.varint()? as i64);
                    }
                }
                Feature::Int64(v)
            }
            _ => continue,
        });
    }
    out.ok_or_else(|| "a Feature with no list".to_string())
}

/// Parses a serialized `tf.train.Example`.
pub fn parse_example(buf: &[u8]) -> Result<Example, String> {
    let mut out = Example::new();
    let mut r = Reader::new(buf);
    while !r.done() {
        let (num, _, features) = r.field()?;
        if num != 1 {
            continue;
        }
        let mut f = Reader::new(features);
        while !f.done() {
            let (num, _, entry) = f.field()?;
            if num != 1 {
                continue;
            }
            let mut e = Reader::new(entry);
            let (mut key, mut value) = (None, None);
            while !e.done() {
                match e.field()? {
                    (1, _, k) => {
                        key = Some(
                            String::from_utf8(k.to_vec())
                                .map_err(|_| "a feature key is not UTF-8".to_string())?,
                        )
                    }
                    (2, _, v) => value = Some(parse_feature(v)?),
                    _ => {}
                }
            }
            if let (Some(k), Some(v)) = (key, value) {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_field(out: &mut Vec<u8>, num: u64, payload: &[u8]) {
    put_varint(out, (num << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Serializes a `tf.train.Example` (floats and ints packed, as TensorFlow writes them).
pub fn encode_example(example: &Example) -> Vec<u8> {
    let mut features = Vec::new();
    for (key, feature) in example {
        let mut list = Vec::new();
        let num = match feature {
            Feature::Bytes(v) => {
                for b in v {
                    put_len_field(&mut list, 1, b);
                }
                1
            }
            Feature::Float(v) => {
                let packed: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                put_len_field(&mut list, 1, &packed);
                2
            }
            Feature::Int64(v) => {
                let mut packed = Vec::new();
                for i in v {
                    put_varint(&mut packed, *i as u64);
                }
                put_len_field(&mut list, 1, &packed);
                3
            }
        };
        let mut feat = Vec::new();
        put_len_field(&mut feat, num, &list);
        let mut entry = Vec::new();
        put_len_field(&mut entry, 1, key.as_bytes());
        put_len_field(&mut entry, 2, &feat);
        put_len_field(&mut features, 1, &entry);
    }
    let mut out = Vec::new();
    put_len_field(&mut out, 1, &features);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn examples_round_trip() {
        let mut e = Example::new();
        e.insert(
            "0/image".into(),
            Feature::Bytes(vec![vec![1, 2, 3], vec![]]),
        );
        e.insert("0/action".into(), Feature::Float(vec![0.5, -1.25]));
        e.insert("n".into(), Feature::Int64(vec![3, -1, 300]));
        assert_eq!(parse_example(&encode_example(&e)).unwrap(), e);
    }
}
