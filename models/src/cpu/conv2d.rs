//! 2-D convolution (groups 1, any kernel, stride, dilation and asymmetric zero padding) as
//! im2col + GEMM, forward and backward:
//!
//! * forward: `y_n = W [co, K] . cols_n [K, P] + b`;
//! * weight gradient: `dW = sum_n dy_n [co, P] . cols_n^T [P, K]` (or its transpose, whichever
//!   puts the larger of `co` and `K` on the GEMM's rows);
//! * input gradient, stride 1: the forward convolution of `dy` with the kernel flipped in space
//!   and transposed in channels; other strides: `dcols_n = W^T . dy_n`, scattered by col2im;
//! * bias gradient: `db = sum_{n, p} dy` (f64 sums),
//!
//! with `K = c_in kh kw`, `P = h_out w_out`. Work is parallel over samples: tiny samples go
//! several to one batched GEMM (Flex's matmul, the `gemm` crate), large ones are cut into blocks
//! of output rows whose columns fit [`BLOCK_FLOATS`], so columns, GEMM and scatter stay in cache
//! and no batch-sized temporary exists. Columns live in a per-thread buffer and are rebuilt in
//! the backward rather than kept. Stride-1 columns span the padded width ("wide" rows: each
//! kernel offset's row is one contiguous slice of the padded input; the extra outputs are
//! dropped); 1x1 stride-1 unpadded convolutions use the input itself. burn's own backward goes
//! through a transposed convolution and a generic weight-gradient path, barely parallel on the
//! CPU; that is what this replaces.

use burn::{
    backend::{Flex, flex::FlexTensor, flex::Layout},
    nn::{PaddingConfig2d, conv::Conv2d},
    tensor::{Shape, Tensor, TensorPrimitive, backend::Backend, ops::FloatTensorOps},
};
use rayon::prelude::*;

use super::tensor::{
    Routed, ad_primitive, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec,
    recycle_tensor, route, scratch, values,
};
use super::{conv_op, reduce, winograd};

/// Column-matrix floats per block of output rows (1 MiB, an L2 cache: 4x larger and 2x smaller
/// blocks both measured slower on the VQ-VAE step).
const BLOCK_FLOATS: usize = 1 << 18;

/// Column-matrix floats of a group of small samples (256 KiB).
const GROUP_FLOATS: usize = 1 << 16;

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
            let out = conv_op::record(x, w, b, geom, out);
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
        Routed::Other(x) if crate::precision::is_half(x.dtype()) => half_reference(conv, x, pad),
        Routed::Other(x) => conv.forward(x),
    }
}

/// burn's convolution of a 16-bit input (mixed precision), its zero padding made here: burn 0.21
/// pads asymmetric padding with a tensor of the default float type (f32), which fails with a
/// "dtype mismatch" on bf16 inputs.
fn half_reference<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, pad: [usize; 4]) -> Tensor<B, 4> {
    let mut unpadded = conv.clone();
    unpadded.padding = PaddingConfig2d::Valid;
    unpadded.forward(pad_zeros(x, pad))
}

/// `x` `[n, c, h, w]` with `[top, left, bottom, right]` zeros of its own dtype around it.
pub(crate) fn pad_zeros<B: Backend>(x: Tensor<B, 4>, [t, l, b, r]: [usize; 4]) -> Tensor<B, 4> {
    pad_dim(pad_dim(x, 3, l, r), 2, t, b)
}

/// `x` with `before` and `after` zeros of its own dtype along `dim`.
fn pad_dim<B: Backend>(x: Tensor<B, 4>, dim: usize, before: usize, after: usize) -> Tensor<B, 4> {
    if before + after == 0 {
        return x;
    }
    let (dtype, device, dims) = (x.dtype(), x.device(), x.dims());
    let zeros = |len: usize| {
        let mut shape = dims;
        shape[dim] = len;
        Tensor::<B, 4>::zeros(shape, &device).cast(dtype)
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(zeros(before));
    }
    parts.push(x);
    if after > 0 {
        parts.push(zeros(after));
    }
    Tensor::cat(parts, dim)
}

/// `[top, left, bottom, right]` zero padding of `conv` for an input of these dims.
fn padding<B: Backend>(conv: &Conv2d<B>, [_, _, h, w]: [usize; 4]) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        PaddingConfig2d::Same => {
            // burn's rule (padding.rs, `calculate_same_padding`): output side = ceil(side /
            // stride), total padding `(out - 1) stride + k - side` (dilation not counted, as in
            // burn), split with the extra on the end.
            let total = |side: usize, k: usize, s: usize| {
                let out = side.div_ceil(s);
                if out == 0 {
                    return 0;
                }
                ((out - 1) * s + k).saturating_sub(side)
            };
            let th = total(h, conv.kernel_size[0], conv.stride[0]);
            let tw = total(w, conv.kernel_size[1], conv.stride[1]);
            Some([th / 2, tw / 2, th - th / 2, tw - tw / 2])
        }
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(super) n: usize,
    pub(super) ci: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) co: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: [usize; 2],
    pub(super) dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub(super) pad: [usize; 4],
    pub(super) oh: usize,
    pub(super) ow: usize,
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

    /// Stride-1 convolutions use "wide" rows: columns span the padded width `wp`, so each
    /// kernel offset's column row is ONE contiguous slice of the padded input (and col2im one
    /// contiguous add); the `wp - ow` extra outputs per row are computed and dropped.
    fn wide(&self) -> bool {
        self.stride == [1, 1] && !self.pointwise()
    }

    /// Padded input width.
    fn wp(&self) -> usize {
        self.w + self.pad[1] + self.pad[3]
    }

    /// Column-matrix width of one output row.
    fn row_width(&self) -> usize {
        if self.wide() { self.wp() } else { self.ow }
    }

    /// Floats of the padded input rows behind `rows` output rows (plus the overhang the last
    /// kernel offset reads).
    fn slab_len(&self, rows: usize) -> usize {
        (rows + self.dilation[0] * (self.kh - 1)) * self.wp() + self.dilation[1] * (self.kw - 1)
    }

    /// Output rows per block, so a block's columns fit [`BLOCK_FLOATS`].
    fn block_rows(&self) -> usize {
        (BLOCK_FLOATS / (self.k() * self.row_width()).max(1)).clamp(1, self.oh.max(1))
    }

    /// The output-row blocks `(first row, rows)` of one sample (all rows when samples are
    /// grouped).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let rows = if self.group() > 1 {
            self.oh
        } else {
            self.block_rows()
        };
        (0..self.oh)
            .step_by(rows.max(1))
            .map(move |r0| (r0, rows.min(self.oh - r0)))
    }

    /// Samples per parallel task: tiny samples go several to one batched GEMM (a GEMM call
    /// per sample would be mostly call overhead) while the group's columns stay cache-sized
    /// ([`GROUP_FLOATS`]: larger groups measured slower), at most [`reduce::SLOTS`] tasks (a
    /// function of the batch only, so the weight gradient's summation order is fixed).
    fn group(&self) -> usize {
        let per_sample = (self.k() * self.oh * self.row_width()).max(1);
        let by_balance = reduce::samples_per_task(self.n);
        (GROUP_FLOATS / per_sample).min(by_balance).max(1)
    }
}

/// A `[batch, rows, cols]` view of `t` (contiguous) with batch stride `batch_stride`, row
/// stride `stride`, from element `offset`.
pub(super) fn view(
    t: &FlexTensor,
    [batch, rows, cols]: [usize; 3],
    batch_stride: usize,
    stride: usize,
    offset: usize,
) -> FlexTensor {
    let start = t.layout().start_offset() + offset;
    t.clone().with_layout(Layout::new(
        Shape::from(vec![batch, rows, cols]),
        vec![batch_stride as isize, stride as isize, 1],
        start,
    ))
}

/// A block's column matrix: a view of the input (1x1 convolutions) or of a scratch buffer.
struct Columns {
    /// `[samples, K, rows ow]`.
    view: FlexTensor,
    /// The whole scratch buffer, handed back by [`Columns::recycle`].
    scratch: Option<FlexTensor>,
}

impl Columns {
    /// The columns `[ns, K, rows ow]` of output rows `r0..r0 + rows` of samples
    /// `s0..s0 + ns`.
    fn new(xt: &FlexTensor, g: &Geom, s0: usize, ns: usize, r0: usize, rows: usize) -> Self {
        let (k, p) = (g.k(), g.p());
        if g.pointwise() {
            let cols_per = rows * g.ow;
            // The input planes themselves: channel stride P, these rows.
            return Self {
                view: view(xt, [ns, k, cols_per], k * p, p, s0 * k * p + r0 * g.ow),
                scratch: None,
            };
        }
        let x = values(xt);
        let plane = g.h * g.w;
        let cols_per = rows * g.row_width();
        let len = ns * k * cols_per;
        let mut buf = scratch(len);
        // Every element is written (zeros included).
        let chunks = buf[..len].chunks_mut(g.kh * g.kw * cols_per).enumerate();
        if g.wide() {
            let mut slab = vec![0f32; g.slab_len(rows)];
            for (i, out) in chunks {
                let src = &x[(s0 * g.ci + i) * plane..][..plane];
                pad_rows(src, g, r0, rows, &mut slab);
                for (o, dst) in out.chunks_mut(cols_per).enumerate() {
                    let (ki, kj) = (o / g.kw, o % g.kw);
                    let at = ki * g.dilation[0] * g.wp() + kj * g.dilation[1];
                    dst.copy_from_slice(&slab[at..at + cols_per]);
                }
            }
        } else {
            for (i, out) in chunks {
                let src = &x[(s0 * g.ci + i) * plane..][..plane];
                im2col_plane(src, g, r0, rows, out);
            }
        }
        let total = buf.len();
        let scratch = from_vec(buf, &[total]);
        Self {
            view: view(&scratch, [ns, k, cols_per], k * cols_per, cols_per, 0),
            scratch: Some(scratch),
        }
    }

    /// Returns the scratch buffer to this thread (once the views are gone).
    fn recycle(self) {
        let Self { view, scratch } = self;
        drop(view);
        if let Some(t) = scratch {
            recycle_tensor(t);
        }
    }
}

/// The zero-padded input rows behind output rows `r0..r0 + rows` of one plane, row width
/// `wp`, into `slab` (fully written, overhang zeros included).
fn pad_rows(x: &[f32], g: &Geom, r0: usize, rows: usize, slab: &mut [f32]) {
    let wp = g.wp();
    let (pl, w) = (g.pad[1], g.w);
    let used = (rows + g.dilation[0] * (g.kh - 1)) * wp;
    for (q, row) in slab[..used].chunks_mut(wp).enumerate() {
        let iy = (r0 + q) as isize - g.pad[0] as isize;
        if iy < 0 || iy >= g.h as isize {
            row.fill(0.0);
            continue;
        }
        row[..pl].fill(0.0);
        row[pl..pl + w].copy_from_slice(&x[iy as usize * w..][..w]);
        row[pl + w..].fill(0.0);
    }
    slab[used..].fill(0.0);
}

/// Adds one plane's wide column gradients (`kh kw` rows of `rows wp`) into its input plane,
/// through a padded slab: one contiguous add per kernel offset.
fn col2im_wide(dcols: &[f32], g: &Geom, r0: usize, rows: usize, slab: &mut [f32], dx: &mut [f32]) {
    let wp = g.wp();
    let cols_per = rows * wp;
    slab.fill(0.0);
    for (o, src) in dcols.chunks(cols_per).enumerate() {
        let (ki, kj) = (o / g.kw, o % g.kw);
        let at = ki * g.dilation[0] * wp + kj * g.dilation[1];
        for (d, s) in slab[at..at + cols_per].iter_mut().zip(src) {
            *d += s;
        }
    }
    let (pl, w) = (g.pad[1], g.w);
    let used = (rows + g.dilation[0] * (g.kh - 1)) * wp;
    for (q, row) in slab[..used].chunks(wp).enumerate() {
        let iy = (r0 + q) as isize - g.pad[0] as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        for (d, s) in dx[iy as usize * w..][..w].iter_mut().zip(&row[pl..pl + w]) {
            *d += s;
        }
    }
}

/// For output column `ox` to read input column `ox * stride + offset`, the range of `ox` that
/// lands inside `[0, side)`.
pub(super) fn inside(offset: isize, stride: usize, side: usize, out: usize) -> (usize, usize) {
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

/// The `kh kw` rows of one input channel's columns, for output rows `r0..r0 + rows`.
fn im2col_plane(x: &[f32], g: &Geom, r0: usize, rows: usize, out: &mut [f32]) {
    let p = rows * g.ow;
    for i in 0..g.kh {
        for j in 0..g.kw {
            let dst_rows = &mut out[(i * g.kw + j) * p..][..p];
            let x_off = (j * g.dilation[1]) as isize - g.pad[1] as isize;
            let (lo, hi) = inside(x_off, g.stride[1], g.w, g.ow);
            for r in 0..rows {
                let oy = r0 + r;
                let dst = &mut dst_rows[r * g.ow..][..g.ow];
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

/// Adds one channel's column gradients (`kh kw` rows of `rows ow`, output rows
/// `r0..r0 + rows`) into its input plane.
fn col2im_plane(dcols: &[f32], g: &Geom, r0: usize, rows: usize, dx: &mut [f32]) {
    let p = rows * g.ow;
    for i in 0..g.kh {
        for j in 0..g.kw {
            let src_rows = &dcols[(i * g.kw + j) * p..][..p];
            let x_off = (j * g.dilation[1]) as isize - g.pad[1] as isize;
            let (lo, hi) = inside(x_off, g.stride[1], g.w, g.ow);
            for r in 0..rows {
                let oy = r0 + r;
                let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize - g.pad[0] as isize;
                if iy < 0 || iy >= g.h as isize || lo == hi {
                    continue;
                }
                let src = &src_rows[r * g.ow..][..g.ow];
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

/// The weights as a `[1, co, K]` matrix (broadcast over a block's samples).
fn weight_matrix(w: &FlexTensor, g: &Geom) -> FlexTensor {
    contiguous(w).reshape([1, g.co, g.k()].into())
}

/// The convolution's output `[n, co, oh, ow]`.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, g: &Geom) -> FlexTensor {
    if winograd::applies(g) {
        return winograd::forward(x, w, b, g);
    }
    let x = contiguous(x);
    let wm = weight_matrix(w, g);
    let p = g.p();
    let bias = b.map(|b| contiguous(b).into_owned());
    let bias = bias.as_ref().map(values);
    let group = g.group();
    let mut out = vec![0f32; g.n * g.co * p];
    out.par_chunks_mut((group * g.co * p).max(1))
        .enumerate()
        .for_each(|(t, o)| {
            let (s0, ns) = (t * group, o.len() / (g.co * p).max(1));
            for (r0, rows) in g.blocks() {
                let cols = Columns::new(&x, g, s0, ns, r0, rows);
                // [ns, co, rows row_width]
                let y = Flex::float_matmul(wm.clone(), cols.view.clone());
                cols.recycle();
                let y = contiguous(&y);
                let rw = g.row_width();
                for (i, yc) in values(&y).chunks(rows * rw).enumerate() {
                    let (s, c) = (i / g.co, i % g.co);
                    let add = bias.map_or(0.0, |b| b[c]);
                    let dst = &mut o[(s * g.co + c) * p + r0 * g.ow..][..rows * g.ow];
                    for (drow, yrow) in dst.chunks_mut(g.ow).zip(yc.chunks(rw)) {
                        for (o, y) in drow.iter_mut().zip(yrow) {
                            *o = y + add;
                        }
                    }
                }
            }
        });
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
    // Stride 1: the input gradient is itself a convolution (of dy with the flipped, transposed
    // kernel), run by the forward kernel; no col2im and no [K, P] product.
    let dx_conv = if want_x {
        input_grad_as_conv(dy, w, g)
    } else {
        None
    };
    let want_x = want_x && dx_conv.is_none();
    // 3x3 stride 1 with enough channels: the weight gradient through Winograd's transforms.
    let dw_winograd = (want_w && winograd::applies(g)).then(|| winograd::weight_grad(x, dy, g));
    let want_w = want_w && dw_winograd.is_none();
    let x = contiguous(x);
    let dy = contiguous(dy);
    let dys = values(&dy);
    let (k, p) = (g.k(), g.p());
    let wt = weight_matrix(w, g).transpose(1, 2); // [1, K, co]
    let plane = g.ci * g.h * g.w;
    let group = g.group();
    // Samples s0..s0 + ns: writes their input gradient, adds their weight gradient into `dw`
    // (sample by sample, block by block: a fixed order).
    let task = |s0: usize, ns: usize, dx: Option<&mut [f32]>, dw: &mut [f32]| {
        let mut dw = want_w.then_some(dw);
        let mut dx = dx;
        let mut slab = vec![
            0f32;
            if g.wide() {
                g.slab_len(g.block_rows().min(g.oh))
            } else {
                0
            }
        ];
        for (r0, rows) in g.blocks() {
            let n = rows * g.ow;
            let dy_b = if g.wide() {
                // dy in the wide layout, zeros in the dropped columns.
                let wp = g.wp();
                let mut wide = vec![0f32; ns * g.co * rows * wp];
                for (i, dst) in wide.chunks_mut(rows * wp).enumerate() {
                    let src = &dys[(s0 * g.co + i) * p + r0 * g.ow..][..n];
                    for (drow, srow) in dst.chunks_mut(wp).zip(src.chunks(g.ow)) {
                        drow[..g.ow].copy_from_slice(srow);
                    }
                }
                from_vec(wide, &[ns, g.co, rows * wp])
            } else {
                view(&dy, [ns, g.co, n], g.co * p, p, s0 * g.co * p + r0 * g.ow)
            };
            if let Some(dw) = dw.as_mut() {
                let cols = Columns::new(&x, g, s0, ns, r0, rows);
                // GEMM tiles are 64 rows (AVX-512) or 16: put the larger of co and K on rows.
                if g.co < 64 {
                    // [ns, K, n] x [ns, n, co] -> [ns, K, co]
                    let part = Flex::float_matmul(cols.view.clone(), dy_b.clone().transpose(1, 2));
                    cols.recycle();
                    let part = contiguous(&part);
                    for part in values(&part).chunks(g.co * k) {
                        for (kk, row) in part.chunks(g.co).enumerate() {
                            for (c, v) in row.iter().enumerate() {
                                dw[c * k + kk] += v;
                            }
                        }
                    }
                } else {
                    // [ns, co, n] x [ns, n, K] -> [ns, co, K]
                    let part = Flex::float_matmul(dy_b.clone(), cols.view.transpose(1, 2));
                    cols.recycle();
                    let part = contiguous(&part);
                    for part in values(&part).chunks(g.co * k) {
                        reduce::add_into(dw, part);
                    }
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                let dcols = Flex::float_matmul(wt.clone(), dy_b); // [ns, K, n]
                let dcols = contiguous(&dcols);
                let dcols = values(&dcols);
                let hw = g.h * g.w;
                if g.pointwise() {
                    for (i, src) in dcols.chunks(n).enumerate() {
                        dx[i * hw + r0 * g.ow..][..n].copy_from_slice(src);
                    }
                } else if g.wide() {
                    let block = g.kh * g.kw * rows * g.wp();
                    let slab = &mut slab[..g.slab_len(rows)];
                    for (i, dc) in dcols.chunks(block).enumerate() {
                        col2im_wide(dc, g, r0, rows, slab, &mut dx[i * hw..][..hw]);
                    }
                } else {
                    let block = g.kh * g.kw * n;
                    for (i, dc) in dcols.chunks(block).enumerate() {
                        col2im_plane(dc, g, r0, rows, &mut dx[i * hw..][..hw]);
                    }
                }
            }
        }
    };
    // Tasks of `group` samples (a function of the batch, not of the thread count), summed in a
    // fixed order: the same bits on any number of threads.
    let n_tasks = g.n.div_ceil(group);
    let len = if want_w { g.co * k } else { 0 };
    let mut dx = want_x.then(|| vec![0f32; g.n * plane]);
    let dw = if !want_x && !want_w {
        Vec::new()
    } else {
        let out = dx.as_deref_mut().map(|dx| (dx, group * plane));
        reduce::ordered_sum(n_tasks, len, out, |t, d, acc| {
            let s0 = t * group;
            task(s0, group.min(g.n - s0), d, acc)
        })
    };
    let db = want_b.then(|| conv_op::bias_grad(dys, g.n, g.co, p));
    [
        dx_conv.or_else(|| dx.map(|v| from_vec(v, &[g.n, g.ci, g.h, g.w]))),
        dw_winograd
            .or(want_w.then_some(dw))
            .map(|dw| from_vec(dw, &[g.co, g.ci, g.kh, g.kw])),
        db,
    ]
}

/// `dx` of a stride-1 convolution as the forward convolution of `dy` with the kernel flipped
/// in space and transposed in channels, padded by `dilation (k - 1) - pad` per side; `None`
/// when a padding exceeds the dilated kernel span (then col2im does it).
fn input_grad_as_conv(dy: &FlexTensor, w: &FlexTensor, g: &Geom) -> Option<FlexTensor> {
    if g.stride != [1, 1] {
        return None;
    }
    let (sh, sw) = (g.dilation[0] * (g.kh - 1), g.dilation[1] * (g.kw - 1));
    if g.pad[0] > sh || g.pad[2] > sh || g.pad[1] > sw || g.pad[3] > sw {
        return None;
    }
    let pad = [sh - g.pad[0], sw - g.pad[1], sh - g.pad[2], sw - g.pad[3]];
    let wv = contiguous(w);
    let ws = values(&wv);
    let (kh, kw) = (g.kh, g.kw);
    let mut flipped = vec![0f32; g.ci * g.co * kh * kw];
    for co in 0..g.co {
        for ci in 0..g.ci {
            for i in 0..kh {
                for j in 0..kw {
                    flipped[((ci * g.co + co) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)] =
                        ws[((co * g.ci + ci) * kh + i) * kw + j];
                }
            }
        }
    }
    let wf = from_vec(flipped, &[g.ci, g.co, kh, kw]);
    let gt = Geom::new(
        [g.n, g.co, g.oh, g.ow],
        [g.ci, g.co, kh, kw],
        [1, 1],
        g.dilation,
        pad,
    )?;
    debug_assert_eq!((gt.oh, gt.ow), (g.h, g.w));
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
