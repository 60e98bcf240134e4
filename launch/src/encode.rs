//! `launch encode` and `launch decode`: a checkpoint's code indices for every sample of a split,
//! as the integer shards a stage-2 generative model trains on (`trainer::tokens`), and those
//! indices decoded back into images (PNG) or clips (a PNG strip of the frames and a GIF).
//!
//! One process on the chosen backend (`--device` before the subcommand), or data-parallel
//! encoding over CPU / wgpu workers (`launch encode --cpu N`, or as workers of torchrun / srun):
//! each worker encodes every `world`-th pending shard, the shards' indices are gathered to
//! rank 0 (as exact small integers), which alone writes the shards and the manifest.
//! Samples are read in index order with the evaluation transform (center crop, no flip); the
//! model runs in eval mode. Encoding is resumable: rerun the same command and finished shards
//! are kept.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use trainer::{
    Checkpoints, Communicator, TrainConfig, TrainError,
    data::{Transform, load_batch, open_datasets},
    models::Autoencoder,
    quantizers::{
        Mode, Quantizer,
        host::{HostRead, read_f32, read_i64},
    },
    tokens::{self, LAYOUT, TokenDtype, TokenManifest, TokenWriter},
};

use crate::{export::choose_checkpoint, worker::DeviceKind};

/// Which samples to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The training set, in index order (with the evaluation transform).
    Train,
    /// The validation set.
    Val,
}

impl Split {
    /// The command-line value.
    pub fn as_arg(self) -> &'static str {
        self.name()
    }

    fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
        }
    }
}

/// What to encode.
pub struct EncodeArgs {
    /// The run's training config.
    pub config: PathBuf,
    /// Overrides (`--set key=value`).
    pub overrides: Vec<String>,
    /// A checkpoint directory (default: the run's newest valid checkpoint).
    pub checkpoint: Option<PathBuf>,
    /// The token directory to write.
    pub out: PathBuf,
    /// The split.
    pub split: Split,
    /// Samples per forward pass.
    pub batch: usize,
    /// Samples per shard.
    pub shard_samples: usize,
    /// Seconds a rendezvous or collective may wait (workers).
    pub timeout: u64,
}

/// What to decode.
pub struct DecodeArgs {
    /// The run's training config.
    pub config: PathBuf,
    /// Overrides (`--set key=value`).
    pub overrides: Vec<String>,
    /// A checkpoint directory (default: the run's newest valid checkpoint).
    pub checkpoint: Option<PathBuf>,
    /// The token directory to read.
    pub tokens: PathBuf,
    /// Where the images go.
    pub out: PathBuf,
    /// At most this many samples (from the first).
    pub limit: Option<usize>,
    /// Samples per decoder pass.
    pub batch: usize,
}

/// A loaded checkpoint.
struct Loaded<B: Backend> {
    cfg: TrainConfig,
    dir: PathBuf,
    step: Option<usize>,
    model_sha256: String,
    model: Autoencoder<B>,
}

fn load<B: Backend>(
    config: &Path,
    overrides: &[String],
    checkpoint: Option<&Path>,
    what: &str,
    device: &B::Device,
) -> Result<Loaded<B>> {
    let cfg = TrainConfig::load(config, overrides)?;
    let dir = choose_checkpoint(&cfg, checkpoint, what)?;
    let model = Checkpoints::load_model::<B>(&cfg, &dir, device)
        .with_context(|| format!("loading the model of checkpoint {}", dir.display()))?;
    let step = Checkpoints::verify(&dir).ok().map(|s| s.step);
    let model_sha256 = tokens::checkpoint_model_sha256(&dir)?;
    Ok(Loaded {
        cfg,
        dir,
        step,
        model_sha256,
        model,
    })
}

/// The index maps `[levels, h, w]` of one sample (a forward pass on zeros).
fn map_shape<B: Backend>(
    model: &Autoencoder<B>,
    [frames, channels, resolution]: [usize; 3],
    device: &B::Device,
) -> [usize; 3] {
    let x = Tensor::<B, 4>::zeros([frames, channels, resolution, resolution], device);
    let [_, l, h, w] = model.forward(x, Mode::Eval).encoded.index_maps().dims();
    [l, h, w]
}

/// Logs progress with an ETA at most every 10 s (and when `done == total`).
struct Progress {
    what: &'static str,
    total: usize,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            start: now,
            last: now,
        }
    }

    fn update(&mut self, done: usize) {
        if self.last.elapsed() < Duration::from_secs(10) && done < self.total {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64();
        let frac = done as f64 / self.total.max(1) as f64;
        tracing::info!(
            "{}: {done}/{} samples ({:.0}%), {secs:.0} s, ETA {:.0} s",
            self.what,
            self.total,
            frac * 100.0,
            secs / frac.max(1e-9) * (1.0 - frac)
        );
    }
}

fn encode_with<B: Backend>(
    args: &EncodeArgs,
    device: B::Device,
    mut comm: Box<dyn Communicator>,
) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    if args.batch == 0 || args.shard_samples == 0 {
        bail!("--batch and --shard-samples must be at least 1");
    }
    let Loaded {
        cfg,
        dir,
        step,
        model_sha256,
        model,
    } = load::<B>(
        &args.config,
        &args.overrides,
        args.checkpoint.as_deref(),
        "encode with",
        &device,
    )?;
    let (train_set, val_set, channels) = open_datasets(&cfg.data)?;
    let set = match args.split {
        Split::Train => train_set,
        Split::Val => val_set,
    };
    let frames = set.frames();
    if frames != cfg.model.frames() {
        bail!(
            "the data gives samples of {frames} frames, the model takes {} (data.frames)",
            cfg.model.frames()
        );
    }
    let transform = Transform {
        resolution: cfg.data.resolution,
        resize: cfg.data.resize,
        random_crop: false,
        flip: false,
        channels,
    };
    let quantizer = model.quantizer();
    let (codebook_size, levels) = (quantizer.codebook_size(), quantizer.num_levels());
    let map = map_shape(&model, [frames, channels, cfg.data.resolution], &device);
    let latent_side = (cfg.data.resolution / cfg.model.downsample_factor().max(1)).max(1);
    let latent_frames = if frames > 1 && map[1] % latent_side == 0 {
        map[1] / latent_side
    } else {
        1
    };
    let kind = serde_json::to_value(&cfg.model)?["kind"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let header = TokenManifest {
        format: tokens::FORMAT_VERSION,
        model_kind: kind,
        config_hash: tokens::config_hash(&cfg),
        checkpoint: std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone()),
        checkpoint_step: step,
        model_sha256,
        split: args.split.name().to_string(),
        samples: set.len(),
        shard_samples: args.shard_samples,
        tokens_per_sample: map.iter().product(),
        map_shape: map,
        latent_frames,
        dtype: TokenDtype::for_codebook(codebook_size),
        codebook_size,
        levels,
        frames,
        channels,
        resolution: cfg.data.resolution,
        layout: LAYOUT.to_string(),
        shards: Vec::new(),
    };
    if world > 1 && codebook_size > 1 << 24 {
        bail!("data-parallel encoding gathers indices as floats: at most 2^24 codes");
    }
    // Rank 0 owns the directory; the others learn the pending shards from it.
    let mut writer = if rank == 0 {
        Some(
            TokenWriter::open(&args.out, header.clone())
                .with_context(|| format!("--out {}", args.out.display()))?,
        )
    } else {
        None
    };
    let mut pending: Vec<usize> = writer.as_ref().map(|w| w.pending()).unwrap_or_default();
    if world > 1 {
        let mut count = [pending.len() as f32];
        comm.broadcast(&mut count).map_err(TrainError::from)?;
        let mut list: Vec<f32> = vec![0.0; count[0] as usize];
        if rank == 0 {
            list = pending.iter().map(|i| *i as f32).collect();
        }
        comm.broadcast(&mut list).map_err(TrainError::from)?;
        pending = list.iter().map(|v| *v as usize).collect();
    }
    let kept = header.num_shards() - pending.len();
    let todo: usize = pending.iter().map(|i| header.shard_range(*i).len()).sum();
    let at = step.map_or(String::new(), |s| format!(" (step {s})"));
    tracing::info!(
        "encoding the {} split ({}) with checkpoint {}{at} into {}: {todo} samples in {} shards \
         to write, {kept} finished shards kept; {} {} tokens per sample (maps {map:?})",
        args.split.name(),
        set.describe(),
        dir.display(),
        args.out.display(),
        pending.len(),
        header.tokens_per_sample,
        header.dtype,
    );
    let mut progress = Progress::new("encode", todo);
    let mut done = 0;
    let slot = 1 + header.shard_samples * header.tokens_per_sample;
    for round in pending.chunks(world) {
        let mut mine = Vec::new();
        if let Some(&i) = round.get(rank) {
            mine = encode_shard(
                &Job {
                    model: &model,
                    set: &*set,
                    transform: &transform,
                    batch: args.batch,
                    workers: cfg.data.workers,
                    map,
                    device: &device,
                },
                header.shard_range(i),
            )?;
        }
        let shards: Vec<(usize, Vec<u32>)> = if world == 1 {
            round
                .iter()
                .map(|i| (*i, std::mem::take(&mut mine)))
                .collect()
        } else {
            let mut buf = vec![0f32; world * slot];
            if round.get(rank).is_some() {
                buf[rank * slot] = 1.0;
                for (b, t) in buf[rank * slot + 1..].iter_mut().zip(&mine) {
                    *b = *t as f32;
                }
            }
            comm.all_reduce_sum(&mut buf).map_err(TrainError::from)?;
            round
                .iter()
                .enumerate()
                .map(|(r, i)| {
                    let n = header.shard_range(*i).len() * header.tokens_per_sample;
                    let s = &buf[r * slot + 1..r * slot + 1 + n];
                    (*i, s.iter().map(|v| *v as u32).collect())
                })
                .collect()
        };
        for (i, tokens) in shards {
            done += header.shard_range(i).len();
            if let Some(w) = &mut writer {
                w.write_shard(i, &tokens)
                    .with_context(|| format!("writing shard {i} into {}", args.out.display()))?;
            }
        }
        if rank == 0 {
            progress.update(done);
        }
    }
    let Some(writer) = writer else {
        return Ok(());
    };
    let m = writer.manifest();
    println!(
        "{}: {} {} samples in {} shards, {} {} tokens each (maps {:?}, codebook {}), from {}{at}; \
         {kept} shards kept from an earlier run; manifest: {}",
        args.out.display(),
        m.samples,
        m.split,
        m.shards.len(),
        m.tokens_per_sample,
        m.dtype,
        m.map_shape,
        m.codebook_size,
        dir.display(),
        args.out.join(tokens::MANIFEST_FILE).display()
    );
    Ok(())
}

fn decode_with<B: Backend>(args: &DecodeArgs, device: B::Device) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let Loaded {
        cfg,
        dir,
        model_sha256,
        model,
        ..
    } = load::<B>(
        &args.config,
        &args.overrides,
        args.checkpoint.as_deref(),
        "decode with",
        &device,
    )?;
    let m = TokenManifest::read(&args.tokens)
        .with_context(|| format!("--tokens {}", args.tokens.display()))?;
    let quantizer = model.quantizer();
    let frames = cfg.model.frames();
    let map = map_shape(
        &model,
        [frames, cfg.model.channels(), cfg.data.resolution],
        &device,
    );
    let mut wrong = Vec::new();
    for (what, tokens, here) in [
        ("codebook size", m.codebook_size, quantizer.codebook_size()),
        ("quantizer levels", m.levels, quantizer.num_levels()),
        ("frames per sample", m.frames, frames),
    ] {
        if tokens != here {
            wrong.push(format!(
                "{what} {tokens} in the tokens, {here} in the model"
            ));
        }
    }
    if m.map_shape != map {
        wrong.push(format!(
            "index maps {:?} per sample in the tokens, {map:?} from the model",
            m.map_shape
        ));
    }
    if !wrong.is_empty() {
        bail!(
            "the tokens of {} do not fit the model of {}: {}",
            args.tokens.display(),
            args.config.display(),
            wrong.join("; ")
        );
    }
    if m.model_sha256 != model_sha256 {
        tracing::warn!(
            "the tokens were computed with other weights ({}, model sha256 {}) than checkpoint {} \
             has: decoding them with these",
            m.checkpoint.display(),
            m.model_sha256,
            dir.display()
        );
    }
    if !m.is_complete() {
        tracing::warn!(
            "the encode of {} is unfinished: {} of {} samples in its shards",
            args.tokens.display(),
            m.finished_samples(),
            m.samples
        );
    }
    let total = m.finished_samples().min(args.limit.unwrap_or(usize::MAX));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let tps = m.tokens_per_sample;
    let [l, h, w] = m.map_shape;
    let mut progress = Progress::new("decode", total);
    let mut done = 0;
    for shard in &m.shards {
        if done >= total {
            break;
        }
        let indices = m
            .read_shard(&args.tokens, shard)
            .with_context(|| format!("--tokens {}", args.tokens.display()))?;
        if let Some(t) = indices.iter().find(|t| **t as usize >= m.codebook_size) {
            bail!(
                "{}: code index {t} outside the codebook of {}",
                shard.file,
                m.codebook_size
            );
        }
        let take = shard.samples.min(total - done);
        for first in (0..take).step_by(args.batch) {
            let n = args.batch.min(take - first);
            let data: Vec<i64> = indices[first * tps..(first + n) * tps]
                .iter()
                .map(|t| *t as i64)
                .collect();
            let maps = Tensor::<B, 4, Int>::from_data(TensorData::new(data, [n, l, h, w]), &device);
            let images = model.decode_indices(maps);
            let [_, c, ih, iw] = images.dims();
            let values = read_f32(images, HostRead::Eval);
            let per = frames * c * ih * iw;
            for (s, sample) in values.chunks_exact(per).enumerate() {
                let name = format!("{:06}", shard.first_sample + first + s);
                let png = args.out.join(format!("{name}.png"));
                tokens::save_frames_png(&png, sample, frames, [c, ih, iw])?;
                if frames > 1 {
                    let gif = args.out.join(format!("{name}.gif"));
                    tokens::save_clip_gif(&gif, sample, frames, [c, ih, iw])?;
                }
            }
            done += n;
            progress.update(done);
        }
    }
    let kind = if frames > 1 {
        "clips (PNG strip + GIF each)"
    } else {
        "images"
    };
    println!(
        "{}: {done} {kind} decoded from {} with checkpoint {}",
        args.out.display(),
        args.tokens.display(),
        dir.display()
    );
    Ok(())
}

/// What encoding a shard needs.
struct Job<'a, B: Backend> {
    model: &'a Autoencoder<B>,
    set: &'a dyn trainer::data::Dataset,
    transform: &'a Transform,
    batch: usize,
    workers: usize,
    map: [usize; 3],
    device: &'a B::Device,
}

/// The code indices of the samples `range`, sample after sample.
fn encode_shard<B: Backend>(job: &Job<B>, range: std::ops::Range<usize>) -> Result<Vec<u32>> {
    let map = job.map;
    let mut shard = Vec::with_capacity(range.len() * map.iter().product::<usize>());
    let indices: Vec<usize> = range.collect();
    for chunk in indices.chunks(job.batch) {
        let batch = load_batch(job.set, job.transform, chunk, job.workers)
            .map_err(|e| anyhow!("reading samples {chunk:?}: {e}"))?;
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.images, batch.shape), job.device);
        let maps = job.model.forward(x, Mode::Eval).encoded.index_maps();
        let [b, l, h, w] = maps.dims();
        if [b, l, h, w] != [chunk.len(), map[0], map[1], map[2]] {
            bail!(
                "samples {chunk:?} gave index maps {:?}, expected {map:?} per sample",
                [b, l, h, w]
            );
        }
        for v in read_i64(maps, HostRead::Eval) {
            shard.push(u32::try_from(v).map_err(|_| anyhow!("code index {v} out of range"))?);
        }
    }
    Ok(shard)
}

/// Runs `launch encode`.
pub fn encode(args: EncodeArgs, device: DeviceKind) -> Result<()> {
    // A worker of `launch encode --cpu N` (or of torchrun / srun) joins the others' ring.
    let (comm, _) =
        crate::worker::subcommand_comm(device, Duration::from_secs(args.timeout), "encode")?;
    match device {
        DeviceKind::Cpu => encode_with::<burn::backend::Flex>(&args, Default::default(), comm),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => encode_with::<trainer::quantizers::burn_wgpu::Wgpu>(
            &args,
            trainer::quantizers::burn_wgpu::WgpuDevice::default(),
            comm,
        ),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            encode_with::<burn::backend::Cuda>(&args, burn::backend::cuda::CudaDevice::new(0), comm)
        }
        #[allow(unreachable_patterns)]
        _ => bail!(
            "this launch binary was built without that backend: rebuild with `--features wgpu` or `--features cuda`"
        ),
    }
}

/// Runs `launch decode`.
pub fn decode(args: DecodeArgs, device: DeviceKind) -> Result<()> {
    match device {
        DeviceKind::Cpu => decode_with::<burn::backend::Flex>(&args, Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => decode_with::<trainer::quantizers::burn_wgpu::Wgpu>(
            &args,
            trainer::quantizers::burn_wgpu::WgpuDevice::default(),
        ),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            decode_with::<burn::backend::Cuda>(&args, burn::backend::cuda::CudaDevice::new(0))
        }
        #[allow(unreachable_patterns)]
        _ => bail!(
            "this launch binary was built without that backend: rebuild with `--features wgpu` or `--features cuda`"
        ),
    }
}
