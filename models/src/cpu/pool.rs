//! 2x2 max-pooling with stride 2 (no padding, odd trailing rows and columns dropped, like
//! `nn.MaxPool2d(2, 2)`): the forward records which of the four inputs won (one byte each) and
//! the backward writes each output gradient to that input, one parallel pass over planes each.
//! On ties the first input in row-major order wins; a NaN wins over numbers, as in PyTorch.

use std::sync::Arc;

use burn::{
    backend::flex::FlexTensor,
    tensor::{Tensor, backend::Backend, module::max_pool2d},
};
use rayon::prelude::*;

use super::simd::vectorized;
use super::tensor::{
    Routed, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec, route, unary_autodiff,
    values,
};

/// `max_pool2d(x, kernel 2, stride 2)` of `[batch, channels, h, w]`.
pub fn max_pool2x2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if h < 2 || w < 2 {
        return max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
    }
    match route(x) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| {
                let (out, winners) = forward(x);
                (out, (dims::<4>(x), Arc::new(winners)))
            },
            |(shape, winners), g| backward(*shape, winners, g),
        )),
        Routed::Plain(x) => cast(flex_tensor::<4>(forward(&flex_primitive(x)).0)),
        Routed::Other(x) => max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false),
    }
}

/// The pooled tensor and, per output, the winner's position in its window (0..4, row-major).
fn forward(x: &FlexTensor) -> (FlexTensor, Vec<u8>) {
    let [n, c, h, w] = dims::<4>(x);
    let (oh, ow) = (h / 2, w / 2);
    let x = contiguous(x);
    let xs = values(&x);
    let mut out = vec![0f32; n * c * oh * ow];
    let mut winners = vec![0u8; n * c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(winners.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(plane, (o, win))| {
            let src = &xs[plane * h * w..][..h * w];
            vectorized(
                #[inline(always)]
                || {
                    for y in 0..oh {
                        let (r0, r1) = (&src[2 * y * w..][..w], &src[(2 * y + 1) * w..][..w]);
                        let (o, win) = (&mut o[y * ow..][..ow], &mut win[y * ow..][..ow]);
                        for xo in 0..ow {
                            let (m, k) =
                                window_max(r0[2 * xo], r0[2 * xo + 1], r1[2 * xo], r1[2 * xo + 1]);
                            o[xo] = m;
                            win[xo] = k;
                        }
                    }
                },
            );
        });
    (from_vec(out, &[n, c, oh, ow]), winners)
}

/// The maximum of a window `[a b; c d]` and its position (0..4, row-major): the first
/// strict maximum, or a NaN (PyTorch's rule), as selects.
#[inline(always)]
fn window_max(a: f32, b: f32, c: f32, d: f32) -> (f32, u8) {
    let (m1, k1) = if b > a || b.is_nan() { (b, 1) } else { (a, 0) };
    let (m2, k2) = if d > c || d.is_nan() { (d, 3) } else { (c, 2) };
    if m2 > m1 || m2.is_nan() {
        (m2, k2)
    } else {
        (m1, k1)
    }
}

/// The input gradient: each output's gradient at its winner, zero elsewhere.
fn backward(shape: [usize; 4], winners: &[u8], g: &FlexTensor) -> FlexTensor {
    let [n, c, h, w] = shape;
    let (oh, ow) = (h / 2, w / 2);
    let g = contiguous(g);
    let gs = values(&g);
    let mut dx = vec![0f32; n * c * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, d)| {
        let gp = &gs[plane * oh * ow..][..oh * ow];
        let wp = &winners[plane * oh * ow..][..oh * ow];
        for y in 0..oh {
            for xo in 0..ow {
                let k = wp[y * ow + xo] as usize;
                d[(2 * y + k / 2) * w + 2 * xo + k % 2] = gp[y * ow + xo];
            }
        }
    });
    from_vec(dx, &shape)
}
