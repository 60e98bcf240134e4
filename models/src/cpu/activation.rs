//! GELU (exact, erf form: PyTorch's `nn.GELU()` default) and SiLU (`x * sigmoid(x)`), each one
//! parallel, vectorized pass forward and one backward (burn composes them from several
//! element-wise operations, each a pass over memory, and more in the backward).

use std::f32::consts::FRAC_1_SQRT_2;

use burn::{
    backend::flex::FlexTensor,
    tensor::{Tensor, activation, backend::Backend},
};

use super::{
    simd::{erf_with_gauss, map1, map2, sigmoid},
    tensor::{
        Routed, cast, contiguous, flex_primitive, flex_tensor, from_vec, route, unary_autodiff,
        values,
    },
};

/// 1 / sqrt(2 pi).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x * Phi(x)` with the exact normal CDF, like `torch.nn.GELU()`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match route(x) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| (elementwise(x, gelu_value), x.clone()),
            |x, g| elementwise2(x, g, gelu_grad),
        )),
        Routed::Plain(x) => cast(flex_tensor::<D>(elementwise(
            &flex_primitive(x),
            gelu_value,
        ))),
        Routed::Other(x) => activation::gelu(x),
    }
}

/// `x * sigmoid(x)` (taming's `nonlinearity`, "swish").
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match route(x) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| (elementwise(x, silu_value), x.clone()),
            |x, g| elementwise2(x, g, silu_grad),
        )),
        Routed::Plain(x) => cast(flex_tensor::<D>(elementwise(
            &flex_primitive(x),
            silu_value,
        ))),
        Routed::Other(x) => activation::silu(x),
    }
}

#[inline(always)]
pub(crate) fn gelu_value(v: f32) -> f32 {
    let (erf, _) = erf_with_gauss(v * FRAC_1_SQRT_2);
    0.5 * v * (1.0 + erf)
}

/// `g * (Phi(v) + v phi(v))`.
#[inline(always)]
pub(crate) fn gelu_grad(v: f32, g: f32) -> f32 {
    let (erf, gauss) = erf_with_gauss(v * FRAC_1_SQRT_2);
    g * (0.5 * (1.0 + erf) + v * gauss * FRAC_1_SQRT_2PI)
}

#[inline(always)]
pub(crate) fn silu_value(v: f32) -> f32 {
    v * sigmoid(v)
}

/// `g * s (1 + v (1 - s))`, `s = sigmoid(v)`.
#[inline(always)]
pub(crate) fn silu_grad(v: f32, g: f32) -> f32 {
    let s = sigmoid(v);
    g * s * (1.0 + v * (1.0 - s))
}

/// `f` of every element of `x`, as a new contiguous tensor of its shape.
pub(crate) fn elementwise(x: &FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> FlexTensor {
    let x = contiguous(x);
    let mut out = vec![0f32; values(&x).len()];
    map1(values(&x), &mut out, f);
    from_vec(out, x.layout().shape())
}

/// `f(x, g)` element-wise (`g` has `x`'s shape).
pub(crate) fn elementwise2(
    x: &FlexTensor,
    g: &FlexTensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> FlexTensor {
    let (x, g) = (contiguous(x), contiguous(g));
    let mut out = vec![0f32; values(&x).len()];
    map2(values(&x), values(&g), &mut out, f);
    from_vec(out, x.layout().shape())
}
