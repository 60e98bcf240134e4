//! Code-index shards: the tokens a stage-2 generative model trains on (`launch encode` writes
//! them, `launch decode` turns them back into images or clips).
//!
//! A token directory holds `manifest.json` ([`TokenManifest`]) and shards `shard-00000.bin`,
//! `shard-00001.bin`, ...: shard `i` holds samples `i * shard_samples ..` (up to `shard_samples`
//! of them), each sample's index maps `[levels, h, w]` in row-major order (video models:
//! frame-major maps `[levels, latent_frames * h, w]`), as little-endian `u16` when the codebook
//! has at most 65536 codes, else `u32`. No header: the manifest says how to read them.
//!
//! Writing is resumable ([`TokenWriter`]): a shard is written as `.partial`, fsynced and renamed;
//! the manifest lists the finished shards with their sha256 and is rewritten atomically after
//! each one. Reopening the directory for the same job keeps the shards that verify and redoes
//! the others; a manifest of another job (checkpoint, config, split, shard size) is refused.

use std::{
    fs::File,
    io::Write,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Version of the shard and manifest format.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Samples per shard unless told otherwise.
pub const DEFAULT_SHARD_SAMPLES: usize = 1024;
/// The layout, in words (recorded in the manifest for whoever reads the shards).
pub const LAYOUT: &str = "shard i holds samples [i*shard_samples, ...); per sample, its index maps \
[levels, h, w] row-major (map_shape; video models: frame-major, h = latent_frames * the latent \
height); little-endian dtype; no header";

/// What can go wrong with a token directory.
#[derive(Debug, Error)]
pub enum TokenError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what the manifest says (truncated, corrupted, unreadable).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds tokens of another job.
    #[error(
        "{dir} holds tokens written with other settings ({differences}): use a new --out \
         directory (or remove this one to start over)"
    )]
    Mismatch {
        /// The token directory.
        dir: PathBuf,
        /// Each differing field, `field: recorded vs now`.
        differences: String,
    },
    /// The request does not fit the directory or the manifest.
    #[error("{path}: {reason}")]
    Invalid {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path, source: std::io::Error) -> TokenError {
    TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The integer type of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Little-endian u16 (codebooks of up to 65536 codes).
    U16,
    /// Little-endian u32.
    U32,
}

impl TokenDtype {
    /// The narrowest type that holds every index of a codebook of `codebook_size` codes.
    pub fn for_codebook(codebook_size: usize) -> Self {
        if codebook_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    /// Bytes per index.
    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// The little-endian bytes of `tokens` (each must fit the type).
    pub fn encode(self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Self::U16 => tokens
                .iter()
                .flat_map(|t| (*t as u16).to_le_bytes())
                .collect(),
            Self::U32 => tokens.iter().flat_map(|t| t.to_le_bytes()).collect(),
        }
    }

    /// The indices of little-endian `bytes` (a whole number of indices).
    pub fn decode(self, bytes: &[u8]) -> Vec<u32> {
        match self {
            Self::U16 => bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect(),
            Self::U32 => bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }
    }
}

impl std::fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::U16 => "u16",
            Self::U32 => "u32",
        })
    }
}

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name in the token directory.
    pub file: String,
    /// Index of its first sample in the split.
    pub first_sample: usize,
    /// Samples in it.
    pub samples: usize,
    /// sha256 of the file, hex.
    pub sha256: String,
}

/// `manifest.json`: what the shards hold, and which of them are finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenManifest {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The model kind (`vq_model`, `vit_vq`, ...).
    pub model_kind: String,
    /// Hash of the settings that decide the tokens (model, data geometry).
    pub config_hash: String,
    /// The checkpoint directory the tokens were computed with (informative: the weights are
    /// identified by `model_sha256`).
    pub checkpoint: PathBuf,
    /// Its training step.
    pub checkpoint_step: Option<usize>,
    /// sha256 of the checkpoint's model weights (`model.mpk`).
    pub model_sha256: String,
    /// `train` or `val`.
    pub split: String,
    /// Samples in the split (all shards together).
    pub samples: usize,
    /// Samples per shard (the last one may hold fewer).
    pub shard_samples: usize,
    /// Indices per sample (`levels * h * w`).
    pub tokens_per_sample: usize,
    /// The index maps of one sample, `[levels, h, w]`.
    pub map_shape: [usize; 3],
    /// Latent frames of a video model's frame-major maps (1 for images).
    pub latent_frames: usize,
    /// The integer type.
    pub dtype: TokenDtype,
    /// Codes per level.
    pub codebook_size: usize,
    /// Quantizer levels (residual depth; 1 for a plain quantizer).
    pub levels: usize,
    /// Frames per sample (1: images).
    pub frames: usize,
    /// Image channels.
    pub channels: usize,
    /// Side of the (square) inputs.
    pub resolution: usize,
    /// [`LAYOUT`].
    pub layout: String,
    /// Finished shards, by first sample.
    pub shards: Vec<ShardInfo>,
}

/// The file name of shard `i`.
pub fn shard_file(i: usize) -> String {
    format!("shard-{i:05}.bin")
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn fsync_dir(dir: &Path) -> Result<(), TokenError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Writes `bytes` to `path` through `tmp`: write, fsync, rename, fsync the directory.
fn write_via(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    let mut f = File::create(tmp).map_err(|e| io(tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl TokenManifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let m: Self = serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: format!("not a token manifest: {e}"),
        })?;
        if m.format != FORMAT_VERSION {
            return Err(TokenError::Invalid {
                path,
                reason: format!(
                    "token format {} (this build reads format {FORMAT_VERSION})",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// Writes it atomically to `dir/manifest.json`.
    pub fn write(&self, dir: &Path) -> Result<(), TokenError> {
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        write_via(
            &dir.join(format!("{MANIFEST_FILE}.tmp")),
            &dir.join(MANIFEST_FILE),
            format!("{text}\n").as_bytes(),
        )
    }

    /// Shards of the split when complete.
    pub fn num_shards(&self) -> usize {
        self.samples.div_ceil(self.shard_samples.max(1))
    }

    /// The samples of shard `i`.
    pub fn shard_range(&self, i: usize) -> Range<usize> {
        let s = self.shard_samples.max(1);
        (i * s).min(self.samples)..((i + 1) * s).min(self.samples)
    }

    /// Samples in the finished shards.
    pub fn finished_samples(&self) -> usize {
        self.shards.iter().map(|s| s.samples).sum()
    }

    /// True when every shard is finished.
    pub fn is_complete(&self) -> bool {
        self.finished_samples() == self.samples
    }

    /// The fields that decide the tokens and differ between `self` (recorded) and `now`, as
    /// `field: recorded vs now` (the checkpoint's path, the layout text and the shard list are
    /// not compared).
    pub fn differences(&self, now: &Self) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).expect("manifest serializes"),
            serde_json::to_value(now).expect("manifest serializes"),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        a.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "checkpoint" | "layout" | "shards"))
            .filter_map(|(k, va)| {
                let vb = b.get(k).unwrap_or(&serde_json::Value::Null);
                (va != vb).then(|| format!("{k}: {va} recorded vs {vb} now"))
            })
            .collect()
    }

    /// Checks that `shard` (an entry of this manifest) is the file it names in `dir`, of the
    /// right size and sha256, and returns its bytes.
    fn verified_bytes(&self, dir: &Path, shard: &ShardInfo) -> Result<Vec<u8>, TokenError> {
        let path = dir.join(&shard.file);
        let corrupt = |reason: String| TokenError::Corrupt {
            path: path.clone(),
            reason,
        };
        let i = shard.first_sample / self.shard_samples.max(1);
        if shard.file != shard_file(i)
            || shard.first_sample != i * self.shard_samples
            || self.shard_range(i).len() != shard.samples
        {
            return Err(corrupt(format!(
                "the manifest's entry {shard:?} does not fit {} samples of {} per shard",
                self.samples, self.shard_samples
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let want = shard.samples * self.tokens_per_sample * self.dtype.bytes();
        if bytes.len() != want {
            return Err(corrupt(format!(
                "{} bytes, expected {want}: truncated or corrupted",
                bytes.len()
            )));
        }
        let got = sha256_hex(&bytes);
        if got != shard.sha256 {
            return Err(corrupt(format!(
                "sha256 {got} does not match the manifest ({}): corrupted",
                shard.sha256
            )));
        }
        Ok(bytes)
    }

    /// The indices of a finished shard, `samples * tokens_per_sample` of them, after checking its
    /// size and sha256.
    pub fn read_shard(&self, dir: &Path, shard: &ShardInfo) -> Result<Vec<u32>, TokenError> {
        Ok(self.dtype.decode(&self.verified_bytes(dir, shard)?))
    }
}

/// Writes the shards of one job into a token directory, resuming what an earlier run left.
#[derive(Debug)]
pub struct TokenWriter {
    dir: PathBuf,
    manifest: TokenManifest,
}

impl TokenWriter {
    /// Opens `dir` for the job `header` describes (its `shards` are ignored): a new or empty
    /// directory starts fresh; one whose manifest records the same job keeps the shards that
    /// verify (the others are redone, with a warning); a manifest of another job is a
    /// [`TokenError::Mismatch`], and a non-empty directory without a manifest is refused.
    pub fn open(dir: &Path, header: TokenManifest) -> Result<Self, TokenError> {
        let mut manifest = TokenManifest {
            shards: Vec::new(),
            format: FORMAT_VERSION,
            ..header
        };
        if manifest.shard_samples == 0 || manifest.tokens_per_sample == 0 {
            return Err(TokenError::Invalid {
                path: dir.to_path_buf(),
                reason: "shard_samples and tokens_per_sample must be positive".into(),
            });
        }
        if TokenDtype::for_codebook(manifest.codebook_size) != manifest.dtype {
            return Err(TokenError::Invalid {
                path: dir.to_path_buf(),
                reason: format!(
                    "dtype {:?} for a codebook of {} codes",
                    manifest.dtype, manifest.codebook_size
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let old = TokenManifest::read(dir)?;
            let differences = old.differences(&manifest);
            if !differences.is_empty() {
                return Err(TokenError::Mismatch {
                    dir: dir.to_path_buf(),
                    differences: differences.join("; "),
                });
            }
            for shard in &old.shards {
                match old.verified_bytes(dir, shard) {
                    Ok(_) => manifest.shards.push(shard.clone()),
                    Err(e) => {
                        tracing::warn!("shard {} is unusable ({e}): writing it again", shard.file);
                        // A stray, wrong file must not look finished to another reader.
                        let _ = std::fs::remove_file(dir.join(&shard.file));
                    }
                }
            }
        } else {
            let foreign: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| io(dir, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| {
                    !(n.starts_with("shard-") || n.starts_with(&format!("{MANIFEST_FILE}.")))
                })
                .collect();
            if !foreign.is_empty() {
                return Err(TokenError::Invalid {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "not empty ({}) and no {MANIFEST_FILE}: not a token directory; use a new \
                         or empty --out directory",
                        foreign.join(", ")
                    ),
                });
            }
        }
        // Leftovers of an interrupted shard.
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("shard-") && name.ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        manifest.shards.sort_by_key(|s| s.first_sample);
        manifest.write(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The manifest as written so far.
    pub fn manifest(&self) -> &TokenManifest {
        &self.manifest
    }

    /// The shards still to write, in order.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.manifest.num_shards())
            .filter(|i| {
                !self
                    .manifest
                    .shards
                    .iter()
                    .any(|s| s.file == shard_file(*i))
            })
            .collect()
    }

    /// Writes shard `i` (`tokens`: its samples' indices, `tokens_per_sample` each, every one
    /// below `codebook_size`) and records it in the manifest.
    pub fn write_shard(&mut self, i: usize, tokens: &[u32]) -> Result<(), TokenError> {
        let m = &self.manifest;
        let range = m.shard_range(i);
        let file = shard_file(i);
        let path = self.dir.join(&file);
        let invalid = |reason: String| TokenError::Invalid {
            path: path.clone(),
            reason,
        };
        if range.is_empty() {
            return Err(invalid(format!("no shard {i} in {} samples", m.samples)));
        }
        if tokens.len() != range.len() * m.tokens_per_sample {
            return Err(invalid(format!(
                "{} indices for {} samples of {}",
                tokens.len(),
                range.len(),
                m.tokens_per_sample
            )));
        }
        if let Some(t) = tokens.iter().find(|t| **t as usize >= m.codebook_size) {
            return Err(invalid(format!(
                "index {t} outside the codebook of {} codes",
                m.codebook_size
            )));
        }
        let bytes = m.dtype.encode(tokens);
        write_via(&self.dir.join(format!("{file}.partial")), &path, &bytes)?;
        let info = ShardInfo {
            file,
            first_sample: range.start,
            samples: range.len(),
            sha256: sha256_hex(&bytes),
        };
        self.manifest.shards.retain(|s| s.file != info.file);
        self.manifest.shards.push(info);
        self.manifest.shards.sort_by_key(|s| s.first_sample);
        self.manifest.write(&self.dir)
    }
}

/// A hash of the settings that decide a run's tokens: the model and the data geometry (source,
/// resolution, resize, frames, frame stride, clip step). Other settings (optimizer, logging,
/// loader threads) may change between resumed encodes.
pub fn config_hash(cfg: &crate::TrainConfig) -> String {
    let d = &cfg.data;
    let v = serde_json::json!({
        "model": cfg.model,
        "source": d.source,
        "resolution": d.resolution,
        "resize": d.resize,
        "frames": d.frames,
        "frame_stride": d.frame_stride,
        "clip_step": d.clip_step,
    });
    sha256_hex(v.to_string().as_bytes())[..16].to_string()
}

/// The sha256 its manifest records for a checkpoint's model weights (`model.mpk`): what
/// identifies the weights tokens were computed with.
pub fn checkpoint_model_sha256(checkpoint: &Path) -> Result<String, TokenError> {
    let path = checkpoint.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["files"]["model.mpk"].as_str().map(str::to_string))
        .ok_or_else(|| TokenError::Corrupt {
            path,
            reason: "no sha256 of model.mpk in the checkpoint's manifest".into(),
        })
}

pub use crate::metrics::value_to_byte;

/// Frame `f` of channels-first `values` (`[frames, c, h, w]`, `c` 1 or 3) as RGB.
fn frame_rgb(values: &[f32], f: usize, [c, h, w]: [usize; 3]) -> image::RgbImage {
    let frame = &values[f * c * h * w..(f + 1) * c * h * w];
    image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        let ch = |k: usize| value_to_byte(frame[(if c == 1 { 0 } else { k }) * h * w + p]);
        image::Rgb([ch(0), ch(1), ch(2)])
    })
}

fn image_error(path: &Path, e: image::ImageError) -> TokenError {
    io(path, std::io::Error::other(e.to_string()))
}

/// Saves `frames` channels-first frames (`values`: `[frames, c, h, w]` in `[-1, 1]`) side by
/// side as one PNG of `frames * w` by `h` (grayscale when `c` is 1): an image when `frames` is 1.
pub fn save_frames_png(
    path: &Path,
    values: &[f32],
    frames: usize,
    chw: [usize; 3],
) -> Result<(), TokenError> {
    let [c, h, w] = chw;
    let mut strip = image::RgbImage::new((frames * w) as u32, h as u32);
    for f in 0..frames {
        image::imageops::replace(&mut strip, &frame_rgb(values, f, chw), (f * w) as i64, 0);
    }
    let result = if c == 1 {
        image::DynamicImage::ImageRgb8(strip).to_luma8().save(path)
    } else {
        strip.save(path)
    };
    result.map_err(|e| image_error(path, e))
}

/// Saves a clip (`values`: `[frames, c, h, w]` in `[-1, 1]`) as an animated GIF, 10 frames per
/// second, looping.
pub fn save_clip_gif(
    path: &Path,
    values: &[f32],
    frames: usize,
    chw: [usize; 3],
) -> Result<(), TokenError> {
    use image::{
        Delay, Frame,
        codecs::gif::{GifEncoder, Repeat},
    };
    let file = File::create(path).map_err(|e| io(path, e))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite)
        .map_err(|e| image_error(path, e))?;
    for f in 0..frames {
        let rgba = image::DynamicImage::ImageRgb8(frame_rgb(values, f, chw)).to_rgba8();
        enc.encode_frame(Frame::from_parts(
            rgba,
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        ))
        .map_err(|e| image_error(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(samples: usize, shard_samples: usize, codebook_size: usize) -> TokenManifest {
        TokenManifest {
            format: FORMAT_VERSION,
            model_kind: "vq_model".into(),
            config_hash: "abc".into(),
            checkpoint: "runs/x/checkpoints/step-00000002".into(),
            checkpoint_step: Some(2),
            model_sha256: "00ff".into(),
            split: "val".into(),
            samples,
            shard_samples,
            tokens_per_sample: 2 * 2 * 3,
            map_shape: [2, 2, 3],
            latent_frames: 1,
            dtype: TokenDtype::for_codebook(codebook_size),
            codebook_size,
            levels: 2,
            frames: 1,
            channels: 3,
            resolution: 8,
            layout: LAYOUT.into(),
            shards: Vec::new(),
        }
    }

    fn tokens(range: Range<usize>, per: usize, k: usize) -> Vec<u32> {
        (range.start * per..range.end * per)
            .map(|v| (v * 7919 % k) as u32)
            .collect()
    }

    #[test]
    fn dtype_is_the_narrowest_and_little_endian() {
        assert_eq!(TokenDtype::for_codebook(65536), TokenDtype::U16);
        assert_eq!(TokenDtype::for_codebook(65537), TokenDtype::U32);
        assert_eq!(TokenDtype::U16.encode(&[1, 0xfffe]), vec![1, 0, 0xfe, 0xff]);
        assert_eq!(TokenDtype::U32.encode(&[0x0102_0304]), vec![4, 3, 2, 1]);
        for dtype in [TokenDtype::U16, TokenDtype::U32] {
            let t = vec![0, 1, 517, 65535];
            assert_eq!(dtype.decode(&dtype.encode(&t)), t);
        }
        assert_eq!(
            TokenDtype::U32.decode(&TokenDtype::U32.encode(&[1 << 20])),
            [1 << 20]
        );
    }

    #[test]
    fn shards_round_trip_resume_and_refuse_other_jobs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tok");
        let (k, per) = (70_000, 12);
        let mut w = TokenWriter::open(&dir, header(5, 2, k)).unwrap();
        assert_eq!(w.pending(), vec![0, 1, 2]);
        for i in w.pending() {
            let r = w.manifest().shard_range(i);
            w.write_shard(i, &tokens(r, per, k)).unwrap();
        }
        let m = TokenManifest::read(&dir).unwrap();
        assert!(m.is_complete() && m.dtype == TokenDtype::U32);
        assert_eq!(m.shards.len(), 3);
        assert_eq!((m.shards[2].first_sample, m.shards[2].samples), (4, 1));
        let mut all = Vec::new();
        for s in &m.shards {
            all.extend(m.read_shard(&dir, s).unwrap());
        }
        assert_eq!(all, tokens(0..5, per, k));
        let bytes = std::fs::read(dir.join("shard-00001.bin")).unwrap();
        assert_eq!(bytes.len(), 2 * per * 4);

        // Reopened for the same job: nothing to do. A corrupted and a missing shard are redone.
        assert!(
            TokenWriter::open(&dir, header(5, 2, k))
                .unwrap()
                .pending()
                .is_empty()
        );
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        std::fs::write(dir.join("shard-00001.bin"), bad).unwrap();
        std::fs::remove_file(dir.join("shard-00002.bin")).unwrap();
        std::fs::write(dir.join("shard-00000.bin.partial"), b"x").unwrap();
        let e = m.read_shard(&dir, &m.shards[1]).unwrap_err().to_string();
        assert!(e.contains("sha256") && e.contains("shard-00001.bin"), "{e}");
        let w = TokenWriter::open(&dir, header(5, 2, k)).unwrap();
        assert_eq!(w.pending(), vec![1, 2]);
        assert!(!dir.join("shard-00000.bin.partial").exists());
        assert_eq!(TokenManifest::read(&dir).unwrap().shards.len(), 1);

        // Another job's settings are refused, naming what differs.
        let mut other = header(5, 2, k);
        other.split = "train".into();
        other.model_sha256 = "11".into();
        let e = TokenWriter::open(&dir, other).unwrap_err().to_string();
        assert!(
            e.contains("split") && e.contains("model_sha256") && e.contains("new --out"),
            "{e}"
        );
        // A directory of other files is not taken.
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), b"hi").unwrap();
        let e = TokenWriter::open(&foreign, header(5, 2, k))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a token directory"), "{e}");
        // Indices outside the codebook are refused.
        let mut w = TokenWriter::open(&tmp.path().join("small"), header(1, 2, 4)).unwrap();
        let e = w.write_shard(0, &[4; 12]).unwrap_err().to_string();
        assert!(e.contains("outside the codebook"), "{e}");
    }

    #[test]
    fn frames_become_a_strip_and_a_gif() {
        let tmp = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..2 * 3 * 4 * 5).map(|v| v as f32 / 60.0 - 1.0).collect();
        let png = tmp.path().join("a.png");
        save_frames_png(&png, &values, 2, [3, 4, 5]).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (10, 4));
        // Frame 1, pixel (x 2, y 1), green channel.
        let v = values[3 * 4 * 5 + 4 * 5 + 5 + 2];
        assert_eq!(img.get_pixel(5 + 2, 1).0[1], value_to_byte(v));
        assert_eq!((value_to_byte(-3.0), value_to_byte(2.0)), (0, 255));
        let gif = tmp.path().join("a.gif");
        save_clip_gif(&gif, &values, 2, [3, 4, 5]).unwrap();
        assert_eq!(image::image_dimensions(&gif).unwrap(), (5, 4));
    }
}
