//! `launch check-quantizer CONFIG.toml`: parse the `[quantizer]` table of a TOML file, validate it,
//! build the quantizer and run one forward on random latents, reporting what was built.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{Distribution, Tensor};
use trainer::quantizers::{CpuBackend, Mode, Quantizer, QuantizerConfig};

#[derive(serde::Deserialize)]
struct QuantizerFile {
    quantizer: QuantizerConfig,
}

/// Runs the check; errors name the file and the key.
pub fn check_quantizer(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: QuantizerFile = toml::from_str(&text)
        .with_context(|| format!("{}: invalid [quantizer] table", path.display()))?;
    let cfg = file.quantizer;
    cfg.validate()
        .with_context(|| format!("{}: [quantizer]", path.display()))?;
    let device = Default::default();
    let quantizer = cfg
        .init::<CpuBackend>(&device)
        .with_context(|| format!("{}: [quantizer]", path.display()))?;
    let dim = quantizer.input_dim();
    let latents =
        Tensor::<CpuBackend, 2>::random([4096, dim], Distribution::Normal(0.0, 1.0), &device);
    let out = quantizer.quantize(latents, Mode::Train);
    let (used, perplexity, quant_error) = out.usage.to_host();
    let loss = trainer::quantizers::host::read_scalar(
        out.loss(),
        trainer::quantizers::host::HostRead::Eval,
    );
    println!(
        "{}: ok: input dim {dim}, {} codes x {} level(s); on 4096 random latents: {:.1}% codes used, perplexity {perplexity:.1}, quantization error {quant_error:.4}, quantizer loss {loss:.4}",
        path.display(),
        quantizer.codebook_size(),
        quantizer.num_levels(),
        used * 100.0
    );
    Ok(())
}
