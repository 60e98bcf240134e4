//! The building blocks of taming's encoder and decoder: ResnetBlock (GroupNorm(32, eps 1e-6),
//! swish, 3x3 convs, 1x1 `nin_shortcut`), single-head AttnBlock, Downsample (pad (0,1,0,1) then a
//! stride-2 3x3 conv) and Upsample (nearest x2 then a 3x3 conv). Field names are taming's, so
//! module paths are its state-dict keys.

use burn::{
    module::Module,
    nn::{
        Dropout, DropoutConfig, GroupNorm, GroupNormConfig, PaddingConfig2d,
        conv::{Conv2d, Conv2dConfig},
    },
    tensor::{Tensor, activation, backend::Backend},
};

use crate::cpu;

/// taming's `Normalize`: GroupNorm with 32 groups, eps 1e-6, affine.
pub fn normalize<B: Backend>(channels: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(32, channels)
        .with_epsilon(1e-6)
        .init(device)
}

/// `x * sigmoid(x)`.
pub fn swish<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    cpu::silu(x)
}

/// `swish(norm(x))`, one fused operation on the CPU backend.
pub fn norm_swish<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    cpu::group_norm_silu(norm, x)
}

/// A `k x k` convolution with symmetric padding `pad` and the given stride.
pub fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// Pre-activation residual block.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    /// GroupNorm before the first conv.
    pub norm1: GroupNorm<B>,
    /// First 3x3 conv.
    pub conv1: Conv2d<B>,
    /// GroupNorm before the second conv.
    pub norm2: GroupNorm<B>,
    /// Dropout before the second conv.
    pub dropout: Dropout,
    /// Second 3x3 conv.
    pub conv2: Conv2d<B>,
    /// 1x1 projection of the skip path when channels change.
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    /// A block from `c_in` to `c_out` channels.
    pub fn new(c_in: usize, c_out: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            norm1: normalize(c_in, device),
            conv1: conv(c_in, c_out, 3, 1, 1, device),
            norm2: normalize(c_out, device),
            dropout: DropoutConfig::new(dropout).init(),
            conv2: conv(c_out, c_out, 3, 1, 1, device),
            nin_shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, 0, device)),
        }
    }

    /// `skip(x) + conv2(dropout(swish(norm2(conv1(swish(norm1(x)))))))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = cpu::conv2d(&self.conv1, norm_swish(&self.norm1, x.clone()));
        let h = cpu::conv2d(
            &self.conv2,
            self.dropout.forward(norm_swish(&self.norm2, h)),
        );
        let skip = match &self.nin_shortcut {
            Some(c) => cpu::conv2d(c, x),
            None => x,
        };
        skip + h
    }
}

/// Single-head spatial self-attention with 1x1 projections.
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    /// GroupNorm of the input.
    pub norm: GroupNorm<B>,
    /// Query projection.
    pub q: Conv2d<B>,
    /// Key projection.
    pub k: Conv2d<B>,
    /// Value projection.
    pub v: Conv2d<B>,
    /// Output projection.
    pub proj_out: Conv2d<B>,
}

impl<B: Backend> AttnBlock<B> {
    /// An attention block over `c` channels.
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            norm: normalize(c, device),
            q: conv(c, c, 1, 1, 0, device),
            k: conv(c, c, 1, 1, 0, device),
            v: conv(c, c, 1, 1, 0, device),
            proj_out: conv(c, c, 1, 1, 0, device),
        }
    }

    /// `x + proj_out(v softmax(q^T k / sqrt(c))^T)`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = cpu::group_norm(&self.norm, x.clone());
        let q = cpu::conv2d(&self.q, n.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2); // b, hw, c
        let k = cpu::conv2d(&self.k, n.clone()).reshape([b, c, h * w]); // b, c, hw
        let v = cpu::conv2d(&self.v, n).reshape([b, c, h * w]); // b, c, hw
        let attn = activation::softmax(q.matmul(k) * (c as f64).powf(-0.5), 2); // b, hw(i), hw(j)
        let out = v.matmul(attn.swap_dims(1, 2)).reshape([b, c, h, w]);
        x + cpu::conv2d(&self.proj_out, out)
    }
}

/// Pad right and bottom by one, then a stride-2 3x3 conv (halves the resolution).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// The stride-2 conv.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample<B> {
    /// A downsampling layer over `c` channels.
    pub fn new(c: usize, device: &B::Device) -> Self {
        // torch's F.pad(x, (0, 1, 0, 1)) as the conv's own (top, left, bottom, right) padding.
        Self {
            conv: Conv2dConfig::new([c, c], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
                .init(device),
        }
    }

    /// `conv(pad(x, (0, 1, 0, 1)))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        cpu::conv2d(&self.conv, x)
    }
}

/// Nearest-neighbour x2 upsampling, then a 3x3 conv.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    /// The 3x3 conv.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    /// An upsampling layer over `c` channels.
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            conv: conv(c, c, 3, 1, 1, device),
        }
    }

    /// `conv(nearest_x2(x))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        cpu::conv2d(&self.conv, upsample_nearest2(x))
    }
}

/// Exact nearest x2 upsampling: every pixel becomes a 2x2 block.
pub fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    cpu::upsample_nearest2(x)
}
