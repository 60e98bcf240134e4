//! Multi-head scaled dot-product attention over a fused `qkv` input `[B, N, 3 h dh]` as ONE
//! autodiff operation: the heads are read in place through strided views (no permuted
//! copies of q, k and v, forward or backward), the score scaling and softmax are one
//! vectorized pass, and the backward is four batched products:
//!
//! ```text
//! S = q k^T,  P = softmax(S / sqrt(dh)),  O = P v
//! dv = P^T dO,  dP = dO v^T,  dS = P (dP - rowsum(dP P)) / sqrt(dh),  dq = dS k,  dk = dS^T q
//! ```
//!
//! Every product is Flex's batched GEMM over `(B, h)` (each batch computed whole by one
//! thread: the result does not depend on the thread count). The probabilities `P` are kept
//! for the backward (`B h N^2` floats, as burn's own graph keeps them).

use burn::{
    backend::{
        Flex,
        flex::{FlexTensor, Layout},
    },
    tensor::{Shape, Tensor, activation, backend::Backend, ops::FloatTensorOps},
};
use rayon::prelude::*;

use super::simd::{exp, vectorized};
use super::tensor::{
    Routed, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec, route, unary_autodiff,
    values,
};

/// Attention over the tokens of each sequence: `qkv` is `[B, N, 3 * heads * dim_head]`
/// (q | k | v, head `j` taking features `j dh..(j + 1) dh` of each), the result
/// `[B, N, heads * dim_head]` with the heads concatenated in order.
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    dim_head: usize,
) -> Tensor<B, 3> {
    let [_, _, c] = qkv.dims();
    if heads == 0 || dim_head == 0 || c != 3 * heads * dim_head {
        return reference(qkv, heads, dim_head);
    }
    let cfg = Cfg { heads, dim_head };
    match route(qkv) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| {
                let x = contiguous(x).into_owned();
                let (out, probs) = forward(&x, cfg);
                (out, State { qkv: x, probs, cfg })
            },
            backward,
        )),
        Routed::Plain(x) => {
            let x = contiguous(&flex_primitive(x)).into_owned();
            cast(flex_tensor::<3>(forward(&x, cfg).0))
        }
        Routed::Other(x) => reference(x, heads, dim_head),
    }
}

/// burn's operations: the same attention composed of permutes, products and softmax.
fn reference<B: Backend>(qkv: Tensor<B, 3>, heads: usize, dim_head: usize) -> Tensor<B, 3> {
    let [b, n, _] = qkv.dims();
    // [B, N, 3, h, dh] -> [3, B, h, N, dh]
    let qkv = qkv
        .reshape([b, n, 3, heads, dim_head])
        .permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, dim_head]);
    let (q, k, v) = (part(0), part(1), part(2));
    let scale = (dim_head as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let probs = activation::softmax(scores, 3);
    probs
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, n, heads * dim_head])
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    heads: usize,
    dim_head: usize,
}

#[derive(Clone, Debug)]
struct State {
    /// The (contiguous) input.
    qkv: FlexTensor,
    /// `P`, `[B, h, N, N]`.
    probs: FlexTensor,
    cfg: Cfg,
}

/// Part `part` (0 q, 1 k, 2 v) of the contiguous `qkv` `[B, N, 3 h dh]` as `[B, h, N, dh]`,
/// or transposed as `[B, h, dh, N]`.
fn part(qkv: &FlexTensor, part: usize, cfg: Cfg, transposed: bool) -> FlexTensor {
    let [b, n, c] = dims::<3>(qkv);
    let (h, dh) = (cfg.heads, cfg.dim_head);
    let (shape, strides) = if transposed {
        ([b, h, dh, n], [n * c, dh, 1, c])
    } else {
        ([b, h, n, dh], [n * c, dh, c, 1])
    };
    strided(qkv, shape, strides, part * h * dh)
}

/// A view of the contiguous `t` with `shape`, `strides`, from element `offset`.
fn strided(t: &FlexTensor, shape: [usize; 4], strides: [usize; 4], offset: usize) -> FlexTensor {
    t.clone().with_layout(Layout::new(
        Shape::from(shape.to_vec()),
        strides.iter().map(|s| *s as isize).collect(),
        t.layout().start_offset() + offset,
    ))
}

/// The transpose of the last two dimensions of the contiguous square `[B, h, N, N]` `t`.
fn transposed_square(t: &FlexTensor) -> FlexTensor {
    let [b, h, n, _] = dims::<4>(t);
    strided(t, [b, h, n, n], [h * n * n, n * n, 1, n], 0)
}

/// `(O as [B, N, h dh], P)`.
fn forward(qkv: &FlexTensor, cfg: Cfg) -> (FlexTensor, FlexTensor) {
    let [b, n, _] = dims::<3>(qkv);
    let (h, dh) = (cfg.heads, cfg.dim_head);
    let scores = Flex::float_matmul(part(qkv, 0, cfg, false), part(qkv, 1, cfg, true));
    let scale = (dh as f64).powf(-0.5) as f32;
    let mut probs = values(&contiguous(&scores)).to_vec();
    drop(scores);
    probs.par_chunks_mut(n * n).for_each(|rows| {
        for row in rows.chunks_mut(n) {
            softmax_row(row, scale);
        }
    });
    let probs = from_vec(probs, &[b, h, n, n]);
    let o = Flex::float_matmul(probs.clone(), part(qkv, 2, cfg, false)); // [B, h, N, dh]
    let o = contiguous(&o);
    (merge_heads(values(&o), [b, h, n, dh], 1, 0), probs)
}

/// `row <- softmax(row * scale)` (max-shifted).
fn softmax_row(row: &mut [f32], scale: f32) {
    vectorized(
        #[inline(always)]
        || {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v * scale));
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = exp(*v * scale - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        },
    )
}

/// `[B, h, N, dh]` values into a new `[B, N, parts h dh]` tensor's part `at` (the other parts
/// zero), heads concatenated in order.
fn merge_heads(src: &[f32], [b, h, n, dh]: [usize; 4], parts: usize, at: usize) -> FlexTensor {
    let width = parts * h * dh;
    let mut out = vec![0f32; b * n * width];
    fill_part(&mut out, src, [b, h, n, dh], parts, at);
    from_vec(out, &[b, n, width])
}

/// Writes `[B, h, N, dh]` values into part `at` of `out` `[B, N, parts h dh]`.
fn fill_part(out: &mut [f32], src: &[f32], [_, h, n, dh]: [usize; 4], parts: usize, at: usize) {
    let width = parts * h * dh;
    out.par_chunks_mut((n * width).max(1))
        .zip(src.par_chunks((h * n * dh).max(1)))
        .for_each(|(o, s)| {
            for head in 0..h {
                for t in 0..n {
                    o[t * width + (at * h + head) * dh..][..dh]
                        .copy_from_slice(&s[(head * n + t) * dh..][..dh]);
                }
            }
        });
}

/// `dqkv` `[B, N, 3 h dh]` from `dO` `[B, N, h dh]`.
fn backward(s: &State, d_out: &FlexTensor) -> FlexTensor {
    let cfg = s.cfg;
    let [b, n, _] = dims::<3>(&s.qkv);
    let (h, dh) = (cfg.heads, cfg.dim_head);
    let d_out = contiguous(d_out).into_owned();
    // dO as [B, h, N, dh] (a view of [B, N, h dh]).
    let d_o = strided(&d_out, [b, h, n, dh], [n * h * dh, dh, h * dh, 1], 0);
    let dv = Flex::float_matmul(transposed_square(&s.probs), d_o.clone());
    let dp = Flex::float_matmul(d_o, part(&s.qkv, 2, cfg, true)); // [B, h, N, N]
    let scale = (dh as f64).powf(-0.5) as f32;
    let mut ds = values(&contiguous(&dp)).to_vec();
    drop(dp);
    let probs = contiguous(&s.probs);
    ds.par_chunks_mut(n * n)
        .zip(values(&probs).par_chunks(n * n))
        .for_each(|(d, p)| {
            for (d, p) in d.chunks_mut(n).zip(p.chunks(n)) {
                softmax_grad_row(d, p, scale);
            }
        });
    let ds = from_vec(ds, &[b, h, n, n]);
    let dq = Flex::float_matmul(ds.clone(), part(&s.qkv, 1, cfg, false));
    let dk = Flex::float_matmul(transposed_square(&ds), part(&s.qkv, 0, cfg, false));
    let shape = [b, h, n, dh];
    let mut dqkv = vec![0f32; b * n * 3 * h * dh];
    for (i, g) in [dq, dk, dv].iter().enumerate() {
        fill_part(&mut dqkv, values(&contiguous(g)), shape, 3, i);
    }
    from_vec(dqkv, &[b, n, 3 * h * dh])
}

/// `d <- p (d - sum(d p)) scale`: the gradient of the scaled scores from that of the
/// probabilities `p` of one row.
fn softmax_grad_row(d: &mut [f32], p: &[f32], scale: f32) {
    vectorized(
        #[inline(always)]
        || {
            let dot: f32 = d.iter().zip(p).map(|(a, b)| a * b).sum();
            for (d, p) in d.iter_mut().zip(p) {
                *d = p * (*d - dot) * scale;
            }
        },
    )
}
