//! taming's `NLayerDiscriminator` (the pix2pix PatchGAN): conv 4x4 s2 + LeakyReLU(0.2), then
//! `n_layers - 1` blocks of conv 4x4 s2 + norm + LeakyReLU with channels `ndf * min(2^n, 8)`, one
//! conv 4x4 s1 block, and a final conv 4x4 s1 to one logit per patch. Weights follow pix2pix init
//! (conv N(0, 0.02), norm weight N(1, 0.02), bias 0). PyTorch keys are `main.<index>.*` of the
//! original `nn.Sequential`.

use burn::{
    module::Module,
    nn::{Initializer, PaddingConfig2d, conv::Conv2d, conv::Conv2dConfig},
    tensor::{Distribution, Tensor, activation::leaky_relu, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    ModelError, StateDict,
    norm::{ActNorm, BatchNorm2d},
    weights::{Naming, TorchKey, export_weights, load_weights},
};

/// Which normalization the discriminator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscNormKind {
    /// BatchNorm2d (taming's default).
    #[default]
    Batch,
    /// ActNorm (`use_actnorm: true`).
    Act,
}

/// Configuration of [`NLayerDiscriminator`] (taming's `disc_in_channels`, `disc_ndf`,
/// `disc_num_layers`, `use_actnorm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Image channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Base width.
    #[serde(default = "ndf")]
    pub ndf: usize,
    /// Number of stride-2 / normalized layers (taming: 3; LDM f8: 2).
    #[serde(default = "layers")]
    pub n_layers: usize,
    /// Normalization.
    #[serde(default)]
    pub norm: DiscNormKind,
    /// Seed of the pix2pix initialization.
    #[serde(default)]
    pub seed: u64,
}

fn three() -> usize {
    3
}
fn ndf() -> usize {
    64
}
fn layers() -> usize {
    3
}

impl DiscriminatorConfig {
    /// taming's defaults: 3 channels, ndf 64, 3 layers, BatchNorm.
    pub fn new() -> Self {
        Self {
            in_channels: 3,
            ndf: 64,
            n_layers: 3,
            norm: DiscNormKind::Batch,
            seed: 0,
        }
    }

    /// Checks the sizes; the error names the key.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.n_layers == 0 || self.n_layers > 8 {
            return Err(ModelError::config(
                "n_layers",
                format!("must be in 1..=8, got {}", self.n_layers),
            ));
        }
        if self.ndf == 0 || self.ndf > 4096 {
            return Err(ModelError::config(
                "ndf",
                format!("must be in 1..=4096, got {}", self.ndf),
            ));
        }
        if self.in_channels == 0 || self.in_channels > 4 {
            return Err(ModelError::config(
                "in_channels",
                format!("must be in 1..=4, got {}", self.in_channels),
            ));
        }
        Ok(())
    }

    /// The side of the patch logits for images of side `resolution` (0: too small).
    pub fn output_side(&self, resolution: usize) -> usize {
        // n_layers stride-2 4x4 convolutions (padding 1) halve the side, then two stride-1 4x4
        // convolutions (padding 1) take one pixel each.
        let side = (0..self.n_layers).fold(resolution, |s, _| s / 2);
        side.saturating_sub(2)
    }

    /// Builds it.
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<NLayerDiscriminator<B>, ModelError> {
        self.validate()?;
        B::seed(device, self.seed);
        let conv = |c_in: usize, c_out: usize, stride: usize, bias: bool| -> Conv2d<B> {
            Conv2dConfig::new([c_in, c_out], [4, 4])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(bias)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        };
        let with_bias = self.norm == DiscNormKind::Act;
        let norm = |c: usize| match self.norm {
            DiscNormKind::Batch => DiscNorm::Batch(BatchNorm2d::new(
                c,
                0.1,
                1e-5,
                Some(Tensor::random([c], Distribution::Normal(1.0, 0.02), device)),
                device,
            )),
            DiscNormKind::Act => DiscNorm::Act(ActNorm::new(c, device)),
        };
        let mut blocks = Vec::new();
        let mut c = self.ndf;
        for n in 1..=self.n_layers {
            let c_out = self.ndf * (1 << n.min(3));
            let stride = if n < self.n_layers { 2 } else { 1 };
            blocks.push(DiscBlock {
                conv: conv(c, c_out, stride, with_bias),
                norm: norm(c_out),
            });
            c = c_out;
        }
        Ok(NLayerDiscriminator {
            first: conv(self.in_channels, self.ndf, 2, true),
            blocks,
            last: conv(c, 1, 1, true),
        })
    }
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A block's normalization.
#[derive(Module, Debug)]
pub enum DiscNorm<B: Backend> {
    /// BatchNorm2d.
    Batch(BatchNorm2d<B>),
    /// ActNorm.
    Act(ActNorm<B>),
}

/// Conv, norm, LeakyReLU(0.2).
#[derive(Module, Debug)]
pub struct DiscBlock<B: Backend> {
    /// 4x4 conv.
    pub conv: Conv2d<B>,
    /// Normalization.
    pub norm: DiscNorm<B>,
}

impl<B: Backend> DiscBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = crate::cpu::conv2d(&self.conv, x);
        let h = match &self.norm {
            DiscNorm::Batch(n) => n.forward(h),
            DiscNorm::Act(n) => n.forward(h),
        };
        leaky_relu(h, 0.2)
    }
}

/// The PatchGAN discriminator: image `[B, C, H, W]` -> logits `[B, 1, h, w]`.
#[derive(Module, Debug)]
pub struct NLayerDiscriminator<B: Backend> {
    /// First conv (no norm).
    pub first: Conv2d<B>,
    /// Normalized blocks.
    pub blocks: Vec<DiscBlock<B>>,
    /// Final conv to one channel.
    pub last: Conv2d<B>,
}

impl<B: Backend> NLayerDiscriminator<B> {
    /// Patch logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = leaky_relu(crate::cpu::conv2d(&self.first, x), 0.2);
        for b in &self.blocks {
            h = b.forward(h);
        }
        crate::cpu::conv2d(&self.last, h)
    }

    /// True while an ActNorm waits for its data-dependent initialization.
    pub fn needs_init(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| matches!(&b.norm, DiscNorm::Act(a) if a.needs_init()))
    }

    /// Initializes every ActNorm from the activations of `x` (taming does this on the first
    /// training forward). Call once with the first batch of real images.
    pub fn init_from_batch(&mut self, x: Tensor<B, 4>) {
        let mut h = leaky_relu(crate::cpu::conv2d(&self.first, x.detach()), 0.2).detach();
        for b in &mut self.blocks {
            let pre = crate::cpu::conv2d(&b.conv, h.clone()).detach();
            if let DiscNorm::Act(a) = &mut b.norm
                && a.needs_init()
            {
                a.initialize(&pre);
            }
            h = b.forward(h).detach();
        }
    }

    /// Loads a taming `NLayerDiscriminator` state dict (keys `main.<i>.*`; pass
    /// `dict.sub("loss.discriminator.")` for a full VQGAN checkpoint).
    pub fn load_taming(self, dict: &StateDict) -> Result<Self, ModelError> {
        let naming = DiscNaming(self.blocks.len());
        load_weights(self, dict, &naming)
    }

    /// The weights under taming's names.
    pub fn export_taming(&self) -> StateDict {
        export_weights(self, &DiscNaming(self.blocks.len()))
    }
}

/// `first` -> `main.0`, `blocks.j.conv` -> `main.{2+3j}`, `blocks.j.norm.*` -> `main.{3+3j}`,
/// `last` -> `main.{2+3n}`.
struct DiscNaming(usize);

impl Naming for DiscNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let parts: Vec<&str> = path.split('.').collect();
        let key = match parts.as_slice() {
            ["first", p] => format!("main.0.{p}"),
            ["last", p] => format!("main.{}.{p}", 2 + 3 * self.0),
            ["blocks", j, "conv", p] => {
                format!("main.{}.{p}", 2 + 3 * j.parse::<usize>().unwrap_or(0))
            }
            ["blocks", j, "norm", _, p] => {
                format!("main.{}.{p}", 3 + 3 * j.parse::<usize>().unwrap_or(0))
            }
            _ => path.to_string(),
        };
        let optional = key.ends_with(".initialized");
        TorchKey {
            key,
            transpose: false,
            optional,
        }
    }
}
