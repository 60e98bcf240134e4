//! Checkpoints: one directory per step under `<run>/checkpoints/`, written to a temporary name,
//! every file fsynced, a `manifest.json` with each file's sha256 written last, then renamed into
//! place and the directory fsynced; `latest` (the name of the newest checkpoint) is replaced the
//! same way. Only then are checkpoints beyond the newest `keep` pruned. Loading verifies every
//! hash; a truncated or corrupted checkpoint is reported and the previous valid one is used.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::TrainError;

/// What a checkpoint records besides the weight files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Global sample cursor (samples consumed by all processes).
    pub cursor: u64,
    /// State of the quantizer RNG (dead-code restart, k-means).
    pub quant_rng: RngState,
    /// Hash of the configuration the run was started with.
    pub config_hash: String,
    /// World size when written.
    pub world_size: usize,
}

/// A ChaCha8 RNG's full state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    /// Stream id.
    pub stream: u64,
    /// Word position (as a decimal string: it is a u128).
    pub word_pos: String,
}

impl RngState {
    /// Captures `rng`.
    pub fn capture(rng: &rand_chacha::ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// Rebuilds the RNG.
    pub fn restore(&self) -> Result<rand_chacha::ChaCha8Rng, String> {
        use rand::SeedableRng;
        let mut seed = [0u8; 32];
        if self.seed.len() != 64 {
            return Err("rng seed is not 32 bytes".into());
        }
        for (i, s) in seed.iter_mut().enumerate() {
            *s = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(
            self.word_pos
                .parse()
                .map_err(|e| format!("rng word_pos: {e}"))?,
        );
        Ok(rng)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: usize,
    files: BTreeMap<String, String>,
}

/// The checkpoint directory of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

/// Seconds since the Unix epoch (for names of moved-aside directories).
fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn fsync_dir(dir: &Path) -> Result<(), TrainError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TrainError::io(dir, e))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(&tmp, e))?;
    f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A checkpoint directory that does not verify, and why.
pub type Rejected = (PathBuf, String);

impl Checkpoints {
    /// Checkpoints under `run_dir/checkpoints`, keeping the newest `keep`.
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Self {
            dir: run_dir.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(step: usize) -> String {
        format!("step-{step:08}")
    }

    /// Writes a checkpoint for `state.step`: `write_files(dir)` writes the weight files into the
    /// temporary directory; the state and manifest are added, and the whole is published.
    pub fn save(
        &self,
        state: &TrainState,
        write_files: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let name = Self::name(state.step);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let final_dir = self.dir.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        write_files(&tmp)?;
        let state_json = serde_json::to_vec_pretty(state).expect("state serializes");
        std::fs::write(tmp.join("state.json"), state_json).map_err(|e| TrainError::io(&tmp, e))?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))? {
            let p = entry.map_err(|e| TrainError::io(&tmp, e))?.path();
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| TrainError::io(&p, e))?;
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            files.insert(n, sha256_file(&p).map_err(|e| TrainError::io(&p, e))?);
        }
        let manifest = Manifest {
            step: state.step,
            files,
        };
        write_atomic(
            &tmp.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        )?;
        fsync_dir(&tmp)?;
        if final_dir.exists() {
            // Left by an earlier run (one rolled back past it, or started over from weights):
            // never overwritten, moved aside with its contents.
            let aside = self.dir.join(format!("{name}.replaced-{}", unix_secs()));
            std::fs::rename(&final_dir, &aside).map_err(|e| TrainError::io(&final_dir, e))?;
            tracing::warn!(
                "{} already existed (an earlier run's); moved to {} instead of overwriting it",
                final_dir.display(),
                aside.display()
            );
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        fsync_dir(&self.dir)?;
        write_atomic(&self.dir.join("latest"), format!("{name}\n").as_bytes())?;
        self.prune(state.step);
        Ok(final_dir)
    }

    fn all(&self) -> Vec<(usize, PathBuf)> {
        let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_prefix("step-")
                    .and_then(|s| s.parse().ok())
                    .map(|s| (s, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// Removes the oldest checkpoints up to `current` beyond the newest `keep` (the one just
    /// written is always kept; directories of later steps, left by a run that was rolled back
    /// from a corrupted checkpoint, are not touched). Only checkpoints that verify against
    /// their manifest are removed: a damaged one may hold the only intact model weights, so it
    /// stays (with a warning) until the user removes it.
    fn prune(&self, current: usize) {
        let all: Vec<(usize, PathBuf)> = self
            .all()
            .into_iter()
            .filter(|(s, _)| *s <= current)
            .collect();
        if all.len() > self.keep {
            for (_, p) in &all[..all.len() - self.keep] {
                if let Err(why) = Self::verify(p) {
                    tracing::warn!(
                        "old checkpoint {} is past run.keep_checkpoints but does not verify ({why}): \
                         kept, remove it yourself once you have taken what you need from it",
                        p.display()
                    );
                    continue;
                }
                if let Err(e) = std::fs::remove_dir_all(p) {
                    tracing::warn!("could not prune old checkpoint {}: {e}", p.display());
                }
            }
        }
    }

    /// The manifest of a checkpoint directory.
    fn manifest(dir: &Path) -> Result<Manifest, String> {
        serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json")).map_err(|e| format!("no manifest: {e}"))?,
        )
        .map_err(|e| format!("corrupt manifest: {e}"))
    }

    /// Checks one file of a checkpoint against the sha256 its manifest recorded.
    fn check_file(dir: &Path, name: &str, want: &str) -> Result<(), String> {
        let got = sha256_file(&dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if got != want {
            return Err(format!(
                "{name}: sha256 {got} does not match the manifest ({want}): truncated or corrupted"
            ));
        }
        Ok(())
    }

    /// Checks a checkpoint directory against its manifest.
    pub fn verify(dir: &Path) -> Result<TrainState, String> {
        for (name, want) in &Self::manifest(dir)?.files {
            Self::check_file(dir, name, want)?;
        }
        serde_json::from_slice(
            &std::fs::read(dir.join("state.json")).map_err(|e| format!("state.json: {e}"))?,
        )
        .map_err(|e| format!("state.json: {e}"))
    }

    /// The newest checkpoint that verifies, starting from `latest` (each rejected one is
    /// logged); `Ok(None)` when there is none at all, `Err` with every checkpoint and what is
    /// wrong with it when there are some and none verifies.
    pub fn latest_valid(&self) -> Result<Option<(PathBuf, TrainState)>, Vec<Rejected>> {
        let mut candidates = self.all();
        candidates.reverse();
        if let Ok(l) = std::fs::read_to_string(self.dir.join("latest")) {
            let l = l.trim();
            if let Some(pos) = candidates
                .iter()
                .position(|(_, p)| p.file_name().is_some_and(|n| n == l))
            {
                let c = candidates.remove(pos);
                candidates.insert(0, c);
            }
        }
        let mut rejected = Vec::new();
        for (_, dir) in candidates {
            match Self::verify(&dir) {
                Ok(state) => return Ok(Some((dir, state))),
                Err(e) => {
                    tracing::warn!(
                        "checkpoint {} is unusable ({e}); trying the previous one",
                        dir.display()
                    );
                    rejected.push((dir, e));
                }
            }
        }
        if rejected.is_empty() {
            Ok(None)
        } else {
            Err(rejected)
        }
    }

    /// The newest checkpoint whose model weights (`model.mpk`) match its manifest, whatever
    /// the state of its other files.
    pub fn latest_intact_model(&self) -> Option<PathBuf> {
        let mut candidates = self.all();
        candidates.reverse();
        candidates
            .into_iter()
            .map(|(_, dir)| dir)
            .find(|dir| Self::verify_file(dir, "model.mpk").is_ok())
    }

    /// Checks one file of a checkpoint against its manifest.
    pub fn verify_file(dir: &Path, file: &str) -> Result<(), String> {
        let manifest = Self::manifest(dir)?;
        let want = manifest
            .files
            .get(file)
            .ok_or_else(|| format!("{file} is not in the manifest"))?;
        Self::check_file(dir, file, want)
    }

    /// True when any checkpoint directory exists.
    pub fn any(&self) -> bool {
        !self.all().is_empty()
    }
}

impl Checkpoints {
    /// The model of `cfg` with the weights of checkpoint `dir` (its `model.mpk` checked against
    /// the manifest first), on any backend: for tools that read a run's weights without
    /// training it (`launch export`). `model.init_from` is not applied: the checkpoint wins.
    pub fn load_model<B: burn::tensor::backend::Backend>(
        cfg: &crate::TrainConfig,
        dir: &Path,
        device: &B::Device,
    ) -> Result<models::Autoencoder<B>, TrainError> {
        use burn::module::Module;
        let err = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(err("no such checkpoint directory".into()));
        }
        Self::verify_file(dir, "model.mpk").map_err(err)?;
        cfg.model
            .init::<B>(device)?
            .load_file(dir.join("model"), &crate::train::recorder(), device)
            .map_err(|e| err(format!("model: {e}")))
    }
}
