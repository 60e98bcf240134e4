//! taming's convolutional `Decoder`: conv_in from `z_channels`, middle Res-Attn-Res, per level
//! (coarsest first) `num_res_blocks + 1` ResnetBlocks (with attention at `attn_resolutions`) and
//! an Upsample except at level 0, then GroupNorm, swish, conv_out. `up[i]` is level `i`, as in
//! taming's state dicts. The adaptive GAN weight's anchor is [`Decoder::last_layer`].

use burn::{
    module::{Module, Param},
    nn::GroupNorm,
    nn::conv::Conv2d,
    tensor::{Tensor, backend::Backend},
};

use crate::{
    AutoencoderConfig, ModelError,
    blocks::{AttnBlock, ResnetBlock, Upsample, conv, norm_swish, normalize},
    cpu,
    encoder::Mid,
};

/// One resolution level of the decoder.
#[derive(Module, Debug)]
pub struct UpLevel<B: Backend> {
    /// ResnetBlocks.
    pub block: Vec<ResnetBlock<B>>,
    /// Attention after each block (empty when the level has none).
    pub attn: Vec<AttnBlock<B>>,
    /// Doubles the resolution (absent at level 0).
    pub upsample: Option<Upsample<B>>,
}

/// Latent `[B, z_channels, h, w]` -> image `[B, out_ch, h*f, w*f]`.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Stem conv from the latent.
    pub conv_in: Conv2d<B>,
    /// Middle blocks.
    pub mid: Mid<B>,
    /// Levels indexed finest first (run coarsest first).
    pub up: Vec<UpLevel<B>>,
    /// Final GroupNorm.
    pub norm_out: GroupNorm<B>,
    /// Final conv to image channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// Builds the decoder of `cfg`.
    pub fn new(cfg: &AutoencoderConfig, device: &B::Device) -> Result<Self, ModelError> {
        cfg.validate()?;
        let levels = cfg.ch_mult.len();
        let mut c_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut res = cfg.latent_resolution();
        let conv_in = conv(cfg.z_channels, c_in, 3, 1, 1, device);
        let mid = Mid::new(c_in, cfg.dropout, device);
        let mut up_rev = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let c_out = cfg.ch * cfg.ch_mult[i];
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for _ in 0..=cfg.num_res_blocks {
                block.push(ResnetBlock::new(c_in, c_out, cfg.dropout, device));
                c_in = c_out;
                if cfg.attn_resolutions.contains(&res) {
                    attn.push(AttnBlock::new(c_in, device));
                }
            }
            let upsample = (i != 0).then(|| Upsample::new(c_in, device));
            if upsample.is_some() {
                res *= 2;
            }
            up_rev.push(UpLevel {
                block,
                attn,
                upsample,
            });
        }
        up_rev.reverse();
        Ok(Self {
            conv_in,
            mid,
            up: up_rev,
            norm_out: normalize(c_in, device),
            conv_out: conv(c_in, cfg.out_ch, 3, 1, 1, device),
        })
    }

    /// Decodes latents.
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with_features(z).0
    }

    /// Decodes latents, also returning the input of `conv_out`.
    pub fn forward_with_features(&self, z: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let mut h = self.mid.forward(cpu::conv2d(&self.conv_in, z));
        for level in self.up.iter().rev() {
            for (i, block) in level.block.iter().enumerate() {
                h = block.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(us) = &level.upsample {
                h = us.forward(h);
            }
        }
        let h = norm_swish(&self.norm_out, h);
        (cpu::conv2d(&self.conv_out, h.clone()), h)
    }

    /// `decoder.conv_out.weight`: where taming measures gradient norms for the adaptive GAN weight.
    pub fn last_layer(&self) -> &Param<Tensor<B, 4>> {
        &self.conv_out.weight
    }
}
