//! The rotation trick as ONE autodiff operation on the CPU training backend (`Autodiff<Flex>`).
//!
//! Built from generic tensor operations, the O(d) rotation costs some thirty passes over the
//! `[N, D]` latents (norms, normalizations, two dot products, broadcasts, and their backward),
//! which on a CPU is more than the nearest-code search itself. Here the forward returns `q`
//! itself (bit-exact, no work) and the backward computes, per row and in one fused loop,
//!
//! `grad_e = lambda (g - 2 r (r.g) + 2 e^ (q^.g))`, `r = (e^ + q^)/||e^ + q^||`
//!
//! from five row dot products (`e.e`, `q.q`, `e.q`, `e.g`, `q.g`), parallel over rows. The same
//! edge-case rules as the generic path hold (see [`crate::estimator`]): `||e|| < eps` rows are
//! straight-through; an antiparallel pair reflects. Other backends (CUDA, where fusion makes the
//! generic path cheap) and non-f32 tensors take the generic path.

use std::any::Any;

use burn::{
    backend::{
        Autodiff, Flex,
        autodiff::{
            checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
            grads::Gradients,
            ops::{Backward, Ops, OpsKind, unary},
        },
        flex::FlexTensor,
    },
    tensor::{DType, Tensor, TensorPrimitive, backend::Backend},
};
use rayon::prelude::*;

use crate::{NORM_EPS, estimator::ANTIPARALLEL_EPS};

type Cpu = Autodiff<Flex>;

/// Applies the rotation estimator with the fused CPU operation when `B` is `Autodiff<Flex>` and
/// the tensors are f32; otherwise gives the inputs back for the generic path.
#[allow(clippy::type_complexity)]
pub(crate) fn try_rotation<B: Backend>(
    x: Tensor<B, 2>,
    q: Tensor<B, 2>,
    scaled: bool,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    if x.dtype() != DType::F32 || q.dtype() != DType::F32 {
        return Err((x, q));
    }
    let boxed: Box<dyn Any> = Box::new(x);
    let x = match boxed.downcast::<Tensor<Cpu, 2>>() {
        Ok(x) => *x,
        Err(other) => return Err((*other.downcast::<Tensor<B, 2>>().expect("same type"), q)),
    };
    let q: Box<dyn Any> = Box::new(q);
    let q = *q
        .downcast::<Tensor<Cpu, 2>>()
        .expect("x and q share a backend");
    let out: Box<dyn Any> = Box::new(rotation(x, q, scaled));
    Ok(*out.downcast::<Tensor<B, 2>>().expect("same type"))
}

#[derive(Debug)]
struct RotationBackward;

impl Backward<Flex, 1> for RotationBackward {
    /// `(e, q, scaled)`.
    type State = (FlexTensor, FlexTensor, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (e, q, scaled) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
            rotation_grad(&e, &q, &g, scaled)
        });
    }
}

fn rotation(x: Tensor<Cpu, 2>, q: Tensor<Cpu, 2>, scaled: bool) -> Tensor<Cpu, 2> {
    let q = q.inner().into_primitive().tensor();
    let x = x.into_primitive().tensor();
    let out = match RotationBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive.clone(), q.clone(), scaled), q),
        OpsKind::UnTracked(prep) => prep.finish(q),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn contiguous(t: &FlexTensor) -> std::borrow::Cow<'_, FlexTensor> {
    if t.is_contiguous() && t.as_slice::<f32>().is_some() {
        std::borrow::Cow::Borrowed(t)
    } else {
        std::borrow::Cow::Owned(t.to_contiguous())
    }
}

/// Rows per parallel task: enough work per task to amortize scheduling.
const ROWS_PER_TASK: usize = 256;

fn rotation_grad(e: &FlexTensor, q: &FlexTensor, g: &FlexTensor, scaled: bool) -> FlexTensor {
    let shape = e.layout().shape().clone();
    let d = shape.dims::<2>()[1];
    let (e, q, g) = (contiguous(e), contiguous(q), contiguous(g));
    let (e, q, g) = (
        e.as_slice::<f32>().expect("f32"),
        q.as_slice::<f32>().expect("f32"),
        g.as_slice::<f32>().expect("f32"),
    );
    let mut out = FlexTensor::empty(shape, DType::F32);
    let dst = out.storage_mut::<f32>();
    if d == 0 {
        return out;
    }
    dst.par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let base = task * ROWS_PER_TASK * d;
            for (r, row) in chunk.chunks_mut(d).enumerate() {
                let o = base + r * d;
                rotate_row(&e[o..o + d], &q[o..o + d], &g[o..o + d], row, scaled);
            }
        });
    out
}

/// `out = lambda (g - 2 r (r.g) + 2 e^ (q^.g))` for one row.
#[inline]
fn rotate_row(e: &[f32], q: &[f32], g: &[f32], out: &mut [f32], scaled: bool) {
    let (mut ee, mut qq, mut eq, mut eg, mut qg) = (0f32, 0f32, 0f32, 0f32, 0f32);
    for i in 0..e.len() {
        let (ei, qi, gi) = (e[i], q[i], g[i]);
        ee += ei * ei;
        qq += qi * qi;
        eq += ei * qi;
        eg += ei * gi;
        qg += qi * gi;
    }
    let ne = ee.sqrt();
    if ne < NORM_EPS {
        out.copy_from_slice(g); // straight-through fallback
        return;
    }
    let nq = qq.sqrt();
    let inv_e = 1.0 / ne;
    let inv_q = 1.0 / nq.max(NORM_EPS);
    // s = e^ + q^, ||s||^2 = e^.e^ + 2 e^.q^ + q^.q^ (clamped like the generic path)
    let s_sq = ee * inv_e * inv_e + 2.0 * eq * inv_e * inv_q + qq * inv_q * inv_q;
    let s_norm = s_sq.max(0.0).sqrt();
    // Antiparallel: r = 0 (reflection), as in the generic path.
    let inv_s = if s_norm >= ANTIPARALLEL_EPS {
        1.0 / s_norm
    } else {
        0.0
    };
    let a = eg * inv_e; // e^.g
    let b = qg * inv_q; // q^.g
    let lambda = if scaled { nq * inv_e } else { 1.0 };
    // r.g = (a + b) / ||s||; r_i = s_i / ||s||
    let rg2 = 2.0 * (a + b) * inv_s * inv_s;
    let ce = lambda * (2.0 * b - rg2) * inv_e; // coefficient of e_i
    let cq = -lambda * rg2 * inv_q; // coefficient of q_i
    for i in 0..e.len() {
        out[i] = lambda * g[i] + ce * e[i] + cq * q[i];
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::estimator::generic_rotation;

    fn values<Bk: Backend>(t: Tensor<Bk, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// The fused CPU operation and the generic tensor-op path agree on values and gradients,
    /// including the degenerate rows (antiparallel, ||e|| = 0, ||q|| = 0, e = q).
    #[test]
    fn fused_equals_generic_path() {
        let device = Default::default();
        for d in [3usize, 8, 256] {
            let n = 70;
            let mut e = Tensor::<Cpu, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let mut q = Tensor::<Cpu, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let g = Tensor::<Cpu, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
            let row0 = q.clone().narrow(0, 0, 1);
            e = e.slice_assign([0..1, 0..d], row0.clone() * -3.0); // antiparallel
            e = e.slice_assign([1..2, 0..d], Tensor::zeros([1, d], &device)); // ||e|| = 0
            q = q.slice_assign([2..3, 0..d], Tensor::zeros([1, d], &device)); // ||q|| = 0
            let row3 = q.clone().narrow(0, 3, 1);
            e = e.slice_assign([3..4, 0..d], row3); // e = q
            for scaled in [true, false] {
                let run = |fused: bool| {
                    let x = e.clone().require_grad();
                    let out = if fused {
                        try_rotation(x.clone(), q.clone(), scaled).expect("Autodiff<Flex> is fused")
                    } else {
                        generic_rotation(x.clone(), q.clone(), scaled)
                    };
                    let grads = (out.clone() * g.clone()).sum().backward();
                    (values(out), values(x.grad(&grads).unwrap()))
                };
                let (fv, fg) = run(true);
                let (gv, gg) = run(false);
                assert_eq!(fv, values(q.clone()), "fused forward is q exactly");
                for (i, (a, b)) in fv.iter().zip(&gv).chain(fg.iter().zip(&gg)).enumerate() {
                    assert!(
                        a.is_finite() && b.is_finite(),
                        "d={d} scaled={scaled} element {i}"
                    );
                    assert!(
                        (a - b).abs() <= 1e-4 + 1e-3 * b.abs(),
                        "d={d} scaled={scaled} element {i}: fused {a}, generic {b}"
                    );
                }
            }
        }
    }
}
