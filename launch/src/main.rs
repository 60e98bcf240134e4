//! The `launch` binary.
//!
//!     launch [--resume auto|never] [--set key=value]... CONFIG.toml     train (one process)
//!     launch --cpu N [...] CONFIG.toml                                   N CPU workers, TCP ring
//!     launch --sweep KEY=V1,V2 [...] CONFIG.toml                          one run per value, table
//!     launch check-config CONFIG.toml / check-quantizer CONFIG.toml      validate only
//!     launch export CONFIG.toml --out FILE.safetensors                    weights, reference names
//!     launch encode CONFIG.toml --out DIR / decode CONFIG.toml --tokens DIR --out DIR   tokens
//!     launch plot RUN_DIR... [--out FILE.png]                             curves of runs, overlaid
//!
//! When the environment says this process is one worker of a run (rotor's launcher, torchrun's
//! RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, or SLURM's SLURM_PROCID/SLURM_NTASKS/...), `launch
//! CONFIG` runs as that worker: `srun launch CONFIG` and `torchrun --no-python launch CONFIG` work.
//! Logs go to stderr (rank 0; other ranks: warnings) and to `<run>/logs/rank-<r>.log`
//! (`<run>/train.log` for one process); metrics to `<run>/metrics.jsonl`.

/// jemalloc keeps the step's large freed blocks for reuse (glibc unmaps and re-faults them: on
/// the CPU backend that cost more than the convolutions).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod check_quantizer;
mod encode;
mod env;
mod eval;
mod export;
mod launcher;
mod plot;
mod rendezvous;
mod store;
mod sweep;
mod worker;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};
use trainer::{Resume, TrainConfig};

#[derive(Parser)]
#[command(
    name = "launch",
    version,
    about = "rotor: train vector-quantized autoencoders"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Training config (TOML).
    config: Option<PathBuf>,
    /// Continue from the run's newest valid checkpoint (`auto`), start fresh (`never`), or start
    /// at step 0 from the intact model weights of damaged checkpoints (`weights`).
    #[arg(long, value_enum, default_value = "auto")]
    resume: ResumeArg,
    /// Override a config key, e.g. `--set optim.lr=1e-4` (repeatable; after ROTOR__* env vars).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Start N worker processes on this node, data parallel over a TCP ring (CPU workers, or
    /// wgpu workers with `--device wgpu`).
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Start N GPU worker processes on this node (one per GPU, NCCL).
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// Nodes in a multi-node run (with --node-rank and --master).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index in a multi-node run.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Rendezvous `HOST:PORT` (rank 0's node) for multi-node runs.
    #[arg(long, value_name = "HOST:PORT")]
    master: Option<String>,
    /// Restart the whole group from the latest checkpoint up to K times after a worker fails.
    #[arg(long, default_value_t = 0, value_name = "K")]
    max_restarts: usize,
    /// Backend of this process (workers started by --gpus use cuda).
    #[arg(long, value_enum, default_value = "cpu", env = "ROTOR_DEVICE")]
    device: DeviceArg,
    /// Train the config once per value of one key, in turn, then print a table comparing the
    /// runs (run names get `-VALUE`), e.g. `--sweep model.quantizer.estimator=rotation,ste`.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    sweep: Option<String>,
    /// Seconds a rendezvous or collective may wait before the run aborts.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a [quantizer] table, build it and run one forward on random latents.
    CheckQuantizer {
        /// TOML file with a [quantizer] table.
        config: PathBuf,
    },
    /// Write a checkpoint's model weights as one .safetensors file under the names of the model's
    /// reference (taming for vq_model, enhancing-transformers for vit_vq, ...), the names
    /// `model.init_from` reads back.
    Export {
        /// Training config (TOML) of the run.
        config: PathBuf,
        /// Checkpoint directory to export (default: the run's newest valid checkpoint).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// The .safetensors file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Encode every sample of a split (index order, center crops, eval mode) to code indices:
    /// integer shards OUT/shard-NNNNN.bin (u16, or u32 for codebooks over 65536 codes) and
    /// OUT/manifest.json, the tokens of a stage-2 model. Resumable: rerun the same command and
    /// finished shards (sha256-checked) are kept. One process on --device, or --cpu N workers.
    Encode {
        /// Training config (TOML) of the run.
        config: PathBuf,
        /// Checkpoint directory (default: the run's newest valid checkpoint).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// Token directory to write (new, or one this same command started).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Which samples: the training set (in index order, eval transform) or the validation set.
        #[arg(long, value_enum, default_value = "train")]
        split: encode::Split,
        /// Samples per forward pass.
        #[arg(long, default_value_t = 16, value_name = "N")]
        batch: usize,
        /// Samples per shard.
        #[arg(long, default_value_t = trainer::tokens::DEFAULT_SHARD_SAMPLES, value_name = "N")]
        shard_samples: usize,
        /// Data-parallel over N CPU worker processes on this machine (each encodes every N-th
        /// pending shard; rank 0 writes them all, so the directory is the same as one process's).
        #[arg(long, value_name = "N")]
        cpu: Option<usize>,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Decode the shards of `launch encode` back to images (OUT/000000.png, ...) or clips (a PNG
    /// strip of the frames and a GIF each), after checking that they fit the model.
    Decode {
        /// Training config (TOML) of the run.
        config: PathBuf,
        /// Checkpoint directory (default: the run's newest valid checkpoint).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// Token directory written by `launch encode`.
        #[arg(long, value_name = "DIR")]
        tokens: PathBuf,
        /// Where the images go.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Decode at most this many samples (the first ones).
        #[arg(long)]
        limit: Option<usize>,
        /// Samples per decoder pass.
        #[arg(long, default_value_t = 16, value_name = "N")]
        batch: usize,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Parse and validate a training config without training.
    CheckConfig {
        /// Training config (TOML).
        config: PathBuf,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Evaluate a trained model on its validation set (all of it, or --limit N): MSE, PSNR,
    /// SSIM, LPIPS, codebook usage, perplexity, quantization error, and r-FID / r-IS / r-FVD
    /// with the pinned weights of [eval]. Writes RUN_DIR/eval/step-N.json and prints it.
    Eval {
        /// Training config (TOML) of the run.
        config: PathBuf,
        /// Checkpoint directory to evaluate (default: the run's newest valid checkpoint).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// Evaluate at most this many validation samples (default: eval.limit, 0 = all).
        #[arg(long)]
        limit: Option<usize>,
        /// Data-parallel over N CPU worker processes on this machine (each evaluates its share
        /// of every round; the report is the same as one process's up to float rounding).
        #[arg(long, value_name = "N")]
        cpu: Option<usize>,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Decode a folder of videos (avi, mp4, mkv, webm, ...) with ffmpeg into frame shards that
    /// training reads without a codec (`data.source.kind = "video_folder"`). Parallel and
    /// resumable: rerun it after an interruption and finished videos are kept.
    PrepareVideo {
        /// Folder of videos (searched recursively), e.g. UCF-101's extracted `UCF-101/`.
        #[arg(long)]
        src: PathBuf,
        /// Output folder (with split lists: `OUT/train/` and `OUT/test/`).
        #[arg(long)]
        out: PathBuf,
        /// Shorter side of the stored frames in pixels (training then resizes and crops).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Folder of UCF-101's official split lists (`trainlist01.txt`, `testlist01.txt`, ...).
        #[arg(long, value_name = "DIR")]
        split_lists: Option<PathBuf>,
        /// Which official split (1, 2 or 3).
        #[arg(long, default_value_t = 1)]
        split: usize,
        /// ffmpeg processes at once (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Draw the training curves of one or several runs, overlaid, into one PNG: loss, codebook
    /// usage, perplexity and validation PSNR over steps (from each RUN_DIR/metrics.jsonl).
    Plot {
        /// Run directories (each with a metrics.jsonl), e.g. runs/fm-rotation runs/fm-ste.
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// The PNG file to write.
        #[arg(long, value_name = "FILE.png", default_value = "plot.png")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    /// burn's wgpu backend (Vulkan / Metal / DX12; build with `--features wgpu`).
    Wgpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum ResumeArg {
    /// Continue from the newest checkpoint that verifies (stop if there are some and none does).
    Auto,
    /// Start fresh (refused if the run already has checkpoints).
    Never,
    /// Start at step 0 from the newest intact model weights of a damaged run's checkpoints.
    Weights,
}

/// The backend a `--device` names.
fn device_kind(device: DeviceArg) -> worker::DeviceKind {
    match device {
        DeviceArg::Cpu => worker::DeviceKind::Cpu,
        DeviceArg::Cuda => worker::DeviceKind::Cuda,
        DeviceArg::Wgpu => worker::DeviceKind::Wgpu,
    }
}

/// The CPU training backend.
pub(crate) type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

/// Whether standard error gets ANSI colors: only on a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>).
fn color_stderr() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn init_logs(log_file: Option<&std::path::Path>, quiet_stderr: bool) -> Result<()> {
    let filter = EnvFilter::try_from_env("ROTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr_level = if quiet_stderr {
        tracing_subscriber::filter::LevelFilter::WARN
    } else {
        tracing_subscriber::filter::LevelFilter::TRACE
    };
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color_stderr())
        .with_target(false)
        .with_filter(stderr_level);
    let file = match log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?;
            Some(
                fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()
        .ok();
    Ok(())
}

fn train(
    config: PathBuf,
    resume: ResumeArg,
    overrides: Vec<String>,
    timeout: u64,
    device: DeviceArg,
) -> Result<()> {
    let worker = env::detect(&|k| std::env::var(k).ok()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = TrainConfig::load(&config, &overrides)?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let resume = match resume {
        ResumeArg::Auto => Resume::Auto,
        ResumeArg::Never => Resume::Never,
        ResumeArg::Weights => Resume::Weights,
    };
    let device = match device {
        DeviceArg::Cpu => worker::DeviceKind::Cpu,
        DeviceArg::Cuda => worker::DeviceKind::Cuda,
        DeviceArg::Wgpu => worker::DeviceKind::Wgpu,
    };
    let timeout = std::time::Duration::from_secs(timeout);
    let outcome = match &worker {
        Some(w) => {
            let logs = run_dir.join("logs");
            std::fs::create_dir_all(&logs)
                .with_context(|| format!("cannot create {}", logs.display()))?;
            init_logs(
                Some(&logs.join(format!("rank-{}.log", w.rank))),
                w.rank != 0,
            )?;
            let span = tracing::info_span!("rank", r = w.rank);
            let _guard = span.enter();
            let resume = if w.restart > 0 && !matches!(resume, Resume::Auto) {
                // The command line of a restarted group is the first attempt's: a `--resume
                // never` (or `weights`) there would refuse (or throw away) what the first attempt
                // wrote. Only when that attempt was this job's, though.
                let marker = worker::first_attempt_marker(&run_dir);
                let first = std::fs::read_to_string(&marker).unwrap_or_default();
                if worker::distinctive_run_id(&w.run_id) && first.trim() == w.run_id.trim() {
                    tracing::info!(
                        "restart {} of the group ({} job {}): resuming from the latest checkpoint",
                        w.restart,
                        w.source,
                        w.run_id
                    );
                    Resume::Auto
                } else {
                    tracing::warn!(
                        "restart {} of the group ({} job {:?}): keeping the command line's \
                         --resume, since this run directory was not started by the job's first \
                         attempt ({}); use --resume auto to continue whatever is there",
                        w.restart,
                        w.source,
                        w.run_id,
                        marker.display()
                    );
                    resume
                }
            } else {
                resume
            };
            tracing::info!(
                "config {} -> run directory {}",
                config.display(),
                run_dir.display()
            );
            worker::run(cfg, Some(w), resume, timeout, device)?
        }
        None => {
            init_logs(Some(&run_dir.join("train.log")), false)?;
            tracing::info!(
                "config {} -> run directory {}",
                config.display(),
                run_dir.display()
            );
            worker::run(cfg, None, resume, timeout, device)?
        }
    };
    if worker.as_ref().is_some_and(|w| w.rank != 0) {
        return Ok(());
    }
    if outcome.stopped {
        println!(
            "stopped at step {} on request; checkpoint written to {}/checkpoints (continue with --resume auto)",
            outcome.step,
            outcome.run_dir.display()
        );
        return Ok(());
    }
    let val = outcome.val;
    let run = outcome.run_dir.display().to_string();
    println!(
        "done: {} steps; validation mse {:.5}, PSNR {:.2} dB, {:.1}% of codes used, perplexity {:.1}\n\
         metrics:         {run}/metrics.jsonl\n\
         reconstructions: {run}/samples/ (top row: input, bottom row: reconstruction)\n\
         checkpoints:     {run}/checkpoints/ (continue with --resume auto)\n\
         log:             {run}/train.log",
        outcome.step,
        val.mse,
        val.psnr,
        val.used_fraction * 100.0,
        val.perplexity
    );
    Ok(())
}

/// Runs `args` (a subcommand and its own arguments) as `n` data-parallel workers on this node
/// (CPU, or wgpu with `--device wgpu`), through the launcher that starts training workers.
fn subcommand_workers(
    n: usize,
    config: &std::path::Path,
    overrides: &[String],
    args: &[String],
    timeout_s: u64,
    device: DeviceArg,
) -> Result<()> {
    TrainConfig::load(config, overrides)?;
    launcher::run(&launcher::Group {
        config,
        overrides,
        resume: "auto",
        nproc: n,
        nnodes: 1,
        node_rank: 0,
        master: None,
        max_restarts: 0,
        timeout_s,
        gpus: false,
        ring_device: match device {
            DeviceArg::Wgpu => "wgpu",
            _ => "cpu",
        },
        subcommand: Some(args),
    })
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.command.is_some() && (cli.cpu.is_some() || cli.gpus.is_some()) {
        anyhow::bail!(
            "--cpu / --gpus before a subcommand start training workers: give `--cpu N` after \
             `eval` or `encode` (e.g. `launch eval --cpu 2 CONFIG.toml`)"
        );
    }
    match (cli.command, cli.config) {
        (
            Some(Command::Eval {
                config,
                checkpoint,
                limit,
                cpu,
                overrides,
            }),
            _,
        ) => {
            init_logs(None, false)?;
            if let Some(n) = cpu.filter(|n| *n > 1) {
                let mut args = vec!["eval".to_string()];
                if let Some(c) = &checkpoint {
                    args.push("--checkpoint".to_string());
                    args.push(c.display().to_string());
                }
                if let Some(l) = limit {
                    args.push("--limit".to_string());
                    args.push(l.to_string());
                }
                return subcommand_workers(n, &config, &overrides, &args, cli.timeout, cli.device);
            }
            eval::run(
                eval::EvalArgs {
                    config,
                    overrides,
                    checkpoint,
                    limit,
                    timeout: cli.timeout,
                },
                match cli.device {
                    DeviceArg::Cpu => worker::DeviceKind::Cpu,
                    DeviceArg::Cuda => worker::DeviceKind::Cuda,
                    DeviceArg::Wgpu => worker::DeviceKind::Wgpu,
                },
            )
        }
        (Some(Command::CheckQuantizer { config }), _) => {
            init_logs(None, false)?;
            check_quantizer::check_quantizer(&config)
        }
        (
            Some(Command::PrepareVideo {
                src,
                out,
                size,
                split_lists,
                split,
                jobs,
            }),
            _,
        ) => {
            init_logs(None, false)?;
            if !(1..=3).contains(&split) {
                anyhow::bail!("--split {split}: UCF-101 has official splits 1, 2 and 3");
            }
            let jobs =
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let report = trainer::data::prepare_videos(&trainer::data::PrepareOptions {
                src: src.clone(),
                out: out.clone(),
                size,
                split_lists,
                split,
                jobs,
            })
            .with_context(|| format!("preparing the videos of {}", src.display()))?;
            println!(
                "prepared {}: {} videos decoded, {} already there, {} unreadable (skipped), {} in no \
                 split list; {} frames; manifest: {}",
                out.display(),
                report.decoded,
                report.kept,
                report.failed.len(),
                report.unlisted,
                report.frames,
                out.join("manifest.json").display()
            );
            for (path, why) in &report.failed {
                println!("  unreadable: {}: {why}", path.display());
            }
            Ok(())
        }
        (
            Some(Command::Export {
                config,
                checkpoint,
                out,
                overrides,
            }),
            _,
        ) => {
            init_logs(None, false)?;
            export::run(export::ExportArgs {
                config,
                overrides,
                checkpoint,
                out,
            })
        }
        (Some(Command::Plot { runs, out }), _) => plot::run(&runs, &out),
        (
            Some(Command::Encode {
                config,
                checkpoint,
                out,
                split,
                batch,
                shard_samples,
                cpu,
                overrides,
            }),
            _,
        ) => {
            init_logs(None, false)?;
            if let Some(n) = cpu.filter(|n| *n > 1) {
                let mut args: Vec<String> = vec![
                    "encode".into(),
                    "--out".into(),
                    out.display().to_string(),
                    "--split".into(),
                    split.as_arg().into(),
                    "--batch".into(),
                    batch.to_string(),
                    "--shard-samples".into(),
                    shard_samples.to_string(),
                ];
                if let Some(c) = &checkpoint {
                    args.push("--checkpoint".into());
                    args.push(c.display().to_string());
                }
                return subcommand_workers(n, &config, &overrides, &args, cli.timeout, cli.device);
            }
            let args = encode::EncodeArgs {
                config,
                overrides,
                checkpoint,
                out,
                split,
                batch,
                shard_samples,
                timeout: cli.timeout,
            };
            encode::encode(args, device_kind(cli.device))
        }
        (
            Some(Command::Decode {
                config,
                checkpoint,
                tokens,
                out,
                limit,
                batch,
                overrides,
            }),
            _,
        ) => {
            init_logs(None, false)?;
            let args = encode::DecodeArgs {
                config,
                overrides,
                checkpoint,
                tokens,
                out,
                limit,
                batch,
            };
            encode::decode(args, device_kind(cli.device))
        }
        (Some(Command::CheckConfig { config, overrides }), _) => {
            let cfg = TrainConfig::load(&config, &overrides)?;
            println!(
                "{}: ok (run directory {})",
                config.display(),
                cfg.run_dir().display()
            );
            Ok(())
        }
        (None, Some(config)) if cli.sweep.is_some() => {
            let spec = cli.sweep.as_deref().unwrap_or_default();
            let sweep = sweep::Sweep::parse(spec)?;
            // The runs get every argument of this one but the sweep itself.
            let mut args = Vec::new();
            let mut skip = false;
            for a in std::env::args().skip(1) {
                if skip {
                    skip = false;
                } else if a == "--sweep" {
                    skip = true;
                } else if !a.starts_with("--sweep=") {
                    args.push(a);
                }
            }
            sweep::run(&config, &cli.overrides, &sweep, &args)
        }
        (None, Some(config)) if cli.cpu.is_some() || cli.gpus.is_some() => {
            init_logs(None, false)?;
            if cli.gpus.is_some() && !cfg!(feature = "cuda") {
                anyhow::bail!(
                    "--gpus: this launch binary was built without GPU support: rebuild with `cargo build --release -p launch --features cuda`, or use --cpu N"
                );
            }
            if cli.cpu.is_some() && cli.gpus.is_some() {
                anyhow::bail!("give either --cpu N or --gpus N");
            }
            let nproc = cli.cpu.or(cli.gpus).unwrap_or(1);
            if nproc == 0 || cli.nnodes == 0 || cli.node_rank >= cli.nnodes {
                anyhow::bail!("--cpu must be >= 1 and --node-rank below --nnodes");
            }
            if cli.nnodes > 1 && cli.master.is_none() {
                anyhow::bail!("a multi-node run needs --master HOST:PORT (rank 0's node)");
            }
            TrainConfig::load(&config, &cli.overrides)?;
            launcher::run(&launcher::Group {
                config: &config,
                overrides: &cli.overrides,
                resume: match cli.resume {
                    ResumeArg::Auto => "auto",
                    ResumeArg::Never => "never",
                    ResumeArg::Weights => "weights",
                },
                nproc,
                nnodes: cli.nnodes,
                node_rank: cli.node_rank,
                master: cli.master.clone(),
                max_restarts: cli.max_restarts,
                timeout_s: cli.timeout,
                gpus: cli.gpus.is_some(),
                ring_device: match cli.device {
                    DeviceArg::Wgpu => "wgpu",
                    _ => "cpu",
                },
                subcommand: None,
            })
        }
        (None, Some(config)) => train(config, cli.resume, cli.overrides, cli.timeout, cli.device),
        (None, None) => {
            anyhow::bail!("no config given: `launch CONFIG.toml` (see `launch --help`)")
        }
    }
}

/// Under torchrun, writes the failure where the agent looks for it (`TORCHELASTIC_ERROR_FILE`, in
/// the JSON layout of torch's `record` decorator), so torchrun's summary names the root cause.
fn write_error_file(e: &anyhow::Error) {
    let Some(path) = std::env::var_os("TORCHELASTIC_ERROR_FILE") else {
        return;
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let report = serde_json::json!({
        "message": {
            "message": format!("rotor: {e:#}"),
            "extraInfo": {
                "py_callstack": e.chain().skip(1).fold(
                    format!("rotor (launch, pid {}) failed: {e}", std::process::id()),
                    |text, cause| format!("{text}\n  caused by: {cause}"),
                ),
                "timestamp": secs.to_string(),
            }
        }
    });
    let path = std::path::PathBuf::from(path);
    if let Err(err) = std::fs::write(&path, report.to_string()) {
        eprintln!(
            "warning: cannot write torchrun's error file {}: {err}",
            path.display()
        );
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            write_error_file(&e);
            ExitCode::FAILURE
        }
    }
}
