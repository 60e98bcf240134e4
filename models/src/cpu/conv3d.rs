//! 3-D convolution (video autoencoders' layers: groups 1, any kernel, stride, dilation and zero
//! padding) as vol2col + GEMM, forward and backward, the 2-D kernel's scheme one dimension up:
//!
//! * forward: `y_n = W [co, K] . cols_n [K, P] + b`;
//! * weight gradient: `dW = sum_n dy_n [co, P] . cols_n^T [P, K]`;
//! * input gradient, stride 1: the forward convolution of `dy` with the kernel flipped in space
//!   and transposed in channels (a product whose inner dimension is `c_out kd kh kw`); other
//!   strides: `dcols_n = W^T . dy_n`, scattered back by col2vol;
//! * bias gradient: `db = sum_{n, p} dy` (f64 sums),
//!
//! with `K = c_in kd kh kw`, `P = d_out h_out w_out`. A video sample is large, so each is cut
//! into blocks of output rows (a row is one `(t, y)` of the output, `w_out` wide) whose columns
//! fit [`BLOCK_FLOATS`]; samples run in parallel, and a block's GEMM is itself parallel when
//! it is large (a batch of one still uses every core). burn's own backward goes through a
//! transposed convolution, barely parallel on the CPU.

use burn::{
    backend::{Flex, flex::FlexTensor},
    nn::{PaddingConfig3d, conv::Conv3d},
    tensor::{Tensor, TensorPrimitive, backend::Backend, ops::FloatTensorOps},
};
use rayon::prelude::*;

use super::conv2d::{inside, view};
use super::tensor::{
    Cpu, Routed, ad_primitive, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec,
    recycle_tensor, route, scratch, scratch_tensor, values,
};
use super::{conv_op, reduce, winograd3d};

/// Column-matrix floats per block of output rows (1 MiB).
const BLOCK_FLOATS: usize = 1 << 18;

/// Applies `conv` to `x` `[batch, c_in, t, h, w]` (rotor's kernels on the CPU backend).
pub fn conv3d<B: Backend>(conv: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
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
            let w = ad_primitive(cast::<_, Tensor<Cpu, 5>>(weight));
            let b = bias.map(|b| ad_primitive(cast::<_, Tensor<Cpu, 1>>(b)));
            let x = ad_primitive(x);
            let Some(geom) = Geom::new(
                dims(&x.primitive),
                dims(&w.primitive),
                conv.stride,
                conv.dilation,
                pad,
            ) else {
                return conv.forward(cast(Tensor::<Cpu, 5>::from_primitive(
                    TensorPrimitive::Float(x),
                )));
            };
            let out = forward(
                &x.primitive,
                &w.primitive,
                b.as_ref().map(|b| &b.primitive),
                &geom,
            );
            let out = conv_op::record(x, w, b, geom, out);
            cast(Tensor::<Cpu, 5>::from_primitive(TensorPrimitive::Float(
                out,
            )))
        }
        Routed::Plain(x) => {
            let x = flex_primitive(x);
            let w = flex_primitive(cast::<_, Tensor<Flex, 5>>(weight));
            let b = bias.map(|b| flex_primitive(cast::<_, Tensor<Flex, 1>>(b)));
            match Geom::new(dims(&x), dims(&w), conv.stride, conv.dilation, pad) {
                Some(geom) => cast(flex_tensor::<5>(forward(&x, &w, b.as_ref(), &geom))),
                None => conv.forward(cast(flex_tensor::<5>(x))),
            }
        }
        Routed::Other(x) => conv.forward(x),
    }
}

/// `[front, top, left]` padding of `conv` (the same on both sides, as burn's Conv3d pads), or
/// `None` for an asymmetric "same" padding (burn's own error then).
fn padding<B: Backend>(conv: &Conv3d<B>, [_, _, d, h, w]: [usize; 5]) -> Option<[usize; 3]> {
    match conv.padding {
        PaddingConfig3d::Valid => Some([0; 3]),
        PaddingConfig3d::Explicit(d, h, w) => Some([d, h, w]),
        PaddingConfig3d::Same => {
            let mut pad = [0; 3];
            for (i, side) in [d, h, w].into_iter().enumerate() {
                let (k, s) = (conv.kernel_size[i], conv.stride[i]);
                let out = side.div_ceil(s);
                let total = ((out.max(1) - 1) * s + k).saturating_sub(side);
                if total % 2 == 1 {
                    return None;
                }
                pad[i] = total / 2;
            }
            Some(pad)
        }
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) ci: usize,
    /// Input `[t, h, w]`.
    pub(super) size: [usize; 3],
    pub(super) co: usize,
    pub(super) kernel: [usize; 3],
    pub(super) stride: [usize; 3],
    pub(super) dilation: [usize; 3],
    /// Per side, both ends.
    pub(super) pad: [usize; 3],
    /// Output `[t, h, w]`.
    pub(super) out: [usize; 3],
}

impl Geom {
    /// `None` when the padded input is smaller than the dilated kernel, a stride is 0, or the
    /// channels disagree.
    fn new(
        [n, ci, t, h, w]: [usize; 5],
        [co, wci, kt, kh, kw]: [usize; 5],
        stride: [usize; 3],
        dilation: [usize; 3],
        pad: [usize; 3],
    ) -> Option<Self> {
        let size = [t, h, w];
        let kernel = [kt, kh, kw];
        let mut out = [0; 3];
        for i in 0..3 {
            let span = dilation[i] * kernel[i].checked_sub(1)? + 1;
            let padded = size[i] + 2 * pad[i];
            if stride[i] == 0 || dilation[i] == 0 || padded < span {
                return None;
            }
            out[i] = (padded - span) / stride[i] + 1;
        }
        (wci == ci).then_some(Self {
            n,
            ci,
            size,
            co,
            kernel,
            stride,
            dilation,
            pad,
            out,
        })
    }

    /// Rows of the column matrix.
    fn k(&self) -> usize {
        self.ci * self.kernel.iter().product::<usize>()
    }

    /// Output voxels per channel.
    fn p(&self) -> usize {
        self.out.iter().product()
    }

    /// Input voxels per channel.
    pub(super) fn volume(&self) -> usize {
        self.size.iter().product()
    }

    /// Output rows (`t_out h_out`) per sample.
    fn rows(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// The output-row blocks `(first row, rows)` of one sample.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let per = (BLOCK_FLOATS / (self.k() * self.out[2]).max(1)).clamp(1, self.rows().max(1));
        (0..self.rows())
            .step_by(per)
            .map(move |r0| (r0, per.min(self.rows() - r0)))
    }

    /// For output row `r` and kernel offsets `(a, i)`: the input `(t, y)`, if inside.
    fn source_row(&self, r: usize, a: usize, i: usize) -> Option<(usize, usize)> {
        let (zt, zy) = (r / self.out[1], r % self.out[1]);
        let it = (zt * self.stride[0] + a * self.dilation[0]) as isize - self.pad[0] as isize;
        let iy = (zy * self.stride[1] + i * self.dilation[1]) as isize - self.pad[1] as isize;
        (it >= 0 && iy >= 0 && (it as usize) < self.size[0] && (iy as usize) < self.size[1])
            .then_some((it as usize, iy as usize))
    }

    /// Every kernel offset `(row of the column matrix within a channel, a, i, j)`.
    fn offsets(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let [kt, kh, kw] = self.kernel;
        (0..kt * kh * kw).map(move |o| (o, o / (kh * kw), (o / kw) % kh, o % kw))
    }
}

/// The columns `[K, rows w_out]` of output rows `r0..r0 + rows` of one sample `x`
/// `[c_in, t, h, w]`, into `out` (every element written).
fn vol2col(x: &[f32], g: &Geom, r0: usize, rows: usize, out: &mut [f32]) {
    let [_, h, w] = g.size;
    let ow = g.out[2];
    let n = rows * ow;
    let per_channel = g.kernel.iter().product::<usize>();
    for (ci, chunk) in out.chunks_mut(per_channel * n).enumerate() {
        let src = &x[ci * g.volume()..][..g.volume()];
        for (o, a, i, j) in g.offsets() {
            let dst_rows = &mut chunk[o * n..][..n];
            let x_off = (j * g.dilation[2]) as isize - g.pad[2] as isize;
            let (lo, hi) = inside(x_off, g.stride[2], w, ow);
            for (r, dst) in dst_rows.chunks_mut(ow).enumerate() {
                let Some((it, iy)) = g.source_row(r0 + r, a, i) else {
                    dst.fill(0.0);
                    continue;
                };
                let line = &src[(it * h + iy) * w..][..w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if g.stride[2] == 1 {
                    let s0 = (lo as isize + x_off) as usize;
                    dst[lo..hi].copy_from_slice(&line[s0..s0 + (hi - lo)]);
                } else {
                    for (ox, d) in dst[lo..hi].iter_mut().enumerate() {
                        *d = line[(((lo + ox) * g.stride[2]) as isize + x_off) as usize];
                    }
                }
            }
        }
    }
}

/// Adds the column gradients `[K, rows w_out]` of output rows `r0..r0 + rows` into one
/// sample's input gradient `dx` `[c_in, t, h, w]`.
fn col2vol(dcols: &[f32], g: &Geom, r0: usize, rows: usize, dx: &mut [f32]) {
    let [_, h, w] = g.size;
    let ow = g.out[2];
    let n = rows * ow;
    let per_channel = g.kernel.iter().product::<usize>();
    for (ci, chunk) in dcols.chunks(per_channel * n).enumerate() {
        let dst = &mut dx[ci * g.volume()..][..g.volume()];
        for (o, a, i, j) in g.offsets() {
            let src_rows = &chunk[o * n..][..n];
            let x_off = (j * g.dilation[2]) as isize - g.pad[2] as isize;
            let (lo, hi) = inside(x_off, g.stride[2], w, ow);
            if lo == hi {
                continue;
            }
            for (r, src) in src_rows.chunks(ow).enumerate() {
                let Some((it, iy)) = g.source_row(r0 + r, a, i) else {
                    continue;
                };
                let line = &mut dst[(it * h + iy) * w..][..w];
                if g.stride[2] == 1 {
                    let s0 = (lo as isize + x_off) as usize;
                    for (d, s) in line[s0..s0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += s;
                    }
                } else {
                    for (ox, s) in src[lo..hi].iter().enumerate() {
                        line[(((lo + ox) * g.stride[2]) as isize + x_off) as usize] += s;
                    }
                }
            }
        }
    }
}

/// The weights as a `[1, co, K]` matrix.
fn weight_matrix(w: &FlexTensor, g: &Geom) -> FlexTensor {
    contiguous(w).reshape([1, g.co, g.k()].into())
}

/// The convolution's output `[n, co, t_out, h_out, w_out]`.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, g: &Geom) -> FlexTensor {
    if winograd3d::applies(g) {
        return winograd3d::forward(x, w, b, g);
    }
    let x = contiguous(x);
    let xs = values(&x);
    let wm = weight_matrix(w, g);
    let bias = b.map(|b| contiguous(b).into_owned());
    let bias = bias.as_ref().map(values);
    let (k, p, ow) = (g.k(), g.p(), g.out[2]);
    let mut out = vec![0f32; g.n * g.co * p];
    out.par_chunks_mut((g.co * p).max(1))
        .enumerate()
        .for_each(|(s, o)| {
            let sample = &xs[s * g.ci * g.volume()..][..g.ci * g.volume()];
            for (r0, rows) in g.blocks() {
                let n = rows * ow;
                let mut buf = scratch(k * n);
                vol2col(sample, g, r0, rows, &mut buf[..k * n]);
                let (full, cols) = scratch_tensor(buf, &[1, k, n]);
                let y = Flex::float_matmul(wm.clone(), cols); // [1, co, n]
                recycle_tensor(full);
                let y = contiguous(&y);
                for (c, yc) in values(&y).chunks(n).enumerate() {
                    let add = bias.map_or(0.0, |b| b[c]);
                    for (o, y) in o[c * p + r0 * ow..][..n].iter_mut().zip(yc) {
                        *o = y + add;
                    }
                }
            }
        });
    from_vec(out, &[g.n, g.co, g.out[0], g.out[1], g.out[2]])
}

/// Gradients of the input, the weight and the bias (each only when asked for).
fn backward(
    x: &FlexTensor,
    w: &FlexTensor,
    dy: &FlexTensor,
    g: &Geom,
    [want_x, want_w, want_b]: [bool; 3],
) -> [Option<FlexTensor>; 3] {
    // Stride 1: the input gradient is itself a convolution, run by the forward kernel; no
    // col2vol and no [K, P] product of inner dimension c_out.
    let dx_conv = if want_x {
        input_grad_as_conv(dy, w, g)
    } else {
        None
    };
    let want_x = want_x && dx_conv.is_none();
    let dw_winograd = (want_w && winograd3d::applies(g)).then(|| winograd3d::weight_grad(x, dy, g));
    let want_w = want_w && dw_winograd.is_none();
    let x = contiguous(x);
    let xs = values(&x);
    let dy = contiguous(dy);
    let dys = values(&dy);
    let (k, p, ow) = (g.k(), g.p(), g.out[2]);
    let wt = weight_matrix(w, g).transpose(1, 2); // [1, K, co]
    let plane = g.ci * g.volume();
    // One sample: adds its input gradient into `dx`, its weight gradient into `dw`.
    let task = |s: usize, mut dx: Option<&mut [f32]>, dw: &mut [f32]| {
        for (r0, rows) in g.blocks() {
            let n = rows * ow;
            let dy_b = view(&dy, [1, g.co, n], g.co * p, p, s * g.co * p + r0 * ow);
            if want_w {
                let mut buf = scratch(k * n);
                vol2col(&xs[s * plane..][..plane], g, r0, rows, &mut buf[..k * n]);
                let (full, cols) = scratch_tensor(buf, &[1, k, n]);
                let cols_t = cols.transpose(1, 2);
                drop(cols);
                let part = Flex::float_matmul(dy_b.clone(), cols_t); // [1, co, K]
                recycle_tensor(full);
                let part = contiguous(&part);
                reduce::add_into(dw, values(&part));
            }
            if let Some(dx) = dx.as_deref_mut() {
                let dcols = Flex::float_matmul(wt.clone(), dy_b); // [1, K, n]
                let dcols = contiguous(&dcols);
                col2vol(values(&dcols), g, r0, rows, dx);
            }
        }
    };
    // One task per sample, summed in sample order whatever the thread count.
    let len = if want_w { g.co * k } else { 0 };
    let mut dx = want_x.then(|| vec![0f32; g.n * plane]);
    let dw = if want_x || want_w {
        // (A stride-1 input gradient came from `input_grad_as_conv`: `dx` is then `None` here.)
        let out = dx.as_deref_mut().map(|dx| (dx, plane));
        reduce::ordered_sum(g.n, len, out, |s, d, acc| task(s, d, acc))
    } else {
        Vec::new()
    };
    let db = want_b.then(|| conv_op::bias_grad(dys, g.n, g.co, p));
    let [kt, kh, kw] = g.kernel;
    let [t, h, w] = g.size;
    [
        dx_conv.or_else(|| dx.map(|v| from_vec(v, &[g.n, g.ci, t, h, w]))),
        dw_winograd
            .or(want_w.then_some(dw))
            .map(|dw| from_vec(dw, &[g.co, g.ci, kt, kh, kw])),
        db,
    ]
}

/// `dx` of a stride-1 convolution as the forward convolution of `dy` with the kernel flipped in
/// space and transposed in channels, padded by `dilation (k - 1) - pad` per side; `None` for
/// other strides or a padding beyond the dilated kernel span (then col2vol does it).
fn input_grad_as_conv(dy: &FlexTensor, w: &FlexTensor, g: &Geom) -> Option<FlexTensor> {
    if g.stride != [1; 3] {
        return None;
    }
    let mut pad = [0; 3];
    for (i, p) in pad.iter_mut().enumerate() {
        *p = (g.dilation[i] * (g.kernel[i] - 1)).checked_sub(g.pad[i])?;
    }
    let wv = contiguous(w);
    let ws = values(&wv);
    let [kt, kh, kw] = g.kernel;
    let per = kt * kh * kw;
    let mut flipped = vec![0f32; g.ci * g.co * per];
    for co in 0..g.co {
        for ci in 0..g.ci {
            let src = &ws[(co * g.ci + ci) * per..][..per];
            let dst = &mut flipped[(ci * g.co + co) * per..][..per];
            // Reversing the flattened (a, i, j) offsets flips all three axes at once.
            for (d, v) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *v;
            }
        }
    }
    let wf = from_vec(flipped, &[g.ci, g.co, kt, kh, kw]);
    let gt = Geom::new(
        [g.n, g.co, g.out[0], g.out[1], g.out[2]],
        [g.ci, g.co, kt, kh, kw],
        [1; 3],
        g.dilation,
        pad,
    )?;
    debug_assert_eq!(gt.out, g.size);
    Some(forward(dy, &wf, None, &gt))
}

impl conv_op::ConvGrads for Geom {
    fn grads(
        &self,
        x: &FlexTensor,
        w: &FlexTensor,
        dy: &FlexTensor,
        want: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        backward(x, w, dy, self, want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let g = Geom::new([1, 2, 5, 8, 8], [3, 2, 3, 4, 4], [1, 2, 2], [1; 3], [1; 3]).unwrap();
        assert_eq!(g.out, [5, 4, 4]);
        assert_eq!(g.k(), 2 * 3 * 4 * 4);
        assert!(Geom::new([1, 2, 2, 8, 8], [3, 2, 3, 3, 3], [1; 3], [1; 3], [0; 3]).is_none());
        assert!(Geom::new([1, 2, 4, 8, 8], [3, 1, 3, 3, 3], [1; 3], [1; 3], [0; 3]).is_none());
        // Row 5 of a [5, 4, 4] output is (t 1, y 1); kernel offset (0, 0) with padding 1 reads
        // input (t 0, y 1 * 2 - 1 = 1).
        assert_eq!(g.source_row(5, 0, 0), Some((0, 1)));
        assert_eq!(g.source_row(0, 0, 0), None);
    }
}
