//! The StyleGAN2 discriminator that enhancing-transformers trains ViT-VQGAN against
//! (`StyleDiscriminator`, rosinality's layers), and its R1 penalty.
//!
//! Equalized learning rate (weights stored N(0,1), scaled by `1/sqrt(fan_in)` in forward), fused
//! leaky ReLU (`leaky_relu(x + b, 0.2) * sqrt(2)`), [1,3,3,1] blur before every stride-2 conv,
//! residual blocks averaged by `1/sqrt(2)`, minibatch standard deviation, two equalized Linear
//! layers. Parameter names are the reference's state-dict keys ([`StyleGan2Naming`]).
//!
//! R1 needs the gradient of the penalty `||dD/dx||^2` with respect to the weights, a second-order
//! derivative that burn's autodiff does not take. [`StyleGan2Discriminator::r1_penalty`] therefore
//! writes the input gradient `dD/dx` itself, as a chain of ordinary tensor operations (each
//! convolution's adjoint is a convolution with its kernel flipped and transposed, after spreading
//! the gradient over even positions for stride 2; each activation's a mask): that graph is
//! differentiable, and one `backward` of the penalty gives the reference's second-order weight
//! gradients.
//!
//! burn-cubecl 0.21 (wgpu, CUDA) computes the input gradient of a 1x1 stride-2 convolution, and
//! `conv_transpose2d` with a 1x1 kernel and stride 2, wrongly (measured on lavapipe against Flex:
//! relative error ~1). The skip path's 1x1 stride-2 convolution is therefore taken as the even
//! positions followed by a 1x1 convolution, and no transposed convolution is used; the golden
//! case checks every gradient on wgpu.

use std::collections::BTreeMap;

use burn::{
    module::{Initializer, Module, Param, ParamId},
    nn::{PaddingConfig2d, conv::Conv2d},
    tensor::{Tensor, TensorData, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    ModelError, StateDict, load_weights,
    weights::{Naming, TorchKey, export_weights},
};

const SQRT2: f64 = std::f64::consts::SQRT_2;
const SLOPE: f64 = 0.2;

fn default_group() -> usize {
    4
}
fn one() -> usize {
    1
}
fn default_cm() -> usize {
    2
}
fn default_blur() -> Vec<usize> {
    vec![1, 3, 3, 1]
}
fn default_gamma() -> f64 {
    10.0
}
fn default_every() -> usize {
    16
}

/// The discriminator's architecture and R1 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleGan2Config {
    /// Input side length S (a power of two, at least 8).
    pub size: usize,
    /// Width at each resolution (side length -> channels, from S down to 4); absent: the
    /// reference table `{4..32: 512, 64: 256cm, 128: 128cm, 256: 64cm, 512: 32cm, 1024: 16cm}`.
    /// Keys are side lengths written as strings (`{ "32" = 256, ... }`, TOML and JSON alike).
    #[serde(default)]
    pub channels: Option<BTreeMap<String, usize>>,
    /// Only [1, 3, 3, 1] (the reference's layers ignore the argument).
    #[serde(default = "default_blur")]
    pub blur_kernel: Vec<usize>,
    /// Minibatch-stddev group size (the reference: 4).
    #[serde(default = "default_group")]
    pub stddev_group: usize,
    /// Minibatch-stddev features (only 1, the reference's).
    #[serde(default = "one")]
    pub stddev_feat: usize,
    /// cm of the reference width table.
    #[serde(default = "default_cm")]
    pub channel_multiplier: usize,
    /// R1 weight gamma.
    #[serde(default = "default_gamma")]
    pub r1_gamma: f64,
    /// R1 every this many discriminator steps (the penalty is scaled by it).
    #[serde(default = "default_every")]
    pub do_r1_every: usize,
}

impl StyleGan2Config {
    /// The reference discriminator for `size` (its width table, channel multiplier 2).
    pub fn new(size: usize) -> Self {
        Self {
            size,
            channels: None,
            blur_kernel: default_blur(),
            stddev_group: 4,
            stddev_feat: 1,
            channel_multiplier: 2,
            r1_gamma: 10.0,
            do_r1_every: 16,
        }
    }

    /// Width at side length `r`.
    pub fn width(&self, r: usize) -> usize {
        if let Some(map) = &self.channels {
            return map
                .iter()
                .find(|(k, _)| k.trim().parse::<usize>() == Ok(r))
                .map_or(0, |(_, w)| *w);
        }
        let cm = self.channel_multiplier;
        match r {
            0..=32 => 512,
            64 => 256 * cm,
            128 => 128 * cm,
            256 => 64 * cm,
            512 => 32 * cm,
            _ => 16 * cm,
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.size < 8 || !self.size.is_power_of_two() || self.size > 1024 {
            return Err(ModelError::config(
                "size",
                format!("{} is not a power of two from 8 to 1024", self.size),
            ));
        }
        if let Some(map) = &self.channels
            && let Some(bad) = map.keys().find(|k| k.trim().parse::<usize>().is_err())
        {
            return Err(ModelError::config(
                "channels",
                format!(
                    "key `{bad}` is not a side length (write {{ \"32\" = 256, \"16\" = 512, ... }})"
                ),
            ));
        }
        let mut r = self.size;
        while r >= 4 {
            if self.width(r) == 0 {
                return Err(ModelError::config(
                    "channels",
                    format!(
                        "no width for resolution {r} (give every side length from {} down to 4)",
                        self.size
                    ),
                ));
            }
            r /= 2;
        }
        if self.blur_kernel != [1, 3, 3, 1] {
            return Err(ModelError::config(
                "blur_kernel",
                format!(
                    "{:?}: only [1, 3, 3, 1] (the reference's layers always use it)",
                    self.blur_kernel
                ),
            ));
        }
        if self.stddev_group == 0 {
            return Err(ModelError::config("stddev_group", "must be at least 1"));
        }
        if self.stddev_feat != 1 {
            return Err(ModelError::config(
                "stddev_feat",
                "only 1 (the reference's setting) is supported",
            ));
        }
        if self.do_r1_every == 0 {
            return Err(ModelError::config("do_r1_every", "must be at least 1"));
        }
        if self.r1_gamma.is_nan() || self.r1_gamma < 0.0 {
            return Err(ModelError::config("r1_gamma", "must be 0 or more"));
        }
        Ok(())
    }
}

fn normal<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Initializer::Normal {
        mean: 0.0,
        std: 1.0,
    }
    .init(shape, device)
}

fn zeros<B: Backend>(n: usize, device: &B::Device) -> Param<Tensor<B, 1>> {
    Initializer::Zeros.init([n], device)
}

/// `leaky_relu(x, 0.2) * sqrt(2)` and the factor its gradient is (a constant mask).
fn act<B: Backend>(pre: Tensor<B, 4>) -> Tensor<B, 4> {
    let neg = pre.clone().lower_elem(0.0);
    pre.clone().mask_where(neg, pre * SLOPE) * SQRT2
}

fn act_grad<B: Backend, const D: usize>(pre: Tensor<B, D>, g: Tensor<B, D>) -> Tensor<B, D> {
    // The mask is a constant of the graph: its own derivative is zero, as in torch.
    let pos = pre.greater_equal_elem(0.0).float().detach();
    g * (pos * (1.0 - SLOPE) + SLOPE) * SQRT2
}

fn act2<B: Backend>(pre: Tensor<B, 2>) -> Tensor<B, 2> {
    let neg = pre.clone().lower_elem(0.0);
    pre.clone().mask_where(neg, pre * SLOPE) * SQRT2
}

fn scaled<B: Backend>(w: &Param<Tensor<B, 4>>) -> Tensor<B, 4> {
    let [_, i, k, _] = w.dims();
    w.val() * (1.0 / ((i * k * k) as f64).sqrt())
}

/// `x` convolved with `weight` (no bias), through rotor's CPU kernels where they apply (the
/// weight stays a node of the graph: its gradient reaches the stored parameter).
fn conv<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    stride: usize,
    pad: usize,
) -> Tensor<B, 4> {
    let [_, _, kh, kw] = weight.dims();
    let layer = Conv2d {
        weight: Param::initialized(ParamId::new(), weight),
        bias: None,
        stride: [stride; 2],
        kernel_size: [kh, kw],
        dilation: [1; 2],
        groups: 1,
        padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
    };
    crate::cpu::conv2d(&layer, x)
}

/// `ConvLayer` without downsampling: equalized conv (stride 1, padding k/2, no bias) then the
/// fused activation with its bias (`{conv0 -> 0.weight, act1 -> 1.bias}`).
#[derive(Module, Debug)]
pub struct ConvAct<B: Backend> {
    /// `[out, in, k, k]`.
    pub conv0: Param<Tensor<B, 4>>,
    /// The activation's bias `[out]`.
    pub act1: Param<Tensor<B, 1>>,
}

impl<B: Backend> ConvAct<B> {
    fn new(c_in: usize, c_out: usize, k: usize, device: &B::Device) -> Self {
        Self {
            conv0: normal([c_out, c_in, k, k], device),
            act1: zeros(c_out, device),
        }
    }

    fn pad(&self) -> usize {
        self.conv0.dims()[2] / 2
    }

    /// (output, pre-activation).
    fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let y = conv(x, scaled(&self.conv0), 1, self.pad());
        let pre = y + self.act1.val().reshape([1, -1, 1, 1]);
        (act(pre.clone()), pre)
    }

    fn backward(&self, g: Tensor<B, 4>, pre: Tensor<B, 4>) -> Tensor<B, 4> {
        let g = act_grad(pre, g);
        // A stride-1 convolution's adjoint: the same convolution with the kernel flipped in
        // space and transposed in channels (padding k - 1 - k/2 = k/2 for odd k).
        conv(g, adjoint_kernel(scaled(&self.conv0)), 1, self.pad())
    }
}

/// `ConvLayer` with downsampling: blur, equalized stride-2 conv, and (unless it is a skip) the
/// fused activation (`{blur0 -> 0.kernel, conv1 -> 1.weight, act2 -> 2.bias}`).
#[derive(Module, Debug)]
pub struct DownConv<B: Backend> {
    /// The fixed blur kernel `[4, 4]` (a buffer: saved, never trained).
    pub blur0: Param<Tensor<B, 2>>,
    /// `[out, in, k, k]`.
    pub conv1: Param<Tensor<B, 4>>,
    /// The activation's bias; `None` for the skip path (no activation, no bias).
    pub act2: Option<Param<Tensor<B, 1>>>,
}

fn blur_kernel<B: Backend>(device: &B::Device) -> Param<Tensor<B, 2>> {
    let k = [1.0f32, 3.0, 3.0, 1.0];
    let v: Vec<f32> = (0..16).map(|i| k[i / 4] * k[i % 4] / 64.0).collect();
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(v, [4, 4]), device),
    )
}

/// The [1,3,3,1] blur after zero padding `pad` on every side: the depthwise 4x4 filter
/// `kernel` (the `blur0` buffer, outer([1,3,3,1],[1,3,3,1])/64) applied to every channel as one
/// single-channel convolution over `B*C` planes (rotor's CPU kernel; no grouped convolution).
fn blur<B: Backend>(x: Tensor<B, 4>, kernel: Tensor<B, 2>, pad: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let y = conv(
        x.reshape([b * c, 1, h, w]),
        kernel.reshape([1, 1, 4, 4]),
        1,
        pad,
    );
    let [_, _, ho, wo] = y.dims();
    y.reshape([b, c, ho, wo])
}

/// `[B, C, H, W]` -> `[B, C, ceil(H/2), ceil(W/2)]`: rows and columns 0, 2, 4, ...
fn even_positions<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    use burn::tensor::ops::PadMode;
    let [b, c, h, w] = x.dims();
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.pad((0, w2 * 2 - w, 0, h2 * 2 - h), PadMode::Constant(0.0))
    } else {
        x
    };
    x.reshape([b * c * h2, 2, w2, 2])
        .narrow(1, 0, 1)
        .narrow(3, 0, 1)
        .reshape([b, c, h2, w2])
}

/// `W [out, in, k, k]` -> `[in, out, k, k]` flipped in both spatial axes: the kernel whose
/// convolution is the adjoint of `W`'s (stride 1).
fn adjoint_kernel<B: Backend>(w: Tensor<B, 4>) -> Tensor<B, 4> {
    if w.dims()[2] == 1 {
        return w.swap_dims(0, 1);
    }
    w.swap_dims(0, 1).flip([2, 3])
}

/// `[B, C, h, w]` -> `[B, C, 2h - 1, 2w - 1]` with `x` at the even positions, zeros elsewhere
/// (the input gradient of a stride-2 1x1 convolution's output).
fn dilate2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let z = x.zeros_like();
    let rows = Tensor::stack::<5>(vec![x, z], 3).reshape([b, c, 2 * h, w]);
    let z = rows.zeros_like();
    let both = Tensor::stack::<5>(vec![rows, z], 4).reshape([b, c, 2 * h, 2 * w]);
    both.narrow(2, 0, 2 * h - 1).narrow(3, 0, 2 * w - 1)
}

impl<B: Backend> DownConv<B> {
    fn new(c_in: usize, c_out: usize, k: usize, activate: bool, device: &B::Device) -> Self {
        Self {
            blur0: blur_kernel(device),
            conv1: normal([c_out, c_in, k, k], device),
            act2: activate.then(|| zeros(c_out, device)),
        }
    }

    /// Blur padding: (4 - 2) + (k - 1) split evenly (2 for k = 3, 1 for k = 1).
    fn blur_pad(&self) -> usize {
        (2 + self.conv1.dims()[2] - 1) / 2
    }

    /// (output, pre-activation if any).
    fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        let xb = blur(x, self.blur0.val(), self.blur_pad());
        let y = if self.conv1.dims()[2] == 1 {
            // A 1x1 stride-2 convolution is the even positions then a 1x1 convolution; written
            // so, because burn-cubecl 0.21 computes the input gradient of a 1x1 stride-2 conv2d
            // (and conv_transpose2d with that kernel) wrongly on wgpu/CUDA.
            conv(even_positions(xb), scaled(&self.conv1), 1, 0)
        } else {
            conv(xb, scaled(&self.conv1), 2, 0)
        };
        match &self.act2 {
            Some(b) => {
                let pre = y + b.val().reshape([1, -1, 1, 1]);
                (act(pre.clone()), Some(pre))
            }
            None => (y, None),
        }
    }

    fn backward(&self, g: Tensor<B, 4>, pre: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let g = match pre {
            Some(pre) => act_grad(pre, g),
            None => g,
        };
        // A stride-2 convolution's adjoint: its output gradient on the even positions of a
        // (2h-1) x (2w-1) grid, then the flipped, channel-transposed kernel with padding k - 1.
        // (Not burn's conv_transpose2d: burn-cubecl 0.21 gets it wrong for a 1x1 kernel with
        // stride 2 -- up to 28 off on wgpu against Flex -- and all convolutions here then go
        // through the same kernels, rotor's on the CPU.)
        let k = self.conv1.dims()[2];
        let g = conv(dilate2(g), adjoint_kernel(scaled(&self.conv1)), 1, k - 1);
        // The adjoint of "pad p, then a valid 4x4 correlation" with a symmetric filter is the
        // same filter on the gradient padded by 3 - p.
        blur(g, self.blur0.val(), 3 - self.blur_pad())
    }
}

/// `ResBlock`: `(conv2(conv1(x)) + skip(x)) / sqrt(2)`, halving the resolution.
#[derive(Module, Debug)]
pub struct StyleResBlock<B: Backend> {
    /// 3x3, same width.
    pub conv1: ConvAct<B>,
    /// Blur + 3x3 stride 2.
    pub conv2: DownConv<B>,
    /// Blur + 1x1 stride 2, no activation, no bias.
    pub skip: DownConv<B>,
}

/// The two final equalized Linear layers (`final_linear.0` with the fused activation,
/// `final_linear.1` with a plain bias); weights `[out, in]` as PyTorch stores them.
#[derive(Module, Debug)]
pub struct FinalLinear<B: Backend> {
    /// `final_linear.0.weight` `[c4, 16 c4]`.
    pub w0: Param<Tensor<B, 2>>,
    /// `final_linear.0.bias` (inside the activation).
    pub b0: Param<Tensor<B, 1>>,
    /// `final_linear.1.weight` `[1, c4]`.
    pub w1: Param<Tensor<B, 2>>,
    /// `final_linear.1.bias`.
    pub b1: Param<Tensor<B, 1>>,
}

fn scaled2<B: Backend>(w: &Param<Tensor<B, 2>>) -> Tensor<B, 2> {
    let [_, i] = w.dims();
    w.val() * (1.0 / (i as f64).sqrt())
}

/// enhancing-transformers' `StyleDiscriminator`.
#[derive(Module, Debug)]
pub struct StyleGan2Discriminator<B: Backend> {
    /// `blocks.0`: 1x1 conv from RGB.
    pub from_rgb: ConvAct<B>,
    /// `blocks.1..`: residual blocks down to 4x4.
    pub res: Vec<StyleResBlock<B>>,
    /// `final_conv` (after the stddev channel).
    pub final_conv: ConvAct<B>,
    /// `final_linear`.
    pub final_linear: FinalLinear<B>,
    /// Minibatch-stddev group size (before the batch rule).
    pub stddev_group: usize,
    /// R1: gamma * every / 2.
    pub r1_scale: f64,
}

/// What [`StyleGan2Discriminator::r1_penalty`] returns.
#[derive(Debug, Clone)]
pub struct R1<B: Backend> {
    /// The logits `[B]` of the real images.
    pub logits: Tensor<B, 1>,
    /// `d sum(logits) / d x`, differentiable with respect to the weights.
    pub input_grad: Tensor<B, 4>,
    /// Mean over the batch of `||input_grad_b||^2` (what the reference logs as r1_reg).
    pub grad_sq: Tensor<B, 1>,
    /// `gamma * every / 2 * grad_sq`, the term added to the discriminator loss on an R1 step.
    pub penalty: Tensor<B, 1>,
}

struct Trace<B: Backend> {
    from_rgb: Tensor<B, 4>,
    res: Vec<(Tensor<B, 4>, Option<Tensor<B, 4>>)>,
    mbstd_in: Tensor<B, 4>,
    group: usize,
    final_conv: Tensor<B, 4>,
    lin0: Tensor<B, 2>,
}

impl<B: Backend> StyleGan2Discriminator<B> {
    /// The discriminator of `cfg` with the reference's initialization (N(0,1) weights, zero
    /// biases; the equalized scaling happens in forward).
    pub fn new(cfg: &StyleGan2Config, device: &B::Device) -> Result<Self, ModelError> {
        cfg.validate()?;
        let s = cfg.size;
        let from_rgb = ConvAct::new(3, cfg.width(s), 1, device);
        let mut res = Vec::new();
        let mut r = s;
        while r > 4 {
            let (ci, co) = (cfg.width(r), cfg.width(r / 2));
            res.push(StyleResBlock {
                conv1: ConvAct::new(ci, ci, 3, device),
                conv2: DownConv::new(ci, co, 3, true, device),
                skip: DownConv::new(ci, co, 1, false, device),
            });
            r /= 2;
        }
        let c4 = cfg.width(4);
        Ok(Self {
            from_rgb,
            res,
            final_conv: ConvAct::new(c4 + 1, c4, 3, device),
            final_linear: FinalLinear {
                w0: normal([c4, 16 * c4], device),
                b0: zeros(c4, device),
                w1: normal([1, c4], device),
                b1: zeros(1, device),
            },
            stddev_group: cfg.stddev_group,
            r1_scale: cfg.r1_gamma * cfg.do_r1_every as f64 / 2.0,
        })
    }

    /// The minibatch-stddev group size for a batch of `batch`: `G = min(B, group)`, then
    /// `G = B div (B div G)`; the batch must be a multiple of it (the reference fails otherwise).
    pub fn stddev_group_for(&self, batch: usize) -> Result<usize, ModelError> {
        if batch == 0 {
            return Err(ModelError::config("batch", "empty batch"));
        }
        let g = batch.min(self.stddev_group);
        let g = batch / (batch / g);
        if !batch.is_multiple_of(g) {
            return Err(ModelError::config(
                "batch_size",
                format!(
                    "a batch of {batch} cannot be split into minibatch-stddev groups of {g} \
                     (StyleGAN2's rule G = B div (B div min(B, {}))); use a multiple of {}",
                    self.stddev_group, self.stddev_group
                ),
            ));
        }
        Ok(g)
    }

    fn run(&self, x: Tensor<B, 4>) -> (Tensor<B, 1>, Trace<B>) {
        let (mut h, from_rgb) = self.from_rgb.forward(x);
        let mut res = Vec::new();
        for blk in &self.res {
            let (h1, p1) = blk.conv1.forward(h.clone());
            let (h2, p2) = blk.conv2.forward(h1);
            let (sk, _) = blk.skip.forward(h);
            h = (h2 + sk) * (1.0 / SQRT2);
            res.push((p1, p2));
        }
        let [b, c, hh, ww] = h.dims();
        let group = self.stddev_group_for(b).unwrap_or_else(|e| panic!("{e}"));
        let m = b / group;
        let xs = h.clone().reshape([group, m, c, hh, ww]);
        let mean = xs.clone().mean_dim(0);
        let var = (xs - mean).powi_scalar(2).mean_dim(0);
        let sd = (var + 1e-8).sqrt(); // [1, M, C, H, W]
        let s = sd.reshape([1, m, c * hh * ww]).mean_dim(2); // [1, M, 1]
        let s = s
            .reshape([1, m, 1, 1])
            .expand([group, m, hh, ww])
            .reshape([b, 1, hh, ww]);
        let mbstd_in = h.clone();
        let h = Tensor::cat(vec![h, s], 1);
        let (h, final_conv) = self.final_conv.forward(h);
        let flat = h.reshape([b, c * hh * ww]);
        let fl = &self.final_linear;
        let lin0 = flat.matmul(scaled2(&fl.w0).transpose()) + fl.b0.val().unsqueeze();
        let a0 = act2(lin0.clone());
        let out = a0.matmul(scaled2(&fl.w1).transpose()) + fl.b1.val().unsqueeze();
        (
            out.reshape([b]),
            Trace {
                from_rgb,
                res,
                mbstd_in,
                group,
                final_conv,
                lin0,
            },
        )
    }

    /// Logits `[B]` of images `[B, 3, S, S]`. Panics if the batch does not split into
    /// minibatch-stddev groups (check with [`Self::stddev_group_for`] when building the loader).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 1> {
        self.run(x).0
    }

    /// The logits of real images and the R1 penalty on them, its input gradient written out as
    /// differentiable operations (see the module documentation), so `penalty.backward()` gives
    /// the second-order weight gradients.
    pub fn r1_penalty(&self, x: Tensor<B, 4>) -> R1<B> {
        let (logits, t) = self.run(x);
        let b = logits.dims()[0];
        let fl = &self.final_linear;
        // d sum(out) / d a0 = w1 (scaled), the same for every sample.
        let g = scaled2(&fl.w1).expand([b, fl.w1.dims()[1]]);
        let g = act_grad(t.lin0, g);
        let g = g.matmul(scaled2(&fl.w0)); // [B, 16 c4]
        let [_, c, hh, ww] = t.mbstd_in.dims();
        let g = g.reshape([b, c, hh, ww]);
        let g = self.final_conv.backward(g, t.final_conv); // [B, c + 1, H, W]
        // Minibatch stddev: the direct path plus the stddev channel's.
        let g_direct = g.clone().narrow(1, 0, c);
        let g_s = g.narrow(1, c, 1); // [B, 1, H, W]
        let (group, m) = (t.group, b / t.group);
        let g_s = g_s
            .reshape([group, m, hh * ww])
            .sum_dim(2)
            .sum_dim(0)
            .reshape([1, m, 1, 1, 1]);
        let xs = t.mbstd_in.reshape([group, m, c, hh, ww]);
        let mean = xs.clone().mean_dim(0);
        let dev = xs - mean;
        let sd = (dev.clone().powi_scalar(2).mean_dim(0) + 1e-8).sqrt();
        let denom = (group * c * hh * ww) as f64;
        let g_std = g_s * dev / (sd * denom);
        let mut g = g_direct + g_std.reshape([b, c, hh, ww]);
        for (blk, (p1, p2)) in self.res.iter().zip(t.res).rev() {
            let gi = g * (1.0 / SQRT2);
            let through = blk.conv1.backward(blk.conv2.backward(gi.clone(), p2), p1);
            g = through + blk.skip.backward(gi, None);
        }
        let input_grad = self.from_rgb.backward(g, t.from_rgb);
        let grad_sq = input_grad
            .clone()
            .powi_scalar(2)
            .reshape([b as i32, -1])
            .sum_dim(1)
            .mean();
        let penalty = grad_sq.clone() * self.r1_scale;
        R1 {
            logits,
            input_grad,
            grad_sq,
            penalty,
        }
    }

    /// Loads weights under the reference's names (a `StyleDiscriminator` state dict, or the
    /// `loss.discriminator.` part of a ViTVQ checkpoint with the prefix removed).
    pub fn load_enhancing(self, dict: &StateDict) -> Result<Self, ModelError> {
        load_weights(self, dict, &StyleGan2Naming)
    }

    /// Every parameter and blur buffer under the reference's names.
    pub fn export_enhancing(&self) -> StateDict {
        export_weights(self, &StyleGan2Naming)
    }
}

/// The reference's state-dict names: `from_rgb` is `blocks.0`, `res.{i}` is `blocks.{i+1}`, and
/// the numbered fields (`conv0`, `act1`, `blur0`, `conv1`, `act2`, `w0`, `b0`, ...) are the
/// positions in its `nn.Sequential`s (`0.weight`, `1.bias`, `0.kernel`, ...).
#[derive(Debug, Clone, Copy, Default)]
pub struct StyleGan2Naming;

impl Naming for StyleGan2Naming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let segs: Vec<&str> = path.split('.').collect();
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            let seg = segs[i];
            if seg == "from_rgb" {
                out.push("blocks.0".into());
            } else if seg == "res" && i + 1 < segs.len() {
                let n: usize = segs[i + 1].parse().unwrap_or(0);
                out.push(format!("blocks.{}", n + 1));
                i += 1;
            } else if i + 1 == segs.len() {
                let (field, idx) = seg.split_at(seg.len() - 1);
                let name = match field {
                    "conv" | "w" => "weight",
                    "act" | "b" => "bias",
                    "blur" => "kernel",
                    _ => field,
                };
                out.push(format!("{idx}.{name}"));
            } else {
                out.push(seg.into());
            }
            i += 1;
        }
        TorchKey::new(out.join("."))
    }
}
