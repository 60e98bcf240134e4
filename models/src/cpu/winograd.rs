//! Winograd F(2x2, 3x3) for 3x3, stride-1, undilated convolutions with enough channels on
//! both sides (every 3x3 convolution of the taming Encoder/Decoder but the first and last):
//! the forward, the weight gradient, and through the forward the input gradient (a stride-1
//! input gradient is the forward convolution of `dy` with the flipped kernel, see
//! [`super::conv2d`]). Each 2x2 output tile costs 16 multiplies per channel pair instead of 36.
//!
//! With `U = G g G^T` (weights, `[16, co, ci]`), `V = B^T d B` (4x4 input tiles, `[16, ci, T]`
//! for a block of `T` tiles), the forward is 16 GEMMs `M[xi] = U[xi] V[xi]` and the output tiles
//! are `A^T M A`; the forward is linear in `U`, so the weight gradient is
//! `dU[xi] = sum_tiles dM[xi] V[xi]^T` with `dM = A dY A^T`, and `dg = G^T dU G`:
//!
//! ```text
//! B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//! A^T = [1 1 1 0; 0 1 -1 -1]
//! ```
//!
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016.) Transforms run
//! per channel over a block of tile rows whose transformed tiles fit a cache-sized budget,
//! vectorized along the tiles of a row; the GEMMs are Flex's batched matmul. Tiles past an odd
//! output edge read zero padding and their extra outputs are dropped.

use burn::{
    backend::{Flex, flex::FlexTensor},
    tensor::ops::FloatTensorOps,
};
use rayon::prelude::*;

use super::conv2d::Geom;
use super::reduce;
use super::simd::vectorized;
use super::tensor::{
    contiguous, from_vec, recycle, recycle_tensor, scratch, scratch_tensor, values,
};

/// Transformed-tile floats per block (1 MiB): `16 * max(ci, co) * T`.
const BLOCK_FLOATS: usize = 1 << 18;

/// Fewer channels than this on either side and the GEMMs are too thin to pay for the
/// transforms: im2col does those convolutions.
const MIN_CHANNELS: usize = 32;

/// Whether `g` is done here.
pub(super) fn applies(g: &Geom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.ci >= MIN_CHANNELS
        && g.co >= MIN_CHANNELS
}

/// How a convolution is cut into tiles, blocks and parallel tasks.
struct Tiles {
    /// Tile rows and tiles per row of one sample.
    th: usize,
    tw: usize,
    /// Samples per parallel task.
    group: usize,
    /// Tile rows per block (a block may span samples of its task).
    rows: usize,
}

impl Tiles {
    fn new(g: &Geom) -> Self {
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        // A fixed number of tasks (not per thread): the blocks, and so the weight gradient's
        // summation order, depend on the problem only.
        let group = reduce::samples_per_task(g.n);
        let per_row = 16 * g.ci.max(g.co) * tw;
        let rows = (BLOCK_FLOATS / per_row.max(1)).clamp(1, (group * th).max(1));
        Self {
            th,
            tw,
            group,
            rows,
        }
    }

    /// The blocks `(first tile row, tile rows)` of a task of `ns` samples.
    fn blocks(&self, ns: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let total = ns * self.th;
        (0..total)
            .step_by(self.rows)
            .map(move |r0| (r0, self.rows.min(total - r0)))
    }
}

/// The convolution's output `[n, co, oh, ow]` (see [`applies`]).
pub(super) fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    g: &Geom,
) -> FlexTensor {
    let x = contiguous(x);
    let xs = values(&x);
    let w = contiguous(w);
    let u = from_vec(weight_transform(values(&w), g), &[16, g.co, g.ci]);
    let bias = b.map(|b| contiguous(b).into_owned());
    let bias = bias.as_ref().map(values);
    let t = Tiles::new(g);
    let p = g.oh * g.ow;
    let mut out = vec![0f32; g.n * g.co * p];
    out.par_chunks_mut((t.group * g.co * p).max(1))
        .enumerate()
        .for_each(|(task, o)| {
            let (s0, ns) = (task * t.group, o.len() / (g.co * p).max(1));
            for (r0, rows) in t.blocks(ns) {
                let tiles = rows * t.tw;
                let len = 16 * g.ci * tiles;
                let mut v = scratch(len);
                input_transform(xs, g, &t, s0, r0, rows, &mut v[..len]);
                let (v, view) = scratch_tensor(v, &[16, g.ci, tiles]);
                let m = Flex::float_matmul(u.clone(), view); // [16, co, tiles]
                recycle_tensor(v);
                let m = contiguous(&m);
                output_transform(values(&m), g, &t, r0, rows, bias, o);
            }
        });
    from_vec(out, &[g.n, g.co, g.oh, g.ow])
}

/// The weight gradient `[co, ci, 3, 3]` (see [`applies`]).
pub(super) fn weight_grad(x: &FlexTensor, dy: &FlexTensor, g: &Geom) -> Vec<f32> {
    let x = contiguous(x);
    let xs = values(&x);
    let dy = contiguous(dy);
    let dys = values(&dy);
    let t = Tiles::new(g);
    let size = 16 * g.co * g.ci;
    let du = reduce::ordered_sum(g.n.div_ceil(t.group), size, None, |task, _, acc| {
        let s0 = task * t.group;
        let ns = t.group.min(g.n - s0);
        for (r0, rows) in t.blocks(ns) {
            let tiles = rows * t.tw;
            let (lv, ldm) = (16 * g.ci * tiles, 16 * g.co * tiles);
            let mut v = scratch(lv);
            input_transform(xs, g, &t, s0, r0, rows, &mut v[..lv]);
            let mut dm = scratch(ldm);
            grad_transform(dys, g, &t, s0, r0, rows, &mut dm[..ldm]);
            let (v, v_view) = scratch_tensor(v, &[16, g.ci, tiles]);
            let (dm, dm_view) = scratch_tensor(dm, &[16, g.co, tiles]);
            // [16, co, tiles] x [16, tiles, ci] -> [16, co, ci]
            // (`transpose` shares the buffer: drop the view so the buffer is handed back
            // without a copy.)
            let v_t = v_view.transpose(1, 2);
            drop(v_view);
            let part = Flex::float_matmul(dm_view, v_t);
            recycle_tensor(v);
            recycle_tensor(dm);
            let part = contiguous(&part);
            reduce::add_into(acc, values(&part));
        }
    });
    let dw = weight_grad_transform(&du, g);
    recycle(du);
    dw
}

/// `G` of F(2x2, 3x3).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `U[xi][co][ci] = (G g G^T)[xi]` for weights `[co, ci, 3, 3]`.
fn weight_transform(w: &[f32], g: &Geom) -> Vec<f32> {
    let pairs = g.co * g.ci;
    let mut u = vec![0f32; 16 * pairs];
    for (idx, k) in w.chunks_exact(9).enumerate() {
        // gk = G k: [4, 3]
        let mut gk = [[0f32; 3]; 4];
        for (i, row) in gk.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|a| G[i][a] * k[a * 3 + c]).sum();
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                u[(4 * i + j) * pairs + idx] = (0..3).map(|c| gk[i][c] * G[j][c]).sum();
            }
        }
    }
    u
}

/// `dg = G^T dU G` for `dU` `[16, co, ci]`: the weight gradient `[co, ci, 3, 3]`.
fn weight_grad_transform(du: &[f32], g: &Geom) -> Vec<f32> {
    let pairs = g.co * g.ci;
    let mut dw = vec![0f32; 9 * pairs];
    for (idx, k) in dw.chunks_exact_mut(9).enumerate() {
        let d = |i: usize, j: usize| du[(4 * i + j) * pairs + idx];
        // z = G^T dU: [3, 4]
        let mut z = [[0f32; 4]; 3];
        for (a, row) in z.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|i| G[i][a] * d(i, j)).sum();
            }
        }
        for a in 0..3 {
            for c in 0..3 {
                k[a * 3 + c] = (0..4).map(|j| z[a][j] * G[j][c]).sum();
            }
        }
    }
    dw
}

/// `V = B^T d B` of tile rows `r0..r0 + rows` of the task starting at sample `s0`, into `v`
/// `[16, ci, rows tw]` (every element written).
fn input_transform(
    x: &[f32],
    g: &Geom,
    t: &Tiles,
    s0: usize,
    r0: usize,
    rows: usize,
    v: &mut [f32],
) {
    let tw = t.tw;
    let tiles = rows * tw;
    // Input columns -pad_left .. -pad_left + wq cover every tile of a row.
    let wq = 2 * tw + 2;
    let plane = g.h * g.w;
    let (pl, w) = (g.pad[1], g.w);
    let (lo, hi) = (pl.min(wq), (pl + w).min(wq));
    vectorized(
        #[inline(always)]
        || {
            let mut d = [
                vec![0f32; wq],
                vec![0f32; wq],
                vec![0f32; wq],
                vec![0f32; wq],
            ];
            let mut e = vec![0f32; tw + 1];
            let mut o = vec![0f32; tw + 1];
            for ci in 0..g.ci {
                for r in 0..rows {
                    let (s, ty) = (s0 + (r0 + r) / t.th, (r0 + r) % t.th);
                    let src = &x[(s * g.ci + ci) * plane..][..plane];
                    for (k, row) in d.iter_mut().enumerate() {
                        let iy = (2 * ty + k) as isize - g.pad[0] as isize;
                        if iy < 0 || iy >= g.h as isize {
                            row.fill(0.0);
                            continue;
                        }
                        row[..lo].fill(0.0);
                        row[lo..hi].copy_from_slice(&src[iy as usize * w..][..hi - lo]);
                        row[hi..].fill(0.0);
                    }
                    // B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), in place.
                    let [d0, d1, d2, d3] = &mut d;
                    for (((a, b), c), dd) in d0
                        .iter_mut()
                        .zip(d1.iter_mut())
                        .zip(d2.iter_mut())
                        .zip(d3.iter_mut())
                    {
                        let (x0, x1, x2, x3) = (*a, *b, *c, *dd);
                        *a = x0 - x2;
                        *b = x1 + x2;
                        *c = x2 - x1;
                        *dd = x1 - x3;
                    }
                    // (.) B per row: even/odd columns, then (e0 - e1, o0 + e1, e1 - o0, o0 - o1).
                    for (i, row) in d.iter().enumerate() {
                        for ((e, o), pair) in
                            e.iter_mut().zip(o.iter_mut()).zip(row.chunks_exact(2))
                        {
                            *e = pair[0];
                            *o = pair[1];
                        }
                        let at = |j: usize| (4 * i + j) * g.ci * tiles + ci * tiles + r * tw;
                        let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
                        for (dst, (a, b)) in v[at(0)..][..tw].iter_mut().zip(e0.iter().zip(e1)) {
                            *dst = a - b;
                        }
                        for (dst, (a, b)) in v[at(1)..][..tw].iter_mut().zip(o0.iter().zip(e1)) {
                            *dst = a + b;
                        }
                        for (dst, (a, b)) in v[at(2)..][..tw].iter_mut().zip(e1.iter().zip(o0)) {
                            *dst = a - b;
                        }
                        for (dst, (a, b)) in v[at(3)..][..tw].iter_mut().zip(o0.iter().zip(o1)) {
                            *dst = a - b;
                        }
                    }
                }
            }
        },
    );
}

/// `dM = A dY A^T` of tile rows `r0..r0 + rows` of the task starting at sample `s0`, into `dm`
/// `[16, co, rows tw]` (every element written; outputs past an odd edge count as zero).
fn grad_transform(
    dy: &[f32],
    g: &Geom,
    t: &Tiles,
    s0: usize,
    r0: usize,
    rows: usize,
    dm: &mut [f32],
) {
    let tw = t.tw;
    let tiles = rows * tw;
    let p = g.oh * g.ow;
    vectorized(
        #[inline(always)]
        || {
            // Output rows 2ty and 2ty + 1, split into even and odd columns.
            let mut y = [
                vec![0f32; tw],
                vec![0f32; tw],
                vec![0f32; tw],
                vec![0f32; tw],
            ];
            let mut h = [vec![0f32; tw], vec![0f32; tw]];
            for co in 0..g.co {
                for r in 0..rows {
                    let (s, ty) = (s0 + (r0 + r) / t.th, (r0 + r) % t.th);
                    let src = &dy[(s * g.co + co) * p..][..p];
                    for q in 0..2 {
                        let oy = 2 * ty + q;
                        let [ye, yo] = y
                            .get_disjoint_mut([2 * q, 2 * q + 1])
                            .expect("distinct rows");
                        if oy >= g.oh {
                            ye.fill(0.0);
                            yo.fill(0.0);
                            continue;
                        }
                        let row = &src[oy * g.ow..][..g.ow];
                        for ((e, o), pair) in
                            ye.iter_mut().zip(yo.iter_mut()).zip(row.chunks_exact(2))
                        {
                            *e = pair[0];
                            *o = pair[1];
                        }
                        if g.ow % 2 == 1 {
                            ye[tw - 1] = row[g.ow - 1];
                            yo[tw - 1] = 0.0;
                        }
                    }
                    let [y0e, y0o, y1e, y1o] = &y;
                    // A dY: rows (y0, y0 + y1, y0 - y1, -y1); then (.) A^T per row:
                    // (e, e + o, e - o, -o).
                    for i in 0..4 {
                        let [he, ho] = &mut h;
                        for ((((he, ho), a), b), (c, d)) in he
                            .iter_mut()
                            .zip(ho.iter_mut())
                            .zip(y0e)
                            .zip(y0o)
                            .zip(y1e.iter().zip(y1o))
                        {
                            (*he, *ho) = match i {
                                0 => (*a, *b),
                                1 => (a + c, b + d),
                                2 => (a - c, b - d),
                                _ => (-c, -d),
                            };
                        }
                        let at = |j: usize| (4 * i + j) * g.co * tiles + co * tiles + r * tw;
                        dm[at(0)..][..tw].copy_from_slice(he);
                        for (dst, (a, b)) in
                            dm[at(1)..][..tw].iter_mut().zip(he.iter().zip(ho.iter()))
                        {
                            *dst = a + b;
                        }
                        for (dst, (a, b)) in
                            dm[at(2)..][..tw].iter_mut().zip(he.iter().zip(ho.iter()))
                        {
                            *dst = a - b;
                        }
                        for (dst, b) in dm[at(3)..][..tw].iter_mut().zip(ho.iter()) {
                            *dst = -b;
                        }
                    }
                }
            }
        },
    );
}

/// `Y = A^T M A` (plus the bias) of tile rows `r0..r0 + rows` into the task's output `out`
/// `[ns, co, oh, ow]`, from `m` `[16, co, rows tw]`.
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
    let p = g.oh * g.ow;
    let half = g.ow / 2;
    vectorized(
        #[inline(always)]
        || {
            // A^T M: 2 rows x 4 columns of tile vectors.
            let mut s: [[Vec<f32>; 4]; 2] =
                std::array::from_fn(|_| std::array::from_fn(|_| vec![0f32; tw]));
            for co in 0..g.co {
                let add = bias.map_or(0.0, |b| b[co]);
                for r in 0..rows {
                    let (sample, ty) = ((r0 + r) / t.th, (r0 + r) % t.th);
                    let row = |xi: usize| &m[(xi * g.co + co) * tiles + r * tw..][..tw];
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (row(j), row(4 + j), row(8 + j), row(12 + j));
                        let [s0, s1] = &mut s;
                        for ((((a, b), (c, d)), x), y) in m0
                            .iter()
                            .zip(m1)
                            .zip(m2.iter().zip(m3))
                            .zip(s0[j].iter_mut())
                            .zip(s1[j].iter_mut())
                        {
                            *x = a + b + c;
                            *y = b - c - d;
                        }
                    }
                    for (q, sq) in s.iter().enumerate() {
                        let oy = 2 * ty + q;
                        if oy >= g.oh {
                            break;
                        }
                        let dst = &mut out[(sample * g.co + co) * p + oy * g.ow..][..g.ow];
                        let [a, b, c, d] = sq;
                        for ((pair, (a, b)), (c, d)) in dst
                            .chunks_exact_mut(2)
                            .zip(a.iter().zip(b))
                            .zip(c.iter().zip(d))
                        {
                            pair[0] = a + b + c + add;
                            pair[1] = b - c - d + add;
                        }
                        if g.ow % 2 == 1 {
                            dst[g.ow - 1] = a[half] + b[half] + c[half] + add;
                        }
                    }
                }
            }
        },
    );
}
