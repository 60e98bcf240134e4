//! ViT-VQGAN's autoencoder (enhancing-transformers' `ViTVQ`): [`VitEncoder`] -> `pre_quant`
//! Linear(dim -> embed_dim) -> any rotor quantizer over the token grid -> `post_quant`
//! Linear(embed_dim -> dim) -> [`VitDecoder`]. The quantizer sees the tokens as a latent map
//! `[B, embed_dim, S/p, S/p]`, like every other rotor autoencoder's, so indices, usage and
//! decoding work the same way. Weights load from ViTVQ checkpoints under their own names.

use burn::{
    module::Module,
    nn::Linear,
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode, QuantizerConfig};
use serde::{Deserialize, Serialize};

use crate::{
    Encoded, ModelError, StateDict, VitConfig, VitDecoder, VitEncoder, VitNaming, VqOutput,
    attention::linear_tokens,
    codes_of_index_maps,
    weights::{Naming, TorchKey, export_weights, load_weights},
};

/// The transformer autoencoder and its quantizer (whose `dim` must be `vit.embed_dim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitVqModelConfig {
    /// Encoder, decoder and token widths.
    pub vit: VitConfig,
    /// The quantizer of the `embed_dim`-wide tokens.
    pub quantizer: QuantizerConfig,
    /// Weights to start (fine-tune) from: an enhancing-transformers `ViTVQ` checkpoint or a
    /// `launch export` of a rotor run (`.ckpt`, `.pth`, `.pt`, `.bin`, `.safetensors`; keys
    /// under `loss.` are skipped). See [`VitVqModel::load_enhancing`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl VitVqModelConfig {
    /// Checks both parts and that they fit.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.vit.validate()?;
        self.quantizer.validate()?;
        if self.quantizer.input_dim() != self.vit.embed_dim {
            return Err(ModelError::config(
                "quantizer.dim",
                format!(
                    "{} but the ViT's pre_quant gives {}-wide tokens (vit.embed_dim): set them equal \
                     (the paper: 32, l2-normalized codes with distance = \"cosine\")",
                    self.quantizer.input_dim(),
                    self.vit.embed_dim
                ),
            ));
        }
        Ok(())
    }

    /// Builds the model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<VitVqModel<B>, ModelError> {
        self.validate()?;
        let v = &self.vit;
        let linear = |i: usize, o: usize| crate::vit::linear(i, o, true, device);
        Ok(VitVqModel {
            encoder: VitEncoder::new(v, device)?,
            pre_quant: linear(v.encoder.dim, v.embed_dim),
            quantizer: self.quantizer.init(device)?,
            post_quant: linear(v.embed_dim, v.decoder.dim),
            decoder: VitDecoder::new(v, device)?,
        })
    }
}

/// enhancing's `ViTVQ`; field names are its attribute names.
#[derive(Module, Debug)]
pub struct VitVqModel<B: Backend> {
    /// Image -> tokens.
    pub encoder: VitEncoder<B>,
    /// `dim -> embed_dim`.
    pub pre_quant: Linear<B>,
    /// The quantizer.
    pub quantizer: AnyQuantizer<B>,
    /// `embed_dim -> dim`.
    pub post_quant: Linear<B>,
    /// Tokens -> image.
    pub decoder: VitDecoder<B>,
}

/// `[B, N, D]` tokens of a `g x g` grid -> `[B, D, g, g]`.
fn tokens_to_map<B: Backend>(t: Tensor<B, 3>, g: usize) -> Tensor<B, 4> {
    let [b, _, d] = t.dims();
    t.swap_dims(1, 2).reshape([b, d, g, g])
}

/// `[B, D, g, g]` -> `[B, g*g, D]` tokens.
fn map_to_tokens<B: Backend>(m: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, d, h, w] = m.dims();
    m.reshape([b, d, h * w]).swap_dims(1, 2)
}

impl<B: Backend> VitVqModel<B> {
    /// Latents before quantization `[B, embed_dim, g, g]`.
    pub fn latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let tokens = linear_tokens(&self.pre_quant, self.encoder.forward(x));
        tokens_to_map(tokens, self.decoder.grid)
    }

    /// Encodes and quantizes images `[B, C, S, S]`.
    pub fn encode(&self, x: Tensor<B, 4>, mode: Mode) -> Encoded<B> {
        Encoded::quantize_map(&self.quantizer, self.latents(x), mode)
    }

    /// Decodes quantized latents `[B, embed_dim, g, g]`, also returning the decoder's
    /// normalized tokens as a map `[B, dim, g, g]` (the input of its last layer).
    pub fn decode_with_features(&self, quantized: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let tokens = linear_tokens(&self.post_quant, map_to_tokens(quantized));
        let g = self.decoder.grid;
        let features = self.decoder.features(tokens);
        let image = self.decoder.to_pixel.forward(features.clone(), g, g);
        (image, tokens_to_map(features, g))
    }

    /// Decodes quantized latents.
    pub fn decode(&self, quantized: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode_with_features(quantized).0
    }

    /// Decodes index maps `[B, levels, g, g]`.
    pub fn decode_indices(&self, indices: Tensor<B, 4, Int>) -> Tensor<B, 4> {
        self.decode(codes_of_index_maps(&self.quantizer, indices))
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

    /// Loads a ViTVQ state dict (keys under `loss.`, the discriminator's and LPIPS's, are
    /// skipped: load the discriminator from them). The codebook is `quantizer.embedding.weight`.
    pub fn load_enhancing(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, &dict.without(&["loss."]), &VitVqNaming)
    }

    /// The weights under ViTVQ's names.
    pub fn export_enhancing(&self) -> StateDict {
        export_weights(self, &VitVqNaming)
    }
}

/// ViTVQ's names: the ViT parts as [`VitNaming`] says, the quantizer as taming's
/// (`quantizer.embedding.weight`).
struct VitVqNaming;

impl Naming for VitVqNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        if let Some(rest) = path.strip_prefix("quantizer.") {
            let mut key = crate::vq_model::quantizer_key(&format!("quantize.{rest}"));
            key.key = key.key.replacen("quantize", "quantizer", 1);
            return key;
        }
        VitNaming.torch_key(path)
    }
}
