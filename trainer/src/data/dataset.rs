//! Datasets: Fashion-MNIST (or MNIST) IDX files held in memory, folders of image files decoded
//! on demand, and video clips (BAIR TFRecords, folders of frame shards). A sample is one image or
//! one clip of `frames()` frames. A sample that cannot be read is an `Err` naming the file; the
//! loader skips it.

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use image::{DynamicImage, GrayImage};
use rand::RngCore;

use super::{
    BairRecords, VideoFolder,
    clip::ClipSpec,
    files::{files_under, has_extension},
};
use crate::{DataConfig, TrainError, config::DataSource};

/// A random-access collection of images or clips.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Frames per sample (1: images).
    fn frames(&self) -> usize {
        1
    }
    /// Decodes sample `index`: its `frames()` frames (a clip's window drawn from `rng` where the
    /// dataset samples windows at random); the error names the file and the problem.
    fn sample(&self, index: usize, rng: &mut dyn RngCore) -> Result<Vec<DynamicImage>, String>;
    /// A short description (for logs).
    fn describe(&self) -> String;
    /// Whether `sample(index, _)` depends on `index` alone (never on `rng`), so the loader may
    /// keep its prepared frames ([`super::SampleCache`]).
    fn cacheable(&self) -> bool {
        false
    }
}

/// IDX image files (Fashion-MNIST, MNIST), `.gz` or raw.
pub struct FashionMnist {
    path: PathBuf,
    images: Vec<u8>,
    rows: usize,
    cols: usize,
    count: usize,
}

impl FashionMnist {
    /// Reads an IDX3 image file (magic 0x803, big-endian sizes).
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let bad = |m: String| TrainError::Data(format!("{}: {m}", path.display()));
        let raw = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("corrupt gzip: {e}")))?;
            out
        } else {
            raw
        };
        if bytes.len() < 16 {
            return Err(bad("too short for an IDX header".into()));
        }
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        if word(0) != 0x803 {
            return Err(bad(format!(
                "magic {:#x}, expected 0x803 (IDX3 unsigned bytes)",
                word(0)
            )));
        }
        let (count, rows, cols) = (word(4), word(8), word(12));
        let need = 16 + count * rows * cols;
        if bytes.len() < need {
            return Err(bad(format!(
                "truncated: {} bytes, the header promises {need}",
                bytes.len()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            images: bytes[16..need].to_vec(),
            rows,
            cols,
            count,
        })
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.count
    }

    fn sample(&self, index: usize, _: &mut dyn RngCore) -> Result<Vec<DynamicImage>, String> {
        let n = self.rows * self.cols;
        let px = self.images[index * n..(index + 1) * n].to_vec();
        let img =
            GrayImage::from_raw(self.cols as u32, self.rows as u32, px).ok_or("bad image size")?;
        Ok(vec![DynamicImage::ImageLuma8(img)])
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} images {}x{})",
            self.path.display(),
            self.count,
            self.rows,
            self.cols
        )
    }
}

/// Image files under a folder, recursively (jpg, jpeg, png, webp; any case), in sorted order.
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl ImageFolder {
    /// Lists the images under `root`.
    pub fn open(root: &Path) -> Result<Self, TrainError> {
        let files = files_under(root, |p| has_extension(p, &["jpg", "jpeg", "png", "webp"]))?;
        if files.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no jpg/png/webp images found",
                root.display()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
        })
    }

    /// Splits off every `k`-th file (k = round(1/fraction)) as a held-out set: `(train, val)`.
    pub fn split(self, fraction: f64) -> (Self, Self) {
        let k = ((1.0 / fraction).round() as usize).max(2);
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (i, f) in self.files.into_iter().enumerate() {
            if i % k == k - 1 {
                val.push(f)
            } else {
                train.push(f)
            }
        }
        if val.is_empty() {
            val.push(train[0].clone());
        }
        (
            Self {
                root: self.root.clone(),
                files: train,
            },
            Self {
                root: self.root,
                files: val,
            },
        )
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn sample(&self, index: usize, _: &mut dyn RngCore) -> Result<Vec<DynamicImage>, String> {
        let path = &self.files[index];
        Ok(vec![
            image::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        ])
    }

    fn describe(&self) -> String {
        format!("{} ({} images)", self.root.display(), self.files.len())
    }

    fn cacheable(&self) -> bool {
        true
    }
}

/// Training set, validation set, channels.
pub type DatasetPair = (Arc<dyn Dataset>, Arc<dyn Dataset>, usize);

/// The training and validation datasets of a config, and their channel count.
pub fn open_datasets(cfg: &DataConfig) -> Result<DatasetPair, TrainError> {
    Ok(match &cfg.source {
        DataSource::FashionMnist { train, val } => (
            Arc::new(FashionMnist::open(train)?),
            Arc::new(FashionMnist::open(val)?),
            1,
        ),
        DataSource::ImageFolder {
            train,
            val,
            val_fraction,
            channels,
        } => {
            let all = ImageFolder::open(train)?;
            match val {
                Some(v) => (Arc::new(all), Arc::new(ImageFolder::open(v)?), *channels),
                None if *val_fraction > 0.0 && all.len() > 1 => {
                    let (t, v) = all.split(*val_fraction);
                    (Arc::new(t), Arc::new(v), *channels)
                }
                None => {
                    let all = Arc::new(all);
                    (all.clone(), all, *channels)
                }
            }
        }
        DataSource::Bair { train, val } => {
            let spec = clip_spec(cfg);
            (
                Arc::new(BairRecords::open(train, spec, true)?),
                Arc::new(BairRecords::open(val, spec, false)?),
                3,
            )
        }
        DataSource::VideoFolder {
            train,
            val,
            val_fraction,
        } => {
            let spec = clip_spec(cfg);
            match val {
                Some(v) => (
                    Arc::new(VideoFolder::open(train, spec, true)?),
                    Arc::new(VideoFolder::open(v, spec, false)?),
                    3,
                ),
                None => {
                    let (t, v) = VideoFolder::open(train, spec, true)?.split(*val_fraction)?;
                    (Arc::new(t), Arc::new(v), 3)
                }
            }
        }
    })
}

/// The clip geometry of a video config.
fn clip_spec(cfg: &DataConfig) -> ClipSpec {
    let mut spec = ClipSpec {
        frames: cfg.frames,
        stride: cfg.frame_stride,
        step: 1,
    };
    spec.step = cfg.clip_step.unwrap_or(spec.span());
    spec
}
