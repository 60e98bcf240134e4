//! Run outputs: `metrics.jsonl` (one JSON object per line, flushed as written; the same numbers as
//! TensorBoard scalars), PSNR, and
//! reconstruction grids as PNG (originals on the top row, reconstructions below).

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use crate::{TrainError, tensorboard::TensorBoardWriter};

/// Appends JSON lines to `metrics.jsonl`.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    /// The same lines as TensorBoard scalars (`RUN_DIR/tensorboard/`).
    tensorboard: TensorBoardWriter,
}

impl MetricsWriter {
    /// Opens `run_dir/metrics.jsonl`. When resuming at `keep_until`, lines of later steps (written
    /// by the interrupted run after its last checkpoint, about to be recomputed) move to
    /// `metrics.discarded.jsonl`, so nothing written is lost and the main file has one line per step.
    pub fn open(run_dir: &Path, keep_until: Option<usize>) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        if let (Some(step), true) = (keep_until, path.exists()) {
            let f = File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            let (kept, dropped): (Vec<String>, Vec<String>) = BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .partition(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s as usize <= step)
                });
            if !dropped.is_empty() {
                let side = run_dir.join("metrics.discarded.jsonl");
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&side)
                    .map_err(|e| TrainError::io(&side, e))?;
                f.write_all(format!("{}\n", dropped.join("\n")).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| TrainError::io(&side, e))?;
            }
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            crate::checkpoint::write_atomic(&path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let resumed_at = keep_until.filter(|s| *s > 0);
        let tensorboard = TensorBoardWriter::open(&run_dir.join("tensorboard"), resumed_at)?;
        Ok(Self {
            path,
            file,
            tensorboard,
        })
    }

    /// Writes one record.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<(), TrainError> {
        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.tensorboard.metrics_line(value)
    }

    /// Adds a PNG image file (a sample grid) to the TensorBoard events under `tag`.
    pub fn image_file(&mut self, step: usize, tag: &str, png: &Path) -> Result<(), TrainError> {
        let bytes = std::fs::read(png).map_err(|e| TrainError::io(png, e))?;
        let (w, h) = image::image_dimensions(png).map_err(|e| TrainError::Io {
            path: png.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.tensorboard.image(step as i64, tag, &bytes, [h, w, 3])
    }
}

/// A value in `[-1, 1]` as a byte (clamped), as every saved image maps it.
pub fn value_to_byte(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// PSNR in dB of images in `[-1, 1]` given their mean squared error (peak-to-peak 2).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// Saves a grid: `top` and `bottom` are `[n, c, h, w]` values in `[-1, 1]`, side by side per
/// column (at most `n` columns).
pub fn save_grid(
    path: &Path,
    top: &[f32],
    bottom: &[f32],
    shape: [usize; 4],
) -> Result<(), TrainError> {
    let [n, c, h, w] = shape;
    let (gw, gh) = ((n * (w + 2)) as u32, (2 * (h + 2)) as u32);
    let mut img = image::RgbImage::from_pixel(gw, gh, image::Rgb([255, 255, 255]));
    for (row, data) in [top, bottom].iter().enumerate() {
        for i in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let px = |ch: usize| {
                        let v = data[((i * c + ch) * h + y) * w + x];
                        value_to_byte(v)
                    };
                    let rgb = if c == 1 {
                        [px(0); 3]
                    } else {
                        [px(0), px(1), px(2)]
                    };
                    img.put_pixel(
                        (i * (w + 2) + 1 + x) as u32,
                        (row * (h + 2) + 1 + y) as u32,
                        image::Rgb(rgb),
                    );
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    img.save(path)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e.to_string())))
}

/// Saves video samples as an animated GIF (10 frames per second, looping): one row per clip,
/// input on the left, reconstruction on the right. `top` and `bottom` are `[clips*frames, c, h,
/// w]` values in `[-1, 1]`, clip-major.
pub fn save_clips_gif(
    path: &Path,
    top: &[f32],
    bottom: &[f32],
    shape: [usize; 4],
    frames: usize,
) -> Result<(), TrainError> {
    use image::{Delay, Frame, RgbaImage, codecs::gif::GifEncoder, codecs::gif::Repeat};
    let [n, c, h, w] = shape;
    let clips = n / frames;
    let (gw, gh) = ((2 * (w + 2)) as u32, (clips * (h + 2)) as u32);
    let err = |e: image::ImageError| TrainError::io(path, std::io::Error::other(e.to_string()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    let file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite).map_err(err)?;
    for t in 0..frames {
        let mut img = RgbaImage::from_pixel(gw, gh, image::Rgba([255, 255, 255, 255]));
        for k in 0..clips {
            let i = k * frames + t;
            for (col, data) in [top, bottom].iter().enumerate() {
                for y in 0..h {
                    for x in 0..w {
                        let px = |ch: usize| {
                            let v = data[((i * c + ch) * h + y) * w + x];
                            value_to_byte(v)
                        };
                        let (r, g, b) = if c == 1 {
                            (px(0), px(0), px(0))
                        } else {
                            (px(0), px(1), px(2))
                        };
                        img.put_pixel(
                            (col * (w + 2) + 1 + x) as u32,
                            (k * (h + 2) + 1 + y) as u32,
                            image::Rgba([r, g, b, 255]),
                        );
                    }
                }
            }
        }
        enc.encode_frame(Frame::from_parts(
            img,
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        ))
        .map_err(err)?;
    }
    Ok(())
}
