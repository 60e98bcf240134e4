//! LayerNorm over the last dimension (affine, biased variance, like `nn.LayerNorm`) as one
//! operation: burn's autodiff backend composes it from a mean, a variance and five
//! element-wise operations, each a pass over memory and a node of the graph.
//!
//! Forward: per row the mean and variance (f64 sums), then `y = (x - mean) rstd gamma + beta`.
//! Backward: per row `dx = rstd (dx^ - mean(dx^) - x^ mean(dx^ x^))` with `dx^ = dy gamma`;
//! `dgamma = sum_rows dy x^` and `dbeta = sum_rows dy`, summed per task of rows (tasks by
//! problem size) and the tasks in order ([`super::reduce::ordered_sum`]): the same bits on any
//! thread count. Only the input and the row statistics are kept for the backward.

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
    nn::LayerNorm,
    tensor::{Tensor, TensorPrimitive, backend::Backend},
};
use rayon::prelude::*;

use super::{
    group_norm::moments,
    reduce,
    simd::{sum2_f64, vectorized},
    tensor::{
        Cpu, Routed, ad_primitive, cast, contiguous, flex_primitive, flex_tensor, from_vec, route,
        values,
    },
};

/// `norm(x)`, normalizing over the last dimension of `x`; `eps` must be the one `norm` was
/// built with (burn keeps it private).
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    eps: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if crate::precision::is_half(x.dtype()) {
        // Mixed precision: statistics in f32, as autocast computes layer_norm.
        return crate::precision::in_f32(norm, x, |norm, x| layer_norm(norm, eps, x));
    }
    let Some(beta) = &norm.beta else {
        return norm.forward(x);
    };
    let gamma = &norm.gamma;
    let d = x.dims()[D - 1];
    if d == 0 || gamma.dims()[0] != d {
        return norm.forward(x);
    }
    match route(x) {
        Routed::Autodiff(x) => {
            let x = ad_primitive(x);
            let g = ad_primitive(cast::<_, Tensor<Cpu, 1>>(gamma.val()));
            let b = ad_primitive(cast::<_, Tensor<Cpu, 1>>(beta.val()));
            let (out, stats) = forward(&x.primitive, &g.primitive, &b.primitive, eps);
            let out = match LnBackward
                .prepare::<NoCheckpointing>([x.node.clone(), g.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(
                    LnState {
                        x: x.primitive,
                        gamma: g.primitive,
                        stats: Arc::new(stats),
                    },
                    out,
                ),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            cast(Tensor::<Cpu, D>::from_primitive(TensorPrimitive::Float(
                out,
            )))
        }
        Routed::Plain(x) => {
            let g = flex_primitive(cast::<_, Tensor<Flex, 1>>(gamma.val()));
            let b = flex_primitive(cast::<_, Tensor<Flex, 1>>(beta.val()));
            cast(flex_tensor::<D>(forward(&flex_primitive(x), &g, &b, eps).0))
        }
        Routed::Other(x) => norm.forward(x),
    }
}

/// `(mean, 1 / sqrt(var + eps))` of every row.
type Stats = Vec<(f32, f32)>;

/// Rows per parallel task for the backward's parameter sums: a function of the problem only.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(reduce::SLOTS).max(1)
}

fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, eps: f64) -> (FlexTensor, Stats) {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let (xs, gs, bs) = (values(&x), values(&gamma), values(&beta));
    let d = gs.len();
    let mut out = vec![0f32; xs.len()];
    let stats: Stats = out
        .par_chunks_mut(d)
        .zip(xs.par_chunks(d))
        .map(|(o, row)| {
            let (mean, rstd) = moments(row, eps);
            vectorized(
                #[inline(always)]
                || {
                    for (((o, &v), &g), &b) in o.iter_mut().zip(row).zip(gs).zip(bs) {
                        *o = (v - mean) * rstd * g + b;
                    }
                },
            );
            (mean, rstd)
        })
        .collect();
    (from_vec(out, x.layout().shape()), stats)
}

#[derive(Clone, Debug)]
struct LnState {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Arc<Stats>,
}

#[derive(Debug)]
struct LnBackward;

impl Backward<Flex, 3> for LnBackward {
    type State = LnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [px, pg, pb] = &ops.parents;
        let (dx, dgamma, dbeta) = backward(&ops.state, &dy);
        for (parent, grad) in [(px, dx), (pg, dgamma), (pb, dbeta)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// `(dx, dgamma, dbeta)`.
fn backward(s: &LnState, dy: &FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, dy) = (contiguous(&s.x), contiguous(&s.gamma), contiguous(dy));
    let (xs, gs, dys) = (values(&x), values(&gamma), values(&dy));
    let d = gs.len();
    let rows = xs.len() / d;
    let per = rows_per_task(rows);
    let mut dx = vec![0f32; xs.len()];
    // acc = [dgamma (d) | dbeta (d)]
    let acc = reduce::ordered_sum(
        rows.div_ceil(per),
        2 * d,
        Some((&mut dx, per * d)),
        |task, dx, acc| {
            let dx = dx.expect("each task writes its rows of dx");
            let r0 = task * per;
            let (dgamma, dbeta) = acc.split_at_mut(d);
            let mut dxhat = vec![0f32; d];
            for (i, dxr) in dx.chunks_mut(d).enumerate() {
                let r = r0 + i;
                let (mean, rstd) = s.stats[r];
                let (xr, dyr) = (&xs[r * d..][..d], &dys[r * d..][..d]);
                let (a, b) = vectorized(
                    #[inline(always)]
                    || {
                        for ((h, &g), &gam) in dxhat.iter_mut().zip(dyr).zip(gs) {
                            *h = g * gam;
                        }
                        sum2_f64(&dxhat, xr, |h, v| {
                            (h as f64, (h * ((v - mean) * rstd)) as f64)
                        })
                    },
                );
                let (ma, mb) = ((a / d as f64) as f32, (b / d as f64) as f32);
                vectorized(
                    #[inline(always)]
                    || {
                        for ((((o, &v), &g), &h), (dg, db)) in dxr
                            .iter_mut()
                            .zip(xr)
                            .zip(dyr)
                            .zip(&dxhat)
                            .zip(dgamma.iter_mut().zip(dbeta.iter_mut()))
                        {
                            let xhat = (v - mean) * rstd;
                            *o = rstd * (h - ma - xhat * mb);
                            *dg += g * xhat;
                            *db += g;
                        }
                    },
                );
            }
        },
    );
    let shape = x.layout().shape();
    (
        from_vec(dx, shape),
        from_vec(acc[..d].to_vec(), &[d]),
        from_vec(acc[d..].to_vec(), &[d]),
    )
}
