//! `launch eval`: the full evaluation of a trained model (`[eval]`: MSE, PSNR, SSIM, LPIPS,
//! codebook usage, perplexity, quantization error, r-FID / r-IS / r-FVD with pinned weights) on
//! its validation set, as one process on the chosen backend or data-parallel over CPU / wgpu
//! workers (`--cpu N`, or as workers of torchrun / srun). It only reads the run: the model comes
//! from a checkpoint (the newest valid one, or `--checkpoint DIR`), nothing of the run's own
//! logs or checkpoints is touched; the JSON report goes to `RUN_DIR/eval/step-NNNNNNNN.json` and
//! to standard output (rank 0).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use trainer::{
    Checkpoints, Communicator, TrainConfig,
    data::{Transform, open_datasets},
    eval::{EvalInputs, MetricNets, eval_lpips, evaluate, write_report},
};

use crate::{export::choose_checkpoint, worker::DeviceKind};

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

fn evaluate_with<B: Backend>(
    args: &EvalArgs,
    mut cfg: TrainConfig,
    device: B::Device,
    mut comm: Box<dyn Communicator>,
) -> Result<Option<serde_json::Value>> {
    if let Some(l) = args.limit {
        cfg.eval.limit = l;
    }
    let dir = choose_checkpoint(&cfg, args.checkpoint.as_deref(), "evaluate")?;
    let step = Checkpoints::verify(&dir)
        .map(|s| s.step)
        .map_err(|reason| anyhow!("checkpoint {}: {reason}", dir.display()))?;
    let model = Checkpoints::load_model::<B>(&cfg, &dir, &device)
        .with_context(|| format!("loading the model of checkpoint {}", dir.display()))?;
    let (_, val_set, channels) = open_datasets(&cfg.data)?;
    let transform = Transform {
        resolution: cfg.data.resolution,
        resize: cfg.data.resize,
        random_crop: false,
        flip: false,
        channels,
    };
    let nets = MetricNets::load(&cfg.eval, &device)?;
    let lpips = eval_lpips::<B>(&cfg, &device)?;
    let rank = comm.rank();
    if rank == 0 {
        tracing::info!(
            "evaluating checkpoint {} (step {step}) on {} with {} worker(s)",
            dir.display(),
            val_set.describe(),
            comm.world_size()
        );
    }
    let inputs = EvalInputs {
        model: &model,
        val_set: val_set.as_ref(),
        transform: &transform,
        workers: cfg.data.workers,
        lpips: lpips.as_ref(),
        nets: &nets,
        global_batch: cfg.eval.batch_size.unwrap_or(cfg.run.batch_size),
        step,
        device: &device,
    };
    let report = evaluate(&inputs, &cfg.eval, comm.as_mut())?;
    if rank != 0 {
        return Ok(None);
    }
    let path = cfg
        .run_dir()
        .join("eval")
        .join(format!("step-{step:08}.json"));
    write_report(&path, &report)?;
    tracing::info!("report written to {}", path.display());
    Ok(Some(serde_json::to_value(&report)?))
}

/// Runs the evaluation and prints the report (rank 0).
pub fn run(args: EvalArgs, device: DeviceKind) -> Result<()> {
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    // A worker of `launch eval --cpu N` (or of torchrun / srun) joins the others' ring.
    let (comm, _) =
        crate::worker::subcommand_comm(device, Duration::from_secs(args.timeout), "eval")?;
    let report = match device {
        DeviceKind::Cpu => {
            evaluate_with::<burn::backend::Flex>(&args, cfg, Default::default(), comm)?
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => evaluate_with::<trainer::quantizers::burn_wgpu::Wgpu>(
            &args,
            cfg,
            trainer::quantizers::burn_wgpu::WgpuDevice::default(),
            comm,
        )?,
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => evaluate_with::<burn::backend::Cuda>(
            &args,
            cfg,
            burn::backend::cuda::CudaDevice::new(0),
            comm,
        )?,
        #[allow(unreachable_patterns)]
        _ => bail!(
            "this launch binary was built without that backend: rebuild with `--features wgpu` or \
             `--features cuda`"
        ),
    };
    if let Some(report) = report {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
