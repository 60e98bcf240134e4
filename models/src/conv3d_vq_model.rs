//! A 3-D convolutional VQGAN generator in the style of TATS (`tats/tats_vqgan.py`): "same"-padded
//! 3-D convolutions, stride-2 downsampling in the dimensions `downsample` names, a GroupNorm +
//! SiLU residual block after each, `pre_vq_conv` / `post_vq_conv` 1x1x1 convolutions around any
//! rotor quantizer, and a decoder that mirrors the encoder with two residual blocks per level.
//! Every convolution runs on rotor's CPU kernel ([`crate::cpu::conv3d`]) on the CPU backend.
//!
//! Differences from TATS, each for the CPU kernels' sake: downsampling kernels are 4 along a
//! strided dimension and 3 along an unstrided one (TATS: 4 everywhere, padded asymmetrically), so
//! every padding is symmetric zero padding (TATS pads by replication); upsampling is nearest x2
//! followed by a 3x3x3 convolution (TATS: a transposed convolution).
//!
//! Clips enter as frames `[B*T, C, H, W]`, clip-major, and leave the same way; the quantizer sees
//! the latent `[B, E, t, h, w]` as the map `[B, E, t*h, w]` (rows `i*h..(i+1)*h` are latent
//! frame `i`).

use burn::{
    module::Module,
    nn::{
        GroupNorm, GroupNormConfig, PaddingConfig3d,
        conv::{Conv3d, Conv3dConfig},
    },
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode, QuantizerConfig};
use serde::{Deserialize, Serialize};

use crate::{
    Encoded, ModelError, StateDict, VqOutput, codes_of_index_maps, cpu,
    weights::{Naming, TorchKey, export_weights, load_weights, norm_param_names},
};

fn default_groups() -> usize {
    32
}
fn default_channels() -> usize {
    3
}

/// The 3-D conv VQGAN's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv3dVqModelConfig {
    /// Frames per clip (T); a multiple of `downsample[0]`.
    pub frames: usize,
    /// Pixel channels.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Width of the first convolution; level `i` has `n_hiddens * 2^(i+1)` channels (TATS:
    /// 32 -> 256 channels for `downsample = [4, 8, 8]`).
    pub n_hiddens: usize,
    /// Downsampling of `[t, h, w]`, each a power of two, `h = w` (TATS: `[4, 8, 8]`).
    pub downsample: [usize; 3],
    /// Latent width at the quantizer.
    pub embed_dim: usize,
    /// GroupNorm groups (TATS: 32); must divide every level's channels.
    #[serde(default = "default_groups")]
    pub norm_groups: usize,
    /// The quantizer of the `embed_dim`-wide latents.
    pub quantizer: QuantizerConfig,
    /// Weights to start (fine-tune) from, with TATS-style names (a `launch export` of a rotor
    /// run; `.ckpt`, `.pth`, `.pt`, `.bin`, `.safetensors`; keys under `loss.` are skipped). See
    /// [`Conv3dVqModel::load_tats`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
}

impl Conv3dVqModelConfig {
    fn levels(&self) -> usize {
        self.downsample
            .iter()
            .map(|d| d.trailing_zeros() as usize)
            .max()
            .unwrap_or(0)
    }

    /// Channels after level `i` (0-based) of the encoder.
    fn level_channels(&self, i: usize) -> usize {
        self.n_hiddens << (i + 1)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (key, v) in [
            ("frames", self.frames),
            ("in_channels", self.in_channels),
            ("n_hiddens", self.n_hiddens),
            ("embed_dim", self.embed_dim),
            ("norm_groups", self.norm_groups),
        ] {
            if v == 0 {
                return Err(ModelError::config(key, "must be at least 1"));
            }
        }
        if self.downsample.iter().any(|d| !d.is_power_of_two()) {
            return Err(ModelError::config(
                "downsample",
                format!("{:?}: each factor must be a power of two", self.downsample),
            ));
        }
        if self.downsample[1] != self.downsample[2] {
            return Err(ModelError::config(
                "downsample",
                format!(
                    "{:?}: height and width must be downsampled alike",
                    self.downsample
                ),
            ));
        }
        if self.levels() == 0 {
            return Err(ModelError::config(
                "downsample",
                "downsamples nothing: at least one factor must be 2 or more",
            ));
        }
        if !self.frames.is_multiple_of(self.downsample[0]) {
            return Err(ModelError::config(
                "frames",
                format!(
                    "{} is not a multiple of the temporal downsampling {}",
                    self.frames, self.downsample[0]
                ),
            ));
        }
        for i in 0..self.levels() {
            let c = self.level_channels(i);
            if !c.is_multiple_of(self.norm_groups) {
                return Err(ModelError::config(
                    "norm_groups",
                    format!(
                        "{} does not divide level {i}'s {c} channels",
                        self.norm_groups
                    ),
                ));
            }
        }
        self.quantizer.validate()?;
        if self.quantizer.input_dim() != self.embed_dim {
            return Err(ModelError::config(
                "quantizer.dim",
                format!(
                    "{} but pre_vq_conv gives {}-wide latents (model.embed_dim): set them equal",
                    self.quantizer.input_dim(),
                    self.embed_dim
                ),
            ));
        }
        Ok(())
    }

    /// Builds the model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Conv3dVqModel<B>, ModelError> {
        self.validate()?;
        let levels = self.levels();
        let norm = |c: usize| {
            GroupNormConfig::new(self.norm_groups, c)
                .with_epsilon(1e-6)
                .init(device)
        };
        let conv = |ci: usize, co: usize, k: [usize; 3], s: [usize; 3]| {
            Conv3dConfig::new([ci, co], k)
                .with_stride(s)
                .with_padding(PaddingConfig3d::Explicit(
                    (k[0] - s[0]) / 2,
                    (k[1] - s[1]) / 2,
                    (k[2] - s[2]) / 2,
                ))
                .init(device)
        };
        let res = |c: usize| ResBlock3d {
            norm1: norm(c),
            conv1: conv(c, c, [3; 3], [1; 3]),
            norm2: norm(c),
            conv2: conv(c, c, [3; 3], [1; 3]),
        };
        // The factor each level applies per dimension (TATS: 2 while log2(d) levels remain).
        let mut remaining = self.downsample.map(|d| d.trailing_zeros() as usize);
        let mut factors = Vec::new();
        for _ in 0..levels {
            factors.push(remaining.map(|r| if r > 0 { 2 } else { 1 }));
            remaining = remaining.map(|r| r.saturating_sub(1));
        }
        let mut down = Vec::new();
        let mut ci = self.n_hiddens;
        for (i, f) in factors.iter().enumerate() {
            let co = self.level_channels(i);
            let k = f.map(|s| if s == 2 { 4 } else { 3 });
            down.push(DownLevel3d {
                down: conv(ci, co, k, *f),
                res: res(co),
            });
            ci = co;
        }
        let top = ci;
        let mut up = Vec::new();
        for i in 0..levels {
            // Mirror of the encoder: level `levels-1-i`'s factors, channels halving.
            let co = self.level_channels(levels - 1 - i);
            up.push(UpLevel3d {
                up: conv(ci, co, [3; 3], [1; 3]),
                res1: res(co),
                res2: res(co),
                factor: factors[levels - 1 - i],
            });
            ci = co;
        }
        Ok(Conv3dVqModel {
            conv_first: conv(self.in_channels, self.n_hiddens, [3; 3], [1; 3]),
            down,
            enc_norm: norm(top),
            pre_vq_conv: conv(top, self.embed_dim, [1; 3], [1; 3]),
            quantizer: self.quantizer.init(device)?,
            post_vq_conv: conv(self.embed_dim, top, [1; 3], [1; 3]),
            dec_norm: norm(top),
            up,
            conv_last: conv(ci, self.in_channels, [3; 3], [1; 3]),
            frames: self.frames,
        })
    }
}

/// GroupNorm + SiLU + conv, twice, plus the input (TATS' `ResBlock`).
#[derive(Module, Debug)]
pub struct ResBlock3d<B: Backend> {
    /// Before `conv1`.
    pub norm1: GroupNorm<B>,
    /// 3x3x3.
    pub conv1: Conv3d<B>,
    /// Before `conv2`.
    pub norm2: GroupNorm<B>,
    /// 3x3x3.
    pub conv2: Conv3d<B>,
}

/// GroupNorm then SiLU on a 5-D tensor (group statistics do not depend on the layout of the
/// positions, so it runs as the 4-D kernel on `[B, C, T*H, W]`).
fn norm_silu<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    cpu::group_norm_silu(norm, x.reshape([b, c, t * h, w])).reshape([b, c, t, h, w])
}

impl<B: Backend> ResBlock3d<B> {
    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = cpu::conv3d(&self.conv1, norm_silu(&self.norm1, x.clone()));
        let h = cpu::conv3d(&self.conv2, norm_silu(&self.norm2, h));
        x + h
    }
}

/// One encoder level: strided conv, residual block.
#[derive(Module, Debug)]
pub struct DownLevel3d<B: Backend> {
    /// Stride 2 where this level downsamples.
    pub down: Conv3d<B>,
    /// Residual block.
    pub res: ResBlock3d<B>,
}

/// One decoder level: nearest x2 where the mirrored encoder level downsampled, conv, two
/// residual blocks.
#[derive(Module, Debug)]
pub struct UpLevel3d<B: Backend> {
    /// 3x3x3 after the upsampling.
    pub up: Conv3d<B>,
    /// Residual block.
    pub res1: ResBlock3d<B>,
    /// Residual block.
    pub res2: ResBlock3d<B>,
    /// `[t, h, w]` upsampling factors (1 or 2).
    pub factor: [usize; 3],
}

/// Nearest-neighbour upsampling by 1 or 2 per dimension.
fn upsample<B: Backend>(x: Tensor<B, 5>, f: [usize; 3]) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    let mut x = x;
    let (mut h2, mut w2) = (h, w);
    if f[1] == 2 {
        x = cpu::upsample_nearest2(x.reshape([b, c * t, h, w])).reshape([b, c, t, 2 * h, 2 * w]);
        (h2, w2) = (2 * h, 2 * w);
    }
    if f[0] == 2 {
        x = x
            .reshape([b, c, t, 1, h2 * w2])
            .expand([b, c, t, 2, h2 * w2])
            .reshape([b, c, 2 * t, h2, w2]);
    }
    x
}

/// The 3-D conv VQ autoencoder.
#[derive(Module, Debug)]
pub struct Conv3dVqModel<B: Backend> {
    /// 3x3x3, pixels -> `n_hiddens`.
    pub conv_first: Conv3d<B>,
    /// Encoder levels.
    pub down: Vec<DownLevel3d<B>>,
    /// The encoder's final GroupNorm (+ SiLU).
    pub enc_norm: GroupNorm<B>,
    /// 1x1x1 to `embed_dim`.
    pub pre_vq_conv: Conv3d<B>,
    /// The quantizer.
    pub quantizer: AnyQuantizer<B>,
    /// 1x1x1 back to the top width.
    pub post_vq_conv: Conv3d<B>,
    /// The decoder's first GroupNorm (+ SiLU).
    pub dec_norm: GroupNorm<B>,
    /// Decoder levels.
    pub up: Vec<UpLevel3d<B>>,
    /// 3x3x3 to pixels.
    pub conv_last: Conv3d<B>,
    /// Frames per clip.
    pub frames: usize,
}

impl<B: Backend> Conv3dVqModel<B> {
    /// Frames `[B*T, C, H, W]` -> clips `[B, C, T, H, W]`.
    fn clips(&self, x: Tensor<B, 4>) -> Tensor<B, 5> {
        let [bt, c, h, w] = x.dims();
        assert!(
            bt.is_multiple_of(self.frames),
            "{bt} frames are not whole clips of {}",
            self.frames
        );
        x.reshape([bt / self.frames, self.frames, c, h, w])
            .swap_dims(1, 2)
    }

    fn latents5(&self, x: Tensor<B, 4>) -> Tensor<B, 5> {
        let mut h = cpu::conv3d(&self.conv_first, self.clips(x));
        for level in &self.down {
            h = level.res.forward(cpu::conv3d(&level.down, h));
        }
        cpu::conv3d(&self.pre_vq_conv, norm_silu(&self.enc_norm, h))
    }

    /// Latents before quantization as a map `[B, E, t*h, w]`.
    pub fn latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = self.latents5(x);
        let [b, e, t, h, w] = z.dims();
        z.reshape([b, e, t * h, w])
    }

    /// Encodes and quantizes frames `[B*T, C, H, W]`.
    pub fn encode(&self, x: Tensor<B, 4>, mode: Mode) -> Encoded<B> {
        Encoded::quantize_map(&self.quantizer, self.latents(x), mode)
    }

    /// Decodes quantized maps `[B, E, t*h, w]` into frames `[B*T, C, H, W]`, also returning the
    /// input of `conv_last` as `[B, ch, T*H, W]`.
    pub fn decode_with_features(&self, quantized: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, e, th, w] = quantized.dims();
        let t = self.frames >> self.up.iter().filter(|l| l.factor[0] == 2).count();
        let z = quantized.reshape([b, e, t, th / t, w]);
        let mut h = norm_silu(&self.dec_norm, cpu::conv3d(&self.post_vq_conv, z));
        for level in &self.up {
            h = cpu::conv3d(&level.up, upsample(h, level.factor));
            h = level.res2.forward(level.res1.forward(h));
        }
        let [_, ch, tt, hh, ww] = h.dims();
        let out = cpu::conv3d(&self.conv_last, h.clone());
        let c = out.dims()[1];
        let frames = out.swap_dims(1, 2).reshape([b * tt, c, hh, ww]);
        (frames, h.reshape([b, ch, tt * hh, ww]))
    }

    /// Decodes quantized maps.
    pub fn decode(&self, quantized: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode_with_features(quantized).0
    }

    /// Decodes index maps `[B, levels, t*h, w]`.
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

    /// Loads a state dict with the names of TATS' `VQGAN` module tree (`tats/tats_vqgan.py`):
    /// `encoder.conv_first.conv`, `encoder.conv_blocks.{i}.down.conv` and `.res.{norm1, conv1.conv,
    /// norm2, conv2.conv}`, `encoder.final_block.0`, `pre_vq_conv.conv`, `codebook.embeddings`
    /// (optional: `codebook.N`, `codebook.z_avg`, `codebook.initialized`), `post_vq_conv.conv`,
    /// `decoder.final_block.0`, `decoder.conv_blocks.{i}.up.conv` and `.res1` / `.res2`,
    /// `decoder.conv_last.conv`. A TATS checkpoint itself does not fit (this model's kernel
    /// shapes and its upsampling differ, see the module docs): the names serve rotor's own
    /// export and fine-tuning. Keys under `loss.` are skipped.
    pub fn load_tats(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, &dict.without(&["loss."]), &TatsNaming)
    }

    /// The weights under the names [`Self::load_tats`] reads.
    pub fn export_tats(&self) -> StateDict {
        export_weights(self, &TatsNaming)
    }
}

/// TATS-style names (see [`Conv3dVqModel::load_tats`]).
struct TatsNaming;

impl Naming for TatsNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        if let Some(rest) = path.strip_prefix("quantizer.") {
            let mut key = crate::vq_model::quantizer_key(&format!("quantize.{rest}"));
            key.key = key
                .key
                .replacen("quantize", "codebook", 1)
                .replace(".embedding.weight", ".embeddings")
                .replace(".embedding.cluster_size", ".N")
                .replace(".embedding.embed_avg", ".z_avg");
            return key;
        }
        let segs: Vec<&str> = path.split('.').collect();
        let n = segs.len();
        let mut out: Vec<&str> = Vec::new();
        for (i, &seg) in segs.iter().enumerate() {
            out.push(match (seg, i) {
                ("conv_first", 0) => "encoder.conv_first",
                ("down", 0) => "encoder.conv_blocks",
                ("enc_norm", 0) => "encoder.final_block.0",
                ("dec_norm", 0) => "decoder.final_block.0",
                ("up", 0) => "decoder.conv_blocks",
                ("conv_last", 0) => "decoder.conv_last",
                _ => seg,
            });
            // SamePadConv3d wraps its nn.Conv3d as `.conv`.
            let conv = matches!(
                seg,
                "conv_first" | "pre_vq_conv" | "post_vq_conv" | "conv_last" | "conv1" | "conv2"
            ) || (matches!(seg, "down" | "up") && i == 2);
            if conv && i + 2 == n {
                out.push("conv");
            }
        }
        TorchKey::new(norm_param_names(&out.join(".")))
    }
}
