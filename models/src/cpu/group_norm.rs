//! GroupNorm (affine, biased variance, like `nn.GroupNorm`) and GroupNorm followed by SiLU
//! (taming's `nonlinearity(norm(x))`, the head of every ResnetBlock half) as one operation.
//!
//! Forward: per (sample, group) block the mean and variance in f64, then one pass writing
//! `y = (x - mean) rstd gamma + beta` (and `y sigmoid(y)`). Backward, per block, two passes:
//! the first recomputes `x^` and `dy` (through SiLU's derivative when fused) and sums `dy` and
//! `dy x^` per channel, the second writes
//! `dx = rstd (gamma dy - mean_group(gamma dy) - x^ mean_group(gamma dy x^))`;
//! the per-channel sums are the gradients of beta and gamma. Nothing but the input and the
//! block statistics is kept for the backward.

use std::sync::Arc;

use burn::{
    backend::{
        Flex,
        autodiff::{
            checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
            grads::Gradients,
            ops::{Backward, Ops, OpsKind},
        },
        flex::FlexTensor,
    },
    nn::GroupNorm,
    tensor::{Tensor, TensorPrimitive, activation, backend::Backend},
};
use rayon::prelude::*;

use super::{
    simd::{sigmoid, sum_f64, sum2_f64, vectorized},
    tensor::{
        Cpu, Routed, ad_primitive, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec,
        route, values,
    },
};

/// `norm(x)` for `x` `[batch, channels, h, w]`.
pub fn group_norm<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    apply(norm, x, false)
}

/// `silu(norm(x))` as one operation.
pub fn group_norm_silu<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    apply(norm, x, true)
}

fn reference<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>, silu: bool) -> Tensor<B, 4> {
    let y = norm.forward(x);
    if silu { activation::silu(y) } else { y }
}

fn apply<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>, silu: bool) -> Tensor<B, 4> {
    if crate::precision::is_half(x.dtype()) {
        // Mixed precision: statistics in f32, as autocast computes group_norm.
        return crate::precision::in_f32(norm, x, |norm, x| apply(norm, x, silu));
    }
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return reference(norm, x, silu);
    };
    let [_, c, _, _] = x.dims();
    if norm.num_groups == 0 || c != norm.num_channels || c % norm.num_groups != 0 {
        return reference(norm, x, silu);
    }
    let cfg = Cfg {
        groups: norm.num_groups,
        eps: norm.epsilon,
        silu,
    };
    match route(x) {
        Routed::Autodiff(x) => {
            let x = ad_primitive(x);
            let g = ad_primitive(cast::<_, Tensor<Cpu, 1>>(gamma.val()));
            let b = ad_primitive(cast::<_, Tensor<Cpu, 1>>(beta.val()));
            let (out, stats) = forward(&x.primitive, &g.primitive, &b.primitive, cfg);
            let out = match GnBackward
                .prepare::<NoCheckpointing>([x.node.clone(), g.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(
                    GnState {
                        x: x.primitive,
                        gamma: g.primitive,
                        beta: b.primitive,
                        stats: Arc::new(stats),
                        cfg,
                    },
                    out,
                ),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            cast(Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(
                out,
            )))
        }
        Routed::Plain(x) => {
            let g = flex_primitive(cast::<_, Tensor<Flex, 1>>(gamma.val()));
            let b = flex_primitive(cast::<_, Tensor<Flex, 1>>(beta.val()));
            cast(flex_tensor::<4>(forward(&flex_primitive(x), &g, &b, cfg).0))
        }
        Routed::Other(x) => reference(norm, x, silu),
    }
}

#[derive(Clone, Copy, Debug)]
struct Cfg {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// `(mean, 1 / sqrt(var + eps))` of every (sample, group) block.
type Stats = Vec<(f32, f32)>;

fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, cfg: Cfg) -> (FlexTensor, Stats) {
    let [n, c, h, w] = dims::<4>(x);
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let (xs, gs, bs) = (values(&x), values(&gamma), values(&beta));
    let hw = h * w;
    let cpg = c / cfg.groups;
    let block = cpg * hw;
    let mut out = vec![0f32; n * c * hw];
    let stats: Stats = out
        .par_chunks_mut(block.max(1))
        .enumerate()
        .map(|(b, o)| {
            let src = &xs[b * block..][..block];
            let (mean, rstd) = moments(src, cfg.eps);
            let c0 = (b % cfg.groups) * cpg;
            for ch in 0..cpg {
                let scale = rstd * gs[c0 + ch];
                let shift = bs[c0 + ch] - mean * scale;
                let (src, o) = (&src[ch * hw..][..hw], &mut o[ch * hw..][..hw]);
                vectorized(
                    #[inline(always)]
                    || {
                        if cfg.silu {
                            for (o, &v) in o.iter_mut().zip(src) {
                                let y = v * scale + shift;
                                *o = y * sigmoid(y);
                            }
                        } else {
                            for (o, &v) in o.iter_mut().zip(src) {
                                *o = v * scale + shift;
                            }
                        }
                    },
                );
            }
            (mean, rstd)
        })
        .collect();
    (from_vec(out, &[n, c, h, w]), stats)
}

/// Mean and reciprocal standard deviation (biased variance) of `v`, accumulated in f64.
pub(super) fn moments(v: &[f32], eps: f64) -> (f32, f32) {
    let len = v.len().max(1) as f64;
    let mean = vectorized(
        #[inline(always)]
        || sum_f64(v, |a| a as f64),
    ) / len;
    let var = vectorized(
        #[inline(always)]
        || {
            sum_f64(v, |a| {
                let d = a as f64 - mean;
                d * d
            })
        },
    ) / len;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

#[derive(Clone, Debug)]
struct GnState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    stats: Arc<Stats>,
    cfg: Cfg,
}

#[derive(Debug)]
struct GnBackward;

impl Backward<Flex, 3> for GnBackward {
    type State = GnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dz = grads.consume::<Flex>(&ops.node);
        let [px, pg, pb] = &ops.parents;
        let (dx, dgamma, dbeta) = backward(&ops.state, &dz, px.is_some());
        for (parent, grad) in [(px, dx), (pg, Some(dgamma)), (pb, Some(dbeta))] {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `(dx, dgamma, dbeta)`.
fn backward(
    s: &GnState,
    dz: &FlexTensor,
    want_x: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let [n, c, h, w] = dims::<4>(&s.x);
    let (x, gamma, beta, dz) = (
        contiguous(&s.x),
        contiguous(&s.gamma),
        contiguous(&s.beta),
        contiguous(dz),
    );
    let (xs, gs, bs, dzs) = (values(&x), values(&gamma), values(&beta), values(&dz));
    let cfg = s.cfg;
    let hw = h * w;
    let cpg = c / cfg.groups;
    let block = cpg * hw;
    // dy of one channel of a block, recomputed (through SiLU when fused) into `dy`.
    let channel_dy = |src: &[f32], dzc: &[f32], scale: f32, shift: f32, dy: &mut [f32]| {
        vectorized(
            #[inline(always)]
            || {
                if cfg.silu {
                    for ((d, &v), &g) in dy.iter_mut().zip(src).zip(dzc) {
                        let y = v * scale + shift;
                        let sg = sigmoid(y);
                        *d = g * sg * (1.0 + y * (1.0 - sg));
                    }
                } else {
                    dy.copy_from_slice(dzc);
                }
            },
        )
    };
    // Per block: per channel (sum dy, sum dy x^), f64. (dx is computed even when x needs no
    // gradient: a normalization's input always does inside a network.)
    let mut dx = vec![0f32; n * c * hw];
    let partials: Vec<Vec<(f64, f64)>> = dx
        .par_chunks_mut(block.max(1))
        .enumerate()
        .map(|(b, dxb)| {
            let (mean, rstd) = s.stats[b];
            let c0 = (b % cfg.groups) * cpg;
            let src = &xs[b * block..][..block];
            let dzb = &dzs[b * block..][..block];
            let mut dy = vec![0f32; hw];
            let mut sums = Vec::with_capacity(cpg);
            for ch in 0..cpg {
                let (gam, bet) = (gs[c0 + ch], bs[c0 + ch]);
                let (scale, shift) = (rstd * gam, bet - mean * rstd * gam);
                let xc = &src[ch * hw..][..hw];
                channel_dy(xc, &dzb[ch * hw..][..hw], scale, shift, &mut dy);
                let (sdy, sdyx) = vectorized(
                    #[inline(always)]
                    || sum2_f64(&dy, xc, |d, v| (d as f64, (d * (v - mean) * rstd) as f64)),
                );
                sums.push((sdy, sdyx));
            }
            {
                let len = block as f64;
                let (mut a, mut bsum) = (0f64, 0f64);
                for (ch, (sdy, sdyx)) in sums.iter().enumerate() {
                    a += gs[c0 + ch] as f64 * sdy;
                    bsum += gs[c0 + ch] as f64 * sdyx;
                }
                let (ma, mb) = ((a / len) as f32, (bsum / len) as f32);
                for ch in 0..cpg {
                    let (gam, bet) = (gs[c0 + ch], bs[c0 + ch]);
                    let (scale, shift) = (rstd * gam, bet - mean * rstd * gam);
                    let xc = &src[ch * hw..][..hw];
                    channel_dy(xc, &dzb[ch * hw..][..hw], scale, shift, &mut dy);
                    let out = &mut dxb[ch * hw..][..hw];
                    vectorized(
                        #[inline(always)]
                        || {
                            for ((o, &d), &v) in out.iter_mut().zip(&dy).zip(xc) {
                                let xhat = (v - mean) * rstd;
                                *o = rstd * (gam * d - ma - xhat * mb);
                            }
                        },
                    );
                }
            }
            sums
        })
        .collect();
    let mut dgamma = vec![0f64; c];
    let mut dbeta = vec![0f64; c];
    for (b, sums) in partials.iter().enumerate() {
        let c0 = (b % cfg.groups) * cpg;
        for (ch, (sdy, sdyx)) in sums.iter().enumerate() {
            dbeta[c0 + ch] += sdy;
            dgamma[c0 + ch] += sdyx;
        }
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<_>>();
    (
        want_x.then(|| from_vec(dx, &[n, c, h, w])),
        from_vec(to_f32(dgamma), &[c]),
        from_vec(to_f32(dbeta), &[c]),
    )
}
