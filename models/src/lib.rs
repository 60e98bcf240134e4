//! # models
//!
//! The networks of rotor's image experiments, in burn, bit-compatible with taming-transformers:
//!
//! * [`Encoder`] / [`Decoder`]: taming's convolutional autoencoder ([`AutoencoderConfig`] is its
//!   `ddconfig`), built from [`blocks`] (ResnetBlock, AttnBlock, Downsample, Upsample);
//! * [`VqModel`]: encoder -> quant_conv -> any quantizer -> post_quant_conv -> decoder;
//! * [`NLayerDiscriminator`]: the PatchGAN with PyTorch-exact BatchNorm or ActNorm ([`norm`]);
//! * [`Lpips`]: the VGG16 perceptual distance, weights only from user-supplied files;
//! * the metric networks, weights only from user-supplied files: [`FidInception`] (pytorch-fid's
//!   FID/IS network) and [`I3d`] (the FVD network of VideoGPT/TATS);
//! * [`VitEncoder`] / [`VitDecoder`]: ViT-VQGAN's transformer autoencoder (enhancing-transformers'
//!   `ViTVQ`), and [`Timesformer`]: Hugging Face's divided space-time video transformer;
//! * video tokenizers: [`TimesformerVqModel`] (the paper's Table 5 TimeSformer-VQGAN) and
//!   [`Conv3dVqModel`] (a TATS-style 3-D convolutional VQGAN); clips travel as frames
//!   `[B*T, C, H, W]`, clip-major;
//! * weight import/export under PyTorch names ([`StateDict`], [`weights`]): `.safetensors`,
//!   `.pth`, `.ckpt`, with errors listing missing and unexpected keys.
//!
//! It knows nothing of files beyond weight files, of processes or of ranks.

mod attention;
mod autoencoder;
mod autoencoder_config;
pub mod bilinear;
pub mod blocks;
mod conv3d_vq_model;
pub mod cpu;
mod decoder;
mod discriminator;
mod encoder;
mod error;
mod fid_inception;
mod folded_conv;
mod i3d;
mod lpips;
pub mod norm;
mod peer_autoencoder;
pub mod precision;
mod state_dict;
mod stylegan2;
mod timesformer;
mod timesformer_vq_model;
mod vit;
mod vit_vq_model;
mod vq_model;
pub mod weights;

pub use autoencoder::{Autoencoder, AutoencoderKind};
pub use autoencoder_config::AutoencoderConfig;
pub use conv3d_vq_model::{Conv3dVqModel, Conv3dVqModelConfig, DownLevel3d, ResBlock3d, UpLevel3d};
pub use decoder::{Decoder, UpLevel};
pub use discriminator::{
    DiscBlock, DiscNorm, DiscNormKind, DiscriminatorConfig, NLayerDiscriminator,
};
pub use encoder::{DownLevel, Encoder, Mid};
pub use error::ModelError;
pub use fid_inception::{
    FID_CLASSES, FID_FEATURES, FID_INCEPTION_SIZE, FidInception, InceptionFeatures,
    fid_inception_shapes,
};
pub use i3d::{I3D_CLASSES, I3D_MIN_FRAMES, I3D_SIZE, I3d, i3d_shapes};
pub use lpips::{LPIPS_CHANNELS, LPIPS_HOWTO, Lpips, LpipsWeights};
pub use peer_autoencoder::{PeerAutoencoder, PeerAutoencoderConfig};
pub use quantizers;
pub use state_dict::{StateDict, TensorEntry};
pub use stylegan2::{
    ConvAct, DownConv, FinalLinear, R1, StyleGan2Config, StyleGan2Discriminator, StyleGan2Naming,
    StyleResBlock,
};
pub use timesformer::{Timesformer, TimesformerConfig, TimesformerNaming, TsLayer};
pub use timesformer_vq_model::{TimesformerDecoder, TimesformerVqModel, TimesformerVqModelConfig};
pub use vit::{
    PatchEmbed, ToPixels, VitConfig, VitDecoder, VitEncoder, VitNaming, VitStackConfig,
    VitTransformer, sincos_position_table,
};
pub use vit_vq_model::{VitVqModel, VitVqModelConfig};
pub use vq_model::{Encoded, VqModel, VqModelConfig, VqOutput, codes_of_index_maps};
pub use weights::{export_grads, export_weights, load_weights, trainable_params};
