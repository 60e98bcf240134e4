//! One AdamW update of a parameter tensor (decoupled weight decay, bias-corrected moments) as
//! ONE parallel, vectorized pass over the parameter, its gradient and both moments. burn's
//! `AdamW` runs it as about a dozen element-wise operations, each a single-threaded pass over
//! memory on the CPU backend: for a transformer's millions of weights that was a tenth of the
//! training step, with one core idle.
//!
//! The arithmetic is burn 0.21's `AdamW` operation for operation, in f32 and in the same order
//! (no fused multiply-adds), so both give the same bits:
//!
//! ```text
//! m = m b1 + g (1 - b1)              (first step: g (1 - b1))
//! v = v b2 + (g g) (1 - b2)          (first step: (g g) (1 - b2))
//! d = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! p = p f32(1 - lr wd) - d f32(lr)   (p unchanged by the decay when lr wd = 0)
//! ```

use burn::tensor::{Tensor, backend::Backend};
use rayon::prelude::*;

use super::tensor::{Routed, cast, contiguous, flex_primitive, flex_tensor, route, values};
use burn::backend::Flex;

/// AdamW's hyper-parameters (as `burn::optim::AdamWConfig` holds them).
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
}

/// Elements per parallel task (a function of the size only; each element's update is
/// independent, so the split never changes a bit).
const CHUNK: usize = 1 << 14;

/// The parameter and moments after step `time` (1 for the first, which has no moments yet).
/// Returns `(param, m, v)`.
pub fn adamw_update<B: Backend, const D: usize>(
    h: &AdamWHyper,
    lr: f64,
    time: usize,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    match route(param) {
        Routed::Plain(p) => {
            let g: Tensor<Flex, D> = cast(grad);
            let mv = moments.map(|(m, v)| (cast::<_, Tensor<Flex, D>>(m), cast(v)));
            let (p, m, v) = fused(h, lr, time, p, g, mv);
            (cast(p), cast(m), cast(v))
        }
        Routed::Autodiff(p) => {
            // Optimizers step the inner backend; an autodiff parameter takes burn's operations.
            reference(h, lr, time, cast(p), grad, moments)
        }
        Routed::Other(p) => reference(h, lr, time, p, grad, moments),
    }
}

/// The update with burn's tensor operations (GPU backends, other dtypes).
fn reference<B: Backend, const D: usize>(
    h: &AdamWHyper,
    lr: f64,
    time: usize,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let (f1, f2) = (1.0 - h.beta_1, 1.0 - h.beta_2);
    let (m, v) = match moments {
        Some((m, v)) => (
            m.mul_scalar(h.beta_1).add(grad.clone().mul_scalar(f1)),
            v.mul_scalar(h.beta_2).add(grad.square().mul_scalar(f2)),
        ),
        None => (grad.clone().mul_scalar(f1), grad.square().mul_scalar(f2)),
    };
    let t = time as i32;
    let m_hat = m.clone().div_scalar(1f32 - h.beta_1.powi(t));
    let v_hat = v.clone().div_scalar(1f32 - h.beta_2.powi(t));
    let delta = m_hat.div(v_hat.sqrt().add_scalar(h.epsilon));
    let decay = lr * h.weight_decay as f64;
    let decayed = if decay == 0.0 {
        param
    } else {
        param.mul_scalar(1.0 - decay)
    };
    (decayed - delta.mul_scalar(lr), m, v)
}

/// The update as one pass on the CPU backend.
fn fused<const D: usize>(
    h: &AdamWHyper,
    lr: f64,
    time: usize,
    param: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    moments: Option<(Tensor<Flex, D>, Tensor<Flex, D>)>,
) -> (Tensor<Flex, D>, Tensor<Flex, D>, Tensor<Flex, D>) {
    let shape = param.shape();
    let (p, g) = (flex_primitive(param), flex_primitive(grad));
    let (p, g) = (contiguous(&p), contiguous(&g));
    let (ps, gs) = (values(&p), values(&g));
    let mv = moments.map(|(m, v)| (flex_primitive(m), flex_primitive(v)));
    let mv = mv.as_ref().map(|(m, v)| (contiguous(m), contiguous(v)));
    let (b1, b2, eps) = (h.beta_1, h.beta_2, h.epsilon);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let t = time as i32;
    let (c1, c2) = (1f32 - b1.powi(t), 1f32 - b2.powi(t));
    let decay = lr * h.weight_decay as f64;
    // p * 1.0 is p, bit for bit: one branch-free form for both cases.
    let keep = if decay == 0.0 {
        1.0
    } else {
        (1.0 - decay) as f32
    };
    let lr32 = lr as f32;
    let n = ps.len();
    let (mut po, mut mo, mut vo) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let zeros: &[f32] = &[];
    let (ms, vs) = match &mv {
        Some((m, v)) => (values(m), values(v)),
        None => (zeros, zeros),
    };
    let first = mv.is_none();
    let k = Consts {
        c1,
        c2,
        eps,
        keep,
        lr: lr32,
    };
    po.par_chunks_mut(CHUNK)
        .zip(mo.par_chunks_mut(CHUNK))
        .zip(vo.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, ((po, mo), vo))| {
            let r = i * CHUNK..i * CHUNK + po.len();
            let (pc, gc) = (&ps[r.clone()], &gs[r.clone()]);
            super::simd::vectorized(
                #[inline(always)]
                || {
                    let out = po.iter_mut().zip(mo.iter_mut()).zip(vo.iter_mut());
                    if first {
                        for (((po, mo), vo), (&p, &g)) in out.zip(pc.iter().zip(gc)) {
                            let (m, v) = (g * f1, (g * g) * f2);
                            (*po, *mo, *vo) = (k.step(p, m, v), m, v);
                        }
                    } else {
                        let (mc, vc) = (&ms[r.clone()], &vs[r.clone()]);
                        for (((po, mo), vo), ((&p, &g), (&m, &v))) in
                            out.zip(pc.iter().zip(gc).zip(mc.iter().zip(vc)))
                        {
                            let (m, v) = (m * b1 + g * f1, v * b2 + (g * g) * f2);
                            (*po, *mo, *vo) = (k.step(p, m, v), m, v);
                        }
                    }
                },
            );
        });
    let dims = shape.dims::<D>();
    let make = |v: Vec<f32>| flex_tensor::<D>(super::tensor::from_vec(v, &dims));
    (make(po), make(mo), make(vo))
}

/// The per-element constants of one update.
#[derive(Clone, Copy)]
struct Consts {
    /// Bias corrections `1 - b1^t`, `1 - b2^t`.
    c1: f32,
    c2: f32,
    eps: f32,
    /// `f32(1 - lr wd)`, or 1 without decay.
    keep: f32,
    lr: f32,
}

impl Consts {
    /// One element's new value from its parameter and new moments.
    #[inline(always)]
    fn step(self, p: f32, m: f32, v: f32) -> f32 {
        let d = (m / self.c1) / ((v / self.c2).sqrt() + self.eps);
        p * self.keep - d * self.lr
    }
}
