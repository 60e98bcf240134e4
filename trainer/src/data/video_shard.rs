//! Frame shards: one decoded video as raw `u8` RGB frames behind a 32-byte header, written by
//! `launch prepare-video` and read by the training loader without any codec (a clip is one
//! positioned read per frame).
//!
//! Header (little-endian): `b"ROTORVID"`, `u32` version (1), frames, height, width, channels
//! (3), frames per second x 1000. Then `frames x height x width x channels` bytes, frame-major,
//! rows top to bottom, pixels RGB.

use std::{fs::File, io::Write, os::unix::fs::FileExt, path::Path};

use image::{DynamicImage, RgbImage};

/// Magic bytes of a frame shard.
pub const MAGIC: &[u8; 8] = b"ROTORVID";
/// Header length.
pub const HEADER: usize = 32;
/// File extension of frame shards.
pub const EXTENSION: &str = "frames";

/// A shard's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Frames.
    pub frames: usize,
    /// Frame height.
    pub height: usize,
    /// Frame width.
    pub width: usize,
    /// Frames per second x 1000 (0: unknown).
    pub fps_milli: u32,
}

impl ShardHeader {
    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        let words = [
            1u32,
            self.frames as u32,
            self.height as u32,
            self.width as u32,
            3,
            self.fps_milli,
        ];
        for (i, w) in words.iter().enumerate() {
            h[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        h
    }

    /// Reads and checks the header of `path` (and that the file holds every frame it promises).
    pub fn read(file: &File, path: &Path) -> Result<Self, String> {
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| format!("{}: no frame-shard header ({e})", path.display()))?;
        if &h[..8] != MAGIC {
            return Err(format!(
                "{}: not a rotor frame shard (bad magic); prepare videos with `launch prepare-video`",
                path.display()
            ));
        }
        let w = |i: usize| u32::from_le_bytes(h[8 + 4 * i..12 + 4 * i].try_into().expect("4"));
        if w(0) != 1 || w(4) != 3 {
            return Err(format!(
                "{}: frame-shard version {} with {} channels; this rotor reads version 1, RGB",
                path.display(),
                w(0),
                w(4)
            ));
        }
        let header = Self {
            frames: w(1) as usize,
            height: w(2) as usize,
            width: w(3) as usize,
            fps_milli: w(5),
        };
        let size = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len() as usize;
        let want = HEADER + header.frames * header.frame_bytes();
        if size < want {
            return Err(format!(
                "{}: truncated frame shard ({size} bytes, the header promises {want}); prepare it again",
                path.display()
            ));
        }
        Ok(header)
    }

    /// Reads frame `i` as an RGB image.
    pub fn frame(&self, file: &File, path: &Path, i: usize) -> Result<DynamicImage, String> {
        let n = self.frame_bytes();
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, (HEADER + i * n) as u64)
            .map_err(|e| format!("{}: frame {i}: {e}", path.display()))?;
        let img = RgbImage::from_raw(self.width as u32, self.height as u32, buf)
            .ok_or_else(|| format!("{}: frame {i}: bad size", path.display()))?;
        Ok(DynamicImage::ImageRgb8(img))
    }
}

/// Writes a shard atomically (a temporary file renamed into place), so an interrupted
/// preparation never leaves a partial shard under the final name.
pub fn write_shard(path: &Path, header: ShardHeader, frames: &[u8]) -> std::io::Result<()> {
    assert_eq!(frames.len(), header.frames * header.frame_bytes());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("frames.partial");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&header.encode())?;
        f.write_all(frames)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
