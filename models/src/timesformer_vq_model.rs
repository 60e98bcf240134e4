//! The paper's video tokenizer (Table 5, A.1): a Hugging Face TimeSformer encoder -> `pre_quant`
//! Linear(D -> embed_dim) -> any rotor quantizer -> `post_quant` Linear(embed_dim -> D) -> a
//! TimeSformer decoder (its own cls token, position and time embeddings, divided space-time
//! layers and final LayerNorm, with no patch embedding: its tokens come from `post_quant`) ->
//! `to_pixel` (ViT-VQGAN's per-patch linear map to pixels) on every frame.
//!
//! Clips enter as frames `[B*T, C, S, S]`, clip-major (Hugging Face's `[B, T, C, S, S]`
//! flattened), and leave the same way. The quantizer sees the `T x (S/p)^2` tokens of a clip as a
//! latent map `[B, embed_dim, T*g, g]`, frame-major (rows `t*g..(t+1)*g` are frame `t`), so
//! usage, indices and `decode_indices` work as for images.

use burn::{
    module::{Module, Param},
    nn::{Initializer, LayerNorm, LayerNormConfig, Linear},
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode, QuantizerConfig};
use serde::{Deserialize, Serialize};

use crate::{
    Encoded, ModelError, StateDict, Timesformer, TimesformerConfig, TimesformerNaming, ToPixels,
    TsLayer, VqOutput,
    attention::linear_tokens,
    codes_of_index_maps,
    weights::{Naming, TorchKey, export_weights, load_weights},
};

/// The video transformer autoencoder: one TimeSformer shape for encoder and decoder (Table 11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimesformerVqModelConfig {
    /// Encoder and decoder shape (Hugging Face's `TimesformerConfig` keys).
    pub timesformer: TimesformerConfig,
    /// Token width at the quantizer.
    pub embed_dim: usize,
    /// The quantizer of the `embed_dim`-wide tokens.
    pub quantizer: QuantizerConfig,
    /// Weights to start (fine-tune) from, with Hugging Face TimeSformer names (a `launch export`
    /// of a rotor run; `.ckpt`, `.pth`, `.pt`, `.bin`, `.safetensors`; keys under `loss.` are
    /// skipped). See [`TimesformerVqModel::load_hf`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl TimesformerVqModelConfig {
    /// Checks both parts and that they fit.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.timesformer
            .validate()
            .map_err(|e| e.under("timesformer"))?;
        if self.embed_dim == 0 {
            return Err(ModelError::config("embed_dim", "must be at least 1"));
        }
        self.quantizer.validate()?;
        if self.quantizer.input_dim() != self.embed_dim {
            return Err(ModelError::config(
                "quantizer.dim",
                format!(
                    "{} but pre_quant gives {}-wide tokens (model.embed_dim): set them equal",
                    self.quantizer.input_dim(),
                    self.embed_dim
                ),
            ));
        }
        Ok(())
    }

    /// Builds the model (Hugging Face's initialization for both TimeSformers).
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<TimesformerVqModel<B>, ModelError> {
        self.validate()?;
        let c = &self.timesformer;
        let d = c.hidden_size;
        let n = c.patches();
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let p = c.patch_size;
        Ok(TimesformerVqModel {
            encoder: Timesformer::new(c, device)?,
            pre_quant: crate::vit::linear(d, self.embed_dim, true, device),
            quantizer: self.quantizer.init(device)?,
            post_quant: crate::vit::linear(self.embed_dim, d, true, device),
            decoder: TimesformerDecoder {
                cls_token: normal.init([1, 1, d], device),
                position_embeddings: normal.init([1, 1 + n, d], device),
                time_embeddings: Initializer::Zeros.init([1, c.num_frames, d], device),
                layer: (0..c.num_hidden_layers)
                    .map(|_| TsLayer::new(c, device))
                    .collect(),
                layernorm: LayerNormConfig::new(d)
                    .with_epsilon(c.layer_norm_eps)
                    .init(device),
                to_pixel: ToPixels {
                    weight: crate::vit::conv_weight([d, c.num_channels, p, p], device),
                    bias: Initializer::Zeros.init([c.num_channels], device),
                },
            },
            frames: c.num_frames,
            grid: c.image_size / p,
        })
    }
}

/// The decoder TimeSformer: embeddings for incoming tokens, layers, LayerNorm, pixels.
#[derive(Module, Debug)]
pub struct TimesformerDecoder<B: Backend> {
    /// `[1, 1, D]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + N, D]` (index 0 is the cls token's).
    pub position_embeddings: Param<Tensor<B, 3>>,
    /// `[1, T, D]`.
    pub time_embeddings: Param<Tensor<B, 3>>,
    /// Divided space-time layers.
    pub layer: Vec<TsLayer<B>>,
    /// Final LayerNorm.
    pub layernorm: LayerNorm<B>,
    /// Tokens -> patches of pixels.
    pub to_pixel: ToPixels<B>,
}

/// The TimeSformer VQ autoencoder.
#[derive(Module, Debug)]
pub struct TimesformerVqModel<B: Backend> {
    /// Clips -> tokens (Hugging Face's `TimesformerModel`).
    pub encoder: Timesformer<B>,
    /// `D -> embed_dim`.
    pub pre_quant: Linear<B>,
    /// The quantizer.
    pub quantizer: AnyQuantizer<B>,
    /// `embed_dim -> D`.
    pub post_quant: Linear<B>,
    /// Tokens -> clips.
    pub decoder: TimesformerDecoder<B>,
    /// Frames per clip.
    pub frames: usize,
    /// Patches per frame side.
    pub grid: usize,
}

impl<B: Backend> TimesformerVqModel<B> {
    fn clips(&self, x: Tensor<B, 4>) -> Tensor<B, 5> {
        let [bt, c, h, w] = x.dims();
        assert!(
            bt.is_multiple_of(self.frames),
            "{bt} frames are not whole clips of {}",
            self.frames
        );
        x.reshape([bt / self.frames, self.frames, c, h, w])
    }

    /// Latents before quantization `[B, embed_dim, T*g, g]` of frames `[B*T, C, S, S]`.
    pub fn latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (t, g) = (self.frames, self.grid);
        let tokens = self.encoder.forward(self.clips(x)); // [B, 1 + N*T, D]
        let [b, l, _] = tokens.dims();
        let z = linear_tokens(&self.pre_quant, tokens.narrow(1, 1, l - 1)); // [B, N*T, E]
        let e = z.dims()[2];
        // Patch-major frame-minor -> a frame-major map.
        z.reshape([b, g * g, t, e])
            .permute([0, 3, 2, 1])
            .reshape([b, e, t * g, g])
    }

    /// Encodes and quantizes frames `[B*T, C, S, S]`.
    pub fn encode(&self, x: Tensor<B, 4>, mode: Mode) -> Encoded<B> {
        Encoded::quantize_map(&self.quantizer, self.latents(x), mode)
    }

    /// Decodes quantized latents `[B, embed_dim, T*g, g]` into frames `[B*T, C, S, S]`, also
    /// returning the decoder's normalized tokens as maps `[B*T, D, g, g]` (the input of
    /// `to_pixel`).
    pub fn decode_with_features(&self, quantized: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (t, g) = (self.frames, self.grid);
        let n = g * g;
        let [b, e, _, _] = quantized.dims();
        // Frame-major map -> patch-major frame-minor tokens [B, N*T, E], then to width D.
        let z = quantized
            .reshape([b, e, t, n])
            .permute([0, 3, 2, 1])
            .reshape([b, n * t, e]);
        let z = linear_tokens(&self.post_quant, z);
        let d = z.dims()[2];
        let dec = &self.decoder;
        let pos = dec.position_embeddings.val();
        let z = z.reshape([b, n, t, d])
            + pos.clone().narrow(1, 1, n).unsqueeze_dim::<4>(2)
            + dec.time_embeddings.val().unsqueeze_dim::<4>(1);
        let cls = (dec.cls_token.val() + pos.narrow(1, 0, 1)).expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, z.reshape([b, n * t, d])], 1);
        for layer in &dec.layer {
            x = layer.forward(x, n, t);
        }
        let x = crate::precision::layer_norm_f32(&dec.layernorm, x).narrow(1, 1, n * t);
        let features = x
            .reshape([b, n, t, d])
            .swap_dims(1, 2)
            .reshape([b * t, n, d]);
        let frames = dec.to_pixel.forward(features.clone(), g, g);
        let maps = features.swap_dims(1, 2).reshape([b * t, d, g, g]);
        (frames, maps)
    }

    /// Decodes quantized latents.
    pub fn decode(&self, quantized: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode_with_features(quantized).0
    }

    /// Decodes index maps `[B, levels, T*g, g]` into frames `[B*T, C, S, S]`.
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

    /// Loads a state dict with Hugging Face TimeSformer names: the encoder is a
    /// `TimesformerModel` under `encoder.` (`encoder.embeddings.patch_embeddings.projection.*`,
    /// `encoder.encoder.layer.{l}.*`, `encoder.layernorm.*`), the decoder's layers, LayerNorm
    /// and embeddings use the same names under `decoder.`, `pre_quant` / `post_quant` are
    /// PyTorch Linear layers and the codebook is `quantizer.embedding.weight` (taming's
    /// convention). Keys under `loss.` are skipped.
    pub fn load_hf(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, &dict.without(&["loss."]), &TimesformerVqNaming)
    }

    /// The weights under the names [`Self::load_hf`] reads.
    pub fn export_hf(&self) -> StateDict {
        export_weights(self, &TimesformerVqNaming)
    }
}

/// [`TimesformerNaming`] for the TimeSformers and the Linear layers, taming's quantizer names.
struct TimesformerVqNaming;

impl Naming for TimesformerVqNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        if let Some(rest) = path.strip_prefix("quantizer.") {
            let mut key = crate::vq_model::quantizer_key(&format!("quantize.{rest}"));
            key.key = key.key.replacen("quantize", "quantizer", 1);
            return key;
        }
        TimesformerNaming.torch_key(path)
    }
}
