//! 2-D convolution (groups 1, any kernel, stride, dilation and asymmetric zero padding) as
//! im2col + GEMM, forward and backward:
//!
//! * forward: `y_n = W [co, K] . cols_n [K, P] + b`;
//! * weight gradient: `dW = sum_n dy_n [co, P] . cols_n^T [P, K]`;
//! * input gradient: `dcols_n = W^T [K, co] . dy_n [co, P]`, scattered back by col2im;
//! * bias gradient: `db = sum_{n, p} dy`,
//!
//! with `K = c_in kh kw`, `P = h_out w_out`. The GEMMs are Flex's batched matmul (the `gemm`
//! crate, parallel over samples); im2col and col2im run in parallel over (sample, channel)
//! planes. Columns are rebuilt in the backward rather than kept (a VQGAN layer's would take
//! gigabytes), and at most [`COLS_BUDGET`] floats of them exist at once. 1x1 stride-1 unpadded
//! convolutions skip im2col: the input already is its column matrix. burn's own backward goes
//! through a transposed convolution and a generic weight-gradient path, which on the CPU is
//! barely parallel; that is what this replaces.

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
    nn::{PaddingConfig2d, conv::Conv2d},
    tensor::{Tensor, TensorPrimitive, backend::Backend, ops::FloatTensorOps},
};
use rayon::prelude::*;

use super::tensor::{
    Routed, ad_primitive, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec, route,
    values,
};

/// Most column-matrix floats alive at once (128 MiB); batches are processed in chunks of samples.
const COLS_BUDGET: usize = 32 << 20;

/// Applies `conv` to `x` `[batch, c_in, h, w]` (rotor's kernels on the CPU backend).
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(pad) = padding(conv, x.dims()) else {
        return conv.forward(x);
    };
    if conv.groups != 1 {
        return conv.forward(x);
    }
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val());
    match route(x) {
        Routed::Autodiff(x) => {
            let w = ad_primitive(cast::<_, Tensor<_, 4>>(weight));
            let b = bias.map(|b| ad_primitive(cast::<_, Tensor<_, 1>>(b)));
            let x = ad_primitive(x);
            let Some(geom) = Geom::new(
                dims(&x.primitive),
                dims(&w.primitive),
                conv.stride,
                conv.dilation,
                pad,
            ) else {
                return conv.forward(cast(Tensor::<super::tensor::Cpu, 4>::from_primitive(
                    TensorPrimitive::Float(x),
                )));
            };
            let out = forward(
                &x.primitive,
                &w.primitive,
                b.as_ref().map(|b| &b.primitive),
                &geom,
            );
            let out = match b {
                Some(b) => match ConvBackward
                    .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, geom), out),
                    OpsKind::UnTracked(prep) => prep.finish(out),
                },
                None => match ConvBackward
                    .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, geom), out),
                    OpsKind::UnTracked(prep) => prep.finish(out),
                },
            };
            cast(Tensor::<super::tensor::Cpu, 4>::from_primitive(
                TensorPrimitive::Float(out),
            ))
        }
        Routed::Plain(x) => {
            let x = flex_primitive(x);
            let w = flex_primitive(cast::<_, Tensor<Flex, 4>>(weight));
            let b = bias.map(|b| flex_primitive(cast::<_, Tensor<Flex, 1>>(b)));
            match Geom::new(dims(&x), dims(&w), conv.stride, conv.dilation, pad) {
                Some(geom) => cast(flex_tensor::<4>(forward(&x, &w, b.as_ref(), &geom))),
                None => conv.forward(cast(flex_tensor::<4>(x))),
            }
        }
        Routed::Other(x) => conv.forward(x),
    }
}

/// `[top, left, bottom, right]` zero padding of `conv` for an input of these dims.
fn padding<B: Backend>(conv: &Conv2d<B>, [_, _, h, w]: [usize; 4]) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        PaddingConfig2d::Same => {
            // Output side = ceil(side / stride): total padding split with the extra on the end.
            let total = |side: usize, k: usize, s: usize, d: usize| {
                let out = side.div_ceil(s);
                ((out - 1) * s + d * (k - 1) + 1).saturating_sub(side)
            };
            let th = total(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0]);
            let tw = total(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1]);
            Some([th / 2, tw / 2, th - th / 2, tw - tw / 2])
        }
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pad: [usize; 4],
    oh: usize,
    ow: usize,
}

impl Geom {
    /// `None` when the padded input is smaller than the dilated kernel, or a stride is 0.
    pub(crate) fn new(
        [n, ci, h, w]: [usize; 4],
        [co, wci, kh, kw]: [usize; 4],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 4],
    ) -> Option<Self> {
        let out = |side: usize, before: usize, after: usize, k: usize, s: usize, d: usize| {
            let span = d * (k.checked_sub(1)?) + 1;
            let padded = side + before + after;
            (s > 0 && d > 0 && padded >= span).then(|| (padded - span) / s + 1)
        };
        let oh = out(h, pad[0], pad[2], kh, stride[0], dilation[0])?;
        let ow = out(w, pad[1], pad[3], kw, stride[1], dilation[1])?;
        (wci == ci).then_some(Self {
            n,
            ci,
            h,
            w,
            co,
            kh,
            kw,
            stride,
            dilation,
            pad,
            oh,
            ow,
        })
    }

    /// Rows of the column matrix.
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// Output pixels per channel.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1, stride-1, unpadded convolution: the input is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    /// Samples per chunk so that a chunk's columns fit the budget.
    fn chunk(&self) -> usize {
        if self.pointwise() {
            return self.n.max(1);
        }
        (COLS_BUDGET / (self.k() * self.p()).max(1)).clamp(1, self.n.max(1))
    }
}

/// The column matrices `[n1 - n0, K, P]` of samples `n0..n1` of `xt` (contiguous NCHW).
fn im2col(xt: &FlexTensor, g: &Geom, n0: usize, n1: usize) -> FlexTensor {
    let (k, p) = (g.k(), g.p());
    let x = values(xt);
    if g.pointwise() {
        if n0 == 0 && n1 == g.n {
            return xt.reshape([g.n, k, p].into());
        }
        return from_vec(x[n0 * k * p..n1 * k * p].to_vec(), &[n1 - n0, k, p]);
    }
    let plane = g.h * g.w;
    let block = g.kh * g.kw * p;
    let mut cols = vec![0f32; (n1 - n0) * k * p];
    cols.par_chunks_mut(block).enumerate().for_each(|(i, out)| {
        let src = &x[(n0 * g.ci + i) * plane..][..plane];
        im2col_plane(src, g, out);
    });
    from_vec(cols, &[n1 - n0, k, p])
}

/// For output column `ox` to read input column `ox * stride + offset`, the range of `ox` that
/// lands inside `[0, side)`.
fn inside(offset: isize, stride: usize, side: usize, out: usize) -> (usize, usize) {
    let lo = if offset >= 0 {
        0
    } else {
        offset.unsigned_abs().div_ceil(stride)
    };
    let hi = if offset >= side as isize {
        0
    } else {
        ((side as isize - offset) as usize).div_ceil(stride)
    };
    let lo = lo.min(out);
    (lo, hi.clamp(lo, out))
}

/// The `kh kw` rows of one input channel's columns.
fn im2col_plane(x: &[f32], g: &Geom, out: &mut [f32]) {
    let p = g.p();
    for i in 0..g.kh {
        for j in 0..g.kw {
            let rows = &mut out[(i * g.kw + j) * p..][..p];
            let x_off = (j * g.dilation[1]) as isize - g.pad[1] as isize;
            let (lo, hi) = inside(x_off, g.stride[1], g.w, g.ow);
            for oy in 0..g.oh {
                let dst = &mut rows[oy * g.ow..][..g.ow];
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &x[iy as usize * g.w..][..g.w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if g.stride[1] == 1 {
                    let s0 = (lo as isize + x_off) as usize;
                    dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                } else {
                    for (ox, d) in dst[lo..hi].iter_mut().enumerate() {
                        *d = src[(((lo + ox) * g.stride[1]) as isize + x_off) as usize];
                    }
                }
            }
        }
    }
}

/// Adds one channel's column gradients `dcols` (`kh kw` rows of `P`) into its input plane.
fn col2im_plane(dcols: &[f32], g: &Geom, dx: &mut [f32]) {
    let p = g.p();
    for i in 0..g.kh {
        for j in 0..g.kw {
            let rows = &dcols[(i * g.kw + j) * p..][..p];
            let x_off = (j * g.dilation[1]) as isize - g.pad[1] as isize;
            let (lo, hi) = inside(x_off, g.stride[1], g.w, g.ow);
            for oy in 0..g.oh {
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
                if iy < 0 || iy >= g.h as isize || lo == hi {
                    continue;
                }
                let src = &rows[oy * g.ow..][..g.ow];
                let dst = &mut dx[iy as usize * g.w..][..g.w];
                if g.stride[1] == 1 {
                    let s0 = (lo as isize + x_off) as usize;
                    for (d, s) in dst[s0..s0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += s;
                    }
                } else {
                    for (ox, s) in src[lo..hi].iter().enumerate() {
                        dst[(((lo + ox) * g.stride[1]) as isize + x_off) as usize] += s;
                    }
                }
            }
        }
    }
}

/// `[co, K]` weights as a `[1, co, K]` matrix.
fn weight_matrix(w: &FlexTensor, g: &Geom) -> FlexTensor {
    contiguous(w).reshape([1, g.co, g.k()].into())
}

/// The convolution's output `[n, co, oh, ow]`.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, g: &Geom) -> FlexTensor {
    let x = contiguous(x);
    let wm = weight_matrix(w, g);
    let (p, chunk) = (g.p(), g.chunk());
    let mut out = vec![0f32; g.n * g.co * p];
    let bias = b.map(|b| contiguous(b).into_owned());
    let bias = bias.as_ref().map(|b| values(b));
    for n0 in (0..g.n).step_by(chunk) {
        let n1 = (n0 + chunk).min(g.n);
        let cols = im2col(&x, g, n0, n1);
        let y = contiguous(&Flex::float_matmul(wm.clone(), cols)).into_owned();
        let y = values(&y);
        out[n0 * g.co * p..n1 * g.co * p]
            .par_chunks_mut(p)
            .zip(y.par_chunks(p))
            .enumerate()
            .for_each(|(plane, (o, y))| {
                let add = bias.map_or(0.0, |b| b[plane % g.co]);
                for (o, y) in o.iter_mut().zip(y) {
                    *o = y + add;
                }
            });
    }
    from_vec(out, &[g.n, g.co, g.oh, g.ow])
}

/// Gradients of the input, the weight and the bias (each only when asked for).
fn backward(
    x: &FlexTensor,
    w: &FlexTensor,
    dy: &FlexTensor,
    g: &Geom,
    [want_x, want_w, want_b]: [bool; 3],
) -> [Option<FlexTensor>; 3] {
    let x = contiguous(x);
    let dy = contiguous(dy);
    let dys = values(&dy);
    let (k, p, chunk) = (g.k(), g.p(), g.chunk());
    let wt = weight_matrix(w, g).transpose(1, 2); // [1, K, co]
    let mut dw = want_w.then(|| vec![0f32; g.co * k]);
    let mut dx = want_x.then(|| vec![0f32; g.n * g.ci * g.h * g.w]);
    for n0 in (0..g.n).step_by(chunk) {
        let n1 = (n0 + chunk).min(g.n);
        let dy_c = if n0 == 0 && n1 == g.n {
            dy.reshape([g.n, g.co, p].into())
        } else {
            from_vec(
                dys[n0 * g.co * p..n1 * g.co * p].to_vec(),
                &[n1 - n0, g.co, p],
            )
        };
        if let Some(dw) = dw.as_mut() {
            let cols = im2col(&x, g, n0, n1);
            let part = Flex::float_matmul(dy_c.clone(), cols.transpose(1, 2)); // [nc, co, K]
            let part = contiguous(&part);
            let part = values(&part);
            dw.par_chunks_mut(4096).enumerate().for_each(|(c, acc)| {
                let off = c * 4096;
                for s in 0..n1 - n0 {
                    let src = &part[s * g.co * k + off..][..acc.len()];
                    for (a, v) in acc.iter_mut().zip(src) {
                        *a += v;
                    }
                }
            });
        }
        if let Some(dx) = dx.as_mut() {
            let dcols = Flex::float_matmul(wt.clone(), dy_c); // [nc, K, P]
            let dcols = contiguous(&dcols);
            let dcols = values(&dcols);
            let plane = g.h * g.w;
            let dx = &mut dx[n0 * g.ci * plane..n1 * g.ci * plane];
            if g.pointwise() {
                dx.copy_from_slice(dcols);
            } else {
                let block = g.kh * g.kw * p;
                dx.par_chunks_mut(plane)
                    .zip(dcols.par_chunks(block))
                    .for_each(|(dx, dc)| col2im_plane(dc, g, dx));
            }
        }
    }
    let db = want_b.then(|| {
        let sums: Vec<f32> = (0..g.co)
            .into_par_iter()
            .map(|c| {
                (0..g.n)
                    .map(|n| {
                        dys[(n * g.co + c) * p..][..p]
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        from_vec(sums, &[g.co])
    });
    [
        dx.map(|v| from_vec(v, &[g.n, g.ci, g.h, g.w])),
        dw.map(|v| from_vec(v, &[g.co, g.ci, g.kh, g.kw])),
        db,
    ]
}

/// The convolution's backward; parents `[x, weight]` or `[x, weight, bias]`.
#[derive(Debug)]
struct ConvBackward;

fn conv_backward<const N: usize>(
    ops: Ops<(FlexTensor, FlexTensor, Geom), N>,
    grads: &mut Gradients,
) {
    let (x, w, geom) = &ops.state;
    let dy = grads.consume::<Flex>(&ops.node);
    let want: [bool; 3] = std::array::from_fn(|i| ops.parents.get(i).is_some_and(|p| p.is_some()));
    let out = backward(x, w, &dy, geom, want);
    for (parent, grad) in ops.parents.iter().zip(out) {
        if let (Some(node), Some(grad)) = (parent, grad) {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl Backward<Flex, 3> for ConvBackward {
    type State = (FlexTensor, FlexTensor, Geom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        conv_backward(ops, grads);
    }
}

impl Backward<Flex, 2> for ConvBackward {
    type State = (FlexTensor, FlexTensor, Geom);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        conv_backward(ops, grads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_range() {
        // offset -1, stride 1, side 5, 5 outputs: ox 0 reads -1 (outside), 1..5 inside.
        assert_eq!(inside(-1, 1, 5, 5), (1, 5));
        // offset +1: ox 4 reads 5 (outside).
        assert_eq!(inside(1, 1, 5, 5), (0, 4));
        // stride 2, offset 0, side 5, 3 outputs: reads 0, 2, 4.
        assert_eq!(inside(0, 2, 5, 3), (0, 3));
        // stride 2, offset 1, side 5, 3 outputs: reads 1, 3, 5 -> last outside.
        assert_eq!(inside(1, 2, 5, 3), (0, 2));
        // everything outside.
        assert_eq!(inside(7, 1, 5, 3), (0, 0));
        assert_eq!(inside(-9, 1, 5, 3), (3, 3));
    }

    #[test]
    fn geometry() {
        let g = Geom::new([2, 3, 8, 8], [4, 3, 3, 3], [2, 2], [1, 1], [0, 0, 1, 1]).unwrap();
        assert_eq!((g.oh, g.ow), (4, 4)); // taming's Downsample: 8 -> 4
        assert!(Geom::new([1, 3, 2, 2], [4, 3, 5, 5], [1, 1], [1, 1], [0; 4]).is_none());
        assert!(Geom::new([1, 3, 8, 8], [4, 2, 3, 3], [1, 1], [1, 1], [0; 4]).is_none());
    }
}
