//! The small convolutional VQ autoencoder of vector-quantize-pytorch's `examples/autoencoder.py`
//! (rotor's Fashion-MNIST peer): conv 1->16, max-pool 2, GELU, conv 16->32, max-pool 2, the
//! quantizer on the 32-channel map, then nearest x2, conv 32->16, GELU, nearest x2, conv 16->1.
//! All convs 3x3, padding 1.

use burn::{
    module::Module,
    nn::conv::Conv2d,
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode, QuantizerConfig};
use serde::{Deserialize, Serialize};

use crate::{
    Encoded, ModelError, VqOutput, blocks::conv, blocks::upsample_nearest2, cpu,
    vq_model::codes_of_index_maps,
};

/// Configuration of [`PeerAutoencoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAutoencoderConfig {
    /// Image channels (1 for Fashion-MNIST).
    #[serde(default = "one")]
    pub in_channels: usize,
    /// Width after the first conv.
    #[serde(default = "sixteen")]
    pub hidden: usize,
    /// The quantizer; its `dim` is the latent width (32 in the reference).
    pub quantizer: QuantizerConfig,
}

fn one() -> usize {
    1
}
fn sixteen() -> usize {
    16
}

impl PeerAutoencoderConfig {
    /// Checks the channel counts and the quantizer; the error names the key.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.in_channels == 0 || self.in_channels > 4 {
            return Err(ModelError::config(
                "in_channels",
                format!("must be in 1..=4, got {}", self.in_channels),
            ));
        }
        if self.hidden == 0 || self.hidden > 4096 {
            return Err(ModelError::config(
                "hidden",
                format!("must be in 1..=4096, got {}", self.hidden),
            ));
        }
        self.quantizer.validate()?;
        Ok(())
    }

    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<PeerAutoencoder<B>, ModelError> {
        self.validate()?;
        let d = self.quantizer.input_dim();
        Ok(PeerAutoencoder {
            enc1: conv(self.in_channels, self.hidden, 3, 1, 1, device),
            enc2: conv(self.hidden, d, 3, 1, 1, device),
            quantize: self.quantizer.init(device)?,
            dec1: conv(d, self.hidden, 3, 1, 1, device),
            dec2: conv(self.hidden, self.in_channels, 3, 1, 1, device),
        })
    }
}

/// The peer network.
#[derive(Module, Debug)]
pub struct PeerAutoencoder<B: Backend> {
    /// conv in -> hidden.
    pub enc1: Conv2d<B>,
    /// conv hidden -> latent width.
    pub enc2: Conv2d<B>,
    /// The quantizer.
    pub quantize: AnyQuantizer<B>,
    /// conv latent width -> hidden.
    pub dec1: Conv2d<B>,
    /// conv hidden -> out.
    pub dec2: Conv2d<B>,
}

fn pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    cpu::max_pool2x2(x)
}

impl<B: Backend> PeerAutoencoder<B> {
    /// Encodes and quantizes `[B, C, H, W]` (H, W divisible by 4).
    pub fn encode(&self, x: Tensor<B, 4>, mode: Mode) -> Encoded<B> {
        let h = cpu::gelu(pool(cpu::conv2d(&self.enc1, x)));
        let latents = pool(cpu::conv2d(&self.enc2, h));
        Encoded::quantize_map(&self.quantize, latents, mode)
    }

    /// Decodes quantized latents.
    pub fn decode(&self, q: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode_with_features(q).0
    }

    /// Decodes, also returning the input of the last conv.
    pub fn decode_with_features(&self, q: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let h = upsample_nearest2(cpu::gelu(cpu::conv2d(&self.dec1, upsample_nearest2(q))));
        (cpu::conv2d(&self.dec2, h.clone()), h)
    }

    /// Decodes index maps `[B, levels, h, w]`.
    pub fn decode_indices(&self, indices: Tensor<B, 4, Int>) -> Tensor<B, 4> {
        self.decode(codes_of_index_maps(&self.quantize, indices))
    }

    /// Encode, quantize, decode.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode) -> VqOutput<B> {
        let encoded = self.encode(x, mode);
        let (reconstruction, decoder_features) =
            self.decode_with_features(encoded.quantized.clone());
        VqOutput {
            reconstruction,
            decoder_features,
            encoded,
        }
    }
}
