//! ViT-VQGAN's encoder and decoder as enhancing-transformers' `ViTVQ` builds them
//! (`enhancing/modules/stage1/layers.py`): a stride-p patch convolution, a fixed 2-D sin-cos
//! position table, pre-norm transformer blocks (attention with `dim_head`-wide heads and no qkv
//! bias, a Tanh feed-forward), a final LayerNorm, and a stride-p transposed convolution back to
//! pixels. [`VitNaming`] maps module paths to ViTVQ's state-dict keys, so its checkpoints load.
//!
//! The patch convolution and the transposed convolution do not overlap (kernel = stride = p), so
//! both run as one matrix product over patches, the same sums as a convolution.

use burn::{
    module::{Initializer, Module, Param, ParamId},
    nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig},
    tensor::{Tensor, TensorData, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    ModelError,
    attention::{linear_tokens, multi_head_attention},
    cpu,
    weights::Naming,
    weights::TorchKey,
};

/// One transformer stack (the encoder's or the decoder's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitStackConfig {
    /// Token width (a multiple of 4: the position table has four quarters).
    pub dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of the feed-forward.
    pub mlp_dim: usize,
    /// Width of one head (enhancing: 64 whatever `dim` is; `heads * dim_head` may differ from
    /// `dim`).
    #[serde(default = "default_dim_head")]
    pub dim_head: usize,
}

fn default_dim_head() -> usize {
    64
}

fn default_channels() -> usize {
    3
}

fn default_ln_eps() -> f64 {
    1e-5
}

/// The ViT-VQGAN autoencoder around the quantizer (enhancing's `ViTVQ` without it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Image side length S.
    pub image_size: usize,
    /// Patch side p (S / p tokens per side).
    pub patch_size: usize,
    /// Image channels.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// The encoder's transformer.
    pub encoder: VitStackConfig,
    /// The decoder's transformer.
    pub decoder: VitStackConfig,
    /// Width of the quantized tokens (`pre_quant` maps `encoder.dim` to it).
    pub embed_dim: usize,
    /// Epsilon of every LayerNorm (torch's default 1e-5).
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
}

impl VitConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("channels", self.channels),
            ("embed_dim", self.embed_dim),
        ];
        for (key, v) in positive {
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
        for (which, s) in [("encoder", &self.encoder), ("decoder", &self.decoder)] {
            for (key, v) in [
                ("depth", s.depth),
                ("heads", s.heads),
                ("mlp_dim", s.mlp_dim),
                ("dim_head", s.dim_head),
            ] {
                if v == 0 {
                    return Err(ModelError::config(
                        &format!("{which}.{key}"),
                        "must be at least 1",
                    ));
                }
            }
            if s.dim == 0 || s.dim % 4 != 0 {
                return Err(ModelError::config(
                    &format!("{which}.dim"),
                    format!(
                        "{} is not a positive multiple of 4 (the sin-cos position table has four quarters)",
                        s.dim
                    ),
                ));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(ModelError::config("layer_norm_eps", "must be positive"));
        }
        Ok(())
    }

    /// Tokens per side, S / p.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// enhancing's 2-D sin-cos table for a `grid x grid` patch grid of width `dim`, `[grid*grid,
/// dim]` row-major: token `r*grid + c` gets `[sin(c w), cos(c w), sin(r w), cos(r w)]` with
/// `w_i = 10000^(-i/q)`, `q = dim/4` (the first half encodes the column). Computed in f64 and
/// rounded once, as the reference stores it.
pub fn sincos_position_table(grid: usize, dim: usize) -> Vec<f32> {
    let q = dim / 4;
    let omega: Vec<f64> = (0..q)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / q as f64))
        .collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for r in 0..grid {
        for c in 0..grid {
            for coord in [c as f64, r as f64] {
                out.extend(omega.iter().map(|w| (coord * w).sin() as f32));
                out.extend(omega.iter().map(|w| (coord * w).cos() as f32));
            }
        }
    }
    out
}

/// A Linear layer as enhancing (`init_weights`) and Hugging Face (`_init_weights`) initialize
/// transformers: normal(std 0.02) weights (their truncation at +-2 is 100 standard deviations
/// out), zero biases.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        })
        .init(device)
}

/// The fixed position table as a frozen parameter (in the state dict, never trained).
fn position_param<B: Backend>(grid: usize, dim: usize, device: &B::Device) -> Param<Tensor<B, 3>> {
    let table = sincos_position_table(grid, dim);
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(table, [1, grid * grid, dim]), device),
    )
}

/// Pre-norm multi-head self-attention (`layers.{l}.0`).
#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    /// LayerNorm before attention (`0.norm`).
    pub norm: LayerNorm<B>,
    /// `0.fn.to_qkv`, no bias.
    pub to_qkv: Linear<B>,
    /// `0.fn.to_out`; absent when one head spans the whole width (enhancing's Identity).
    pub to_out: Option<Linear<B>>,
    /// Heads.
    pub heads: usize,
    /// Width per head.
    pub dim_head: usize,
}

/// Pre-norm feed-forward `Linear -> tanh -> Linear` (`layers.{l}.1`).
#[derive(Module, Debug)]
pub struct VitFeedForward<B: Backend> {
    /// LayerNorm before it (`1.norm`).
    pub norm: LayerNorm<B>,
    /// `1.fn.net.0`.
    pub fc1: Linear<B>,
    /// `1.fn.net.2`.
    pub fc2: Linear<B>,
}

/// One block: `x + attn(x)`, then `x + ff(x)`.
#[derive(Module, Debug)]
pub struct VitBlock<B: Backend> {
    /// Attention half.
    pub attn: VitAttention<B>,
    /// Feed-forward half.
    pub ff: VitFeedForward<B>,
}

/// enhancing's `Transformer`: blocks then a final LayerNorm.
#[derive(Module, Debug)]
pub struct VitTransformer<B: Backend> {
    /// The blocks.
    pub layers: Vec<VitBlock<B>>,
    /// Final LayerNorm (`transformer.norm`).
    pub norm: LayerNorm<B>,
    /// Epsilon of every LayerNorm of the stack (the config's `layer_norm_eps`).
    pub eps: f64,
}

impl<B: Backend> VitTransformer<B> {
    fn new(s: &VitStackConfig, eps: f64, device: &B::Device) -> Self {
        let ln = || LayerNormConfig::new(s.dim).with_epsilon(eps).init(device);
        let inner = s.heads * s.dim_head;
        let project_out = !(s.heads == 1 && s.dim_head == s.dim);
        let layers = (0..s.depth)
            .map(|_| VitBlock {
                attn: VitAttention {
                    norm: ln(),
                    to_qkv: linear(s.dim, 3 * inner, false, device),
                    to_out: project_out.then(|| linear(inner, s.dim, true, device)),
                    heads: s.heads,
                    dim_head: s.dim_head,
                },
                ff: VitFeedForward {
                    norm: ln(),
                    fc1: linear(s.dim, s.mlp_dim, true, device),
                    fc2: linear(s.mlp_dim, s.dim, true, device),
                },
            })
            .collect();
        Self {
            layers,
            norm: ln(),
            eps,
        }
    }

    /// `[B, N, dim]` -> `[B, N, dim]`.
    pub fn forward(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        for block in &self.layers {
            let a = &block.attn;
            let h = multi_head_attention(
                linear_tokens(&a.to_qkv, cpu::layer_norm(&a.norm, self.eps, x.clone())),
                a.heads,
                a.dim_head,
            );
            let h = match &a.to_out {
                Some(out) => linear_tokens(out, h),
                None => h,
            };
            x = x + h;
            let f = &block.ff;
            let h = linear_tokens(&f.fc1, cpu::layer_norm(&f.norm, self.eps, x.clone()));
            let h = cpu::tanh(h);
            let h = linear_tokens(&f.fc2, h);
            x = x + h;
        }
        cpu::layer_norm(&self.norm, self.eps, x)
    }
}

/// xavier_uniform over the weight viewed as `[shape[0], rest]`, as enhancing initializes its
/// (transposed) convolutions.
pub(crate) fn conv_weight<B: Backend>(
    shape: [usize; 4],
    device: &B::Device,
) -> Param<Tensor<B, 4>> {
    let rest = shape[1] * shape[2] * shape[3];
    let bound = (6.0 / (shape[0] + rest) as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
    .init(shape, device)
}

/// Images to patch tokens: a Conv2d(channels, dim, p, stride p) stored as PyTorch stores it.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `[dim, channels, p, p]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[dim]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> PatchEmbed<B> {
    /// `[B, C, S, S]` -> `[B, (S/p)^2, dim]`, tokens in row-major patch order.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [dim, c, p, _] = self.weight.dims();
        let [b, _, h, w] = x.dims();
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * gh * gw, c * p * p]);
        let w = self.weight.val().reshape([dim, c * p * p]).transpose();
        (patches.matmul(w) + self.bias.val().unsqueeze()).reshape([b, gh * gw, dim])
    }
}

/// Tokens to pixels: a ConvTranspose2d(dim, channels, p, stride p), weight `[dim, channels, p,
/// p]` as PyTorch stores it.
#[derive(Module, Debug)]
pub struct ToPixels<B: Backend> {
    /// `[dim, channels, p, p]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[channels]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ToPixels<B> {
    /// `[B, gh*gw, dim]` -> `[B, C, gh*p, gw*p]`.
    pub fn forward(&self, t: Tensor<B, 3>, gh: usize, gw: usize) -> Tensor<B, 4> {
        let [dim, c, p, _] = self.weight.dims();
        let b = t.dims()[0];
        let w = self.weight.val().reshape([dim, c * p * p]);
        let bias = self.bias.val().reshape([1, c, 1, 1]);
        t.reshape([b * gh * gw, dim])
            .matmul(w)
            .reshape([b, gh, gw, c, p, p])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, c, gh * p, gw * p])
            + bias
    }
}

/// enhancing's `ViTEncoder`: patches, + position table, transformer (ending in its LayerNorm).
#[derive(Module, Debug)]
pub struct VitEncoder<B: Backend> {
    /// `to_patch_embedding.0`.
    pub to_patch_embedding: PatchEmbed<B>,
    /// The fixed table `[1, N, dim]` (frozen).
    pub en_pos_embedding: Param<Tensor<B, 3>>,
    /// Blocks + final norm.
    pub transformer: VitTransformer<B>,
}

impl<B: Backend> VitEncoder<B> {
    /// The encoder of `cfg` with enhancing's initialization.
    pub fn new(cfg: &VitConfig, device: &B::Device) -> Result<Self, ModelError> {
        cfg.validate()?;
        let s = &cfg.encoder;
        let p = cfg.patch_size;
        Ok(Self {
            to_patch_embedding: PatchEmbed {
                weight: conv_weight([s.dim, cfg.channels, p, p], device),
                bias: Initializer::Zeros.init([s.dim], device),
            },
            en_pos_embedding: position_param(cfg.grid(), s.dim, device),
            transformer: VitTransformer::new(s, cfg.layer_norm_eps, device),
        })
    }

    /// `[B, C, S, S]` -> `[B, N, dim]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let tokens = self.to_patch_embedding.forward(x) + self.en_pos_embedding.val();
        self.transformer.forward(tokens)
    }
}

/// enhancing's `ViTDecoder`: + position table, transformer (ending in its LayerNorm), tokens to
/// pixels.
#[derive(Module, Debug)]
pub struct VitDecoder<B: Backend> {
    /// The fixed table `[1, N, dim]` (frozen).
    pub de_pos_embedding: Param<Tensor<B, 3>>,
    /// Blocks + final norm.
    pub transformer: VitTransformer<B>,
    /// `to_pixel.1`.
    pub to_pixel: ToPixels<B>,
    /// Tokens per side.
    pub grid: usize,
}

impl<B: Backend> VitDecoder<B> {
    /// The decoder of `cfg` with enhancing's initialization.
    pub fn new(cfg: &VitConfig, device: &B::Device) -> Result<Self, ModelError> {
        cfg.validate()?;
        let s = &cfg.decoder;
        let p = cfg.patch_size;
        Ok(Self {
            de_pos_embedding: position_param(cfg.grid(), s.dim, device),
            transformer: VitTransformer::new(s, cfg.layer_norm_eps, device),
            to_pixel: ToPixels {
                weight: conv_weight([s.dim, cfg.channels, p, p], device),
                bias: Initializer::Zeros.init([cfg.channels], device),
            },
            grid: cfg.grid(),
        })
    }

    /// The normalized tokens before the last layer, `[B, N, dim]`.
    pub fn features(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        self.transformer
            .forward(tokens + self.de_pos_embedding.val())
    }

    /// `[B, N, dim]` -> `[B, C, S, S]`.
    pub fn forward(&self, tokens: Tensor<B, 3>) -> Tensor<B, 4> {
        self.to_pixel
            .forward(self.features(tokens), self.grid, self.grid)
    }
}

/// ViTVQ's state-dict names for the paths of [`VitEncoder`], [`VitDecoder`] and the `pre_quant`
/// / `post_quant` Linear layers (burn stores Linear weights `[in, out]`: transposed on the way).
#[derive(Debug, Clone, Copy, Default)]
pub struct VitNaming;

impl Naming for VitNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let mut parts: Vec<String> = Vec::new();
        let segs: Vec<&str> = path.split('.').collect();
        let mut transpose = false;
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let mapped: &str = match *seg {
                "gamma" if last => "weight",
                "beta" if last => "bias",
                "to_patch_embedding" => "to_patch_embedding.0",
                "to_pixel" => "to_pixel.1",
                "attn" => "0",
                "ff" => "1",
                "to_qkv" | "to_out" => {
                    parts.push("fn".into());
                    seg
                }
                "fc1" => "fn.net.0",
                "fc2" => "fn.net.2",
                other => other,
            };
            parts.push(mapped.to_string());
            if last && *seg == "weight" {
                transpose = segs.iter().any(|s| {
                    matches!(
                        *s,
                        "to_qkv" | "to_out" | "fc1" | "fc2" | "pre_quant" | "post_quant"
                    )
                });
            }
        }
        TorchKey {
            key: parts.join("."),
            transpose,
            optional: false,
        }
    }
}
