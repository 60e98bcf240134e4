//! Winograd F(2x2, 3x3) in space for 3x3x3, stride-1, undilated 3-D convolutions with enough
//! channels on both sides (the residual-block and decoder convolutions of the 3-D conv VQGAN):
//! the forward, the weight gradient, and through the forward the input gradient (a stride-1
//! input gradient is the forward convolution of `dy` with the flipped kernel, see
//! [`super::conv3d`]). Each 2x2 output tile of a frame costs `3 x 16` multiplies per channel
//! pair instead of `3 x 36`.
//!
//! Every input frame is transformed once (`V_f = B^T d_f B`, the 2-D transforms of
//! [`super::winograd`]) into the layout `V[xi][frame][ci][tiles]`, with zero frames for the
//! temporal padding. Output frame `t` sums the taps `a = 0, 1, 2` over padded frames
//! `t + a`, whose transforms are adjacent rows of `V[xi]`: the tap sum is one GEMM with inner
//! dimension `3 ci`, `M[xi][t] = U[xi] [co, 3 ci] . V[xi][t..t + 3] [3 ci, tiles]`, with
//! `U[xi][co][a ci + c] = (G w[co, c, a] G^T)[xi]`; all output frames of a block are one
//! batched product (the windows overlap in memory: a strided view, no copy). The forward is
//! linear in `U`, so the weight gradient is `dU[xi] = sum_t dM[xi][t] . V[xi][t..t + 3]^T`
//! (all three taps in one product) with `dM = A dY A^T`, and `dw[a] = G^T dU[a] G`.

use burn::{
    backend::{Flex, flex::FlexTensor, flex::Layout},
    tensor::{Shape, ops::FloatTensorOps},
};
use rayon::prelude::*;

use super::conv3d::Geom;
use super::reduce;
use super::simd::vectorized;
use super::tensor::{
    contiguous, from_vec, recycle, recycle_tensor, scratch, scratch_tensor, values,
};
use super::winograd::{
    grad_tile_rows, input_tile_rows, kernel_grad_transform, kernel_transform, load_input_rows,
    load_output_rows, output_tile_rows, store_output_row,
};

/// Floats of a block's largest transformed array (4 MiB): `16 tw rows max(frames ci, t_out co)`.
const BLOCK_FLOATS: usize = 1 << 20;

/// Fewer channels than this on either side and the GEMMs are too thin to pay for the
/// transforms: vol2col does those convolutions.
const MIN_CHANNELS: usize = 32;

/// Whether `g` is done here.
pub(super) fn applies(g: &Geom) -> bool {
    g.kernel == [3; 3]
        && g.stride == [1; 3]
        && g.dilation == [1; 3]
        && g.ci >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
}

/// How one sample is cut into tiles and blocks of tile rows (every block spans all frames).
struct Tiles {
    /// Tile rows and tiles per row of one frame.
    th: usize,
    tw: usize,
    /// Padded input frames (`t + 2 pad`) and output frames.
    frames: usize,
    t_out: usize,
    /// Tile rows per block.
    rows: usize,
}

impl Tiles {
    fn new(g: &Geom) -> Self {
        let [t_out, oh, ow] = g.out;
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let frames = g.size[0] + 2 * g.pad[0];
        let per_row = 16 * tw * (frames * g.ci).max(t_out * g.co);
        let rows = (BLOCK_FLOATS / per_row.max(1)).clamp(1, th.max(1));
        Self {
            th,
            tw,
            frames,
            t_out,
            rows,
        }
    }

    /// The blocks `(first tile row, tile rows)` of a sample.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.th)
            .step_by(self.rows)
            .map(move |r0| (r0, self.rows.min(self.th - r0)))
    }

    /// The transformed input of a block, `[16, frames, ci, tiles]`, viewed as the windows
    /// `[16, t_out, 3 ci, tiles]` (window `t` starts at padded frame `t`).
    fn windows(&self, v: &FlexTensor, ci: usize, tiles: usize) -> FlexTensor {
        let frame = ci * tiles;
        view4(
            v,
            [16, self.t_out, 3 * ci, tiles],
            [self.frames * frame, frame, tiles],
        )
    }
}

/// A `[a, b, rows, cols]` view of the contiguous `t` with strides `[sa, sb, rows_stride, 1]`.
fn view4(t: &FlexTensor, shape: [usize; 4], [sa, sb, sr]: [usize; 3]) -> FlexTensor {
    t.clone().with_layout(Layout::new(
        Shape::from(shape.to_vec()),
        vec![sa as isize, sb as isize, sr as isize, 1],
        t.layout().start_offset(),
    ))
}

/// The convolution's output `[n, co, t_out, oh, ow]` (see [`applies`]).
pub(super) fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    g: &Geom,
) -> FlexTensor {
    let x = contiguous(x);
    let xs = values(&x);
    let w = contiguous(w);
    // [16, 1, co, 3 ci]: broadcast over the output frames.
    let u = from_vec(weight_transform(values(&w), g), &[16, 1, g.co, 3 * g.ci]);
    let bias = b.map(|b| contiguous(b).into_owned());
    let bias = bias.as_ref().map(values);
    let t = Tiles::new(g);
    let p: usize = g.out.iter().product();
    let plane = g.ci * g.volume();
    let mut out = vec![0f32; g.n * g.co * p];
    out.par_chunks_mut((g.co * p).max(1))
        .enumerate()
        .for_each(|(s, o)| {
            let sample = &xs[s * plane..][..plane];
            for (r0, rows) in t.blocks() {
                let tiles = rows * t.tw;
                let len = 16 * t.frames * g.ci * tiles;
                let mut v = scratch(len);
                input_transform(sample, g, &t, r0, rows, &mut v[..len]);
                let (v, _) = scratch_tensor(v, &[len]);
                let windows = t.windows(&v, g.ci, tiles);
                let m = Flex::float_matmul(u.clone(), windows); // [16, t_out, co, tiles]
                recycle_tensor(v);
                let m = contiguous(&m);
                output_transform(values(&m), g, &t, r0, rows, bias, o);
            }
        });
    from_vec(out, &[g.n, g.co, g.out[0], g.out[1], g.out[2]])
}

/// The weight gradient `[co, ci, 3, 3, 3]` (see [`applies`]).
pub(super) fn weight_grad(x: &FlexTensor, dy: &FlexTensor, g: &Geom) -> Vec<f32> {
    let x = contiguous(x);
    let xs = values(&x);
    let dy = contiguous(dy);
    let dys = values(&dy);
    let t = Tiles::new(g);
    let (plane, p) = (g.ci * g.volume(), g.out.iter().product::<usize>());
    let size = 16 * g.co * 3 * g.ci;
    // One task per sample, summed in sample order whatever the thread count.
    let du = reduce::ordered_sum(g.n, size, None, |s, _, acc| {
        let sample = &xs[s * plane..][..plane];
        let dy_s = &dys[s * g.co * p..][..g.co * p];
        for (r0, rows) in t.blocks() {
            let tiles = rows * t.tw;
            let (lv, ldm) = (16 * t.frames * g.ci * tiles, 16 * t.t_out * g.co * tiles);
            let mut v = scratch(lv);
            input_transform(sample, g, &t, r0, rows, &mut v[..lv]);
            let mut dm = scratch(ldm);
            grad_transform(dy_s, g, &t, r0, rows, &mut dm[..ldm]);
            let (v, _) = scratch_tensor(v, &[lv]);
            let (dm, dm_view) = scratch_tensor(dm, &[16, t.t_out, g.co, tiles]);
            // [16, t_out, co, tiles] x [16, t_out, tiles, 3 ci] -> [16, t_out, co, 3 ci]
            let v_t = t.windows(&v, g.ci, tiles).transpose(2, 3);
            let part = Flex::float_matmul(dm_view, v_t);
            recycle_tensor(v);
            recycle_tensor(dm);
            let part = contiguous(&part);
            // Sum over the output frames, in frame order.
            let per = g.co * 3 * g.ci;
            for (xi, chunk) in values(&part).chunks(t.t_out * per).enumerate() {
                let dst = &mut acc[xi * per..][..per];
                for frame in chunk.chunks(per) {
                    reduce::add_into(dst, frame);
                }
            }
        }
    });
    let dw = weight_grad_transform(&du, g);
    recycle(du);
    dw
}

/// `U[xi][co][a ci + c] = (G w[co, c, a] G^T)[xi]` for weights `[co, ci, 3, 3, 3]`.
fn weight_transform(w: &[f32], g: &Geom) -> Vec<f32> {
    let row = 3 * g.ci;
    let mut u = vec![0f32; 16 * g.co * row];
    for (idx, k) in w.chunks_exact(9).enumerate() {
        let (co, c, a) = (idx / (3 * g.ci), (idx / 3) % g.ci, idx % 3);
        for (xi, v) in kernel_transform(k).into_iter().enumerate() {
            u[(xi * g.co + co) * row + a * g.ci + c] = v;
        }
    }
    u
}

/// `dw[co, c, a] = G^T dU[.][co][a ci + c] G` for `dU` `[16, co, 3 ci]`: the weight gradient
/// `[co, ci, 3, 3, 3]`.
fn weight_grad_transform(du: &[f32], g: &Geom) -> Vec<f32> {
    let row = 3 * g.ci;
    let mut dw = vec![0f32; 27 * g.co * g.ci];
    for (idx, k) in dw.chunks_exact_mut(9).enumerate() {
        let (co, c, a) = (idx / (3 * g.ci), (idx / 3) % g.ci, idx % 3);
        k.copy_from_slice(&kernel_grad_transform(|xi| {
            du[(xi * g.co + co) * row + a * g.ci + c]
        }));
    }
    dw
}

/// `V = B^T d B` of tile rows `r0..r0 + rows` of every frame of one sample `x`
/// `[ci, t, h, w]`, into `v` `[16, frames, ci, rows tw]` (padding frames zero; every element
/// written).
fn input_transform(x: &[f32], g: &Geom, t: &Tiles, r0: usize, rows: usize, v: &mut [f32]) {
    let tw = t.tw;
    let tiles = rows * tw;
    let [frames_in, h, w] = g.size;
    let fplane = h * w;
    let pt = g.pad[0];
    let frame = g.ci * tiles;
    for xi in 0..16 {
        for f in (0..t.frames).filter(|f| *f < pt || *f >= pt + frames_in) {
            v[(xi * t.frames + f) * frame..][..frame].fill(0.0);
        }
    }
    // Input columns -pad_left .. -pad_left + wq cover every tile of a row.
    let wq = 2 * tw + 2;
    vectorized(
        #[inline(always)]
        || {
            let mut d: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; wq]);
            let mut e = vec![0f32; tw + 1];
            let mut o = vec![0f32; tw + 1];
            for c in 0..g.ci {
                for f in 0..frames_in {
                    let src = &x[(c * frames_in + f) * fplane..][..fplane];
                    let fp = f + pt;
                    for r in 0..rows {
                        load_input_rows(src, r0 + r, [h, w], [g.pad[1], g.pad[2]], &mut d);
                        let at = |xi: usize| ((xi * t.frames + fp) * g.ci + c) * tiles + r * tw;
                        input_tile_rows(&mut d, &mut e, &mut o, tw, v, at);
                    }
                }
            }
        },
    );
}

/// `dM = A dY A^T` of tile rows `r0..r0 + rows` of every output frame of one sample's output
/// gradient `dy` `[co, t_out, oh, ow]`, into `dm` `[16, t_out, co, rows tw]` (every element
/// written; outputs past an odd edge count as zero).
fn grad_transform(dy: &[f32], g: &Geom, t: &Tiles, r0: usize, rows: usize, dm: &mut [f32]) {
    let tw = t.tw;
    let tiles = rows * tw;
    let [t_out, oh, ow] = g.out;
    let oplane = oh * ow;
    vectorized(
        #[inline(always)]
        || {
            let mut y: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; tw]);
            let mut hh = [vec![0f32; tw], vec![0f32; tw]];
            for c in 0..g.co {
                for f in 0..t_out {
                    let src = &dy[(c * t_out + f) * oplane..][..oplane];
                    for r in 0..rows {
                        load_output_rows(src, r0 + r, oh, ow, &mut y);
                        let at = |xi: usize| ((xi * t_out + f) * g.co + c) * tiles + r * tw;
                        grad_tile_rows(&y, &mut hh, tw, dm, at);
                    }
                }
            }
        },
    );
}

/// `Y = A^T M A` (plus the bias) of tile rows `r0..r0 + rows` of every output frame into one
/// sample's output `out` `[co, t_out, oh, ow]`, from `m` `[16, t_out, co, rows tw]`.
fn output_transform(
    m: &[f32],
    g: &Geom,
    t: &Tiles,
    r0: usize,
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let tw = t.tw;
    let tiles = rows * tw;
    let [t_out, oh, ow] = g.out;
    let oplane = oh * ow;
    vectorized(
        #[inline(always)]
        || {
            let mut s: [[Vec<f32>; 4]; 2] =
                std::array::from_fn(|_| std::array::from_fn(|_| vec![0f32; tw]));
            for c in 0..g.co {
                let add = bias.map_or(0.0, |b| b[c]);
                for f in 0..t_out {
                    let dst_plane = &mut out[(c * t_out + f) * oplane..][..oplane];
                    for r in 0..rows {
                        let ty = r0 + r;
                        let at = |xi: usize| ((xi * t_out + f) * g.co + c) * tiles + r * tw;
                        output_tile_rows(m, at, tw, &mut s);
                        for (q, sq) in s.iter().enumerate() {
                            let oy = 2 * ty + q;
                            if oy >= oh {
                                break;
                            }
                            store_output_row(sq, &mut dst_plane[oy * ow..][..ow], add);
                        }
                    }
                }
            }
        },
    );
}
