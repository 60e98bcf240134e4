//! `launch eval`: the full evaluation of a trained model (`[eval]`: MSE, PSNR, SSIM, LPIPS,
//! codebook usage, perplexity, quantization error, r-FID / r-IS / r-FVD with pinned weights) on
//! its validation set, as one process on the chosen backend or data-parallel over CPU / wgpu
//! workers (`--cpu N`, or as workers of torchrun / srun). The JSON report goes to the run
//! directory (`eval/step-NNNNNNNN.json`) and to standard output.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use trainer::{Communicator, Resume, SingleProcess, TrainConfig, Trainer};

use crate::worker::DeviceKind;

/// What to evaluate.
pub struct EvalArgs {
    /// The training config.
    pub config: PathBuf,
    /// Overrides (`--set key=value`).
    pub overrides: Vec<String>,
    /// A checkpoint directory (default: the run's newest valid checkpoint).
    pub checkpoint: Option<PathBuf>,
    /// At most this many validation samples (overrides `eval.limit`).
    pub limit: Option<usize>,
    /// Seconds a rendezvous or collective may wait (workers).
    pub timeout: u64,
}

fn evaluate_with<B: AutodiffBackend>(
    cfg: TrainConfig,
    device: B::Device,
    checkpoint: Option<&Path>,
    comm: Box<dyn Communicator>,
) -> Result<serde_json::Value> {
    let run_dir = cfg.run_dir();
    let mut trainer = Trainer::<B>::with_communicator(cfg, device, Resume::Auto, comm)?;
    match checkpoint {
        Some(dir) => trainer
            .load_checkpoint(dir)
            .with_context(|| format!("--checkpoint {}", dir.display()))?,
        None if trainer.step() == 0 => anyhow::bail!(
            "{} has no checkpoint to evaluate: train first, or name one with --checkpoint DIR",
            run_dir.display()
        ),
        None => {}
    }
    tracing::info!(
        "evaluating {} at step {}",
        run_dir.display(),
        trainer.step()
    );
    let report = trainer.evaluate()?;
    Ok(serde_json::to_value(&report)?)
}

/// Runs the evaluation and prints the report.
pub fn run(args: EvalArgs, device: DeviceKind) -> Result<()> {
    let mut cfg = TrainConfig::load(&args.config, &args.overrides)?;
    if let Some(l) = args.limit {
        cfg.eval.limit = l;
    }
    let ckpt = args.checkpoint.as_deref();
    // A worker of `launch eval --cpu N` (or of torchrun / srun): join the others' ring.
    let worker =
        crate::env::detect(&|k| std::env::var(k).ok()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let comm: Box<dyn Communicator> = match &worker {
        Some(env) if matches!(device, DeviceKind::Cuda) => anyhow::bail!(
            "rank {}: data-parallel `launch eval` runs on CPU or wgpu workers; on GPUs, evaluate              as one process, or with run.eval_every during training",
            env.rank
        ),
        Some(env) => crate::worker::connect_ring(env, Duration::from_secs(args.timeout))?,
        None => Box::new(SingleProcess),
    };
    let rank = worker.as_ref().map_or(0, |w| w.rank);
    let report = match device {
        DeviceKind::Cpu => evaluate_with::<crate::Cpu>(cfg, Default::default(), ckpt, comm)?,
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            type Wgpu = burn::backend::Autodiff<trainer::quantizers::burn_wgpu::Wgpu>;
            let device = trainer::quantizers::burn_wgpu::WgpuDevice::default();
            evaluate_with::<Wgpu>(cfg, device, ckpt, comm)?
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            type Gpu = burn::backend::Autodiff<burn::backend::Cuda>;
            evaluate_with::<Gpu>(cfg, burn::backend::cuda::CudaDevice::new(0), ckpt, comm)?
        }
        #[allow(unreachable_patterns)]
        _ => anyhow::bail!(
            "this launch binary was built without that backend: rebuild with `--features wgpu` or `--features cuda`"
        ),
    };
    if rank == 0 {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
