//! `AutoencoderConfig`: taming-transformers' `ddconfig` (the `Encoder`/`Decoder` arguments),
//! readable from the same YAML/JSON keys.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Architecture of a taming-style convolutional encoder/decoder pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderConfig {
    /// Base channel count (taming: 128).
    pub ch: usize,
    /// Channel multiplier per resolution level; `len - 1` downsamplings.
    pub ch_mult: Vec<usize>,
    /// ResnetBlocks per level in the encoder (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions (side lengths) at which attention blocks follow the ResnetBlocks.
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    /// Input side length (used to place attention).
    pub resolution: usize,
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_ch: usize,
    /// Channels of the encoder output / decoder input.
    pub z_channels: usize,
    /// Dropout inside ResnetBlocks (taming: 0).
    #[serde(default)]
    pub dropout: f64,
    /// taming's flag; only the convolutional resampling (true) is supported.
    #[serde(default = "yes")]
    pub resamp_with_conv: bool,
    /// Encoder outputs `2 * z_channels` (KL autoencoders); false for VQ models.
    #[serde(default)]
    pub double_z: bool,
}

fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}

/// The widest feature map (channels) an autoencoder level accepts.
pub const MAX_CHANNELS: usize = 8192;

impl AutoencoderConfig {
    /// Checks the architecture; the error names the key.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.ch == 0 || !self.ch.is_multiple_of(32) {
            return Err(ModelError::config(
                "ch",
                format!(
                    "must be a positive multiple of 32 (GroupNorm has 32 groups), got {}",
                    self.ch
                ),
            ));
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return Err(ModelError::config(
                "ch_mult",
                "needs at least one level, all >= 1",
            ));
        }
        if self.ch_mult.len() > 16 {
            return Err(ModelError::config(
                "ch_mult",
                format!("at most 16 levels, got {}", self.ch_mult.len()),
            ));
        }
        if let Some(m) = self
            .ch_mult
            .iter()
            .find(|&&m| self.ch.checked_mul(m).is_none_or(|c| c > MAX_CHANNELS))
        {
            return Err(ModelError::config(
                "ch_mult",
                format!(
                    "ch x ch_mult must be at most {MAX_CHANNELS} channels, got {} x {m}",
                    self.ch
                ),
            ));
        }
        if self.num_res_blocks == 0 || self.num_res_blocks > 64 {
            return Err(ModelError::config(
                "num_res_blocks",
                format!("must be in 1..=64, got {}", self.num_res_blocks),
            ));
        }
        let factor = 1usize << (self.ch_mult.len() - 1);
        if self.resolution == 0 || !self.resolution.is_multiple_of(factor) {
            return Err(ModelError::config(
                "resolution",
                format!(
                    "must be divisible by 2^(levels-1) = {factor} (ch_mult has {} levels), got {}",
                    self.ch_mult.len(),
                    self.resolution
                ),
            ));
        }
        for (key, v, max) in [
            ("z_channels", self.z_channels, MAX_CHANNELS),
            ("in_channels", self.in_channels, 4),
            ("out_ch", self.out_ch, 4),
        ] {
            if v == 0 || v > max {
                return Err(ModelError::config(
                    key,
                    format!("must be in 1..={max}, got {v}"),
                ));
            }
        }
        if self.out_ch != self.in_channels {
            return Err(ModelError::config(
                "out_ch",
                format!(
                    "must equal in_channels = {} (the reconstruction is compared with the input), got {}",
                    self.in_channels, self.out_ch
                ),
            ));
        }
        if self.double_z {
            return Err(ModelError::config(
                "double_z",
                "must be false for a VQ autoencoder (true is the KL autoencoder's mean and variance)",
            ));
        }
        let levels: Vec<usize> = (0..self.ch_mult.len())
            .map(|i| self.resolution >> i)
            .collect();
        if let Some(r) = self.attn_resolutions.iter().find(|r| !levels.contains(r)) {
            return Err(ModelError::config(
                "attn_resolutions",
                format!("{r} is not the resolution of a level (the levels are {levels:?})"),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::config(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if !self.resamp_with_conv {
            return Err(ModelError::config(
                "resamp_with_conv",
                "only convolutional resampling (true, taming's default) is supported",
            ));
        }
        Ok(())
    }

    /// Downsampling factor of the encoder.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Side of the latent grid for an input of `resolution`.
    pub fn latent_resolution(&self) -> usize {
        self.resolution / self.downsample_factor()
    }
}
