//! The `launch` binary.
//!
//!     launch [--resume auto|never] [--set key=value]... CONFIG.toml     train (one process, CPU)
//!     launch check-quantizer CONFIG.toml                                 try a [quantizer] table
//!
//! Logs go to stderr and to `<run>/train.log`; metrics to `<run>/metrics.jsonl`.

mod check_quantizer;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};
use trainer::{Resume, TrainConfig, Trainer};

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
    /// Continue from the run's newest valid checkpoint (`auto`) or start fresh (`never`).
    #[arg(long, value_enum, default_value = "auto")]
    resume: ResumeArg,
    /// Override a config key, e.g. `--set optim.lr=1e-4` (repeatable; after ROTOR__* env vars).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a [quantizer] table, build it and run one forward on random latents.
    CheckQuantizer {
        /// TOML file with a [quantizer] table.
        config: PathBuf,
    },
    /// Parse and validate a training config without training.
    CheckConfig {
        /// Training config (TOML).
        config: PathBuf,
        /// Overrides, as for training.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ResumeArg {
    Auto,
    Never,
}

type Cpu = burn::backend::Autodiff<burn::backend::Flex>;

fn init_logs(log_file: Option<&std::path::Path>) -> Result<()> {
    let filter = EnvFilter::try_from_env("ROTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false);
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

fn train(config: PathBuf, resume: ResumeArg, overrides: Vec<String>) -> Result<()> {
    let cfg = TrainConfig::load(&config, &overrides)?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    init_logs(Some(&run_dir.join("train.log")))?;
    tracing::info!(
        "config {} -> run directory {}",
        config.display(),
        run_dir.display()
    );
    let resume = match resume {
        ResumeArg::Auto => Resume::Auto,
        ResumeArg::Never => Resume::Never,
    };
    let mut trainer = Trainer::<Cpu>::new(cfg, Default::default(), resume)?;
    let val = trainer.run()?;
    let run = trainer.run_dir().display().to_string();
    println!(
        "done: {} steps; validation mse {:.5}, PSNR {:.2} dB, {:.1}% of codes used, perplexity {:.1}\n\
         metrics:         {run}/metrics.jsonl\n\
         reconstructions: {run}/samples/ (top row: input, bottom row: reconstruction)\n\
         checkpoints:     {run}/checkpoints/ (continue with --resume auto)\n\
         log:             {run}/train.log",
        trainer.step(),
        val.mse,
        val.psnr,
        val.used_fraction * 100.0,
        val.perplexity
    );
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::CheckQuantizer { config }), _) => {
            init_logs(None)?;
            check_quantizer::check_quantizer(&config)
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
        (None, Some(config)) => train(config, cli.resume, cli.overrides),
        (None, None) => {
            anyhow::bail!("no config given: `launch CONFIG.toml` (see `launch --help`)")
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
