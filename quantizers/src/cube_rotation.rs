//! The rotation trick's backward as one cubecl kernel on burn's wgpu backend (feature `wgpu`).
//!
//! The generic tensor-op form launches some thirty kernels over the `[N, D]` latents per step;
//! this is one launch: one invocation per row computes the five row dot products and writes
//! `lambda g + c_e e + c_q q` (see [`crate::fused_rotation`] for the formula and the edge cases,
//! which follow [`crate::cpu_rotation`] operation for operation).

use burn_cubecl::{cubecl, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype};
use burn_wgpu::{CubeTensor, Wgpu, WgpuRuntime};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use crate::fused_rotation::RotationGrad;

impl RotationGrad for Wgpu {
    fn rotation_grad(
        e: &CubeTensor<WgpuRuntime>,
        q: &CubeTensor<WgpuRuntime>,
        g: CubeTensor<WgpuRuntime>,
        scaled: bool,
    ) -> CubeTensor<WgpuRuntime> {
        let (e, q, g) = (
            into_contiguous(e.clone()),
            into_contiguous(q.clone()),
            into_contiguous(g),
        );
        let shape = g.meta.shape().clone();
        let rows = shape[0];
        if rows == 0 || shape[1] == 0 {
            return g;
        }
        let out = empty_device_contiguous_dtype(g.client.clone(), g.device.clone(), shape, g.dtype);
        let cube_dim = CubeDim::new(&g.client, rows);
        let cube_count = calculate_cube_count_elemwise(&g.client, rows, cube_dim);
        let dtype = g.dtype;
        rotation_grad_kernel::launch::<WgpuRuntime>(
            &out.client,
            cube_count,
            cube_dim,
            e.into_tensor_arg(),
            q.into_tensor_arg(),
            g.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            scaled,
            dtype.into(),
        );
        out
    }
}

/// One invocation per row of the contiguous `[N, D]` tensors. The constants are those of
/// `cpu_rotation::rotate_row` (`NORM_EPS` 1e-6, `ANTIPARALLEL_EPS` 1e-3).
#[cube(launch)]
fn rotation_grad_kernel<F: Float>(
    e: &Tensor<F>,
    q: &Tensor<F>,
    g: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] scaled: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= out.shape(0) {
        terminate!();
    }
    let d = out.shape(1);
    let base = row * d;
    let mut ee = F::new(0.0);
    let mut qq = F::new(0.0);
    let mut eq = F::new(0.0);
    let mut eg = F::new(0.0);
    let mut qg = F::new(0.0);
    for i in 0..d {
        let ei = e[base + i];
        let qi = q[base + i];
        let gi = g[base + i];
        ee += ei * ei;
        qq += qi * qi;
        eq += ei * qi;
        eg += ei * gi;
        qg += qi * gi;
    }
    let norm_eps = F::new(1e-6);
    let ne = F::sqrt(ee);
    if ne < norm_eps {
        // straight-through fallback
        for i in 0..d {
            out[base + i] = g[base + i];
        }
    } else {
        let one = F::new(1.0);
        let two = F::new(2.0);
        let zero = F::new(0.0);
        let nq = F::sqrt(qq);
        let inv_e = one / ne;
        let inv_q = one / select(nq > norm_eps, nq, norm_eps);
        let s_sq = ee * inv_e * inv_e + two * eq * inv_e * inv_q + qq * inv_q * inv_q;
        let s_norm = F::sqrt(select(s_sq > zero, s_sq, zero));
        // Antiparallel: r = 0 (reflection). The select keeps 1/0 out of the result.
        let inv_s = select(s_norm >= F::new(1e-3), one / s_norm, zero);
        let a = eg * inv_e;
        let b = qg * inv_q;
        let lambda = if scaled { nq * inv_e } else { one };
        let rg2 = two * (a + b) * inv_s * inv_s;
        let ce = lambda * (two * b - rg2) * inv_e;
        let cq = zero - lambda * rg2 * inv_q;
        for i in 0..d {
            out[base + i] = lambda * g[base + i] + ce * e[base + i] + cq * q[base + i];
        }
    }
}
