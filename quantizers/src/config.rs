//! `QuantizerConfig`: the serde enum a TOML file uses to pick any quantizer, e.g.
//!
//! ```toml
//! [model.quantizer]
//! kind = "vq"
//! dim = 32
//! codebook_size = 1024
//! distance = "cosine"          # or "euclidean"
//! estimator = "rotation"       # "ste", "rotation", "rotation_unscaled"
//! codebook = { kind = "ema", decay = 0.8 }   # or { kind = "learnable", beta = 0.25, legacy = true }
//! ```
//!
//! `kind = "lfq"` ([`LfqConfig`]), `kind = "fsq"` ([`FsqConfig`]), and `kind = "residual"` with
//! `layers = [ {kind = ...}, ... ]` (or one layer and `depth = N` to repeat it with distinct seeds).

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{
    AnyQuantizer, FsqConfig, LevelQuantizer, LfqConfig, QuantizerError, ResidualQuantizer, VqConfig,
};

/// Any quantizer's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuantizerConfig {
    /// Vector quantizer.
    Vq(VqConfig),
    /// Lookup-free quantizer.
    Lfq(LfqConfig),
    /// Finite scalar quantizer.
    Fsq(FsqConfig),
    /// Residual stack.
    Residual(ResidualConfig),
}

/// Configuration of a residual stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualConfig {
    /// The levels, coarse to fine (not themselves residual).
    pub layers: Vec<QuantizerConfig>,
    /// With exactly one entry in `layers`: repeat it `depth` times (VQ seeds offset per level).
    #[serde(default)]
    pub depth: Option<usize>,
}

/// The most levels a residual stack accepts.
pub const MAX_LEVELS: usize = 64;

impl ResidualConfig {
    /// The levels after expanding `depth`.
    pub fn expanded(&self) -> Result<Vec<QuantizerConfig>, QuantizerError> {
        match (self.depth, self.layers.as_slice()) {
            (None, []) => Err(QuantizerError::config(
                "layers",
                "a residual stack needs at least one layer",
            )),
            (Some(0), _) => Err(QuantizerError::config("depth", "must be at least 1")),
            (Some(depth), _) if depth > MAX_LEVELS => Err(QuantizerError::config(
                "depth",
                format!("must be at most {MAX_LEVELS}, got {depth}"),
            )),
            (None, layers) if layers.len() > MAX_LEVELS => Err(QuantizerError::config(
                "layers",
                format!("at most {MAX_LEVELS} levels, got {}", layers.len()),
            )),
            (None, layers) => Ok(layers.to_vec()),
            (Some(depth), [one]) => Ok((0..depth)
                .map(|l| match one {
                    QuantizerConfig::Vq(vq) => {
                        let mut vq = vq.clone();
                        vq.seed = vq.seed.wrapping_add(1000 * l as u64);
                        QuantizerConfig::Vq(vq)
                    }
                    other => other.clone(),
                })
                .collect()),
            (Some(_), _) => Err(QuantizerError::config(
                "depth",
                "is only allowed with exactly one entry in `layers` (the layer to repeat)",
            )),
        }
    }
}

impl QuantizerConfig {
    /// Width of the latents this quantizer accepts.
    pub fn input_dim(&self) -> usize {
        match self {
            Self::Vq(c) => c.dim,
            Self::Lfq(c) => c.dim,
            Self::Fsq(c) => c.levels.len(),
            Self::Residual(c) => c.layers.first().map(|l| l.input_dim()).unwrap_or(0),
        }
    }

    /// Codes per level.
    pub fn codebook_size(&self) -> usize {
        match self {
            Self::Vq(c) => c.codebook_size,
            Self::Lfq(c) => 1usize << c.dim.min(usize::BITS as usize - 1),
            Self::Fsq(c) => c.levels.iter().map(|l| *l as usize).product(),
            Self::Residual(c) => c.layers.first().map(|l| l.codebook_size()).unwrap_or(0),
        }
    }

    /// Checks every value; the error names the offending key (prefixed by the layer for stacks).
    pub fn validate(&self) -> Result<(), QuantizerError> {
        match self {
            Self::Vq(c) => c.validate(),
            Self::Lfq(c) => c.validate(),
            Self::Fsq(c) => c.validate(),
            Self::Residual(c) => {
                let layers = c.expanded()?;
                let dim = layers[0].input_dim();
                for (i, layer) in layers.iter().enumerate() {
                    let prefix = |e: QuantizerError| match e {
                        QuantizerError::InvalidConfig { key, reason } => {
                            QuantizerError::InvalidConfig {
                                key: format!("layers[{i}].{key}"),
                                reason,
                            }
                        }
                        other => other,
                    };
                    if matches!(layer, Self::Residual(_)) {
                        return Err(QuantizerError::config(
                            &format!("layers[{i}].kind"),
                            "residual stacks cannot be nested",
                        ));
                    }
                    layer.validate().map_err(prefix)?;
                    if layer.codebook_size() != layers[0].codebook_size() {
                        return Err(QuantizerError::config(
                            &format!("layers[{i}]"),
                            format!(
                                "every level must have the same number of codes: layer 0 has {}, this one {}",
                                layers[0].codebook_size(),
                                layer.codebook_size()
                            ),
                        ));
                    }
                    if layer.input_dim() != dim {
                        return Err(QuantizerError::config(
                            &format!("layers[{i}]"),
                            format!(
                                "every level must take the same width: layer 0 takes {dim}, this one {}",
                                layer.input_dim()
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Builds the quantizer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<AnyQuantizer<B>, QuantizerError> {
        self.validate()?;
        Ok(match self {
            Self::Vq(c) => AnyQuantizer::Vq(c.init(device)?),
            Self::Lfq(c) => AnyQuantizer::Lfq(c.init(device)?),
            Self::Fsq(c) => AnyQuantizer::Fsq(c.init(device)?),
            Self::Residual(c) => AnyQuantizer::Residual(ResidualQuantizer {
                layers: c
                    .expanded()?
                    .iter()
                    .map(|l| match l.init(device)? {
                        AnyQuantizer::Vq(q) => Ok(LevelQuantizer::Vq(q)),
                        AnyQuantizer::Lfq(q) => Ok(LevelQuantizer::Lfq(q)),
                        AnyQuantizer::Fsq(q) => Ok(LevelQuantizer::Fsq(q)),
                        AnyQuantizer::Residual(_) => Err(QuantizerError::config(
                            "layers.kind",
                            "residual stacks cannot be nested",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            }),
        })
    }
}
