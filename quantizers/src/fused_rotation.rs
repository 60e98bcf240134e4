//! The rotation trick as ONE autodiff operation on backends with a fused kernel for its backward:
//! the CPU training backend `Autodiff<Flex>` ([`crate::cpu_rotation`]) and, with feature `wgpu`,
//! burn's cubecl backend on wgpu ([`crate::cube_rotation`]).
//!
//! Built from generic tensor operations, the O(d) rotation costs some thirty passes (kernels on a
//! GPU backend) over the `[N, D]` latents: norms, normalizations, two dot products, broadcasts, and
//! their backward. Here the forward returns `q` itself (bit-exact, no work) and the backward
//! computes, per row and in one pass,
//!
//! `grad_e = lambda (g - 2 r (r.g) + 2 e^ (q^.g))`, `r = (e^ + q^)/||e^ + q^||`
//!
//! from five row dot products (`e.e`, `q.q`, `e.q`, `e.g`, `q.g`). The edge-case rules of the
//! generic path hold (see [`crate::estimator`]): `||e|| < eps` rows are straight-through; an
//! antiparallel pair reflects. Other backends (CUDA through burn-fusion) and non-f32 tensors take
//! the generic path.

use std::{any::Any, marker::PhantomData};

use burn::{
    backend::{
        Autodiff, Flex,
        autodiff::{
            checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
            grads::Gradients,
            ops::{Backward, Ops, OpsKind, unary},
        },
    },
    tensor::{DType, Tensor, TensorPrimitive, backend::Backend, ops::FloatTensor},
};

/// A backend with a fused kernel for the rotation trick's backward.
pub(crate) trait RotationGrad: Backend {
    /// `lambda (g - 2 r (r.g) + 2 e^ (q^.g))` row by row for `[N, D]` f32 tensors `e`, `q`, `g`
    /// (`lambda = 1` when not `scaled`; `g` itself on rows with `||e|| < NORM_EPS`).
    fn rotation_grad(
        e: &FloatTensor<Self>,
        q: &FloatTensor<Self>,
        g: FloatTensor<Self>,
        scaled: bool,
    ) -> FloatTensor<Self>;
}

type Inputs<B> = (Tensor<B, 2>, Tensor<B, 2>);

/// Applies the rotation estimator as one fused operation when `B` is `Autodiff` of a backend with a
/// fused kernel and the tensors are f32; otherwise gives the inputs back for the generic path.
pub(crate) fn try_rotation<B: Backend>(
    x: Tensor<B, 2>,
    q: Tensor<B, 2>,
    scaled: bool,
) -> Result<Tensor<B, 2>, Inputs<B>> {
    if x.dtype() != DType::F32 || q.dtype() != DType::F32 {
        return Err((x, q));
    }
    let (x, q) = match fused_on::<B, Flex>(x, q, scaled) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "wgpu")]
    let (x, q) = match fused_on::<B, burn_wgpu::Wgpu>(x, q, scaled) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    Err((x, q))
}

/// The fused operation when `B` is `Autodiff<K>`.
fn fused_on<B: Backend, K: RotationGrad>(
    x: Tensor<B, 2>,
    q: Tensor<B, 2>,
    scaled: bool,
) -> Result<Tensor<B, 2>, Inputs<B>> {
    let boxed: Box<dyn Any> = Box::new(x);
    let x = match boxed.downcast::<Tensor<Autodiff<K>, 2>>() {
        Ok(x) => *x,
        Err(other) => return Err((*other.downcast::<Tensor<B, 2>>().expect("same type"), q)),
    };
    let q: Box<dyn Any> = Box::new(q);
    let q = *q
        .downcast::<Tensor<Autodiff<K>, 2>>()
        .expect("x and q share a backend");
    let out: Box<dyn Any> = Box::new(rotation::<K>(x, q, scaled));
    Ok(*out.downcast::<Tensor<B, 2>>().expect("same type"))
}

#[derive(Debug)]
struct RotationBackward<K>(PhantomData<K>);

impl<K: RotationGrad> Backward<K, 1> for RotationBackward<K> {
    /// `(e, q, scaled)`.
    type State = (FloatTensor<K>, FloatTensor<K>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (e, q, scaled) = ops.state;
        unary::<K, _>(ops.parents, ops.node, grads, |g| {
            K::rotation_grad(&e, &q, g, scaled)
        });
    }
}

fn rotation<K: RotationGrad>(
    x: Tensor<Autodiff<K>, 2>,
    q: Tensor<Autodiff<K>, 2>,
    scaled: bool,
) -> Tensor<Autodiff<K>, 2> {
    let q = q.inner().into_primitive().tensor();
    let x = x.into_primitive().tensor();
    let out = match RotationBackward::<K>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive.clone(), q.clone(), scaled), q),
        OpsKind::UnTracked(prep) => prep.finish(q),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, backend::AutodiffBackend};

    use super::*;
    use crate::estimator::generic_rotation;

    fn values<Bk: Backend>(t: Tensor<Bk, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// The fused operation on `Bk` and the generic tensor-op path agree on values and gradients,
    /// including the degenerate rows (antiparallel, ||e|| = 0, ||q|| = 0, e = q). Tolerance
    /// `1e-4 + 1e-3 |generic|`: the generic path normalizes before its dot products.
    fn fused_equals_generic_path<Bk: AutodiffBackend>(device: &Bk::Device) {
        for d in [3usize, 8, 256] {
            let n = 70;
            let mut e = Tensor::<Bk, 2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
            let mut q = Tensor::<Bk, 2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
            let g = Tensor::<Bk, 2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
            let row0 = q.clone().narrow(0, 0, 1);
            e = e.slice_assign([0..1, 0..d], row0.clone() * -3.0); // antiparallel
            e = e.slice_assign([1..2, 0..d], Tensor::zeros([1, d], device)); // ||e|| = 0
            q = q.slice_assign([2..3, 0..d], Tensor::zeros([1, d], device)); // ||q|| = 0
            let row3 = q.clone().narrow(0, 3, 1);
            e = e.slice_assign([3..4, 0..d], row3); // e = q
            for scaled in [true, false] {
                let run = |fused: bool| {
                    let x = e.clone().require_grad();
                    let out = if fused {
                        try_rotation(x.clone(), q.clone(), scaled)
                            .unwrap_or_else(|_| panic!("the backend has a fused rotation"))
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

    #[test]
    fn fused_equals_generic_path_on_flex() {
        fused_equals_generic_path::<Autodiff<Flex>>(&Default::default());
    }

    /// The cubecl kernel, through lavapipe where there is no GPU.
    #[cfg(feature = "wgpu")]
    #[test]
    fn fused_equals_generic_path_on_wgpu() {
        fused_equals_generic_path::<Autodiff<burn_wgpu::Wgpu>>(&Default::default());
    }
}
