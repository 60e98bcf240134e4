//! taming's convolutional `Encoder`: conv_in, per level `num_res_blocks` ResnetBlocks (with
//! attention at `attn_resolutions`) and a Downsample except at the last level, a middle
//! Res-Attn-Res, then GroupNorm, swish, conv_out to `z_channels`.

use burn::{
    module::Module, nn::GroupNorm, nn::conv::Conv2d, tensor::Tensor, tensor::backend::Backend,
};

use crate::{
    AutoencoderConfig, ModelError,
    blocks::{AttnBlock, Downsample, ResnetBlock, conv, norm_swish, normalize},
    cpu,
};

/// One resolution level of the encoder.
#[derive(Module, Debug)]
pub struct DownLevel<B: Backend> {
    /// ResnetBlocks.
    pub block: Vec<ResnetBlock<B>>,
    /// Attention after each block (empty when the level has none).
    pub attn: Vec<AttnBlock<B>>,
    /// Halves the resolution (absent at the last level).
    pub downsample: Option<Downsample<B>>,
}

/// The middle of the network: ResnetBlock, attention, ResnetBlock.
#[derive(Module, Debug)]
pub struct Mid<B: Backend> {
    /// First block.
    pub block_1: ResnetBlock<B>,
    /// Attention.
    pub attn_1: AttnBlock<B>,
    /// Second block.
    pub block_2: ResnetBlock<B>,
}

impl<B: Backend> Mid<B> {
    pub(crate) fn new(c: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            block_1: ResnetBlock::new(c, c, dropout, device),
            attn_1: AttnBlock::new(c, device),
            block_2: ResnetBlock::new(c, c, dropout, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block_2
            .forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

/// Image `[B, in_channels, H, W]` -> latent `[B, z_channels, H/f, W/f]`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Stem conv.
    pub conv_in: Conv2d<B>,
    /// Levels, finest first.
    pub down: Vec<DownLevel<B>>,
    /// Middle blocks.
    pub mid: Mid<B>,
    /// Final GroupNorm.
    pub norm_out: GroupNorm<B>,
    /// Final conv to `z_channels` (twice that with `double_z`).
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    /// Builds the encoder of `cfg`.
    pub fn new(cfg: &AutoencoderConfig, device: &B::Device) -> Result<Self, ModelError> {
        cfg.validate()?;
        let levels = cfg.ch_mult.len();
        let mut down = Vec::with_capacity(levels);
        let mut res = cfg.resolution;
        let mut c_in = cfg.ch;
        for (i, mult) in cfg.ch_mult.iter().enumerate() {
            let c_out = cfg.ch * mult;
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for _ in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(c_in, c_out, cfg.dropout, device));
                c_in = c_out;
                if cfg.attn_resolutions.contains(&res) {
                    attn.push(AttnBlock::new(c_in, device));
                }
            }
            let downsample = (i + 1 != levels).then(|| Downsample::new(c_in, device));
            if downsample.is_some() {
                res /= 2;
            }
            down.push(DownLevel {
                block,
                attn,
                downsample,
            });
        }
        let z_out = if cfg.double_z {
            2 * cfg.z_channels
        } else {
            cfg.z_channels
        };
        Ok(Self {
            conv_in: conv(cfg.in_channels, cfg.ch, 3, 1, 1, device),
            down,
            mid: Mid::new(c_in, cfg.dropout, device),
            norm_out: normalize(c_in, device),
            conv_out: conv(c_in, z_out, 3, 1, 1, device),
        })
    }

    /// Encodes images.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = cpu::conv2d(&self.conv_in, x);
        for level in &self.down {
            for (i, block) in level.block.iter().enumerate() {
                h = block.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(ds) = &level.downsample {
                h = ds.forward(h);
            }
        }
        let h = self.mid.forward(h);
        cpu::conv2d(&self.conv_out, norm_swish(&self.norm_out, h))
    }
}
