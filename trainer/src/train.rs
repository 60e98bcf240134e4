//! The training loop of one worker: data -> forward -> loss -> backward -> [gradient all-reduce]
//! -> global-norm clip -> AdamW -> [statistics all-reduce] -> quantizer `apply_stats`; metrics,
//! validation, sample grids and checkpoints on rank 0. The two bracketed seams go through a
//! [`Collective`], the identity for one process.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use burn::{
    module::AutodiffModule,
    optim::{GradientsAccumulator, GradientsParams, Optimizer, adaptor::OptimizerAdaptor},
    record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder},
    tensor::{Tensor, TensorData, backend::AutodiffBackend},
};
use models::{Autoencoder, Lpips};
use quantizers::{
    EmaStats, Mode, QuantRng, Quantizer,
    host::{HostRead, read_f32, read_i64, read_scalar},
    shapes,
};
use rand::SeedableRng;
use serde_json::json;

use crate::{
    Checkpoints, Communicator, SingleProcess, TrainConfig, TrainError,
    adamw::FusedAdamW,
    checkpoint::{RngState, TrainState},
    data::{Dataset, Loader, LoaderOptions, Transform, load_batch, open_datasets},
    eval::{EvalInputs, EvalReport, MetricNets, eval_lpips, evaluate, write_report},
    grad_norm::clip_global_norm,
    metrics::{MetricsWriter, psnr, save_clips_gif, save_grid},
    objective::{self, Inner, Objective},
    schedule::learning_rate,
    step_stats::{PendingStats, StepStats},
    sync::{
        all_reduce_grads, all_reduce_stats, broadcast_module, broadcast_tensor, quantizer_loss,
    },
};

/// Whether to continue from the run directory's checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Continue from the newest valid checkpoint if there is one, else start fresh.
    Auto,
    /// Start fresh; refuse if the run directory already holds checkpoints.
    Never,
    /// Start at step 0 (fresh optimizer, data order and quantizer RNG) from the model weights
    /// of the newest checkpoint whose `model.mpk` is intact, even if its other files are not:
    /// the way on when every checkpoint is damaged. The damaged checkpoints are kept.
    Weights,
}

type Optim<B> = OptimizerAdaptor<FusedAdamW, Autoencoder<B>, B>;

/// Serializes seeding + drawing the initial weights from the backend's global RNG.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Inputs, reconstructions, their shape `[n, c, h, w]` (frames) and the frames per sample, for a
/// PNG grid (and an animated GIF of video clips).
pub type SampleGrid = (Vec<f32>, Vec<f32>, [usize; 4], usize);

/// Validation results.
#[derive(Debug, Clone, Default)]
pub struct ValStats {
    /// Mean squared error in `[-1, 1]` space.
    pub mse: f64,
    /// Mean absolute error.
    pub l1: f64,
    /// PSNR in dB.
    pub psnr: f64,
    /// Fraction of the codebook used over the whole validation set.
    pub used_fraction: f64,
    /// Perplexity of the validation code histogram.
    pub perplexity: f64,
    /// Mean `||e - q||^2`.
    pub quant_error: f64,
    /// Samples evaluated (images, or clips).
    pub images: usize,
}

/// The evaluation's metric networks and LPIPS.
type EvalNets<B> = (
    MetricNets<<B as AutodiffBackend>::InnerBackend>,
    Option<Lpips<<B as AutodiffBackend>::InnerBackend>>,
);

/// One worker's training run.
pub struct Trainer<B: AutodiffBackend> {
    cfg: TrainConfig,
    device: B::Device,
    model: Option<Autoencoder<B>>,
    optim: Optim<B>,
    step: usize,
    cursor: u64,
    quant_rng: QuantRng,
    run_dir: PathBuf,
    checkpoints: Checkpoints,
    metrics: Option<MetricsWriter>,
    train_set: Arc<dyn Dataset>,
    val_set: Arc<dyn Dataset>,
    transform: Transform,
    comm: Box<dyn Communicator>,
    stop: Arc<AtomicBool>,
    stopped: bool,
    last_checkpoint: Option<usize>,
    objective: Box<dyn Objective<B>>,
    /// The k-means initialization of the codebook is still to do (read once at setup).
    quant_needs_init: bool,
    /// `[step, loss]` of the first non-finite loss since the last check (`step` -1: none).
    watch: Option<Inner<B, 1>>,
    /// The evaluation's metric networks and LPIPS, loaded at the first evaluation.
    eval_nets: Option<EvalNets<B>>,
}

pub(crate) fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// The model weights of checkpoint `dir`.
fn load_model<B: AutodiffBackend>(
    model: Autoencoder<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Autoencoder<B>, TrainError> {
    model
        .load_file(dir.join("model"), &recorder(), device)
        .map_err(|e| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("model: {e}"),
        })
}

/// `model` with the weights of `path` (`model.init_from`): a fresh run's starting point.
fn init_model_from<B: AutodiffBackend>(
    model: Autoencoder<B>,
    path: &Path,
) -> Result<Autoencoder<B>, TrainError> {
    let err = |error| TrainError::InitFrom {
        path: path.to_path_buf(),
        error,
    };
    let dict = models::StateDict::load(path).map_err(err)?;
    let model = model.load_state_dict(&dict).map_err(err)?;
    let skipped = dict.names().filter(|n| n.starts_with("loss.")).count();
    tracing::info!(
        "model.init_from: starting from the weights of {} ({} tensors{})",
        path.display(),
        dict.len() - skipped,
        if skipped > 0 {
            format!("; {skipped} loss tensors skipped")
        } else {
            String::new()
        }
    );
    if model.quantizer().needs_init() {
        tracing::warn!(
            "model.init_from: {} does not mark the codebook initialized, so the configured \
             k-means initialization will replace the loaded codebook at the first step (set \
             the quantizer's kmeans_init = false to keep it)",
            path.display()
        );
    }
    Ok(model)
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A single-process trainer.
    pub fn new(cfg: TrainConfig, device: B::Device, resume: Resume) -> Result<Self, TrainError> {
        Self::with_communicator(cfg, device, resume, Box::new(SingleProcess))
    }

    /// A data-parallel worker that synchronizes through `comm`.
    pub fn with_communicator(
        cfg: TrainConfig,
        device: B::Device,
        resume: Resume,
        mut comm: Box<dyn Communicator>,
    ) -> Result<Self, TrainError> {
        let world = comm.world_size();
        if !cfg
            .run
            .batch_size
            .is_multiple_of(world * cfg.optim.accumulate)
        {
            return Err(TrainError::Config {
                file: PathBuf::from("run.batch_size"),
                message: format!(
                    "key `run.batch_size` = {} must be divisible by workers x optim.accumulate = {world} x {}",
                    cfg.run.batch_size, cfg.optim.accumulate
                ),
            });
        }
        let compute = cfg.run.precision.dtype();
        if !B::supports_dtype(&device, compute.into()) {
            return Err(TrainError::Config {
                file: PathBuf::from("run.precision"),
                message: format!(
                    "key `run.precision` = \"bf16\": this device ({}) has no bf16 arithmetic \
                     (wgpu's shading languages have no bf16 type): set run.precision = \"f32\", \
                     or train on a CUDA GPU",
                    B::name(&device)
                ),
            });
        }
        let run_dir = cfg.run_dir();
        let checkpoints = Checkpoints::new(&run_dir, cfg.run.keep_checkpoints);
        if resume == Resume::Never && comm.rank() == 0 && checkpoints.any() {
            return Err(TrainError::Checkpoint {
                path: checkpoints.dir().to_path_buf(),
                reason: "this run already has checkpoints: continue it with `--resume auto`, or choose another run.name".into(),
            });
        }
        let (train_set, val_set, channels) = open_datasets(&cfg.data)?;
        if cfg.run.batch_size > train_set.len() {
            return Err(TrainError::Data(format!(
                "key `run.batch_size` = {} (the global batch) is larger than the training set \
                 ({} images in {}): lower run.batch_size",
                cfg.run.batch_size,
                train_set.len(),
                train_set.describe()
            )));
        }
        std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
        tracing::info!(
            "train data: {}; validation: {}",
            train_set.describe(),
            val_set.describe()
        );
        let transform = Transform {
            resolution: cfg.data.resolution,
            resize: cfg.data.resize,
            random_crop: cfg.data.random_crop,
            flip: cfg.data.flip,
            channels,
        };
        // The backend's RNG is process-global: seed and draw under one lock, so that workers
        // sharing a process (tests, threads) initialize deterministically.
        let init_guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, cfg.run.seed);
        let mut model = cfg.model.init::<B>(&device)?;
        let o = &cfg.optim;
        let mut optim = FusedAdamW::new(o.betas, o.eps, o.weight_decay).init::<B, Autoencoder<B>>();
        let mut objective = objective::build::<B>(&cfg.objective, &cfg.optim, &device)?;
        objective.check_micro_batch(
            cfg.run.batch_size / world / cfg.optim.accumulate * cfg.data.frames,
        )?;
        // burn initializes parameters lazily, on first use: draw them now, under the lock.
        objective::materialize(&model);
        objective.materialize();
        drop(init_guard);
        let mut step = 0;
        let mut cursor = 0;
        let mut quant_rng = QuantRng::seed_from_u64(cfg.run.seed ^ 0x5155_414e_5449_5a45);
        let mut resumed_at = None;
        let found = match resume {
            Resume::Auto => checkpoints.latest_valid().map_err(|rejected| {
                let list: Vec<String> = rejected
                    .iter()
                    .map(|(dir, why)| format!("  {}: {why}", dir.display()))
                    .collect();
                TrainError::Checkpoint {
                    path: checkpoints.dir().to_path_buf(),
                    reason: format!(
                        "no checkpoint of this run verifies, so it cannot be continued and nothing \
                         was changed:\n{}\nTo go on: `--resume weights` starts at step 0 from the model \
                         weights of the newest checkpoint whose model.mpk is intact (fresh optimizer; \
                         the damaged checkpoints are kept), or `--resume never --set run.name=<new \
                         name>` starts a new run elsewhere.",
                        list.join("\n")
                    ),
                }
            })?,
            _ => None,
        };
        if resume == Resume::Weights {
            let dir = checkpoints
                .latest_intact_model()
                .ok_or_else(|| TrainError::Checkpoint {
                    path: checkpoints.dir().to_path_buf(),
                    reason: "--resume weights: no checkpoint here has an intact model.mpk".into(),
                })?;
            model = load_model(model, &dir, &device)?;
            tracing::info!(
                "starting at step 0 from the model weights of {} (optimizer, data order and \
                 quantizer RNG fresh)",
                dir.display()
            );
        }
        // A fresh run starts from `model.init_from` (a checkpoint of this run wins).
        if let (None, Some(path)) = (&found, cfg.model.init_from())
            && resume != Resume::Weights
        {
            model = init_model_from(model, path)?;
        }
        if let Some((dir, state)) = found {
            if state.config_hash != cfg.hash() {
                tracing::warn!(
                    "the configuration differs from the one checkpoint {} was written with; continuing with the new one",
                    dir.display()
                );
            }
            model = load_model(model, &dir, &device)?;
            let record = recorder().load(dir.join("optim"), &device).map_err(|e| {
                TrainError::Checkpoint {
                    path: dir.clone(),
                    reason: format!("optimizer: {e}"),
                }
            })?;
            optim = optim.load_record(record);
            objective.load(&dir, &device)?;
            quant_rng = state
                .quant_rng
                .restore()
                .map_err(|reason| TrainError::Checkpoint {
                    path: dir.clone(),
                    reason,
                })?;
            step = state.step;
            cursor = state.cursor;
            resumed_at = Some(step);
            tracing::info!(
                "resumed from {} (step {step}, sample {cursor})",
                dir.display()
            );
        }
        // Every rank must continue from the same state: compare with rank 0's (step + 1, 0 when
        // fresh; exact in f32 as two 16-bit halves), then take rank 0's weights everywhere.
        let mine = resumed_at.map_or(0, |s| s + 1);
        let mut agreed = [(mine >> 16) as f32, (mine & 0xffff) as f32];
        comm.broadcast(&mut agreed)?;
        let rank0 = ((agreed[0] as usize) << 16) | agreed[1] as usize;
        if rank0 != mine {
            let show = |v: usize| {
                if v == 0 {
                    "a fresh start".to_string()
                } else {
                    format!("the step-{} checkpoint", v - 1)
                }
            };
            return Err(TrainError::Checkpoint {
                path: checkpoints.dir().to_path_buf(),
                reason: format!(
                    "rank {} found {} but rank 0 {}: every worker must see the same checkpoints (shared storage)",
                    comm.rank(),
                    show(mine),
                    show(rank0)
                ),
            });
        }
        model = broadcast_module(comm.as_mut(), model)?;
        objective.broadcast(comm.as_mut())?;
        let quant_needs_init = model.quantizer().needs_init();
        // The evaluation's networks are checked (sha256) and loaded now, not hours into the run.
        let eval_nets = if cfg.run.eval_every > 0 {
            Some((
                MetricNets::load(&cfg.eval, &device)?,
                eval_lpips::<B::InnerBackend>(&cfg, &device)?,
            ))
        } else {
            None
        };
        let metrics = if comm.rank() == 0 {
            Some(MetricsWriter::open(&run_dir, resumed_at.or(Some(0)))?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            device,
            model: Some(model),
            optim,
            step,
            cursor,
            quant_rng,
            run_dir,
            checkpoints,
            metrics,
            train_set,
            val_set,
            transform,
            comm,
            stop: Arc::new(AtomicBool::new(false)),
            stopped: false,
            last_checkpoint: resumed_at,
            objective,
            quant_needs_init,
            watch: None,
            eval_nets,
        })
    }

    /// Optimizer steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The model.
    pub fn model(&self) -> &Autoencoder<B> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Uses `flag` as the stop flag (signal handlers installed before the trainer was built).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// A flag that, once set (e.g. by a signal handler), makes the loop checkpoint and return
    /// after the current step.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn tensor(&self, images: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(images.to_vec(), shape), &self.device)
    }

    /// Trains until `run.steps` (or until the stop flag is set); returns the final validation.
    pub fn run(&mut self) -> Result<ValStats, TrainError> {
        let total = self.cfg.run.steps;
        self.train_until(total)?;
        if self.stopped {
            return Ok(ValStats::default());
        }
        let val = self.validate_and_log()?;
        if self.comm.rank() == 0 && self.last_checkpoint != Some(self.step) {
            self.save_checkpoint()?;
        }
        Ok(val)
    }

    /// True when the last run stopped early on request (a checkpoint was written).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Trains until `last_step` steps are done (checkpointing on schedule).
    pub fn train_until(&mut self, last_step: usize) -> Result<(), TrainError> {
        let world = self.comm.world_size();
        let batch = self.cfg.run.batch_size;
        let opts = LoaderOptions {
            batch: batch / world,
            global_batch: batch,
            rank: self.comm.rank(),
            world,
            workers: self.cfg.data.workers,
            prefetch: self.cfg.data.prefetch,
            seed: self.cfg.run.seed,
            cache_bytes: self.cfg.data.cache_mb << 20,
        };
        let mut loader = Loader::start(
            self.train_set.clone(),
            self.transform.clone(),
            opts,
            self.cursor,
        );
        // A progress bar redraws itself with escape codes: only on a terminal, and not when
        // NO_COLOR asks for plain output (then the logged lines show progress).
        let plain = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let bar = (self.comm.rank() == 0 && std::io::stderr().is_terminal() && !plain).then(|| {
            let bar = indicatif::ProgressBar::new(last_step as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(self.step as u64);
            bar
        });
        let started = Instant::now();
        let mut window = (Instant::now(), 0usize, 0.0f64);
        // Tensor reads made inside the window's steps (not by the logging): (own, staged for a
        // collective).
        let mut step_reads = (0u64, 0u64);
        while self.step < last_step {
            let wait = Instant::now();
            let batch = loader.next_batch().map_err(TrainError::Data)?;
            let wait_secs = wait.elapsed().as_secs_f64();
            let reads_before = quantizers::host::counts();
            let pending = self.step_on_device(&batch.images, batch.shape)?;
            let reads = quantizers::host::counts().since(&reads_before);
            step_reads.0 += reads.total() - reads.staging;
            step_reads.1 += reads.staging;
            window.1 += 1;
            window.2 += batch.decode_secs;
            if let Some(bar) = &bar {
                bar.set_position(self.step as u64);
            }
            let log_step =
                self.step.is_multiple_of(self.cfg.run.log_every) || self.step == last_step;
            let checkpoint_step = self.step.is_multiple_of(self.cfg.run.checkpoint_every);
            // The host waits for the device at logging and checkpoint steps only.
            if log_step || checkpoint_step {
                self.check_divergence()?;
            }
            if log_step {
                let mut stats = pending.read();
                if let Some(bar) = &bar {
                    bar.set_message(format!(
                        "loss {:.4}  codes {:.0}%",
                        stats.loss,
                        stats.used_fraction * 100.0
                    ));
                }
                self.globalize(&mut stats)?;
                let secs = window.0.elapsed().as_secs_f64();
                let images = (window.1 * batch.shape[0] * world) as f64;
                let mut record = json!({
                    "step": self.step,
                    "loss": stats.loss,
                    "rec": stats.rec,
                    "quant_loss": stats.quant,
                    "lr": learning_rate(&self.cfg.optim, self.step - 1, self.cfg.run.steps),
                    "used_fraction": stats.used_fraction,
                    "perplexity": stats.perplexity,
                    "quant_error": stats.quant_error,
                    "grad_norm": stats.grad_norm,
                    "restarted_codes": stats.restarted,
                    "images_per_s": images / secs.max(1e-9),
                    "steps_per_s": window.1 as f64 / secs.max(1e-9),
                    "data_images_per_s": (window.1 * batch.shape[0]) as f64 / window.2.max(1e-9),
                    "data_wait_s": wait_secs,
                    "skipped_images": loader.skipped(),
                    "epoch": self.cursor as f64 / self.train_set.len() as f64,
                    "elapsed_s": started.elapsed().as_secs_f64(),
                    "host_reads_per_step": step_reads.0 as f64 / window.1 as f64,
                    "staged_reads_per_step": step_reads.1 as f64 / window.1 as f64,
                });
                for (name, v) in &stats.terms {
                    record[format!("q_{name}")] = json!(v);
                }
                for (name, v) in &stats.objective {
                    record[*name] = json!(v);
                }
                if bar.is_none() && self.comm.rank() == 0 {
                    tracing::info!(
                        "step {}/{last_step} loss {:.4} rec {:.4} codes {:.1}% ppl {:.1} {:.2} steps/s",
                        self.step,
                        stats.loss,
                        stats.rec,
                        stats.used_fraction * 100.0,
                        stats.perplexity,
                        window.1 as f64 / secs.max(1e-9)
                    );
                }
                if let Some(m) = &mut self.metrics {
                    m.write(&record)?;
                }
                window = (Instant::now(), 0, 0.0);
                step_reads = (0, 0);
            }
            if self.cfg.run.val_every > 0
                && self.step.is_multiple_of(self.cfg.run.val_every)
                && self.step < last_step
            {
                self.validate_and_log()?;
            }
            // Everyone stops at the same step when any worker was asked to. Agreeing is a
            // collective: a group agrees at logging and checkpoint steps only, one process at
            // every step.
            let stopping = if self.comm.world_size() == 1 || log_step || checkpoint_step {
                self.comm.any(self.stop.load(Ordering::SeqCst))?
            } else {
                false
            };
            if stopping && !(log_step || checkpoint_step) {
                self.check_divergence()?;
            }
            if self.comm.rank() == 0 && (checkpoint_step || stopping) {
                self.save_checkpoint()?;
            }
            if stopping {
                tracing::info!("stop requested: checkpoint written at step {}", self.step);
                self.stopped = true;
                break;
            }
            // After the step's checkpoint (an evaluation error then loses nothing), and never
            // once a stop was agreed (a preemption's grace period is for the checkpoint).
            if self.cfg.run.eval_every > 0 && self.step.is_multiple_of(self.cfg.run.eval_every) {
                self.evaluate_and_log()?;
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(())
    }

    /// One optimizer step on a (per-process) batch `[B, C, H, W]`, its figures read back (this
    /// process's; a divergence since the last read is reported here). The training loop uses
    /// the same step but reads its figures at logging steps only.
    pub fn train_step(
        &mut self,
        images: &[f32],
        shape: [usize; 4],
    ) -> Result<StepStats, TrainError> {
        let pending = self.step_on_device(images, shape)?;
        self.check_divergence()?;
        Ok(pending.read())
    }

    /// Fails when a loss went non-finite since the last check (on any process: every process
    /// gets the same answer). One read of a two-element tensor; called at logging and
    /// checkpoint steps, so no checkpoint is written from diverged weights.
    fn check_divergence(&mut self) -> Result<(), TrainError> {
        let [step, value] = match self.watch.take() {
            Some(w) => {
                let v = read_f32(w, HostRead::Log);
                [v[0], v[1]]
            }
            None => [-1.0, 0.0],
        };
        let mine = step >= 0.0;
        if self.comm.any(mine)? {
            return Err(TrainError::Diverged {
                step: if mine { step as usize } else { self.step },
                value: if mine { value } else { f32::NAN },
            });
        }
        Ok(())
    }

    /// Notes on the device the first micro-batch whose loss `total` `[1]` is not finite.
    fn watch_loss(&mut self, total: Inner<B, 1>) {
        let device = total.device();
        let watch = self
            .watch
            .take()
            .unwrap_or_else(|| Inner::<B, 1>::from_floats([-1.0, 0.0], &device));
        let bad = total.clone().is_finite().float().neg() + 1.0;
        let unset = watch.clone().narrow(0, 0, 1).lower_elem(0.0).float();
        let take = (bad * unset).repeat_dim(0, 2).greater_elem(0.5);
        let here = Tensor::cat(
            vec![
                Inner::<B, 1>::from_floats([(self.step + 1) as f32], &device),
                total,
            ],
            0,
        );
        self.watch = Some(watch.mask_where(take, here));
    }

    /// One optimizer step, its figures left on the device: nothing here reads a tensor (the
    /// host-staged collectives of a multi-process group aside), so the host queues the next
    /// step while the device computes this one.
    fn step_on_device(
        &mut self,
        images: &[f32],
        shape: [usize; 4],
    ) -> Result<PendingStats<B::InnerBackend>, TrainError> {
        let micro_batches = self.cfg.optim.accumulate;
        let [b, c, h, w] = shape;
        let micro = b / micro_batches;
        let per = c * h * w;
        let mut model = self.model.take().expect("model present");
        let mut accumulator = GradientsAccumulator::<Autoencoder<B>>::new();
        let mut stats_sum: Vec<EmaStats<B::InnerBackend>> = Vec::new();
        let mut out = PendingStats::new(&self.device, self.objective.term_names());
        for m in 0..micro_batches {
            let x = self.tensor(
                &images[m * micro * per..(m + 1) * micro * per],
                [micro, c, h, w],
            );
            if self.quant_needs_init {
                let latents = shapes::flatten_image(model.latents(x.clone()).detach());
                let latents = broadcast_tensor(self.comm.as_mut(), latents)?;
                model
                    .quantizer_mut()
                    .init_from_batch(latents, &mut self.quant_rng);
                self.quant_needs_init = false;
                tracing::info!("codebook initialized by k-means on the first batch");
            }
            let stats =
                self.forward_backward(&model, x, micro_batches, &mut out, &mut accumulator)?;
            stats_sum = merge_stats(stats_sum, stats);
        }
        // Seam 1: gradients averaged over processes, then clipped by their global norm.
        let mut grads = all_reduce_grads::<B, _>(self.comm.as_mut(), &model, accumulator.grads())?;
        out.grad_norm = clip_global_norm(&model, &mut grads, self.cfg.optim.grad_clip);
        let lr = learning_rate(&self.cfg.optim, self.step, self.cfg.run.steps);
        model = self.optim.step(lr, model, grads);
        // The objective's discriminator turn, on this step's reconstructions (its gradients
        // through the same seam).
        for (name, value) in self
            .objective
            .discriminator_step(self.comm.as_mut(), self.step, lr)?
        {
            out.add_objective_term(name, value);
        }
        // Seam 2: EMA statistics summed over processes before the codebook update.
        let stats = all_reduce_stats(self.comm.as_mut(), stats_sum)?;
        if !stats.is_empty() {
            out.restarted = model
                .quantizer_mut()
                .apply_stats(stats_from_inner(stats), &mut self.quant_rng)?
                .restarted_codes
                .map(|t| t.inner());
        }
        self.model = Some(model);
        self.step += 1;
        self.cursor += self.cfg.run.batch_size as u64;
        Ok(out)
    }

    /// One micro-batch of `micro_batches`: forward, the objective's generator loss and the
    /// quantizer's, backward, gradients into `accumulator`; returns the quantizer's EMA
    /// statistics (summed over processes later, at seam 2).
    fn forward_backward(
        &mut self,
        model: &Autoencoder<B>,
        x: Tensor<B, 4>,
        micro_batches: usize,
        out: &mut PendingStats<B::InnerBackend>,
        accumulator: &mut GradientsAccumulator<Autoencoder<B>>,
    ) -> Result<Vec<EmaStats<B::InnerBackend>>, TrainError> {
        let k = micro_batches as f32;
        let fwd = model.forward_mixed(x.clone(), Mode::Train, self.cfg.run.precision.dtype());
        self.objective.prepare(&x, self.step, self.comm.as_mut())?;
        let generator =
            self.objective
                .generator(&x, &fwd, model.last_layer(), self.step, micro_batches);
        for (name, value) in generator.terms {
            out.add_objective_term(name, value / k);
        }
        let quantizer_weight = self.objective.quantizer_weight();
        let quant = quantizer_loss(self.comm.as_mut(), &fwd.encoded.quant)? * quantizer_weight;
        let quant_value = quant.clone().inner();
        let total = generator.value.clone() + quant_value.clone();
        out.loss = out.loss.clone() + total.clone() / k;
        out.rec = out.rec.clone() + generator.value / k;
        out.quant = out.quant.clone() + quant_value / k;
        self.watch_loss(total);
        for term in &fwd.encoded.quant.losses {
            out.add_term(
                term.name,
                term.value.clone().inner() * (quantizer_weight / k),
            );
        }
        out.add_usage(&fwd.encoded.quant.usage);
        let grads = (generator.backprop + quant / k).backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        Ok(fwd
            .encoded
            .quant
            .stats
            .into_iter()
            .map(|s| EmaStats {
                counts: s.counts.inner(),
                sums: s.sums.inner(),
                candidates: s.candidates.inner(),
            })
            .collect())
    }

    /// Turns this process's step statistics into the global batch's: losses averaged over
    /// processes (every process's batch is the same size), code histograms and squared errors
    /// summed, usage recomputed from the sums. One all-reduce; called at logging steps only.
    fn globalize(&mut self, stats: &mut StepStats) -> Result<(), TrainError> {
        let world = self.comm.world_size();
        if world == 1 {
            return Ok(());
        }
        let mut buf: Vec<f32> = vec![stats.loss, stats.rec, stats.quant];
        buf.extend(stats.terms.iter().map(|(_, v)| *v));
        buf.extend(stats.objective.iter().map(|(_, v)| *v));
        let scalars = buf.len();
        buf.extend(stats.usage.to_flat().into_iter().map(|v| v as f32));
        self.comm.all_reduce_sum(&mut buf)?;
        let mean: Vec<f32> = buf[..scalars].iter().map(|v| v / world as f32).collect();
        let mut it = mean.into_iter();
        let mut next = || it.next().unwrap_or(0.0);
        stats.loss = next();
        stats.rec = next();
        stats.quant = next();
        for (_, v) in &mut stats.terms {
            *v = next();
        }
        for (_, v) in &mut stats.objective {
            *v = next();
        }
        let usage: Vec<f64> = buf[scalars..].iter().map(|&v| v as f64).collect();
        stats.usage.set_flat(&usage);
        stats.set_usage_figures();
        Ok(())
    }

    /// Evaluates on up to `run.val_batches` batches of the validation set (center crops, eval
    /// mode): reconstruction error, PSNR and codebook usage over all of them.
    pub fn validate(&self) -> Result<(ValStats, Option<SampleGrid>), TrainError> {
        let model = self.model().valid();
        let eval = self.transform.eval();
        let k = model.quantizer().codebook_size();
        let levels = model.quantizer().num_levels();
        // One histogram per level (levels of a residual stack share the codebook size).
        let mut hist = vec![0u64; k * levels];
        let n = self
            .val_set
            .len()
            .min(self.cfg.run.val_batches * self.cfg.run.batch_size);
        let mut v = ValStats::default();
        let mut sample = None;
        let bs = self.cfg.run.batch_size.min(n.max(1));
        let mut start = 0;
        while start < n {
            let idx: Vec<usize> = (start..(start + bs).min(n)).collect();
            let batch = load_batch(self.val_set.as_ref(), &eval, &idx, self.cfg.data.workers)
                .map_err(TrainError::Data)?;
            let x = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(batch.images.clone(), batch.shape),
                &self.device,
            );
            let out = model.forward(x.clone(), Mode::Eval);
            let clamp = self.objective.clamp_output();
            let rec = if clamp {
                out.reconstruction.clone().clamp(-1.0, 1.0)
            } else {
                out.reconstruction.clone()
            };
            let diff = rec - x;
            let m = idx.len() as f64;
            v.mse += read_scalar(diff.clone().powi_scalar(2).mean(), HostRead::Eval) as f64 * m;
            v.l1 += read_scalar(diff.abs().mean(), HostRead::Eval) as f64 * m;
            let qe = read_scalar(out.encoded.quant.usage.quant_error.clone(), HostRead::Eval);
            v.quant_error += qe as f64 * m;
            let ids = read_i64(out.encoded.quant.indices, HostRead::Eval);
            for (j, i) in ids.into_iter().enumerate() {
                if let Some(h) = hist.get_mut((j % levels) * k + i as usize) {
                    *h += 1;
                }
            }
            if sample.is_none() {
                let s = batch.shape;
                // 8 images, or 4 clips.
                let take = if batch.frames == 1 {
                    s[0].min(8)
                } else {
                    s[0].min(4 * batch.frames)
                };
                let per = s[1] * s[2] * s[3];
                let rec = read_f32(out.reconstruction, HostRead::Eval);
                sample = Some((
                    batch.images[..take * per].to_vec(),
                    rec[..take * per].to_vec(),
                    [take, s[1], s[2], s[3]],
                    batch.frames,
                ));
            }
            v.images += idx.len();
            start += bs;
        }
        let m = v.images.max(1) as f64;
        v.mse /= m;
        v.l1 /= m;
        v.quant_error /= m;
        v.psnr = psnr(v.mse);
        (v.used_fraction, v.perplexity) = crate::eval::usage_figures(&hist, k, levels);
        Ok((v, sample))
    }

    fn validate_and_log(&mut self) -> Result<ValStats, TrainError> {
        // Every rank validates (the same images), so none waits in a collective for rank 0.
        let (v, sample) = self.validate()?;
        if self.comm.rank() == 0 {
            tracing::info!(
                "validation at step {}: mse {:.5} psnr {:.2} dB, codes used {:.1}%, perplexity {:.1}",
                self.step,
                v.mse,
                v.psnr,
                v.used_fraction * 100.0,
                v.perplexity
            );
            if let Some(m) = &mut self.metrics {
                m.write(&json!({
                    "step": self.step,
                    "split": "val",
                    "mse": v.mse,
                    "l1": v.l1,
                    "psnr": v.psnr,
                    "used_fraction": v.used_fraction,
                    "perplexity": v.perplexity,
                    "quant_error": v.quant_error,
                    "images": v.images,
                }))?;
            }
            if let Some((orig, rec, shape, frames)) = sample {
                let dir = self.run_dir.join("samples");
                let path = dir.join(format!("step-{:08}.png", self.step));
                if frames == 1 {
                    save_grid(&path, &orig, &rec, shape)?;
                } else {
                    // The first clip's frames as a strip (inputs above reconstructions), and
                    // every sampled clip animated.
                    let [_, c, h, w] = shape;
                    let per = frames * c * h * w;
                    save_grid(&path, &orig[..per], &rec[..per], [frames, c, h, w])?;
                    let gif = dir.join(format!("step-{:08}.gif", self.step));
                    save_clips_gif(&gif, &orig, &rec, shape, frames)?;
                }
                if let Some(m) = &mut self.metrics {
                    m.image_file(self.step, "val/reconstructions", &path)?;
                }
            }
        }
        Ok(v)
    }

    /// Replaces the model's weights with those of checkpoint `dir` (verified first) and takes
    /// its step: what `launch eval --checkpoint` evaluates.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<(), TrainError> {
        let state = Checkpoints::verify(dir).map_err(|reason| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        })?;
        let model = self.model.take().expect("model present");
        self.model = Some(load_model(model, dir, &self.device)?);
        self.step = state.step;
        Ok(())
    }

    /// The full evaluation (`[eval]`) of the current weights on the validation set, data-parallel
    /// over the workers; rank 0 writes it to `eval/step-NNNNNNNN.json` in the run directory.
    pub fn evaluate(&mut self) -> Result<EvalReport, TrainError> {
        if self.eval_nets.is_none() {
            let nets = MetricNets::load(&self.cfg.eval, &self.device)?;
            let lpips = eval_lpips::<B::InnerBackend>(&self.cfg, &self.device)?;
            self.eval_nets = Some((nets, lpips));
        }
        let model = self.model().valid();
        let transform = self.transform.eval();
        let Some((nets, lpips)) = &self.eval_nets else {
            unreachable!("loaded above")
        };
        let inputs = EvalInputs {
            model: &model,
            val_set: self.val_set.as_ref(),
            transform: &transform,
            workers: self.cfg.data.workers,
            lpips: lpips.as_ref(),
            nets,
            global_batch: self.cfg.eval.batch_size.unwrap_or(self.cfg.run.batch_size),
            step: self.step,
            device: &self.device,
        };
        let report = evaluate(&inputs, &self.cfg.eval, self.comm.as_mut())?;
        if self.comm.rank() == 0 {
            let path = self
                .run_dir
                .join("eval")
                .join(format!("step-{:08}.json", self.step));
            write_report(&path, &report)?;
        }
        Ok(report)
    }

    fn evaluate_and_log(&mut self) -> Result<EvalReport, TrainError> {
        let report = self.evaluate()?;
        if self.comm.rank() == 0 {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            tracing::info!(
                "eval at step {}: psnr {:.2} dB, ssim {}, lpips {}, r-FID {}, r-IS {}, r-FVD {}, codes used {:.1}%",
                self.step,
                report.psnr,
                opt(report.ssim),
                opt(report.lpips),
                opt(report.fid),
                opt(report.is_mean),
                opt(report.fvd),
                report.used_fraction * 100.0
            );
            if let Some(m) = &mut self.metrics {
                let mut record = serde_json::to_value(&report).unwrap_or_default();
                if let Some(o) = record.as_object_mut() {
                    o.insert("split".into(), json!("eval"));
                    o.remove("notes");
                }
                m.write(&record)?;
            }
        }
        Ok(report)
    }

    /// Writes a checkpoint of the current state (rank 0).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        self.last_checkpoint = Some(self.step);
        let state = TrainState {
            step: self.step,
            cursor: self.cursor,
            quant_rng: RngState::capture(&self.quant_rng),
            config_hash: self.cfg.hash(),
            world_size: self.comm.world_size(),
        };
        let model = self.model().clone();
        let optim_record = self.optim.to_record();
        let cfg_toml = toml::to_string(&self.cfg).unwrap_or_default();
        let objective = &self.objective;
        let dir = self.checkpoints.save(&state, |dir| {
            model
                .save_file(dir.join("model"), &recorder())
                .map_err(|e| TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    reason: format!("model: {e}"),
                })?;
            recorder()
                .record(optim_record, dir.join("optim"))
                .map_err(|e| TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    reason: format!("optimizer: {e}"),
                })?;
            objective.save(dir)?;
            std::fs::write(dir.join("config.toml"), cfg_toml).map_err(|e| TrainError::io(dir, e))
        })?;
        tracing::debug!("checkpoint written: {}", dir.display());
        Ok(dir)
    }
}

use burn::module::Module;

/// Adds a micro-batch's EMA statistics to the step's (candidates concatenated in order).
fn merge_stats<Bi: burn::tensor::backend::Backend>(
    sum: Vec<EmaStats<Bi>>,
    micro: Vec<EmaStats<Bi>>,
) -> Vec<EmaStats<Bi>> {
    if sum.is_empty() {
        return micro;
    }
    sum.into_iter()
        .zip(micro)
        .map(|(a, b)| EmaStats {
            counts: a.counts + b.counts,
            sums: a.sums + b.sums,
            candidates: Tensor::cat(vec![a.candidates, b.candidates], 0),
        })
        .collect()
}

/// All-reduced statistics back on the autodiff backend, for `apply_stats`.
fn stats_from_inner<B: AutodiffBackend>(stats: Vec<EmaStats<B::InnerBackend>>) -> Vec<EmaStats<B>> {
    stats
        .into_iter()
        .map(|s| EmaStats {
            counts: Tensor::from_inner(s.counts),
            sums: Tensor::from_inner(s.sums),
            candidates: Tensor::from_inner(s.candidates),
        })
        .collect()
}
