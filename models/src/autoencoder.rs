//! `Autoencoder`: any of rotor's VQ autoencoders behind one module type, chosen by a serde config
//! (`kind = "vq_model" | "peer" | "vit_vq" | "timesformer_vq" | "conv3d_vq"`), so the trainer
//! drives them without knowing which is inside. Video models take and return clips as frames
//! `[B*T, C, H, W]`, clip-major.

use burn::{
    module::Module,
    nn::conv::Conv2d,
    tensor::{FloatDType, Int, Tensor, backend::Backend},
};
use quantizers::{AnyQuantizer, Mode};
use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::{
    Conv3dVqModel, Conv3dVqModelConfig, ModelError, PeerAutoencoder, PeerAutoencoderConfig,
    StateDict, TimesformerVqModel, TimesformerVqModelConfig, VitVqModel, VitVqModelConfig, VqModel,
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

    /// The weight file to start from (`model.init_from`), if any.
    pub fn init_from(&self) -> Option<&Path> {
        match self {
            Self::VqModel(c) => c.init_from.as_deref(),
            Self::Peer(c) => c.init_from.as_deref(),
            Self::VitVq(c) => c.init_from.as_deref(),
            Self::TimesformerVq(c) => c.init_from.as_deref(),
            Self::Conv3dVq(c) => c.init_from.as_deref(),
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
    /// Loads weights under the names of the model's reference (taming for `vq_model`,
    /// vector-quantize-pytorch for `peer`, enhancing-transformers for `vit_vq`, Hugging Face
    /// TimeSformer for `timesformer_vq`, TATS-style for `conv3d_vq`), as
    /// [`Self::export_state_dict`] writes them. Keys under `loss.` are skipped; a missing,
    /// unexpected or mis-shaped key is a [`ModelError::WeightMismatch`] listing them all.
    pub fn load_state_dict(self, dict: &StateDict) -> Result<Self, ModelError> {
        Ok(match self {
            Self::VqModel(m) => Self::VqModel(m.load_taming(dict)?),
            Self::Peer(m) => Self::Peer(m.load_vq_pytorch(dict)?),
            Self::VitVq(m) => Self::VitVq(m.load_enhancing(dict)?),
            Self::TimesformerVq(m) => Self::TimesformerVq(m.load_hf(dict)?),
            Self::Conv3dVq(m) => Self::Conv3dVq(m.load_tats(dict)?),
        })
    }

    /// Every weight under the names of the model's reference (see [`Self::load_state_dict`]).
    pub fn export_state_dict(&self) -> StateDict {
        match self {
            Self::VqModel(m) => m.export_taming(),
            Self::Peer(m) => m.export_vq_pytorch(),
            Self::VitVq(m) => m.export_enhancing(),
            Self::TimesformerVq(m) => m.export_hf(),
            Self::Conv3dVq(m) => m.export_tats(),
        }
    }

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

    /// [`Self::forward`] in mixed precision when `dtype` is a 16-bit type (`run.precision`):
    /// every weight but the quantizer's is a differentiable `dtype` copy of the f32 master
    /// weight, the input is cast down, the quantizer and the normalizations compute in f32, and
    /// the reconstruction, decoder features and latents come back in f32 for the losses.
    /// With f32 it is [`Self::forward`].
    pub fn forward_mixed(&self, x: Tensor<B, 4>, mode: Mode, dtype: FloatDType) -> VqOutput<B> {
        if !crate::precision::is_half(dtype.into()) {
            return self.forward(x, mode);
        }
        let mut low = crate::precision::cast_module(self.clone(), dtype);
        *low.quantizer_mut() = self.quantizer().clone();
        let out = low.forward(x.cast(dtype), mode);
        let mut encoded = out.encoded;
        encoded.latents = encoded.latents.cast(FloatDType::F32);
        encoded.quantized = encoded.quantized.cast(FloatDType::F32);
        VqOutput {
            reconstruction: out.reconstruction.cast(FloatDType::F32),
            decoder_features: out.decoder_features.cast(FloatDType::F32),
            encoded,
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

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    /// A tiny model of every kind, with names its reference uses.
    fn kinds() -> Vec<(AutoencoderKind, [&'static str; 3])> {
        let q = r#"{ "kind": "vq", "dim": 8, "codebook_size": 16 }"#;
        let vit = r#"{ "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32, "dim_head": 8 }"#;
        [
            (
                format!(
                    r#"{{ "kind": "vq_model", "quantizer": {q}, "autoencoder": {{ "ch": 32,
                    "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
                    "resolution": 16, "z_channels": 8 }} }}"#
                ),
                [
                    "encoder.down.0.block.0.norm1.weight",
                    "decoder.mid.attn_1.proj_out.bias",
                    "quantize.embedding.weight",
                ],
            ),
            (
                format!(r#"{{ "kind": "peer", "hidden": 8, "quantizer": {q} }}"#),
                [
                    "layers.0.weight",
                    "layers.10.bias",
                    "layers.5._codebook.embed",
                ],
            ),
            (
                format!(
                    r#"{{ "kind": "vit_vq", "quantizer": {q}, "vit": {{ "image_size": 8,
                    "patch_size": 4, "encoder": {vit}, "decoder": {vit}, "embed_dim": 8 }} }}"#
                ),
                [
                    "encoder.to_patch_embedding.0.weight",
                    "pre_quant.weight",
                    "quantizer.embedding.weight",
                ],
            ),
            (
                format!(
                    r#"{{ "kind": "timesformer_vq", "embed_dim": 8, "quantizer": {q},
                    "timesformer": {{ "image_size": 8, "patch_size": 4, "num_frames": 2,
                    "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
                    "intermediate_size": 32 }} }}"#
                ),
                [
                    "encoder.embeddings.patch_embeddings.projection.weight",
                    "encoder.encoder.layer.0.attention.attention.qkv.weight",
                    "decoder.layer.0.temporal_dense.weight",
                ],
            ),
            (
                format!(
                    r#"{{ "kind": "conv3d_vq", "frames": 2, "n_hiddens": 4,
                    "downsample": [2, 2, 2], "embed_dim": 8, "norm_groups": 4,
                    "quantizer": {q} }}"#
                ),
                [
                    "encoder.conv_blocks.0.down.conv.weight",
                    "decoder.conv_blocks.0.res1.norm1.weight",
                    "codebook.embeddings",
                ],
            ),
        ]
        .into_iter()
        .map(|(json, names)| (serde_json::from_str(&json).unwrap(), names))
        .collect()
    }

    /// Mixed precision on every kind: the reconstruction, decoder features and latents come back
    /// in f32, the latents within 5% of the f32 forward's largest (bf16 keeps 8 bits of
    /// mantissa), and the backward
    /// reaches every weight that the f32 backward reaches, in f32.
    #[test]
    fn every_kind_runs_in_bf16_mixed_precision_with_f32_outputs_and_master_gradients() {
        use burn::{
            backend::Autodiff,
            module::{ModuleVisitor, Param},
            tensor::{DType, Distribution},
        };
        type Ad = Autodiff<Flex>;
        struct Grads<'a>(
            &'a <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
            Vec<Option<DType>>,
        );
        impl ModuleVisitor<Ad> for Grads<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad, D>>) {
                self.1.push(p.val().grad(self.0).map(|g| g.dtype()));
            }
        }
        let device = Default::default();
        for (kind, _) in kinds() {
            let model = kind.init::<Ad>(&device).unwrap();
            let side = kind.fixed_resolution().unwrap_or(16);
            let n = kind.frames() * 2;
            let x = Tensor::<Ad, 4>::random(
                [n, kind.channels(), side, side],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            );
            let mut seen = Vec::new();
            for dtype in [FloatDType::F32, FloatDType::BF16] {
                let out = model.forward_mixed(x.clone(), Mode::Train, dtype);
                for t in [
                    &out.reconstruction,
                    &out.decoder_features,
                    &out.encoded.latents,
                ] {
                    assert_eq!(t.dtype(), DType::F32, "{kind:?} {dtype:?}");
                }
                let loss =
                    out.reconstruction.clone().powi_scalar(2).mean() + out.encoded.quant.loss();
                let grads = loss.backward();
                let mut v = Grads(&grads, Vec::new());
                model.visit(&mut v);
                // The encoder's latents (a code choice near a tie may differ, and with it the
                // reconstruction).
                let rec: Vec<f32> = out
                    .encoded
                    .latents
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .unwrap();
                seen.push((v.1, rec));
            }
            let (f32_grads, f32_rec) = &seen[0];
            let (bf_grads, bf_rec) = &seen[1];
            assert_eq!(f32_grads.len(), bf_grads.len());
            for (i, (a, b)) in f32_grads.iter().zip(bf_grads).enumerate() {
                assert_eq!(a.is_some(), b.is_some(), "{kind:?}: parameter {i}");
                assert!(
                    b.is_none_or(|d| d == DType::F32),
                    "{kind:?}: parameter {i} {b:?}"
                );
            }
            let scale = f32_rec.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = f32_rec
                .iter()
                .zip(bf_rec)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 0.05 * scale + 1e-3,
                "{kind:?}: bf16 latents off by {worst} (scale {scale})"
            );
        }
    }

    #[test]
    fn every_kind_loads_what_it_exports_under_its_references_names() {
        let device = Default::default();
        for (kind, names) in kinds() {
            let a = kind.init::<Flex>(&device).unwrap();
            let dict = a.export_state_dict();
            for n in names {
                assert!(dict.get(n).is_some(), "{kind:?}: no `{n}` in {:?}", {
                    dict.names().collect::<Vec<_>>()
                });
            }
            // Another draw of the weights takes the exported ones exactly; `loss.*` is skipped.
            let mut with_loss = dict.clone();
            with_loss.insert(
                "loss.discriminator.main.0.bias",
                crate::TensorEntry {
                    shape: vec![2],
                    values: vec![1.0, 2.0],
                },
            );
            let b = kind.init::<Flex>(&device).unwrap();
            assert_ne!(b.export_state_dict(), dict, "{kind:?}: same draw twice");
            let b = b.load_state_dict(&with_loss).unwrap();
            assert_eq!(b.export_state_dict(), dict, "{kind:?}");
            // A missing key is named.
            let partial = dict.without(&[names[0]]);
            let err = kind
                .init::<Flex>(&device)
                .unwrap()
                .load_state_dict(&partial)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("missing keys") && err.contains(names[0]),
                "{err}"
            );
        }
    }
}
