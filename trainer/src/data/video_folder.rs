//! A folder of frame shards (`launch prepare-video`'s output, searched recursively, sorted): each
//! shard holds `ClipSpec::windows(frames)` clips. Reading a clip is `frames` positioned reads.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use image::DynamicImage;
use rand::RngCore;

use super::{
    Dataset,
    clip::ClipSpec,
    files::{files_under, has_extension},
    video_shard::{EXTENSION, ShardHeader},
};
use crate::TrainError;

struct Shard {
    path: PathBuf,
    file: File,
    header: ShardHeader,
}

/// Clips from a folder of frame shards.
pub struct VideoFolder {
    root: PathBuf,
    /// Shared by the two halves of a [`VideoFolder::split`].
    shards: Arc<Vec<Shard>>,
    /// `(shard, window)` of every sample.
    samples: Vec<(usize, usize)>,
    spec: ClipSpec,
    random_window: bool,
    short: usize,
}

impl VideoFolder {
    /// Lists the shards under `root` and their clips; shards shorter than one clip are counted
    /// and left out, unreadable ones are an error naming the file.
    pub fn open(root: &Path, spec: ClipSpec, random_window: bool) -> Result<Self, TrainError> {
        let files = files_under(root, |p| has_extension(p, &[EXTENSION]))?;
        if files.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no frame shards (*.{EXTENSION}) found: decode videos into it first with \
                 `launch prepare-video --src <videos> --out {}`",
                root.display(),
                root.display()
            )));
        }
        let mut shards = Vec::new();
        let mut samples = Vec::new();
        let mut short = 0;
        for path in files {
            let file = File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            let header = ShardHeader::read(&file, &path).map_err(TrainError::Data)?;
            let n = spec.windows(header.frames);
            if n == 0 {
                short += 1;
                continue;
            }
            samples.extend((0..n).map(|k| (shards.len(), k)));
            shards.push(Shard { path, file, header });
        }
        if samples.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no video is long enough for one clip of {} frames at stride {} ({} frames)",
                root.display(),
                spec.frames,
                spec.stride,
                spec.span()
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            shards: Arc::new(shards),
            samples,
            spec,
            random_window,
            short,
        })
    }

    /// Splits off every `k`-th clip (k = round(1/fraction)) as a held-out set `(train, val)`
    /// (validation clips start at their window's first frame).
    pub fn split(self, fraction: f64) -> Result<(Self, Self), TrainError> {
        let k = ((1.0 / fraction).round() as usize).max(2);
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (i, s) in self.samples.iter().enumerate() {
            if i % k == k - 1 {
                val.push(*s)
            } else {
                train.push(*s)
            }
        }
        if val.is_empty() {
            val.push(train[0]);
        }
        let half = |samples, random_window| Self {
            root: self.root.clone(),
            shards: self.shards.clone(),
            samples,
            spec: self.spec,
            random_window,
            short: self.short,
        };
        Ok((half(train, self.random_window), half(val, false)))
    }
}

impl Dataset for VideoFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn frames(&self) -> usize {
        self.spec.frames
    }

    fn sample(&self, index: usize, rng: &mut dyn RngCore) -> Result<Vec<DynamicImage>, String> {
        let (s, k) = self.samples[index];
        let shard = &self.shards[s];
        let len = shard.header.frames;
        let start = self.spec.start(len, k, self.random_window.then_some(rng));
        self.spec
            .frame_indices(start)
            .map(|i| shard.header.frame(&shard.file, &shard.path, i))
            .collect()
    }

    fn describe(&self) -> String {
        let skipped = if self.short > 0 {
            format!(", {} videos shorter than a clip left out", self.short)
        } else {
            String::new()
        };
        format!(
            "{} ({} clips of {} frames from {} videos{skipped})",
            self.root.display(),
            self.samples.len(),
            self.spec.frames,
            self.shards.len()
        )
    }
}
