//! `Autoencoder`: any of rotor's VQ autoencoders behind one module type, chosen by a serde config
//! (`kind = "vq_model" | "peer" | "vit_vq" | "timesformer_vq" | "conv3d_vq"`), so the trainer
//! drives them without knowing which is inside. Video models take and return clips as frames
//! `[B*T, C, H, W]`, clip-major.

use burn::{
    module::Module,
    nn::conv::Conv2d,
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode};
use serde::{Deserialize, Serialize};

use crate::{
    Conv3dVqModel, Conv3dVqModelConfig, ModelError, PeerAutoencoder, PeerAutoencoderConfig,
    TimesformerVqModel, TimesformerVqModelConfig, VitVqModel, VitVqModelConfig, VqModel,
    VqModelConfig, VqOutput,
};

/// Which autoencoder to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AutoencoderKind {
    /// taming's VQModel (Table 1 VQ-VAE, Table 2-3 VQGAN generators).
    VqModel(VqModelConfig),
    /// vector-quantize-pytorch's examples/autoencoder.py network.
    Peer(PeerAutoencoderConfig),
    /// enhancing-transformers' ViTVQ (Table 4 ViT-VQGAN).
    VitVq(VitVqModelConfig),
    /// The paper's TimeSformer-VQGAN video tokenizer (Table 5).
    TimesformerVq(TimesformerVqModelConfig),
    /// A TATS-style 3-D convolutional VQGAN video tokenizer.
    Conv3dVq(Conv3dVqModelConfig),
}

impl AutoencoderKind {
    /// Builds it.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Autoencoder<B>, ModelError> {
        Ok(match self {
            Self::VqModel(c) => Autoencoder::VqModel(c.init(device)?),
            Self::Peer(c) => Autoencoder::Peer(c.init(device)?),
            Self::VitVq(c) => Autoencoder::VitVq(c.init(device)?),
            Self::TimesformerVq(c) => Autoencoder::TimesformerVq(c.init(device)?),
            Self::Conv3dVq(c) => Autoencoder::Conv3dVq(c.init(device)?),
        })
    }

    /// Validates without building.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::VqModel(c) => c.validate(),
            Self::Peer(c) => c.validate(),
            Self::VitVq(c) => c.validate(),
            Self::TimesformerVq(c) => c.validate(),
            Self::Conv3dVq(c) => c.validate(),
        }
    }

    /// Image channels in and out.
    pub fn channels(&self) -> usize {
        match self {
            Self::VqModel(c) => c.autoencoder.in_channels,
            Self::Peer(c) => c.in_channels,
            Self::VitVq(c) => c.vit.channels,
            Self::TimesformerVq(c) => c.timesformer.num_channels,
            Self::Conv3dVq(c) => c.in_channels,
        }
    }

    /// The side length inputs must be divisible by.
    pub fn downsample_factor(&self) -> usize {
        match self {
            Self::VqModel(c) => c.autoencoder.downsample_factor(),
            Self::Peer(_) => 4,
            Self::VitVq(c) => c.vit.patch_size,
            Self::TimesformerVq(c) => c.timesformer.patch_size,
            Self::Conv3dVq(c) => c.downsample[1],
        }
    }

    /// Frames per sample: 1 for image models, the clip length for video models.
    pub fn frames(&self) -> usize {
        match self {
            Self::TimesformerVq(c) => c.timesformer.num_frames,
            Self::Conv3dVq(c) => c.frames,
            _ => 1,
        }
    }

    /// The one input side length the model takes, when it has one (the ViT's position tables
    /// are built for `image_size`).
    pub fn fixed_resolution(&self) -> Option<usize> {
        match self {
            Self::VitVq(c) => Some(c.vit.image_size),
            Self::TimesformerVq(c) => Some(c.timesformer.image_size),
            _ => None,
        }
    }
}

/// Any autoencoder.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Autoencoder<B: Backend> {
    /// taming VQModel.
    VqModel(VqModel<B>),
    /// The peer network.
    Peer(PeerAutoencoder<B>),
    /// ViT-VQGAN.
    VitVq(VitVqModel<B>),
    /// TimeSformer-VQGAN.
    TimesformerVq(TimesformerVqModel<B>),
    /// 3-D conv VQGAN.
    Conv3dVq(Conv3dVqModel<B>),
}

impl<B: Backend> Autoencoder<B> {
    /// Encode, quantize, decode.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode) -> VqOutput<B> {
        match self {
            Self::VqModel(m) => m.forward(x, mode),
            Self::Peer(m) => m.forward(x, mode),
            Self::VitVq(m) => m.forward(x, mode),
            Self::TimesformerVq(m) => m.forward(x, mode),
            Self::Conv3dVq(m) => m.forward(x, mode),
        }
    }

    /// Decodes index maps `[B, levels, h, w]`.
    pub fn decode_indices(&self, indices: Tensor<B, 4, Int>) -> Tensor<B, 4> {
        match self {
            Self::VqModel(m) => m.decode_indices(indices),
            Self::Peer(m) => m.decode_indices(indices),
            Self::VitVq(m) => m.decode_indices(indices),
            Self::TimesformerVq(m) => m.decode_indices(indices),
            Self::Conv3dVq(m) => m.decode_indices(indices),
        }
    }

    /// The quantizer.
    pub fn quantizer(&self) -> &AnyQuantizer<B> {
        match self {
            Self::VqModel(m) => &m.quantize,
            Self::Peer(m) => &m.quantize,
            Self::VitVq(m) => &m.quantizer,
            Self::TimesformerVq(m) => &m.quantizer,
            Self::Conv3dVq(m) => &m.quantizer,
        }
    }

    /// The quantizer, for `apply_stats` and initialization.
    pub fn quantizer_mut(&mut self) -> &mut AnyQuantizer<B> {
        match self {
            Self::VqModel(m) => &mut m.quantize,
            Self::Peer(m) => &mut m.quantize,
            Self::VitVq(m) => &mut m.quantizer,
            Self::TimesformerVq(m) => &mut m.quantizer,
            Self::Conv3dVq(m) => &mut m.quantizer,
        }
    }

    /// The decoder's last convolution (the adaptive GAN weight's anchor): `decoder.conv_out`;
    /// `None` for the ViT, whose last layer is a transposed convolution (enhancing's ViT-VQGAN
    /// loss has no adaptive weight), and for the video models (neither has one in its
    /// reference: TATS weighs its GAN terms with fixed weights).
    pub fn last_layer(&self) -> Option<&Conv2d<B>> {
        match self {
            Self::VqModel(m) => Some(&m.decoder.conv_out),
            Self::Peer(m) => Some(&m.dec2),
            Self::VitVq(_) => None,
            Self::TimesformerVq(_) | Self::Conv3dVq(_) => None,
        }
    }

    /// Latents before quantization, for k-means initialization.
    pub fn latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::VqModel(m) => crate::cpu::conv2d(&m.quant_conv, m.encoder.forward(x)),
            Self::Peer(m) => m.encode(x, Mode::Eval).latents,
            Self::VitVq(m) => m.latents(x),
            Self::TimesformerVq(m) => m.latents(x),
            Self::Conv3dVq(m) => m.latents(x),
        }
    }
}
