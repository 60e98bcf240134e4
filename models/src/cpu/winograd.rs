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

/// `(G k G^T)[xi]`, `xi = 4 i + j`, of one 3x3 kernel `k` (row-major).
pub(super) fn kernel_transform(k: &[f32]) -> [f32; 16] {
    // gk = G k: [4, 3]
    let mut gk = [[0f32; 3]; 4];
    for (i, row) in gk.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|a| G[i][a] * k[a * 3 + c]).sum();
        }
    }
    let mut u = [0f32; 16];
    for i in 0..4 {
        for j in 0..4 {
            u[4 * i + j] = (0..3).map(|c| gk[i][c] * G[j][c]).sum();
        }
    }
    u
}

/// `G^T d G` of one transformed gradient `d(xi)`, `xi = 4 i + j`: the 3x3 kernel's gradient
/// (row-major).
pub(super) fn kernel_grad_transform(d: impl Fn(usize) -> f32) -> [f32; 9] {
    // z = G^T dU: [3, 4]
    let mut z = [[0f32; 4]; 3];
    for (a, row) in z.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|i| G[i][a] * d(4 * i + j)).sum();
        }
    }
    let mut k = [0f32; 9];
    for a in 0..3 {
        for c in 0..3 {
            k[a * 3 + c] = (0..4).map(|j| z[a][j] * G[j][c]).sum();
        }
    }
    k
}

/// `U[xi][co][ci] = (G g G^T)[xi]` for weights `[co, ci, 3, 3]`.
fn weight_transform(w: &[f32], g: &Geom) -> Vec<f32> {
    let pairs = g.co * g.ci;
    let mut u = vec![0f32; 16 * pairs];
    for (idx, k) in w.chunks_exact(9).enumerate() {
        for (xi, v) in kernel_transform(k).into_iter().enumerate() {
            u[xi * pairs + idx] = v;
        }
    }
    u
}

/// `dg = G^T dU G` for `dU` `[16, co, ci]`: the weight gradient `[co, ci, 3, 3]`.
fn weight_grad_transform(du: &[f32], g: &Geom) -> Vec<f32> {
    let pairs = g.co * g.ci;
    let mut dw = vec![0f32; 9 * pairs];
    for (idx, k) in dw.chunks_exact_mut(9).enumerate() {
        k.copy_from_slice(&kernel_grad_transform(|xi| du[xi * pairs + idx]));
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
                    load_input_rows(src, ty, [g.h, g.w], [g.pad[0], g.pad[1]], &mut d);
                    let at = |xi: usize| xi * g.ci * tiles + ci * tiles + r * tw;
                    input_tile_rows(&mut d, &mut e, &mut o, tw, v, at);
                }
            }
        },
    );
}

/// Input rows `2 ty - pad_top .. + 4` of the plane `src` (`h x w`) into `d`, each row read
/// from column `-pad_left` on (`d[k].len()` wide, zero outside the plane). (Call inside
/// [`vectorized`].)
#[inline(always)]
pub(super) fn load_input_rows(
    src: &[f32],
    ty: usize,
    [h, w]: [usize; 2],
    [pad_top, pad_left]: [usize; 2],
    d: &mut [Vec<f32>; 4],
) {
    for (k, row) in d.iter_mut().enumerate() {
        let wq = row.len();
        let (lo, hi) = (pad_left.min(wq), (pad_left + w).min(wq));
        let iy = (2 * ty + k) as isize - pad_top as isize;
        if iy < 0 || iy >= h as isize {
            row.fill(0.0);
            continue;
        }
        row[..lo].fill(0.0);
        row[lo..hi].copy_from_slice(&src[iy as usize * w..][..hi - lo]);
        row[hi..].fill(0.0);
    }
}

/// The input rows `d` of one row of tiles (`2 tw + 2` wide, zero outside the input) into
/// `V = B^T d B`: writes the `tw` tiles of transform element `xi` at `v[at(xi)..]`.
/// (Call inside [`vectorized`]: it is inlined there.)
#[inline(always)]
pub(super) fn input_tile_rows(
    d: &mut [Vec<f32>; 4],
    e: &mut [f32],
    o: &mut [f32],
    tw: usize,
    v: &mut [f32],
    at: impl Fn(usize) -> usize,
) {
    // B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), in place.
    let [d0, d1, d2, d3] = d;
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
        for ((e, o), pair) in e.iter_mut().zip(o.iter_mut()).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
        let at = |j: usize| at(4 * i + j);
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
                    load_output_rows(src, ty, g.oh, g.ow, &mut y);
                    let at = |xi: usize| xi * g.co * tiles + co * tiles + r * tw;
                    grad_tile_rows(&y, &mut h, tw, dm, at);
                }
            }
        },
    );
}

/// Output rows `2 ty` and `2 ty + 1` of the plane `src` (`oh x ow`), split into even and odd
/// columns (`y0e, y0o, y1e, y1o`, each `ceil(ow / 2)` long); rows and columns past the edge
/// read as zero. (Call inside [`vectorized`].)
#[inline(always)]
pub(super) fn load_output_rows(
    src: &[f32],
    ty: usize,
    oh: usize,
    ow: usize,
    y: &mut [Vec<f32>; 4],
) {
    let tw = ow.div_ceil(2);
    for q in 0..2 {
        let oy = 2 * ty + q;
        let [ye, yo] = y
            .get_disjoint_mut([2 * q, 2 * q + 1])
            .expect("distinct rows");
        if oy >= oh {
            ye.fill(0.0);
            yo.fill(0.0);
            continue;
        }
        let row = &src[oy * ow..][..ow];
        for ((e, o), pair) in ye.iter_mut().zip(yo.iter_mut()).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
        if ow % 2 == 1 {
            ye[tw - 1] = row[ow - 1];
            yo[tw - 1] = 0.0;
        }
    }
}

/// `dM = A dY A^T` of one row of tiles from its output-gradient rows `y` (see
/// [`load_output_rows`]): writes the `tw` tiles of element `xi` at `dm[at(xi)..]`.
/// (Call inside [`vectorized`].)
#[inline(always)]
pub(super) fn grad_tile_rows(
    y: &[Vec<f32>; 4],
    h: &mut [Vec<f32>; 2],
    tw: usize,
    dm: &mut [f32],
    at: impl Fn(usize) -> usize,
) {
    let [y0e, y0o, y1e, y1o] = y;
    // A dY: rows (y0, y0 + y1, y0 - y1, -y1); then (.) A^T per row: (e, e + o, e - o, -o).
    for i in 0..4 {
        let [he, ho] = &mut *h;
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
        let at = |j: usize| at(4 * i + j);
        dm[at(0)..][..tw].copy_from_slice(he);
        for (dst, (a, b)) in dm[at(1)..][..tw].iter_mut().zip(he.iter().zip(ho.iter())) {
            *dst = a + b;
        }
        for (dst, (a, b)) in dm[at(2)..][..tw].iter_mut().zip(he.iter().zip(ho.iter())) {
            *dst = a - b;
        }
        for (dst, b) in dm[at(3)..][..tw].iter_mut().zip(ho.iter()) {
            *dst = -b;
        }
    }
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
                    let at = |xi: usize| (xi * g.co + co) * tiles + r * tw;
                    output_tile_rows(m, at, tw, &mut s);
                    for (q, sq) in s.iter().enumerate() {
                        let oy = 2 * ty + q;
                        if oy >= g.oh {
                            break;
                        }
                        let dst = &mut out[(sample * g.co + co) * p + oy * g.ow..][..g.ow];
                        store_output_row(sq, dst, add);
                    }
                }
            }
        },
    );
}

/// `A^T M` of one row of tiles, the `tw` tiles of element `xi` read at `m[at(xi)..]`: the two
/// output rows' column transforms `s[q][j]`. (Call inside [`vectorized`].)
#[inline(always)]
pub(super) fn output_tile_rows(
    m: &[f32],
    at: impl Fn(usize) -> usize,
    tw: usize,
    s: &mut [[Vec<f32>; 4]; 2],
) {
    let row = |xi: usize| &m[at(xi)..][..tw];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (row(j), row(4 + j), row(8 + j), row(12 + j));
        let [s0, s1] = &mut *s;
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
}

/// `(.) A` of one output row's column transforms `sq` (see [`output_tile_rows`]) plus `add`,
/// into the output row `dst` (its whole width). (Call inside [`vectorized`].)
#[inline(always)]
pub(super) fn store_output_row(sq: &[Vec<f32>; 4], dst: &mut [f32], add: f32) {
    let ow = dst.len();
    let half = ow / 2;
    let [a, b, c, d] = sq;
    for ((pair, (a, b)), (c, d)) in dst
        .chunks_exact_mut(2)
        .zip(a.iter().zip(b))
        .zip(c.iter().zip(d))
    {
        pair[0] = a + b + c + add;
        pair[1] = b - c - d + add;
    }
    if ow % 2 == 1 {
        dst[ow - 1] = a[half] + b[half] + c[half] + add;
    }
}
