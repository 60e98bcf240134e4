//! `Autoencoder`: any of rotor's VQ autoencoders behind one module type, chosen by a serde config
//! (`kind = "vq_model" | "peer" | "vit_vq"`), so the trainer drives them without knowing which is inside.

use burn::{
    module::Module,
    nn::conv::Conv2d,
    tensor::{Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode};
use serde::{Deserialize, Serialize};

use crate::{
    ModelError, PeerAutoencoder, PeerAutoencoderConfig, VitVqModel, VitVqModelConfig, VqModel,
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
}

impl AutoencoderKind {
    /// Builds it.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Autoencoder<B>, ModelError> {
        Ok(match self {
            Self::VqModel(c) => Autoencoder::VqModel(c.init(device)?),
            Self::Peer(c) => Autoencoder::Peer(c.init(device)?),
            Self::VitVq(c) => Autoencoder::VitVq(c.init(device)?),
        })
    }

    /// Validates without building.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::VqModel(c) => c.validate(),
            Self::Peer(c) => c.validate(),
            Self::VitVq(c) => c.validate(),
        }
    }

    /// Image channels in and out.
    pub fn channels(&self) -> usize {
        match self {
            Self::VqModel(c) => c.autoencoder.in_channels,
            Self::Peer(c) => c.in_channels,
            Self::VitVq(c) => c.vit.channels,
        }
    }

    /// The side length inputs must be divisible by.
    pub fn downsample_factor(&self) -> usize {
        match self {
            Self::VqModel(c) => c.autoencoder.downsample_factor(),
            Self::Peer(_) => 4,
            Self::VitVq(c) => c.vit.patch_size,
        }
    }

    /// The one input side length the model takes, when it has one (the ViT's position tables
    /// are built for `image_size`).
    pub fn fixed_resolution(&self) -> Option<usize> {
        match self {
            Self::VitVq(c) => Some(c.vit.image_size),
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
}

impl<B: Backend> Autoencoder<B> {
    /// Encode, quantize, decode.
    pub fn forward(&self, x: Tensor<B, 4>, mode: Mode) -> VqOutput<B> {
        match self {
            Self::VqModel(m) => m.forward(x, mode),
            Self::Peer(m) => m.forward(x, mode),
            Self::VitVq(m) => m.forward(x, mode),
        }
    }

    /// Decodes index maps `[B, levels, h, w]`.
    pub fn decode_indices(&self, indices: Tensor<B, 4, Int>) -> Tensor<B, 4> {
        match self {
            Self::VqModel(m) => m.decode_indices(indices),
            Self::Peer(m) => m.decode_indices(indices),
            Self::VitVq(m) => m.decode_indices(indices),
        }
    }

    /// The quantizer.
    pub fn quantizer(&self) -> &AnyQuantizer<B> {
        match self {
            Self::VqModel(m) => &m.quantize,
            Self::Peer(m) => &m.quantize,
            Self::VitVq(m) => &m.quantizer,
        }
    }

    /// The quantizer, for `apply_stats` and initialization.
    pub fn quantizer_mut(&mut self) -> &mut AnyQuantizer<B> {
        match self {
            Self::VqModel(m) => &mut m.quantize,
            Self::Peer(m) => &mut m.quantize,
            Self::VitVq(m) => &mut m.quantizer,
        }
    }

    /// The decoder's last convolution (the adaptive GAN weight's anchor): `decoder.conv_out`;
    /// `None` for the ViT, whose last layer is a transposed convolution (enhancing's ViT-VQGAN
    /// loss has no adaptive weight).
    pub fn last_layer(&self) -> Option<&Conv2d<B>> {
        match self {
            Self::VqModel(m) => Some(&m.decoder.conv_out),
            Self::Peer(m) => Some(&m.dec2),
            Self::VitVq(_) => None,
        }
    }

    /// Latents before quantization, for k-means initialization.
    pub fn latents(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::VqModel(m) => crate::cpu::conv2d(&m.quant_conv, m.encoder.forward(x)),
            Self::Peer(m) => m.encode(x, Mode::Eval).latents,
            Self::VitVq(m) => m.latents(x),
        }
    }
}
