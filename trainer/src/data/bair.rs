//! BAIR robot pushing from its original TFRecords (`softmotion30_44k/{train,test}/*.tfrecords`):
//! one `tf.Example` per trajectory, frame `i` under `'{i}/image_aux1/encoded'` as raw
//! `side x side x 3` RGB bytes (64 x 64 in the dataset). Opening indexes the records by their
//! length fields only; a record is read, CRC-checked and parsed when one of its clips is drawn. A
//! corrupt record is an `Err` naming file and offset, which the loader counts and skips; a file
//! whose framing breaks is indexed up to the break, with a warning.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use image::{DynamicImage, RgbImage};
use rand::RngCore;

use super::{
    Dataset,
    clip::ClipSpec,
    files::files_under,
    tfrecord::{Feature, RecordSpan, index_records, parse_example, read_record},
};
use crate::TrainError;

struct RecordFile {
    path: PathBuf,
    file: File,
}

/// BAIR trajectories from TFRecord files.
pub struct BairRecords {
    root: PathBuf,
    files: Vec<RecordFile>,
    /// `(file, record span, window)` of every sample.
    samples: Vec<(usize, RecordSpan, usize)>,
    /// Frames per trajectory (from the first record).
    length: usize,
    spec: ClipSpec,
    random_window: bool,
    broken_files: usize,
}

fn frame_key(i: usize) -> String {
    format!("{i}/image_aux1/encoded")
}

/// The frames of a parsed trajectory, `[i]` for every index in `which`.
fn frames_of(
    example: &super::tfrecord::Example,
    which: impl Iterator<Item = usize>,
) -> Result<Vec<DynamicImage>, String> {
    which
        .map(|i| {
            let bytes = match example.get(&frame_key(i)) {
                Some(Feature::Bytes(v)) if v.len() == 1 => &v[0],
                Some(_) => return Err(format!("feature '{}' is not one bytes value", frame_key(i))),
                None => return Err(format!("no feature '{}'", frame_key(i))),
            };
            let side = ((bytes.len() / 3) as f64).sqrt().round() as usize;
            if side * side * 3 != bytes.len() {
                return Err(format!(
                    "feature '{}' has {} bytes, not a square RGB frame (BAIR stores raw 64x64x3 = 12288)",
                    frame_key(i),
                    bytes.len()
                ));
            }
            let img = RgbImage::from_raw(side as u32, side as u32, bytes.clone())
                .ok_or("bad frame size")?;
            Ok(DynamicImage::ImageRgb8(img))
        })
        .collect()
}

impl BairRecords {
    /// Indexes the TFRecords under `root` (a `softmotion30_44k/train` or `test` folder).
    pub fn open(root: &Path, spec: ClipSpec, random_window: bool) -> Result<Self, TrainError> {
        let paths = files_under(root, |p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".tfrecord"))
        })?;
        if paths.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no *.tfrecords files: point data.source.train/val at \
                 softmotion30_44k/train and softmotion30_44k/test of bair_robot_pushing_dataset_v0",
                root.display()
            )));
        }
        let mut files = Vec::new();
        let mut spans = Vec::new();
        let mut broken_files = 0;
        for path in paths {
            let (records, problem) = index_records(&path).map_err(|e| TrainError::io(&path, e))?;
            if let Some(p) = problem {
                tracing::warn!("{p}; the {} records before it are used", records.len());
                broken_files += 1;
            }
            let file = File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            spans.extend(records.into_iter().map(|r| (files.len(), r)));
            files.push(RecordFile { path, file });
        }
        // The trajectory length, from the first record that reads.
        let mut length = None;
        for (f, span) in &spans {
            let rf = &files[*f];
            let Ok(buf) = read_record(&rf.file, &rf.path, *span) else {
                continue;
            };
            let example = parse_example(&buf).map_err(|e| {
                TrainError::Data(format!(
                    "{}: record at byte {}: not a tf.Example ({e})",
                    rf.path.display(),
                    span.offset
                ))
            })?;
            let n = (0..)
                .take_while(|i| example.contains_key(&frame_key(*i)))
                .count();
            if n == 0 {
                return Err(TrainError::Data(format!(
                    "{}: record at byte {} has no '0/image_aux1/encoded' feature: not BAIR's \
                     softmotion30_44k records",
                    rf.path.display(),
                    span.offset
                )));
            }
            frames_of(&example, 0..1)
                .map_err(|e| TrainError::Data(format!("{}: {e}", rf.path.display())))?;
            length = Some(n);
            break;
        }
        let length = length.ok_or_else(|| {
            TrainError::Data(format!("{}: no readable BAIR record", root.display()))
        })?;
        let windows = spec.windows(length);
        if windows == 0 {
            return Err(TrainError::Data(format!(
                "{}: trajectories have {length} frames, fewer than one clip of {} frames at \
                 stride {} needs",
                root.display(),
                spec.frames,
                spec.stride
            )));
        }
        let samples = spans
            .into_iter()
            .flat_map(|(f, s)| (0..windows).map(move |k| (f, s, k)))
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            files,
            samples,
            length,
            spec,
            random_window,
            broken_files,
        })
    }
}

impl Dataset for BairRecords {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn frames(&self) -> usize {
        self.spec.frames
    }

    fn sample(&self, index: usize, rng: &mut dyn RngCore) -> Result<Vec<DynamicImage>, String> {
        let (f, span, k) = self.samples[index];
        let rf = &self.files[f];
        let buf = read_record(&rf.file, &rf.path, span)?;
        let at = |e: String| format!("{}: record at byte {}: {e}", rf.path.display(), span.offset);
        let example = parse_example(&buf).map_err(at)?;
        let start = self
            .spec
            .start(self.length, k, self.random_window.then_some(rng));
        frames_of(&example, self.spec.frame_indices(start)).map_err(at)
    }

    fn describe(&self) -> String {
        let broken = if self.broken_files > 0 {
            format!(", {} files cut short by corruption", self.broken_files)
        } else {
            String::new()
        };
        format!(
            "{} (BAIR: {} clips of {} frames from trajectories of {} in {} files{broken})",
            self.root.display(),
            self.samples.len(),
            self.spec.frames,
            self.length,
            self.files.len()
        )
    }
}
