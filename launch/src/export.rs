//! `launch export`: a rotor checkpoint's model weights as one `.safetensors` file under the names
//! of the model's reference (taming's `VQModel` for `vq_model`, enhancing-transformers' `ViTVQ`
//! for `vit_vq`, ...), the names `model.init_from` reads back. The checkpoint is read on the CPU;
//! nothing in the run directory changes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use trainer::{Checkpoints, TrainConfig, models::AutoencoderKind};

/// What to export.
pub struct ExportArgs {
    /// The run's training config.
    pub config: PathBuf,
    /// Overrides (`--set key=value`).
    pub overrides: Vec<String>,
    /// A checkpoint directory (default: the run's newest valid checkpoint).
    pub checkpoint: Option<PathBuf>,
    /// The `.safetensors` file to write.
    pub out: PathBuf,
}

/// The reference whose names the export uses.
fn reference(kind: &AutoencoderKind) -> &'static str {
    match kind {
        AutoencoderKind::VqModel(_) => "taming VQModel",
        AutoencoderKind::Peer(_) => "vector-quantize-pytorch examples/autoencoder.py",
        AutoencoderKind::VitVq(_) => "enhancing-transformers ViTVQ",
        AutoencoderKind::TimesformerVq(_) => "Hugging Face TimeSformer",
        AutoencoderKind::Conv3dVq(_) => "TATS-style",
    }
}

/// The checkpoint to `what` (export, encode with, ...): `given`, or the newest one of the run
/// that verifies.
pub(crate) fn choose_checkpoint(
    cfg: &TrainConfig,
    given: Option<&Path>,
    what: &str,
) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let checkpoints = Checkpoints::new(&cfg.run_dir(), cfg.run.keep_checkpoints);
    match checkpoints.latest_valid() {
        Ok(Some((dir, _))) => Ok(dir),
        Ok(None) => bail!(
            "{} has no checkpoint to {what}: train first, or name one with --checkpoint DIR",
            checkpoints.dir().display()
        ),
        Err(rejected) => {
            let list: Vec<String> = rejected
                .iter()
                .map(|(dir, why)| format!("  {}: {why}", dir.display()))
                .collect();
            bail!(
                "no checkpoint of {} verifies:\n{}\nname one whose model.mpk is intact with \
                 --checkpoint DIR",
                checkpoints.dir().display(),
                list.join("\n")
            )
        }
    }
}

/// Writes the export and reports it.
pub fn run(args: ExportArgs) -> Result<()> {
    let is_safetensors = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        bail!(
            "--out {}: the export is a safetensors file: name it *.safetensors",
            args.out.display()
        );
    }
    let cfg = TrainConfig::load(&args.config, &args.overrides)?;
    let dir = choose_checkpoint(&cfg, args.checkpoint.as_deref(), "export")?;
    let step = Checkpoints::verify(&dir).ok().map(|s| s.step);
    let device = Default::default();
    let model = Checkpoints::load_model::<burn::backend::Flex>(&cfg, &dir, &device)
        .with_context(|| format!("loading the model of checkpoint {}", dir.display()))?;
    let dict = model.export_state_dict();
    dict.save_safetensors(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let values: usize = dict
        .names()
        .filter_map(|n| dict.get(n))
        .map(|e| e.values.len())
        .sum();
    let at = step.map_or(String::new(), |s| format!(" (step {s})"));
    tracing::info!(
        "exported {} tensors ({values} values, {} names) of checkpoint {}{at} to {}",
        dict.len(),
        reference(&cfg.model),
        dir.display(),
        args.out.display()
    );
    println!(
        "{}: {} tensors from {}{at}",
        args.out.display(),
        dict.len(),
        dir.display()
    );
    Ok(())
}
