//! The rotation trick's backward as one fused loop on the CPU training backend (`Flex`), parallel
//! over rows (see [`crate::fused_rotation`] for the operation and the formula).

use burn::{
    backend::{Flex, flex::FlexTensor},
    tensor::DType,
};
use rayon::prelude::*;

use crate::{NORM_EPS, estimator::ANTIPARALLEL_EPS, fused_rotation::RotationGrad};

impl RotationGrad for Flex {
    fn rotation_grad(e: &FlexTensor, q: &FlexTensor, g: FlexTensor, scaled: bool) -> FlexTensor {
        rotation_grad(e, q, &g, scaled)
    }
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
