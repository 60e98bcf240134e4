//! The VQ autoencoder: encoder -> `quant_conv` (1x1 to the quantizer's width) -> any
//! [`Quantizer`] -> `post_quant_conv` (1x1 back) -> decoder. Covers the paper's Table 1 VQ-VAEs,
//! Table 2 VQGANs and Table 3 LDM VQGANs; weights load from taming / latent-diffusion
//! `VQModel` checkpoints under their own names.

use burn::{
    module::Module,
    nn::conv::Conv2d,
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode, QuantOut, Quantizer, QuantizerConfig, shapes};
use serde::{Deserialize, Serialize};

use crate::{
    AutoencoderConfig, Decoder, Encoder, ModelError, StateDict,
    blocks::conv,
    weights::{Naming, TorchKey, export_weights, load_weights, norm_param_names},
};

/// A VQ model: the autoencoder architecture and the quantizer (whose `dim` is the embedding
/// width `embed_dim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqModelConfig {
    /// Encoder/decoder architecture (taming's `ddconfig`).
    pub autoencoder: AutoencoderConfig,
    /// The quantizer.
    pub quantizer: QuantizerConfig,
    /// Weights to start (fine-tune) from: a taming / latent-diffusion `VQModel` checkpoint or a
    /// `launch export` of a rotor run (`.ckpt`, `.pth`, `.pt`, `.bin`, `.safetensors`; keys
    /// under `loss.` are skipped). See [`VqModel::load_taming`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl VqModelConfig {
    /// Checks both parts.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.autoencoder.validate()?;
        self.quantizer.validate()?;
        if self.quantizer.input_dim() == 0 {
            return Err(ModelError::config("quantizer.dim", "must be at least 1"));
        }
        Ok(())
    }

    /// Builds the model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<VqModel<B>, ModelError> {
        self.validate()?;
        let embed = self.quantizer.input_dim();
        let z = self.autoencoder.z_channels;
        Ok(VqModel {
            encoder: Encoder::new(&self.autoencoder, device)?,
            quant_conv: conv(z, embed, 1, 1, 0, device),
            quantize: self.quantizer.init(device)?,
            post_quant_conv: conv(embed, z, 1, 1, 0, device),
            decoder: Decoder::new(&self.autoencoder, device)?,
        })
    }
}

/// Latents after quantization.
#[derive(Debug, Clone)]
pub struct Encoded<B: Backend> {
    /// `[B, embed_dim, h, w]` quantized latents (gradient per the estimator in training).
    pub quantized: Tensor<B, 4>,
    /// `[B, embed_dim, h, w]` the encoder's latents before quantization.
    pub latents: Tensor<B, 4>,
    /// Everything the quantizer returned (indices `[B*h*w, levels]`, losses, stats, usage).
    pub quant: QuantOut<B>,
    /// `[b, h, w]` of the latent grid.
    pub grid: [usize; 3],
}

impl<B: Backend> Encoded<B> {
    /// Quantizes a latent map `[B, D, h, w]` (rows of channels) with `quantizer`.
    pub fn quantize_map(quantizer: &AnyQuantizer<B>, latents: Tensor<B, 4>, mode: Mode) -> Self {
        let [b, _, h, w] = latents.dims();
        let quant = quantizer.quantize(shapes::flatten_image(latents.clone()), mode);
        let quantized = shapes::unflatten_image(quant.quantized.clone(), [b, h, w]);
        Self {
            quantized,
            latents,
            quant,
            grid: [b, h, w],
        }
    }

    /// Indices as maps `[B, levels, h, w]`.
    pub fn index_maps(&self) -> Tensor<B, 4, Int> {
        shapes::index_map(self.quant.indices.clone(), self.grid)
    }
}

/// The codes `[B, D, h, w]` of index maps `[B, levels, h, w]` (eval-mode quantizer output).
pub fn codes_of_index_maps<B: Backend>(
    quantizer: &AnyQuantizer<B>,
    indices: Tensor<B, 4, Int>,
) -> Tensor<B, 4> {
    let [b, l, h, w] = indices.dims();
    let rows = indices.permute([0, 2, 3, 1]).reshape([b * h * w, l]);
    shapes::unflatten_image(quantizer.decode(rows), [b, h, w])
}

/// A forward pass: reconstruction and the quantizer's output.
#[derive(Debug, Clone)]
pub struct VqOutput<B: Backend> {
    /// `[B, out_ch, H, W]`.
    pub reconstruction: Tensor<B, 4>,
    /// The input of the decoder's last layer (`reconstruction = last_layer(decoder_features)`):
    /// what the adaptive GAN weight needs to measure gradient norms at that layer.
    pub decoder_features: Tensor<B, 4>,
    /// The encoding.
    pub encoded: Encoded<B>,
}

/// The VQ autoencoder. Field names are taming's `VQModel` attribute names.
#[derive(Module, Debug)]
pub struct VqModel<B: Backend> {
    /// Image -> latent.
    pub encoder: Encoder<B>,
    /// 1x1 conv `z_channels -> embed_dim`.
    pub quant_conv: Conv2d<B>,
    /// The quantizer.
    pub quantize: AnyQuantizer<B>,
    /// 1x1 conv `embed_dim -> z_channels`.
    pub post_quant_conv: Conv2d<B>,
    /// Latent -> image.
    pub decoder: Decoder<B>,
}

impl<B: Backend> VqModel<B> {
    /// Encodes and quantizes images `[B, C, H, W]`.
    pub fn encode(&self, x: Tensor<B, 4>, mode: Mode) -> Encoded<B> {
        let latents = crate::cpu::conv2d(&self.quant_conv, self.encoder.forward(x));
        Encoded::quantize_map(&self.quantize, latents, mode)
    }

    /// Decodes quantized latents `[B, embed_dim, h, w]`.
    pub fn decode(&self, quantized: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder
            .forward(crate::cpu::conv2d(&self.post_quant_conv, quantized))
    }

    /// Decodes, also returning the input of the decoder's last conv.
    pub fn decode_with_features(&self, quantized: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.decoder
            .forward_with_features(crate::cpu::conv2d(&self.post_quant_conv, quantized))
    }

    /// Decodes index maps `[B, levels, h, w]` (as [`Encoded::index_maps`] gives them).
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

    /// Loads a taming / latent-diffusion `VQModel` state dict (discriminator and LPIPS keys under
    /// `loss.` are skipped: load them with the discriminator). The quantizer's codebook is
    /// `quantize.embedding.weight`; EMA buffers, when the checkpoint has them, are
    /// `quantize.embedding.cluster_size|embed_avg`.
    pub fn load_taming(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, &dict.without(&["loss."]), &VqNaming)
    }

    /// The weights under taming's names (export: [`StateDict::save_safetensors`]).
    pub fn export_taming(&self) -> StateDict {
        export_weights(self, &VqNaming)
    }
}

/// taming names, with the quantizer's variant level removed and its codebook renamed.
struct VqNaming;

impl Naming for VqNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        if !path.starts_with("quantize.") {
            return TorchKey::new(norm_param_names(path));
        }
        quantizer_key(path)
    }
}

/// taming's key of a quantizer parameter at `quantize.<path inside AnyQuantizer>`.
pub(crate) fn quantizer_key(path: &str) -> TorchKey {
    {
        let rest = &path["quantize.".len()..];
        // Drop the enum variant (`Vq.`, `Residual.`, and `Vq.` inside residual layers).
        let parts: Vec<&str> = rest
            .split('.')
            .filter(|p| !matches!(*p, "Vq" | "Lfq" | "Fsq" | "Residual"))
            .collect();
        let (head, last) = parts.split_at(parts.len() - 1);
        let prefix = if head.is_empty() {
            "quantize".to_string()
        } else {
            format!("quantize.{}", head.join("."))
        };
        let last = last[0];
        match last {
            "codebook" => TorchKey::new(format!("{prefix}.embedding.weight")),
            "cluster_size" | "embed_avg" => TorchKey {
                key: format!("{prefix}.embedding.{last}"),
                transpose: false,
                optional: true,
            },
            "initialized" => TorchKey {
                key: format!("{prefix}.initialized"),
                transpose: false,
                optional: true,
            },
            "weight" if head.last().is_some_and(|h| h.starts_with("project_")) => TorchKey {
                key: format!("{prefix}.weight"),
                transpose: true,
                optional: false,
            },
            _ => TorchKey::new(format!("{prefix}.{last}")),
        }
    }
}
