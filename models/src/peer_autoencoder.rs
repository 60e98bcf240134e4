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
    Encoded, ModelError, StateDict, VqOutput,
    blocks::conv,
    blocks::upsample_nearest2,
    cpu,
    vq_model::codes_of_index_maps,
    weights::{Naming, TorchKey, export_weights, load_weights},
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
    /// Weights to start (fine-tune) from: a state dict of vector-quantize-pytorch's
    /// `examples/autoencoder.py` network or a `launch export` of a rotor run (`.ckpt`, `.pth`,
    /// `.pt`, `.bin`, `.safetensors`). See [`PeerAutoencoder::load_vq_pytorch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
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

    /// Loads a state dict of vector-quantize-pytorch's `SimpleVQAutoEncoder`
    /// (`examples/autoencoder.py`): the convolutions are `layers.{0,3,7,10}`, the quantizer
    /// `layers.5` (`_codebook.embed`, and, optional, `_codebook.cluster_size|embed_avg|initted`;
    /// a leading codebook axis of 1 is accepted). Keys under `loss.` are skipped.
    pub fn load_vq_pytorch(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, &dict.without(&["loss."]), &PeerNaming)
    }

    /// The weights under vector-quantize-pytorch's names.
    pub fn export_vq_pytorch(&self) -> StateDict {
        export_weights(self, &PeerNaming)
    }
}

/// vector-quantize-pytorch's names: the `nn.ModuleList` indices of `SimpleVQAutoEncoder.layers`,
/// `VectorQuantize`'s codebook buffers under `_codebook`.
struct PeerNaming;

impl Naming for PeerNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let (head, rest) = path.split_once('.').unwrap_or((path, ""));
        let layer = match head {
            "enc1" => "0",
            "enc2" => "3",
            "quantize" => "5",
            "dec1" => "7",
            "dec2" => "10",
            other => other,
        };
        if head != "quantize" {
            return TorchKey::new(format!("layers.{layer}.{rest}"));
        }
        // `Vq.codebook`, `Residual.layers.0.Vq.codebook`, `Vq.project_in.weight`, ...
        let parts: Vec<&str> = rest
            .split('.')
            .filter(|p| !matches!(*p, "Vq" | "Lfq" | "Fsq" | "Residual"))
            .collect();
        let (inner, last) = parts.split_at(parts.len() - 1);
        let prefix = std::iter::once("layers.5")
            .chain(inner.iter().copied())
            .collect::<Vec<_>>()
            .join(".");
        let optional = |key: String| TorchKey {
            key,
            transpose: false,
            optional: true,
        };
        match last[0] {
            "codebook" => TorchKey::new(format!("{prefix}._codebook.embed")),
            "cluster_size" | "embed_avg" => optional(format!("{prefix}._codebook.{}", last[0])),
            "initialized" => optional(format!("{prefix}._codebook.initted")),
            "weight" if inner.last().is_some_and(|h| h.starts_with("project_")) => TorchKey {
                key: format!("{prefix}.weight"),
                transpose: true,
                optional: false,
            },
            other => TorchKey::new(format!("{prefix}.{other}")),
        }
    }
}
