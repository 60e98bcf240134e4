//! Video preparation (`launch prepare-video`): decodes every video under a folder (avi, mp4,
//! mkv, webm, mov, mpg, m4v, ...) with the `ffmpeg` program into frame shards the training loader
//! reads without a codec, the shorter side scaled to `size` (bilinear, the other side rounded up,
//! as VideoGPT resizes). UCF-101's official split lists (`trainlist0N.txt` / `testlist0N.txt`)
//! route each video to `train/` or `test/`; without lists the folder structure is kept.
//!
//! Parallel (`jobs` ffmpeg processes), resumable (a shard already in place is kept: shards are
//! renamed into place only when complete), with progress in the log; a video ffmpeg cannot read
//! is reported, listed in the manifest and skipped.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use serde_json::json;

use super::{
    files::{files_under, has_extension},
    video_shard::{EXTENSION, ShardHeader, write_shard},
};
use crate::TrainError;

/// What to prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Folder of videos (searched recursively).
    pub src: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// Shorter side after scaling (pixels).
    pub size: usize,
    /// A folder holding UCF-101's `trainlist0N.txt` / `testlist0N.txt`.
    pub split_lists: Option<PathBuf>,
    /// Which official split (1, 2 or 3).
    pub split: usize,
    /// ffmpeg processes at once.
    pub jobs: usize,
}

/// What a preparation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrepareReport {
    /// Videos decoded now.
    pub decoded: usize,
    /// Videos whose shard was already in place.
    pub kept: usize,
    /// Videos ffmpeg could not read: `(path, reason)`.
    pub failed: Vec<(PathBuf, String)>,
    /// Videos in no split list (with lists only).
    pub unlisted: usize,
    /// Frames in all shards written or kept.
    pub frames: usize,
}

const VIDEO_EXTENSIONS: &[&str] = &[
    "avi", "mp4", "mkv", "webm", "mov", "mpg", "mpeg", "m4v", "wmv", "flv", "ogv", "3gp",
];

/// `relative path -> split` from UCF-101's lists (`Class/v_Class_g08_c01.avi [label]` lines).
fn read_split_lists(dir: &Path, split: usize) -> Result<HashMap<String, &'static str>, TrainError> {
    let mut map = HashMap::new();
    for (name, which) in [("trainlist", "train"), ("testlist", "test")] {
        let path = dir.join(format!("{name}0{split}.txt"));
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        for line in text.lines() {
            if let Some(rel) = line.split_whitespace().next() {
                map.insert(rel.replace('\\', "/"), which);
            }
        }
    }
    Ok(map)
}

fn tool(name: &str) -> Result<(), TrainError> {
    match Command::new(name)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(TrainError::Data(format!(
            "`{name}` is not installed or does not run: video preparation decodes with FFmpeg's \
             programs (Debian/Ubuntu: `apt-get install ffmpeg`)"
        ))),
    }
}

/// Width, height and frame rate (x1000) of a video's first video stream.
fn probe(path: &Path) -> Result<(usize, usize, u32), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=width,height,r_frame_rate", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| format!("ffprobe: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.trim().split(',').collect();
    if !out.status.success() || fields.len() < 3 {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "ffprobe found no video stream ({})",
            err.trim().lines().last().unwrap_or("no output")
        ));
    }
    let w: usize = fields[0].parse().map_err(|_| "bad width".to_string())?;
    let h: usize = fields[1].parse().map_err(|_| "bad height".to_string())?;
    let fps = match fields[2].split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (a.parse().unwrap_or(0.0), b.parse().unwrap_or(1.0));
            if b > 0.0 { a / b } else { 0.0 }
        }
        None => fields[2].parse().unwrap_or(0.0),
    };
    if w == 0 || h == 0 {
        return Err("zero-sized video stream".into());
    }
    Ok((w, h, (fps * 1000.0).round() as u32))
}

/// The scaled size: shorter side `size`, the other rounded up (VideoGPT's ceil).
pub fn scaled_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (h * size).div_ceil(w))
    } else {
        ((w * size).div_ceil(h), size)
    }
}

fn decode(src: &Path, dst: &Path, size: usize) -> Result<usize, String> {
    let (w, h, fps_milli) = probe(src)?;
    let (nw, nh) = scaled_size(w, h, size);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(src)
        .args(["-map", "0:v:0", "-vf"])
        .arg(format!("scale={nw}:{nh}:flags=bilinear"))
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    let frame = nw * nh * 3;
    let frames = out.stdout.len() / frame;
    if !out.status.success() || frames == 0 {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "ffmpeg decoded no frames ({})",
            err.trim().lines().last().unwrap_or("no message")
        ));
    }
    let header = ShardHeader {
        frames,
        height: nh,
        width: nw,
        fps_milli,
    };
    write_shard(dst, header, &out.stdout[..frames * frame])
        .map_err(|e| format!("{}: {e}", dst.display()))?;
    Ok(frames)
}

/// One video's outcome: its frame count and whether its shard was already there, or why it
/// could not be decoded.
type Outcome = Result<(usize, bool), String>;

fn existing_frames(dst: &Path) -> Option<usize> {
    let file = std::fs::File::open(dst).ok()?;
    ShardHeader::read(&file, dst).ok().map(|h| h.frames)
}

/// Decodes the videos of `opts.src` into shards under `opts.out`, writes `manifest.json` there.
pub fn prepare_videos(opts: &PrepareOptions) -> Result<PrepareReport, TrainError> {
    tool("ffmpeg")?;
    tool("ffprobe")?;
    if opts.size == 0 {
        return Err(TrainError::Data(
            "prepare-video: --size must be positive".into(),
        ));
    }
    if !opts.src.is_dir() {
        return Err(TrainError::Data(format!(
            "--src {}: not a folder (give the folder that holds the videos, e.g. UCF-101's \
             extracted UCF-101/)",
            opts.src.display()
        )));
    }
    let videos = files_under(&opts.src, |p| has_extension(p, VIDEO_EXTENSIONS))?;
    if videos.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no video files ({}) found",
            opts.src.display(),
            VIDEO_EXTENSIONS.join(", ")
        )));
    }
    let lists = match &opts.split_lists {
        Some(dir) => Some(read_split_lists(dir, opts.split)?),
        None => None,
    };
    let mut report = PrepareReport::default();
    let mut jobs = Vec::new();
    for v in videos {
        let rel = v.strip_prefix(&opts.src).unwrap_or(&v).to_path_buf();
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let dst_rel = match &lists {
            Some(map) => {
                // The lists name `Class/file.avi`; match on the last two components.
                let parts: Vec<&str> = rel_str.rsplitn(3, '/').collect();
                let key = if parts.len() >= 2 {
                    format!("{}/{}", parts[1], parts[0])
                } else {
                    rel_str.clone()
                };
                match map.get(&key) {
                    Some(split) => Path::new(split).join(&key),
                    None => {
                        report.unlisted += 1;
                        continue;
                    }
                }
            }
            None => rel.clone(),
        };
        let dst = opts.out.join(dst_rel).with_extension(EXTENSION);
        jobs.push((v, rel_str, dst));
    }
    let total = jobs.len();
    tracing::info!(
        "prepare-video: {total} videos from {} into {} (shorter side {} px, {} ffmpeg jobs)",
        opts.src.display(),
        opts.out.display(),
        opts.size,
        opts.jobs.max(1)
    );
    std::fs::create_dir_all(&opts.out).map_err(|e| TrainError::io(&opts.out, e))?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; total]);
    let started = Instant::now();
    let every = (total / 20).max(1);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1).min(total) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((src, rel, dst)) = jobs.get(i) else {
                        return;
                    };
                    let r = match existing_frames(dst) {
                        Some(n) => Ok((n, true)),
                        None => decode(src, dst, opts.size).map(|n| (n, false)),
                    };
                    if let Err(e) = &r {
                        tracing::warn!("prepare-video: skipping {rel}: {e}");
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if k.is_multiple_of(every) || k == total {
                        let secs = started.elapsed().as_secs_f64();
                        tracing::info!(
                            "prepare-video: {k}/{total} videos ({:.0}%), eta {:.0} s",
                            100.0 * k as f64 / total as f64,
                            secs / k as f64 * (total - k) as f64
                        );
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut entries = Vec::new();
    for ((src, rel, dst), r) in jobs.iter().zip(results) {
        match r.expect("every job ran") {
            Ok((frames, kept)) => {
                if kept {
                    report.kept += 1
                } else {
                    report.decoded += 1
                }
                report.frames += frames;
                entries.push(json!({
                    "source": rel,
                    "shard": dst.strip_prefix(&opts.out).unwrap_or(dst).to_string_lossy(),
                    "frames": frames,
                }));
            }
            Err(e) => report.failed.push((src.clone(), e)),
        }
    }
    let manifest = json!({
        "source": opts.src.to_string_lossy(),
        "shorter_side": opts.size,
        "split_lists": opts.split_lists.as_ref().map(|p| p.to_string_lossy().to_string()),
        "split": opts.split,
        "videos": entries,
        "failed": report.failed.iter().map(|(p, e)| json!({"source": p.to_string_lossy(), "error": e})).collect::<Vec<_>>(),
        "unlisted": report.unlisted,
    });
    let path = opts.out.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(|e| TrainError::io(&path, e))?;
    Ok(report)
}
