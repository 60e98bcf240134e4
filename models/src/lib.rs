//! # models
//!
//! The networks of rotor, built on the [`quantizers`] crate: taming-style convolutional
//! encoder/decoder and the VQ model glue (quant_conv, any `Quantizer`, post_quant_conv), PatchGAN
//! discriminator, LPIPS, ViT-VQGAN and video autoencoders, and weight import from PyTorch
//! checkpoints. It knows nothing of files, processes or ranks.
//!
//! Status: the quantizers are in place; the networks arrive with the models issue (#3).

pub use quantizers;
