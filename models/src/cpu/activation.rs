//! GELU (exact, erf form: PyTorch's `nn.GELU()` default), SiLU (`x * sigmoid(x)`) and tanh
//! (the ViT feed-forward's), each one parallel, vectorized pass forward and one backward (burn
//! composes GELU and SiLU from several element-wise operations, each a pass over memory, and
//! more in the backward; its tanh is the C library's scalar `tanhf`).

use std::f32::consts::FRAC_1_SQRT_2;

use burn::{
    backend::flex::FlexTensor,
    tensor::{Tensor, activation, backend::Backend},
};

use super::{
    simd::{erf_with_gauss, exp, map1, map2, sigmoid},
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

/// `tanh(x)`; the backward keeps the output (`1 - tanh^2` is the derivative).
pub fn tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match route(x) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| {
                let y = elementwise(x, tanh_value);
                (y.clone(), y)
            },
            |y, g| elementwise2(y, g, |y, g| g * (1.0 - y * y)),
        )),
        Routed::Plain(x) => cast(flex_tensor::<D>(elementwise(
            &flex_primitive(x),
            tanh_value,
        ))),
        Routed::Other(x) => x.tanh(),
    }
}

/// Taylor coefficients of `tanh(x) / x` in `x^2` (error below 5e-8 relative for
/// `|x| <= 0.55`).
const TANH_SERIES: [f32; 8] = [
    1.0,
    -1.0 / 3.0,
    2.0 / 15.0,
    -17.0 / 315.0,
    62.0 / 2835.0,
    -1382.0 / 155_925.0,
    21_844.0 / 6_081_075.0,
    -929_569.0 / 638_512_875.0,
];

/// `tanh(x)`: `(1 - e) / (1 + e)` with `e = e^{-2|x|}`, and near 0 (where that cancels) the
/// series; branch-free, so it vectorizes.
#[inline(always)]
pub(crate) fn tanh_value(v: f32) -> f32 {
    let a = v.abs();
    let e = exp(-2.0 * a);
    let far = ((1.0 - e) / (1.0 + e)).copysign(v);
    let x2 = v * v;
    let mut p = TANH_SERIES[7];
    for c in TANH_SERIES[..7].iter().rev() {
        p = p * x2 + c;
    }
    if a < 0.55 { v * p } else { far }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_matches_f64() {
        // Relative error against f64's tanh over both branches and the switch at 0.55.
        let mut worst = 0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let got = tanh_value(x) as f64;
            if want != 0.0 {
                worst = worst.max(((got - want) / want).abs());
            }
            x += 0.000_913;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(tanh_value(0.0), 0.0);
        assert_eq!(tanh_value(1e-30), 1e-30);
        assert_eq!(tanh_value(100.0), 1.0);
        assert_eq!(tanh_value(-100.0), -1.0);
    }
}
