//! The training configuration: TOML files under `configs/`, parsed into typed structs through the
//! `config` crate, with `ROTOR__SECTION__KEY` environment variables and `--set section.key=value`
//! overrides on top (file < environment < command line). An unknown key, a wrong type or an
//! impossible value fails before training starts, naming the key and the file.
//!
//! Every key is documented on its field below and in `configs/reference.toml`.

use std::path::{Path, PathBuf};

use models::{AutoencoderKind, DiscriminatorConfig, LpipsWeights};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run identity, length, logging, checkpoints.
    pub run: RunConfig,
    /// Datasets and preprocessing.
    pub data: DataConfig,
    /// The autoencoder and its quantizer.
    pub model: AutoencoderKind,
    /// The loss.
    pub objective: ObjectiveConfig,
    /// The optimizer and learning-rate schedule.
    pub optim: OptimConfig,
    /// Evaluation (`launch eval`, `run.eval_every`): limits and the metric networks' weights.
    #[serde(default)]
    pub eval: EvalConfig,
}

/// `[eval]`: what `launch eval` and `run.eval_every` compute. Reconstruction error, PSNR, SSIM,
/// codebook usage, perplexity and quantization error need nothing; LPIPS uses
/// `objective.lpips` when its files are configured; r-FID / r-IS need `fid`, r-FVD needs `fvd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation samples (images or clips) to evaluate; 0: all of them.
    #[serde(default)]
    pub limit: usize,
    /// Samples per evaluation batch over all workers (default: `run.batch_size`).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Splits of the Inception Score (10, as every IS reference).
    #[serde(default = "default_is_splits")]
    pub is_splits: usize,
    /// pytorch-fid's Inception weights (r-FID, r-IS), converted to safetensors.
    #[serde(default)]
    pub fid: Option<MetricWeights>,
    /// The FVD I3D's weights (`i3d_pretrained_400.pt`, converted to safetensors).
    #[serde(default)]
    pub fvd: Option<MetricWeights>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            limit: 0,
            batch_size: None,
            is_splits: default_is_splits(),
            fid: None,
            fvd: None,
        }
    }
}

fn default_is_splits() -> usize {
    10
}

/// A metric network's weight file and the sha256 it must have: a number is only called FID / IS
/// / FVD when the pinned file produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricWeights {
    /// The `.safetensors` file.
    pub weights: PathBuf,
    /// Its sha256 (64 hex digits), checked before use.
    pub sha256: String,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: the run directory is `output_dir/name`.
    pub name: String,
    /// Parent of run directories.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Seed of model init, data order, augmentation and quantizer restarts.
    #[serde(default)]
    pub seed: u64,
    /// Optimizer steps to train.
    pub steps: usize,
    /// Images per optimizer step (split into `optim.accumulate` micro-batches).
    pub batch_size: usize,
    /// Log a metrics line every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Validate every this many steps (0: only at the end).
    #[serde(default)]
    pub val_every: usize,
    /// Run the full evaluation (`[eval]`) every this many steps and log it (0: never).
    #[serde(default)]
    pub eval_every: usize,
    /// Validation batches (of `batch_size` images, at most the validation set).
    #[serde(default = "default_val_batches")]
    pub val_batches: usize,
    /// Write a checkpoint every this many steps (and always at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Checkpoints to keep (older ones are pruned once a newer one is durable).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// The autoencoder's compute type in training: `"f32"` (default) or `"bf16"` (mixed
    /// precision, as the paper's bf16 autocast: see [`Precision`]).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// `run.precision`: what the autoencoder computes in during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: the encoder and decoder compute in bf16 from bf16 copies of the f32
    /// master weights; normalizations, the quantizer (distances, codes, EMA statistics), the
    /// losses, the discriminator, gradients and optimizer state stay f32. For GPUs with bf16
    /// arithmetic (CUDA); the CPU backend runs it too (slower than f32: its fused kernels are
    /// f32-only); wgpu has no bf16 type. Validation and evaluation compute in f32.
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The compute type.
    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}
fn default_log_every() -> usize {
    10
}
fn default_val_batches() -> usize {
    4
}
fn default_checkpoint_every() -> usize {
    500
}
fn default_keep() -> usize {
    3
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Where the images come from.
    pub source: DataSource,
    /// Side of the square training crops.
    pub resolution: usize,
    /// Resize so the shorter side is this long before cropping (none: crop at native size).
    #[serde(default)]
    pub resize: Option<usize>,
    /// Random crops for training (validation always crops the center).
    #[serde(default)]
    pub random_crop: bool,
    /// Random horizontal flips for training.
    #[serde(default)]
    pub flip: bool,
    /// Decoding threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Batches decoded ahead of the training loop.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// MiB of decoded, resized training images kept in memory across epochs (folders of
    /// images; the random crop and flip still run every time, so batches are the same with or
    /// without it). 0 turns it off. Not part of the configuration's hash.
    #[serde(
        default = "default_cache_mb",
        skip_serializing_if = "is_default_cache_mb"
    )]
    pub cache_mb: usize,
    /// Video sources: frames per clip (T). Images: 1. A batch of `B` clips reaches the model as
    /// `[B*T, C, H, W]` frames, clip-major (Hugging Face's `[B, T, C, H, W]` flattened).
    #[serde(default = "one_frame")]
    pub frames: usize,
    /// Video sources: distance between a clip's consecutive frames in the source video.
    #[serde(default = "one_frame")]
    pub frame_stride: usize,
    /// Video sources: distance between the starts of consecutive clip windows in a video
    /// (default: one clip's span, `(frames - 1) * frame_stride + 1`). Training draws each
    /// window's start at random among its first `clip_step` positions; validation takes the
    /// window's first frame.
    #[serde(default)]
    pub clip_step: Option<usize>,
}

fn one_frame() -> usize {
    1
}

fn default_workers() -> usize {
    2
}
fn default_prefetch() -> usize {
    4
}
fn default_cache_mb() -> usize {
    1024
}
fn is_default_cache_mb(v: &usize) -> bool {
    *v == default_cache_mb()
}

/// Dataset kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// Fashion-MNIST (or MNIST) IDX image files, `.gz` or raw, scaled to `[-1, 1]`.
    FashionMnist {
        /// `train-images-idx3-ubyte.gz`.
        train: PathBuf,
        /// `t10k-images-idx3-ubyte.gz` (validation).
        val: PathBuf,
    },
    /// A folder (searched recursively) of jpg/png/webp images: ImageNet's `train/<class>/*.JPEG`,
    /// flat FFHQ/CelebA-HQ folders; scaled to `[-1, 1]`.
    ImageFolder {
        /// Training images.
        train: PathBuf,
        /// Validation images; none: hold out `val_fraction` of `train`.
        #[serde(default)]
        val: Option<PathBuf>,
        /// Held-out fraction when `val` is absent.
        #[serde(default = "default_val_fraction")]
        val_fraction: f64,
        /// RGB (3) or grey (1).
        #[serde(default = "three")]
        channels: usize,
    },
    /// BAIR robot pushing, its original TFRecords (`softmotion30_44k/train` and `/test` of
    /// bair_robot_pushing_dataset_v0): one clip window per `clip_step` of each 30-frame
    /// trajectory; RGB.
    Bair {
        /// `softmotion30_44k/train`.
        train: PathBuf,
        /// `softmotion30_44k/test`.
        val: PathBuf,
    },
    /// A folder (searched recursively) of frame shards written by `launch prepare-video` (UCF-101
    /// or any videos); RGB.
    VideoFolder {
        /// Training shards (e.g. `prepare-video` output's `train/`).
        train: PathBuf,
        /// Validation shards (e.g. `test/`); none: hold out every k-th clip of `train`.
        #[serde(default)]
        val: Option<PathBuf>,
        /// Held-out fraction of clips when `val` is absent.
        #[serde(default = "default_val_fraction")]
        val_fraction: f64,
    },
}

impl DataSource {
    /// True for the video sources.
    pub fn is_video(&self) -> bool {
        matches!(self, Self::Bair { .. } | Self::VideoFolder { .. })
    }
}

fn default_val_fraction() -> f64 {
    0.1
}
fn three() -> usize {
    3
}

/// `[objective]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveConfig {
    /// Reconstruction + quantizer losses (Table 1 VQ-VAE, the peer).
    Vqvae {
        /// `mse` or `l1`.
        #[serde(default)]
        reconstruction: Reconstruction,
        /// Clamp the reconstruction to `[-1, 1]` before the loss (the peer does).
        #[serde(default)]
        clamp_output: bool,
        /// Weight of the quantizer's losses (commitment etc. carry their own weights too).
        #[serde(default = "one")]
        quantizer_weight: f32,
    },
    /// taming's VQLPIPSWithDiscriminator: L1 + LPIPS + codebook loss + PatchGAN from `disc_start`
    /// with the adaptive weight.
    Vqgan(VqganObjective),
    /// enhancing-transformers' ViT-VQGAN loss: log-Laplace / log-Gaussian + LPIPS + codebook
    /// loss + a StyleGAN2 discriminator with R1 (Table 4).
    VitVqgan(VitVqganObjective),
}

fn point_one() -> f32 {
    0.1
}

fn vanilla() -> DiscLoss {
    DiscLoss::Vanilla
}

/// The ViT-VQGAN objective (enhancing-transformers' `VQLPIPSWithDiscriminator`, its keys;
/// defaults are its Table 4 config `imagenet_vitvq_small.yaml`).
///
/// Generator: `nll = loglaplace_weight * mean|x^ - x| + loggaussian_weight * mean (x^ - x)^2 +
/// perceptual_weight * mean LPIPS(x, x^)`, `L = nll + f * adversarial_weight * g +
/// codebook_weight * q_loss` with `g = mean softplus(-D(x^))` (vanilla) or `-mean D(x^)` (hinge)
/// and `f = 1` from `disc_start` on. Discriminator: `f * 0.5 * (mean softplus(-D(x)) + mean
/// softplus(D(x^)))` (vanilla; hinge with relu(1 -+ D)), plus on every `do_r1_every`-th step
/// `r1_gamma * do_r1_every / 2 * mean_b ||dD(x_b)/dx_b||^2`. Both optimizers are AdamW with
/// `[optim]`'s betas, eps and weight decay (enhancing: (0.9, 0.99), wd 1e-4). Pixels are rotor's
/// `[-1, 1]` (enhancing feeds LPIPS `2x - 1` of its `[0, 1]` images: the same LPIPS input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitVqganObjective {
    /// Weight of the quantizer loss (1.0).
    #[serde(default = "one")]
    pub codebook_weight: f32,
    /// Weight of the mean absolute error, enhancing's log-Laplace term (Table 4: 0.0).
    #[serde(default, alias = "l1_weight")]
    pub loglaplace_weight: f32,
    /// Weight of the mean squared error, enhancing's log-Gaussian term (Table 4: 1.0).
    #[serde(default = "one", alias = "l2_weight")]
    pub loggaussian_weight: f32,
    /// Weight of LPIPS (Table 4: 0.1; 0 needs no weight files).
    #[serde(default = "point_one")]
    pub perceptual_weight: f32,
    /// LPIPS weight files.
    #[serde(default)]
    pub lpips: LpipsWeights,
    /// Weight of the generator's adversarial term (Table 4: 0.1; no adaptive weight).
    #[serde(default = "point_one")]
    pub adversarial_weight: f32,
    /// Step from which the GAN terms and the discriminator's updates are on (0).
    #[serde(default)]
    pub disc_start: usize,
    /// `vanilla` (enhancing's default) or `hinge`.
    #[serde(default = "vanilla")]
    pub disc_loss: DiscLoss,
    /// The StyleGAN2 discriminator (`size` must be `data.resolution`; `r1_gamma` and
    /// `do_r1_every` set R1).
    pub discriminator: models::StyleGan2Config,
    /// Learning rate of the discriminator (defaults to the generator's).
    #[serde(default)]
    pub disc_lr: Option<f64>,
}

fn one() -> f32 {
    1.0
}

/// Pixel reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    L1,
}

/// The VQGAN objective (taming's keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqganObjective {
    /// Weight of the quantizer loss.
    #[serde(default = "one")]
    pub codebook_weight: f32,
    /// Weight of LPIPS in the reconstruction term (0 needs no weight files).
    #[serde(default = "one")]
    pub perceptual_weight: f32,
    /// LPIPS weight files.
    #[serde(default)]
    pub lpips: LpipsWeights,
    /// Step from which the GAN terms are on.
    #[serde(default)]
    pub disc_start: usize,
    /// `disc_weight` multiplying the adaptive weight.
    #[serde(default = "one")]
    pub disc_weight: f32,
    /// `disc_factor`.
    #[serde(default = "one")]
    pub disc_factor: f32,
    /// `hinge` or `vanilla`.
    #[serde(default)]
    pub disc_loss: DiscLoss,
    /// The discriminator.
    #[serde(default)]
    pub discriminator: DiscriminatorConfig,
    /// Learning rate of the discriminator (defaults to `optim.lr`).
    #[serde(default)]
    pub disc_lr: Option<f64>,
}

/// GAN loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscLoss {
    /// `relu(1 - D(x)) + relu(1 + D(x^))`.
    #[default]
    Hinge,
    /// `softplus(-D(x)) + softplus(D(x^))`.
    Vanilla,
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam betas.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// Adam epsilon.
    #[serde(default = "default_adam_eps")]
    pub eps: f32,
    /// Decoupled weight decay (AdamW).
    #[serde(default)]
    pub weight_decay: f32,
    /// Linear warmup steps from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Decay after warmup.
    #[serde(default)]
    pub schedule: Schedule,
    /// Learning rate at the end of the decay, as a fraction of `lr`.
    #[serde(default)]
    pub final_lr_fraction: f64,
    /// Clip gradients to this GLOBAL norm (none: no clipping).
    #[serde(default)]
    pub grad_clip: Option<f32>,
    /// Micro-batches per optimizer step (gradient accumulation); must divide `run.batch_size`.
    #[serde(default = "default_accumulate")]
    pub accumulate: usize,
}

fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_adam_eps() -> f32 {
    1e-8
}
fn default_accumulate() -> usize {
    1
}

/// Learning-rate decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant `lr`.
    #[default]
    Constant,
    /// Cosine from `lr` to `lr * final_lr_fraction`.
    Cosine,
    /// Linear from `lr` to `lr * final_lr_fraction`.
    Linear,
}

impl TrainConfig {
    /// Reads `path`, applies `ROTOR__*` environment variables and `overrides` (`key=value`,
    /// dotted keys), deserializes and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let err = |message: String| TrainError::Config {
            file: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err("config file not found".into()));
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("ROTOR")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| err(format!("override `{o}` is not key=value")))?;
            builder = builder
                .set_override(key.trim(), parse_value(value.trim()))
                .map_err(|e| err(format!("override `{o}`: {e}")))?;
        }
        let merged = builder.build().map_err(|e| err(e.to_string()))?;
        // The `config` crate converts between types on its own (the string "300" to 300, 12.5
        // to 13, a negative integer to a huge one): take the merged values as they were
        // written, then deserialize them strictly.
        let typed: toml::Value = merged.try_deserialize().map_err(|e| err(e.to_string()))?;
        let cfg = Self::from_value(typed).map_err(err)?;
        cfg.validate()
            .map_err(|(key, reason)| err(format!("key `{key}`: {reason}")))?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment, no overrides) and validates; for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let cfg = Self::from_value(value)?;
        cfg.validate().map_err(|(k, r)| format!("key `{k}`: {r}"))?;
        Ok(cfg)
    }

    /// Deserializes strictly (no conversions between types); the error names the full key.
    fn from_value(value: toml::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let message = e.inner().to_string();
            let mut key = e.path().to_string();
            // Inside a table chosen by `kind` serde loses the path: find the value it names.
            if let Some(leaf) = locate(&value, &key, &message) {
                key = leaf;
            }
            format!("key `{key}`: {}", explain(&message))
        })
    }

    /// Checks values that serde cannot and that every input file exists: `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.validate_values()?;
        self.check_paths()
    }

    /// Checks that the data (and LPIPS weight files, if used) exist.
    pub fn check_paths(&self) -> Result<(), (String, String)> {
        let e = |k: &str, r: String| Err((k.to_string(), r));
        let mut paths: Vec<(&str, &Path)> = match &self.data.source {
            DataSource::FashionMnist { train, val } => {
                vec![("data.source.train", train), ("data.source.val", val)]
            }
            DataSource::ImageFolder { train, val, .. }
            | DataSource::VideoFolder { train, val, .. } => {
                let mut p = vec![("data.source.train", train.as_path())];
                if let Some(v) = val {
                    p.push(("data.source.val", v.as_path()));
                }
                p
            }
            DataSource::Bair { train, val } => {
                vec![("data.source.train", train), ("data.source.val", val)]
            }
        };
        if let Some(p) = self.model.init_from() {
            paths.push(("model.init_from", p));
        }
        if let ObjectiveConfig::Vqgan(v) = &self.objective
            && v.perceptual_weight > 0.0
        {
            if let Some(p) = &v.lpips.vgg16 {
                paths.push(("objective.lpips.vgg16", p));
            }
            if let Some(p) = &v.lpips.heads {
                paths.push(("objective.lpips.heads", p));
            }
        }
        if let Some(f) = &self.eval.fid {
            paths.push(("eval.fid.weights", &f.weights));
        }
        if let Some(f) = &self.eval.fvd {
            paths.push(("eval.fvd.weights", &f.weights));
        }
        for (key, p) in paths {
            if !p.exists() {
                let hint = if key.starts_with("data") {
                    "run scripts/fetch-data.sh for the sample data, or point it at your dataset"
                        .to_string()
                } else if key.starts_with("eval") {
                    crate::eval::METRIC_WEIGHTS_HOWTO.to_string()
                } else if key == "model.init_from" {
                    "give the weights to start from: a taming / latent-diffusion / \
                     enhancing-transformers checkpoint (.ckpt, .pth, .pt, .bin), or a \
                     .safetensors file written by `launch export`"
                        .to_string()
                } else {
                    models::LPIPS_HOWTO.to_string()
                };
                return e(key, format!("{} does not exist ({hint})", p.display()));
            }
        }
        Ok(())
    }

    /// Checks every value except file existence.
    pub fn validate_values(&self) -> Result<(), (String, String)> {
        let e = |k: &str, r: String| Err((k.to_string(), r));
        if self.run.name.is_empty() || self.run.name.contains('/') {
            return e("run.name", "must be a non-empty name without '/'".into());
        }
        if self.eval.is_splits == 0 {
            return e("eval.is_splits", "must be at least 1".into());
        }
        if self.eval.batch_size == Some(0) {
            return e("eval.batch_size", "must be at least 1".into());
        }
        for (key, w) in [
            ("eval.fid.sha256", &self.eval.fid),
            ("eval.fvd.sha256", &self.eval.fvd),
        ] {
            if let Some(w) = w
                && (w.sha256.len() != 64 || !w.sha256.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return e(
                    key,
                    "must be the weight file's sha256: 64 hex digits".into(),
                );
            }
        }
        if self.run.steps == 0 {
            return e("run.steps", "must be at least 1".into());
        }
        if self.run.batch_size == 0 {
            return e("run.batch_size", "must be at least 1".into());
        }
        if self.optim.accumulate == 0 || !self.run.batch_size.is_multiple_of(self.optim.accumulate)
        {
            return e(
                "optim.accumulate",
                format!(
                    "must divide run.batch_size = {} (got {})",
                    self.run.batch_size, self.optim.accumulate
                ),
            );
        }
        if self.run.log_every == 0
            || self.run.checkpoint_every == 0
            || self.run.keep_checkpoints == 0
        {
            return e(
                "run.log_every",
                "log_every, checkpoint_every and keep_checkpoints must be >= 1".into(),
            );
        }
        if self.run.val_every > 0 && self.run.val_batches == 0 {
            return e(
                "run.val_batches",
                "must be >= 1 when run.val_every > 0 (set val_every = 0 to skip validation)".into(),
            );
        }
        if self.optim.warmup_steps > self.run.steps {
            return e(
                "optim.warmup_steps",
                format!(
                    "{} is more than run.steps = {}: the learning rate would never reach optim.lr",
                    self.optim.warmup_steps, self.run.steps
                ),
            );
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return e(
                "optim.weight_decay",
                format!("must be >= 0 and finite, got {}", self.optim.weight_decay),
            );
        }
        if !(self.optim.eps > 0.0 && self.optim.eps.is_finite()) {
            return e(
                "optim.eps",
                format!("must be > 0 and finite, got {}", self.optim.eps),
            );
        }
        if let Some(r) = self.data.resize
            && r < self.data.resolution
        {
            return e(
                "data.resize",
                format!(
                    "{r} is smaller than data.resolution = {}: the shorter side is resized to \
                     data.resize, then a data.resolution square is cropped from it",
                    self.data.resolution
                ),
            );
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return e("optim.lr", format!("must be > 0, got {}", self.optim.lr));
        }
        if self.optim.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return e(
                "optim.betas",
                format!("each must be in [0, 1), got {:?}", self.optim.betas),
            );
        }
        if !(0.0..=1.0).contains(&self.optim.final_lr_fraction) {
            return e("optim.final_lr_fraction", "must be in [0, 1]".into());
        }
        if let Some(c) = self.optim.grad_clip
            && c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return e("optim.grad_clip", format!("must be > 0, got {c}"));
        }
        if let Err(err) = self.model.validate() {
            let (key, reason) = model_error_key(&self.model, err);
            return Err((key, reason));
        }
        let f = self.model.downsample_factor();
        if self.data.resolution == 0 || !self.data.resolution.is_multiple_of(f) {
            return e(
                "data.resolution",
                format!(
                    "must be a positive multiple of the model's downsampling factor {f}, got {}",
                    self.data.resolution
                ),
            );
        }
        if self.data.workers == 0 || self.data.prefetch == 0 {
            return e("data.workers", "workers and prefetch must be >= 1".into());
        }
        let channels = match &self.data.source {
            DataSource::FashionMnist { .. } => 1,
            DataSource::ImageFolder {
                val_fraction,
                channels,
                ..
            } => {
                if !(0.0..1.0).contains(val_fraction) {
                    return e("data.source.val_fraction", "must be in [0, 1)".into());
                }
                if *channels != 1 && *channels != 3 {
                    return e(
                        "data.source.channels",
                        format!("must be 1 or 3, got {channels}"),
                    );
                }
                *channels
            }
            DataSource::Bair { .. } => 3,
            DataSource::VideoFolder { val_fraction, .. } => {
                if !(0.0..1.0).contains(val_fraction) {
                    return e("data.source.val_fraction", "must be in [0, 1)".into());
                }
                3
            }
        };
        if self.data.frames == 0 || self.data.frame_stride == 0 || self.data.clip_step == Some(0) {
            return e(
                "data.frames",
                "data.frames, data.frame_stride and data.clip_step must be >= 1".into(),
            );
        }
        if !self.data.source.is_video() && self.data.frames != 1 {
            return e(
                "data.frames",
                format!(
                    "is {} but data.source is an image source (clips come from kind = \"bair\" or \"video_folder\")",
                    self.data.frames
                ),
            );
        }
        if self.model.frames() != self.data.frames {
            return e(
                "data.frames",
                format!(
                    "is {} but the model takes {} frames per sample ({})",
                    self.data.frames,
                    self.model.frames(),
                    if self.model.frames() == 1 {
                        "an image model: use model.kind = \"timesformer_vq\" or \"conv3d_vq\" for video"
                    } else {
                        "model.frames"
                    }
                ),
            );
        }
        if channels != self.model.channels() {
            return e(
                "model",
                format!(
                    "the model takes {} image channels but the data has {channels}",
                    self.model.channels()
                ),
            );
        }
        let weights: Vec<(&str, f32)> = match &self.objective {
            ObjectiveConfig::Vqvae {
                quantizer_weight, ..
            } => vec![("objective.quantizer_weight", *quantizer_weight)],
            ObjectiveConfig::Vqgan(v) => vec![
                ("objective.codebook_weight", v.codebook_weight),
                ("objective.perceptual_weight", v.perceptual_weight),
                ("objective.disc_weight", v.disc_weight),
                ("objective.disc_factor", v.disc_factor),
            ],
            ObjectiveConfig::VitVqgan(v) => vec![
                ("objective.codebook_weight", v.codebook_weight),
                ("objective.loglaplace_weight", v.loglaplace_weight),
                ("objective.loggaussian_weight", v.loggaussian_weight),
                ("objective.perceptual_weight", v.perceptual_weight),
                ("objective.adversarial_weight", v.adversarial_weight),
            ],
        };
        for (key, w) in weights {
            if !(w >= 0.0 && w.is_finite()) {
                return e(key, format!("must be >= 0 and finite, got {w}"));
            }
        }
        let disc_lr = match &self.objective {
            ObjectiveConfig::Vqgan(v) => v.disc_lr,
            ObjectiveConfig::VitVqgan(v) => v.disc_lr,
            ObjectiveConfig::Vqvae { .. } => None,
        };
        if let Some(lr) = disc_lr
            && !(lr > 0.0 && lr.is_finite())
        {
            return e(
                "objective.disc_lr",
                format!("must be > 0 and finite, got {lr}"),
            );
        }
        let perceptual = match &self.objective {
            ObjectiveConfig::Vqgan(v) => Some((v.perceptual_weight, &v.lpips)),
            ObjectiveConfig::VitVqgan(v) => Some((v.perceptual_weight, &v.lpips)),
            ObjectiveConfig::Vqvae { .. } => None,
        };
        if let Some((weight, lpips)) = perceptual
            && weight > 0.0
            && (lpips.vgg16.is_none() || lpips.heads.is_none())
        {
            return e(
                "objective.lpips",
                format!(
                    "perceptual_weight is {weight} but no LPIPS weight files are set. {}",
                    models::LPIPS_HOWTO
                ),
            );
        }
        if let ObjectiveConfig::VitVqgan(v) = &self.objective {
            if let Err(models::ModelError::InvalidConfig { key, reason }) =
                v.discriminator.validate()
            {
                return Err((format!("objective.discriminator.{key}"), reason));
            }
            if v.discriminator.size != self.data.resolution {
                return e(
                    "objective.discriminator.size",
                    format!(
                        "is {} but the images are {} pixels square (data.resolution)",
                        v.discriminator.size, self.data.resolution
                    ),
                );
            }
            if !matches!(
                self.model,
                AutoencoderKind::VitVq(_) | AutoencoderKind::TimesformerVq(_)
            ) {
                return e(
                    "objective.kind",
                    "vit_vqgan needs model.kind = \"vit_vq\" or \"timesformer_vq\"".into(),
                );
            }
        }
        if let Some(side) = self.model.fixed_resolution()
            && side != self.data.resolution
        {
            return e(
                "data.resolution",
                format!(
                    "is {} but the model is built for {side}-pixel images (model.vit.image_size)",
                    self.data.resolution
                ),
            );
        }
        if let ObjectiveConfig::Vqgan(v) = &self.objective {
            let d = &v.discriminator;
            if let Err(models::ModelError::InvalidConfig { key, reason }) = d.validate() {
                return Err((format!("objective.discriminator.{key}"), reason));
            }
            if d.in_channels != channels {
                return e(
                    "objective.discriminator.in_channels",
                    format!(
                        "is {} but the images have {channels} channels",
                        d.in_channels
                    ),
                );
            }
            if d.output_side(self.data.resolution) == 0 {
                return e(
                    "objective.discriminator.n_layers",
                    format!(
                        "{} layers halve a {}-pixel image to nothing: lower n_layers",
                        d.n_layers, self.data.resolution
                    ),
                );
            }
        }
        self.check_batch_memory(channels)?;
        if matches!(self.objective, ObjectiveConfig::Vqgan(_))
            && !matches!(
                self.model,
                AutoencoderKind::VqModel(_) | AutoencoderKind::Conv3dVq(_)
            )
        {
            return e(
                "objective.kind",
                "vqgan needs model.kind = \"vq_model\" or \"conv3d_vq\"".into(),
            );
        }
        Ok(())
    }

    /// Host memory the data loader needs: `data.prefetch` queued batches, the batch in training
    /// and one being decoded, each `run.batch_size x channels x side^2` f32 values (`side` the
    /// larger of `data.resolution` and `data.resize`), whatever the number of workers on this
    /// machine (a lower bound: the model's own activations come on top).
    pub fn loader_bytes(&self, channels: usize) -> u128 {
        let side = self.data.resolution.max(self.data.resize.unwrap_or(0)) as u128;
        let batch = self.run.batch_size as u128
            * self.data.frames as u128
            * channels as u128
            * side
            * side
            * 4;
        (self.data.prefetch as u128 + 2) * batch
    }

    /// Fails when the loader's batches alone could not fit in this machine's memory.
    fn check_batch_memory(&self, channels: usize) -> Result<(), (String, String)> {
        let Some(total) = machine_memory_bytes() else {
            return Ok(());
        };
        let need = self.loader_bytes(channels);
        if need > total as u128 / 2 {
            let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
            return Err((
                "run.batch_size".into(),
                format!(
                    "{} samples of {}x{channels}x{}x{} need {:.1} GiB for the data loader's {} \
                     batches alone (data.prefetch + 2), more than half of this machine's {:.1} GiB: \
                     lower run.batch_size (the global batch; use optim.accumulate for a large \
                     effective batch) or data.prefetch",
                    self.run.batch_size,
                    self.data.frames,
                    self.data.resolution,
                    self.data.resolution,
                    gib(need),
                    self.data.prefetch + 2,
                    gib(total as u128)
                ),
            ));
        }
        Ok(())
    }

    /// A stable hash of the configuration (recorded in checkpoints).
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_string(self).expect("config serializes");
        let digest = sha2::Sha256::digest(json.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.run.output_dir.join(&self.run.name)
    }
}

/// The full dotted key (`model.autoencoder.ch`, `model.quantizer.codebook.decay`) and the reason
/// of a model or quantizer config error.
fn model_error_key(model: &AutoencoderKind, err: models::ModelError) -> (String, String) {
    use models::ModelError;
    match err {
        ModelError::Quantizer(quantizers::QuantizerError::InvalidConfig { key, reason }) => {
            (format!("model.quantizer.{key}"), reason)
        }
        ModelError::InvalidConfig { key, reason } => {
            let key = match model {
                AutoencoderKind::VqModel(_) if !key.starts_with("quantizer.") => {
                    format!("model.autoencoder.{key}")
                }
                _ => format!("model.{key}"),
            };
            (key, reason)
        }
        other => ("model".into(), other.to_string()),
    }
}

/// Total memory of this machine (Linux `/proc/meminfo`), `None` where unknown.
fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The dotted key under `path` whose value a serde "invalid type/value" message quotes, when
/// exactly one value there fits.
fn locate(root: &toml::Value, path: &str, message: &str) -> Option<String> {
    let quoted = if let Some(i) = message.find('`') {
        let rest = &message[i + 1..];
        rest[..rest.find('`')?].to_string()
    } else {
        let rest = &message[message.find("string \"")? + 8..];
        rest[..rest.find('"')?].to_string()
    };
    let mut node = root;
    for part in path.split('.').filter(|p| !p.is_empty() && *p != "?") {
        node = node.get(part)?;
    }
    fn leaves(v: &toml::Value, prefix: &str, want: &str, out: &mut Vec<String>) {
        let render = match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &key, want, out);
                }
                return;
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    leaves(v, &format!("{prefix}[{i}]"), want, out);
                }
                return;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) if f.is_finite() && f.fract() == 0.0 => format!("{f:.1}"),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
        };
        if render == want {
            out.push(prefix.to_string());
        }
    }
    let mut found = Vec::new();
    leaves(node, path.trim_matches('.'), &quoted, &mut found);
    (found.len() == 1).then(|| found.remove(0))
}

/// serde's type names in an error message, in a config writer's words.
fn explain(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        (
            "expected u32",
            "expected a whole number >= 0 (at most 4294967295)",
        ),
        (
            "expected u16",
            "expected a whole number >= 0 (at most 65535)",
        ),
        ("expected u8", "expected a whole number >= 0 (at most 255)"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(i) = m.find(rust)
            && !m[i + rust.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            m.replace_range(i..i + rust.len(), words);
        }
    }
    m
}

/// `--set` values: TOML scalars or arrays (`1e-4`, `true`, `[0.5, 0.9]`), else a string.
fn parse_value(v: &str) -> config::Value {
    fn conv(v: toml::Value) -> config::Value {
        match v {
            toml::Value::Integer(i) => i.into(),
            toml::Value::Float(f) => f.into(),
            toml::Value::Boolean(b) => b.into(),
            toml::Value::Array(a) => a.into_iter().map(conv).collect::<Vec<_>>().into(),
            other => other.to_string().trim_matches('"').to_string().into(),
        }
    }
    match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => conv(t.remove("v").expect("v")),
        Err(_) => v.to_string().into(),
    }
}
