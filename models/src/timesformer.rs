//! TimeSformer with divided space-time attention, numerically Hugging Face's `TimesformerModel`
//! (embeddings, layers, final LayerNorm; no classifier head), under the same state-dict names so
//! its checkpoints load. The paper's video tokenizers (Table 11) use it as encoder and decoder.
//!
//! Token order between layers: index 0 is the cls token, then `1 + n*T + t` for patch `n`
//! (row-major over the patch grid) of frame `t` (patch-major, frame-minor), as HF keeps it.

use burn::{
    module::{Initializer, Module, Param},
    nn::{LayerNorm, LayerNormConfig, Linear},
    tensor::{Tensor, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    ModelError,
    attention::{linear_tokens, multi_head_attention},
    cpu,
    vit::{PatchEmbed, linear},
    weights::Naming,
    weights::TorchKey,
};

fn default_channels() -> usize {
    3
}

fn default_ln_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "gelu".into()
}

fn default_attention() -> String {
    "divided_space_time".into()
}

fn yes() -> bool {
    true
}

/// HF's `TimesformerConfig` (the keys that shape the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimesformerConfig {
    /// Frame side S.
    pub image_size: usize,
    /// Patch side p.
    pub patch_size: usize,
    /// Frames T (inputs must have exactly this many).
    pub num_frames: usize,
    /// Token width D.
    pub hidden_size: usize,
    /// Heads (D / heads per head).
    pub num_attention_heads: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Pixel channels.
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Only "gelu" (exact, erf-based), HF's default.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Epsilon of every LayerNorm (HF: 1e-6).
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Bias on the qkv projections (HF default true).
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Only "divided_space_time".
    #[serde(default = "default_attention")]
    pub attention_type: String,
}

impl TimesformerConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (key, v) in [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_frames", self.num_frames),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("num_channels", self.num_channels),
        ] {
            if v == 0 {
                return Err(ModelError::config(key, "must be at least 1"));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ModelError::config(
                "patch_size",
                format!(
                    "{} does not divide image_size {}",
                    self.patch_size, self.image_size
                ),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(ModelError::config(
                "hidden_act",
                format!(
                    "`{}` is not supported; only \"gelu\" (exact erf GELU, HF's default)",
                    self.hidden_act
                ),
            ));
        }
        if self.attention_type != "divided_space_time" {
            return Err(ModelError::config(
                "attention_type",
                format!(
                    "`{}` is not supported; only \"divided_space_time\" (the paper's setting)",
                    self.attention_type
                ),
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(ModelError::config("layer_norm_eps", "must be positive"));
        }
        Ok(())
    }

    /// Patches per frame, (S/p)^2.
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// `TimesformerSelfAttention`: the fused qkv projection.
#[derive(Module, Debug)]
pub struct TsSelfAttention<B: Backend> {
    /// `qkv`, `[D] -> [3D]`.
    pub qkv: Linear<B>,
    /// Heads.
    pub heads: usize,
}

/// A Linear under the name `dense` (HF's `*Output` / `Intermediate` wrappers).
#[derive(Module, Debug)]
pub struct TsDense<B: Backend> {
    /// `dense`.
    pub dense: Linear<B>,
}

/// `TimesformerAttention`: self-attention then its output projection.
#[derive(Module, Debug)]
pub struct TsAttention<B: Backend> {
    /// `attention`.
    pub attention: TsSelfAttention<B>,
    /// `output.dense`.
    pub output: TsDense<B>,
}

impl<B: Backend> TsAttention<B> {
    fn new(d: usize, heads: usize, qkv_bias: bool, device: &B::Device) -> Self {
        Self {
            attention: TsSelfAttention {
                qkv: linear(d, 3 * d, qkv_bias, device),
                heads,
            },
            output: TsDense {
                dense: linear(d, d, true, device),
            },
        }
    }

    /// `[B, N, D]` -> `[B, N, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let d = x.dims()[2];
        let h = self.attention.heads;
        let ctx = multi_head_attention(linear_tokens(&self.attention.qkv, x), h, d / h);
        linear_tokens(&self.output.dense, ctx)
    }
}

/// One `TimesformerLayer` (divided space-time).
#[derive(Module, Debug)]
pub struct TsLayer<B: Backend> {
    /// Spatial attention.
    pub attention: TsAttention<B>,
    /// MLP in.
    pub intermediate: TsDense<B>,
    /// MLP out.
    pub output: TsDense<B>,
    /// Before spatial attention.
    pub layernorm_before: LayerNorm<B>,
    /// Before the MLP.
    pub layernorm_after: LayerNorm<B>,
    /// Before temporal attention.
    pub temporal_layernorm: LayerNorm<B>,
    /// Temporal attention.
    pub temporal_attention: TsAttention<B>,
    /// The extra Linear after temporal attention.
    pub temporal_dense: Linear<B>,
}

impl<B: Backend> TsLayer<B> {
    pub(crate) fn new(c: &TimesformerConfig, device: &B::Device) -> Self {
        let d = c.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        Self {
            attention: TsAttention::new(d, c.num_attention_heads, c.qkv_bias, device),
            intermediate: TsDense {
                dense: linear(d, c.intermediate_size, true, device),
            },
            output: TsDense {
                dense: linear(c.intermediate_size, d, true, device),
            },
            layernorm_before: ln(),
            layernorm_after: ln(),
            temporal_layernorm: ln(),
            temporal_attention: TsAttention::new(d, c.num_attention_heads, c.qkv_bias, device),
            temporal_dense: linear(d, d, true, device),
        }
    }

    /// `[B, 1 + N*T, D]` -> same, for `t` frames of `n` patches.
    pub fn forward(&self, x: Tensor<B, 3>, n: usize, t: usize) -> Tensor<B, 3> {
        let [b, len, d] = x.dims();
        let cls = x.clone().narrow(1, 0, 1); // [B, 1, D]
        let patches = x.narrow(1, 1, len - 1); // [B, N*T, D], patch-major
        // 1. Temporal attention over the T tokens of each patch.
        let seq = patches.clone().reshape([b * n, t, d]);
        let r = self
            .temporal_attention
            .forward(crate::precision::layer_norm_f32(
                &self.temporal_layernorm,
                seq,
            ));
        let r = linear_tokens(&self.temporal_dense, r.reshape([b, n * t, d]));
        let patches = patches + r;
        // 2. Spatial attention over [cls, the N patches] of each frame.
        let frames = patches
            .clone()
            .reshape([b, n, t, d])
            .swap_dims(1, 2)
            .reshape([b * t, n, d]);
        let cls_rep = cls.clone().expand([b, t, d]).reshape([b * t, 1, d]);
        let seq = Tensor::cat(vec![cls_rep, frames], 1);
        let r = self.attention.forward(crate::precision::layer_norm_f32(
            &self.layernorm_before,
            seq,
        )); // [B*T, 1+N, D]
        let r_cls = r.clone().narrow(1, 0, 1).reshape([b, t, d]).mean_dim(1); // [B, 1, D]
        let r_patch = r
            .narrow(1, 1, n)
            .reshape([b, t, n, d])
            .swap_dims(1, 2)
            .reshape([b, n * t, d]);
        let x = Tensor::cat(vec![cls + r_cls, patches + r_patch], 1);
        // 3. MLP on every token.
        let h = crate::precision::layer_norm_f32(&self.layernorm_after, x.clone());
        let h = cpu::gelu(linear_tokens(&self.intermediate.dense, h));
        x + linear_tokens(&self.output.dense, h)
    }
}

/// `TimesformerEmbeddings`.
#[derive(Module, Debug)]
pub struct TsEmbeddings<B: Backend> {
    /// `[1, 1, D]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + N, D]` (index 0 is the cls token's).
    pub position_embeddings: Param<Tensor<B, 3>>,
    /// `[1, T, D]`.
    pub time_embeddings: Param<Tensor<B, 3>>,
    /// `patch_embeddings.projection`: Conv2d(C, D, p, stride p).
    pub patch_embeddings: PatchEmbed<B>,
}

/// `TsEncoder` (HF's `encoder`): the layers.
#[derive(Module, Debug)]
pub struct TsEncoder<B: Backend> {
    /// `encoder.layer.{l}`.
    pub layer: Vec<TsLayer<B>>,
}

/// HF's `TimesformerModel`.
#[derive(Module, Debug)]
pub struct Timesformer<B: Backend> {
    /// Embeddings.
    pub embeddings: TsEmbeddings<B>,
    /// Layers.
    pub encoder: TsEncoder<B>,
    /// Final LayerNorm.
    pub layernorm: LayerNorm<B>,
    /// Frames.
    pub num_frames: usize,
    /// Patches per frame.
    pub num_patches: usize,
}

impl<B: Backend> Timesformer<B> {
    /// The model of `c` with HF's initialization.
    pub fn new(c: &TimesformerConfig, device: &B::Device) -> Result<Self, ModelError> {
        c.validate()?;
        let d = c.hidden_size;
        let p = c.patch_size;
        let n = c.patches();
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Ok(Self {
            embeddings: TsEmbeddings {
                cls_token: normal.init([1, 1, d], device),
                position_embeddings: normal.init([1, 1 + n, d], device),
                time_embeddings: Initializer::Zeros.init([1, c.num_frames, d], device),
                patch_embeddings: PatchEmbed {
                    weight: normal.init([d, c.num_channels, p, p], device),
                    bias: Initializer::Zeros.init([d], device),
                },
            },
            encoder: TsEncoder {
                layer: (0..c.num_hidden_layers)
                    .map(|_| TsLayer::new(c, device))
                    .collect(),
            },
            layernorm: LayerNormConfig::new(d)
                .with_epsilon(c.layer_norm_eps)
                .init(device),
            num_frames: c.num_frames,
            num_patches: n,
        })
    }

    /// Frames `[B, T, C, S, S]` (HF's `pixel_values` layout) -> tokens `[B, 1 + N*T, D]` before
    /// the layers.
    pub fn embed(&self, frames: Tensor<B, 5>) -> Tensor<B, 3> {
        let [b, t, c, s, _] = frames.dims();
        let e = &self.embeddings;
        let n = self.num_patches;
        let patches = e.patch_embeddings.forward(frames.reshape([b * t, c, s, s])); // [B*T, N, D]
        let d = patches.dims()[2];
        let pos = e.position_embeddings.val();
        let patches = patches + pos.clone().narrow(1, 1, n);
        let patches = patches.reshape([b, t, n, d]) + e.time_embeddings.val().unsqueeze_dim::<4>(2);
        let patches = patches.swap_dims(1, 2).reshape([b, n * t, d]);
        let cls = (e.cls_token.val() + pos.narrow(1, 0, 1)).expand([b, 1, d]);
        Tensor::cat(vec![cls, patches], 1)
    }

    /// Tokens `[B, 1 + N*T, D]` through every layer and the final LayerNorm.
    pub fn forward_tokens(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        for layer in &self.encoder.layer {
            x = layer.forward(x, self.num_patches, self.num_frames);
        }
        crate::precision::layer_norm_f32(&self.layernorm, x)
    }

    /// HF's `last_hidden_state` for `pixel_values` `[B, T, C, S, S]`.
    pub fn forward(&self, frames: Tensor<B, 5>) -> Tensor<B, 3> {
        self.forward_tokens(self.embed(frames))
    }
}

/// HF's state-dict names for [`Timesformer`]: LayerNorm `gamma`/`beta` are `weight`/`bias`, the
/// patch convolution sits under `projection`, Linear weights are transposed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimesformerNaming;

impl Naming for TimesformerNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let key = crate::weights::norm_param_names(path)
            .replace("patch_embeddings.", "patch_embeddings.projection.");
        let transpose = path.ends_with(".weight") && !path.contains("patch_embeddings");
        TorchKey {
            key,
            transpose,
            optional: false,
        }
    }
}
