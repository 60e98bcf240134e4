//! rotor's CPU kernels (`models::cpu`) against burn's own operations on the same backend:
//! outputs and every gradient within 1e-5 + 1e-4 |want|, on odd sizes, strides 1 and 2,
//! asymmetric padding (taming's Downsample), dilation, batch 1, the row-blocked path, and
//! the plain (evaluation) backend. Convolution weight and bias gradients sum thousands of terms
//! (batch x pixels), where two f32 implementations legitimately differ by more than that where
//! terms cancel: those are checked against the exact (f64) sums instead, within the same
//! tolerance or no further off than twice burn's own worst error.

use burn::{
    backend::{Autodiff, Flex},
    module::{AutodiffModule, Param},
    nn::{
        GroupNorm, GroupNormConfig, LayerNormConfig, PaddingConfig2d, PaddingConfig3d,
        conv::{Conv2d, Conv2dConfig, Conv3d, Conv3dConfig},
    },
    tensor::{Distribution, Tensor, backend::Backend},
};
use models::cpu;

type B = Autodiff<Flex>;

/// Asserts `got` = `want` element-wise within 1e-5 + 1e-4 |want|.
fn assert_close<Bk: Backend, const D: usize>(what: &str, got: Tensor<Bk, D>, want: Tensor<Bk, D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let got = got.into_data().to_vec::<f32>().unwrap();
    let want = want.into_data().to_vec::<f32>().unwrap();
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let excess = (g - w).abs() - (1e-5 + 1e-4 * w.abs());
        assert!(!g.is_nan(), "{what}: NaN at {i}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    assert!(
        worst.0 <= 0.0,
        "{what}: element {} is {} but burn gives {}",
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

fn random<const D: usize>(shape: [usize; D], scale: f64) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, scale), &Default::default())
}

/// Runs `f` on a fresh leaf copy of `x`, back-propagates `sum(f(x) * g)` and returns the output
/// and the gradient of `x`, plus whatever `extra` reads from the gradients.
fn run<const D: usize, const E: usize, T>(
    x: &Tensor<B, D>,
    g: &Tensor<B, E>,
    f: &impl Fn(Tensor<B, D>) -> Tensor<B, E>,
    extra: impl Fn(&<B as burn::tensor::backend::AutodiffBackend>::Gradients) -> T,
) -> (Tensor<B, E>, Tensor<Flex, D>, T) {
    let x = x.clone().detach().require_grad();
    let out = f(x.clone());
    let grads = (out.clone() * g.clone()).sum().backward();
    let dx = x.grad(&grads).expect("x has a gradient");
    (out.detach(), dx, extra(&grads))
}

/// Compares kernel and reference output, input gradient, and the extra gradients.
fn compare<const D: usize, const E: usize, const N: usize>(
    what: &str,
    x: Tensor<B, D>,
    out_shape: [usize; E],
    f: impl Fn(Tensor<B, D>) -> Tensor<B, E>,
    extra: impl Fn(&<B as burn::tensor::backend::AutodiffBackend>::Gradients) -> [Tensor<Flex, 1>; N],
) {
    let g = random(out_shape, 1.0);
    let (out, dx, ex) = run(&x, &g, &f, &extra);
    let (want_out, want_dx, want_ex) = cpu::with_reference_ops(|| run(&x, &g, &f, &extra));
    assert_close(&format!("{what} output"), out, want_out);
    assert_close(&format!("{what} input gradient"), dx, want_dx);
    for (i, (a, b)) in ex.into_iter().zip(want_ex).enumerate() {
        assert_close(&format!("{what} parameter gradient {i}"), a, b);
    }
}

/// Checks a long-reduction gradient against its exact value: within 1e-5 + 1e-4 |truth|, or no
/// further off than twice burn's worst error on this tensor.
fn assert_exact(what: &str, ours: Tensor<Flex, 1>, burn: Tensor<Flex, 1>, truth: &[f64]) {
    let ours = ours.into_data().to_vec::<f32>().unwrap();
    let burn = burn.into_data().to_vec::<f32>().unwrap();
    let burn_worst = burn
        .iter()
        .zip(truth)
        .map(|(b, t)| (*b as f64 - t).abs())
        .fold(0.0, f64::max);
    for (i, (o, t)) in ours.iter().zip(truth).enumerate() {
        let err = (*o as f64 - t).abs();
        assert!(
            err <= 1e-5 + 1e-4 * t.abs() || err <= 2.0 * burn_worst,
            "{what} {i}: rotor {o}, exact {t}, burn {} (burn's worst error {burn_worst:e})",
            burn[i]
        );
    }
}

/// `(n, c_in, c_out, [h, w], kernel, stride, [top, left, bottom, right] padding, dilation, bias)`.
type CaseRow = (
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    usize,
    [usize; 4],
    usize,
    bool,
);

struct ConvCase {
    n: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    stride: usize,
    /// top, left, bottom, right
    pad: [usize; 4],
    dilation: usize,
    bias: bool,
}

impl ConvCase {
    fn from_row((n, ci, co, [h, w], k, stride, pad, dilation, bias): CaseRow) -> Self {
        Self {
            n,
            ci,
            co,
            h,
            w,
            k,
            stride,
            pad,
            dilation,
            bias,
        }
    }
}

fn conv_case(c: &ConvCase) {
    let device = Default::default();
    let conv: Conv2d<B> = Conv2dConfig::new([c.ci, c.co], c.k)
        .with_stride([c.stride, c.stride])
        .with_dilation([c.dilation, c.dilation])
        .with_padding(PaddingConfig2d::Explicit(
            c.pad[0], c.pad[1], c.pad[2], c.pad[3],
        ))
        .with_bias(c.bias)
        .init(&device);
    let x = random([c.n, c.ci, c.h, c.w], 1.0);
    let out_side = |side: usize, before: usize, after: usize, k: usize| {
        (side + before + after - c.dilation * (k - 1) - 1) / c.stride + 1
    };
    let shape = [
        c.n,
        c.co,
        out_side(c.h, c.pad[0], c.pad[2], c.k[0]),
        out_side(c.w, c.pad[1], c.pad[3], c.k[1]),
    ];
    let what = format!(
        "conv n{} {}->{} {}x{} k{:?} s{} pad{:?} d{} bias {}",
        c.n, c.ci, c.co, c.h, c.w, c.k, c.stride, c.pad, c.dilation, c.bias
    );
    let g = random(shape, 1.0);
    let exact = exact_param_grads(c, &x, &g);
    let plain = conv.valid();
    check_conv(
        &what,
        (&x, &g),
        (&conv.weight, conv.bias.as_ref()),
        |x| cpu::conv2d(&conv, x),
        |x| cpu::conv2d(&plain, x),
        exact,
    );
}

/// Checks a convolution kernel against burn's on `x` and the output gradient `g`: the output
/// and input gradient (also the plain backend's output), and the weight and bias gradients
/// against their `exact` (f64) values.
fn check_conv<const D: usize>(
    what: &str,
    (x, g): (&Tensor<B, D>, &Tensor<B, D>),
    (weight, bias): (&Param<Tensor<B, D>>, Option<&Param<Tensor<B, 1>>>),
    f: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
    eval: impl Fn(Tensor<Flex, D>) -> Tensor<Flex, D>,
    (exact_dw, exact_db): (Vec<f64>, Vec<f64>),
) {
    let params = |grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| {
        let dw = weight
            .grad(grads)
            .expect("weight gradient")
            .flatten::<1>(0, D - 1);
        let db = bias.map(|b| b.grad(grads).expect("bias gradient"));
        (dw, db)
    };
    let (out, dx, (dw, db)) = run(x, g, &f, params);
    let (want_out, want_dx, (want_dw, want_db)) = cpu::with_reference_ops(|| run(x, g, &f, params));
    assert_close(&format!("{what} output"), out, want_out);
    assert_close(&format!("{what} input gradient"), dx, want_dx);
    assert_exact(&format!("{what} weight gradient"), dw, want_dw, &exact_dw);
    if let (Some(db), Some(want_db)) = (db, want_db) {
        assert_exact(&format!("{what} bias gradient"), db, want_db, &exact_db);
    }
    // Evaluation backend: forward only.
    let xi = x.clone().inner();
    let got = eval(xi.clone());
    let want = cpu::with_reference_ops(|| eval(xi));
    assert_close(&format!("{what} (plain backend)"), got, want);
}

/// Weight and bias gradients of `sum(conv(x) * g)` in f64, by direct summation.
fn exact_param_grads(c: &ConvCase, x: &Tensor<B, 4>, g: &Tensor<B, 4>) -> (Vec<f64>, Vec<f64>) {
    let xs = x.to_data().to_vec::<f32>().unwrap();
    let [_, _, oh, ow] = g.dims();
    let gs = g.to_data().to_vec::<f32>().unwrap();
    let (kh, kw) = (c.k[0], c.k[1]);
    let mut dw = vec![0f64; c.co * c.ci * kh * kw];
    let mut db = vec![0f64; c.co];
    for n in 0..c.n {
        for co in 0..c.co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let gv = gs[((n * c.co + co) * oh + oy) * ow + ox] as f64;
                    db[co] += gv;
                    for ci in 0..c.ci {
                        for i in 0..kh {
                            let iy = (oy * c.stride + i * c.dilation) as isize - c.pad[0] as isize;
                            if iy < 0 || iy >= c.h as isize {
                                continue;
                            }
                            for j in 0..kw {
                                let ix =
                                    (ox * c.stride + j * c.dilation) as isize - c.pad[1] as isize;
                                if ix < 0 || ix >= c.w as isize {
                                    continue;
                                }
                                let xv =
                                    xs[((n * c.ci + ci) * c.h + iy as usize) * c.w + ix as usize];
                                dw[((co * c.ci + ci) * kh + i) * kw + j] += xv as f64 * gv;
                            }
                        }
                    }
                }
            }
        }
    }
    (dw, db)
}

#[test]
fn conv2d_matches_burn() {
    let cases: [CaseRow; 19] = [
        // batch 1, one input channel (the peer net's first conv)
        (1, 1, 16, [28, 28], [3, 3], 1, [1; 4], 1, true),
        // odd sizes, stride 2, taming's Downsample padding (0, 1, 0, 1)
        (3, 5, 7, [9, 11], [3, 3], 2, [0, 0, 1, 1], 1, true),
        // 1x1 (attention projections, nin_shortcut)
        (2, 4, 6, [8, 5], [1, 1], 1, [0; 4], 1, true),
        // PatchGAN: kernel 4, stride 2, padding 1, no bias
        (2, 3, 4, [7, 10], [4, 4], 2, [1; 4], 1, false),
        // every side padded differently, non-square kernel
        (2, 3, 5, [6, 7], [3, 2], 1, [2, 0, 1, 3], 1, true),
        // dilation 2
        (1, 2, 3, [9, 9], [3, 3], 1, [2; 4], 2, true),
        // many channels: 55 row blocks per sample, with stride 2 and asymmetric padding
        (1, 300, 3, [129, 130], [3, 3], 2, [0, 0, 1, 1], 1, true),
        // many small samples: several per batched GEMM (a partial last group too)
        (43, 3, 4, [7, 9], [3, 3], 2, [0, 0, 1, 1], 1, true),
        (37, 5, 6, [6, 5], [1, 1], 1, [0; 4], 1, true),
        // 64+ output channels (the weight-gradient GEMM's other orientation)
        (3, 8, 70, [6, 5], [3, 3], 1, [1; 4], 1, true),
        (2, 4, 64, [7, 7], [3, 3], 2, [0, 0, 1, 1], 1, true),
        // 1x1 with stride 2 (not the pointwise shortcut)
        (2, 3, 2, [5, 6], [1, 1], 2, [0; 4], 1, true),
        // Winograd F(2x2, 3x3) (3x3 stride 1, 32+ channels both sides): odd output sides
        (2, 32, 40, [9, 11], [3, 3], 1, [1; 4], 1, true),
        // ... unpadded (odd 3x3 output), no bias
        (2, 32, 33, [5, 5], [3, 3], 1, [0; 4], 1, false),
        // ... every side padded differently, batch 1 (input gradient by col2im)
        (1, 33, 32, [6, 7], [3, 3], 1, [2, 0, 1, 3], 1, true),
        // ... several samples per task, blocks spanning samples
        (9, 48, 64, [16, 16], [3, 3], 1, [1; 4], 1, true),
        // ... top/left padding beyond the kernel span; a 1x1 output
        (1, 32, 32, [5, 6], [3, 3], 1, [3, 4, 0, 1], 1, true),
        (2, 32, 32, [1, 1], [3, 3], 1, [1; 4], 1, true),
        // ... asymmetric padding with the input gradient through Winograd too
        (2, 32, 40, [7, 8], [3, 3], 1, [0, 1, 2, 0], 1, true),
    ];
    for row in cases {
        conv_case(&ConvCase::from_row(row));
    }
}

#[test]
fn conv2d_row_blocks_match_burn() {
    // (64 * 9) x 66 columns per output row: a 64-row sample takes eleven row blocks of the
    // kernel's 256 Ki-float budget; 16 samples make a 65,536-term weight-gradient sum.
    conv_case(&ConvCase {
        n: 16,
        ci: 64,
        co: 2,
        h: 64,
        w: 64,
        k: [3, 3],
        stride: 1,
        pad: [1; 4],
        dilation: 1,
        bias: true,
    });
}

#[test]
fn conv2d_winograd_blocks_match_burn() {
    // 16 x 64 x 32 transformed floats per tile row: four blocks of 8 tile rows per sample.
    conv_case(&ConvCase {
        n: 2,
        ci: 64,
        co: 64,
        h: 64,
        w: 64,
        k: [3, 3],
        stride: 1,
        pad: [1; 4],
        dilation: 1,
        bias: true,
    });
}

/// `(n, c_in, c_out, [t, h, w], kernel, stride, padding (both ends), dilation, bias)`.
type Case3Row = (
    usize,
    usize,
    usize,
    [usize; 3],
    [usize; 3],
    [usize; 3],
    [usize; 3],
    usize,
    bool,
);

fn conv3d_case((n, ci, co, size, k, stride, pad, dilation, bias): Case3Row) {
    let device = Default::default();
    let conv: Conv3d<B> = Conv3dConfig::new([ci, co], k)
        .with_stride(stride)
        .with_dilation([dilation; 3])
        .with_padding(PaddingConfig3d::Explicit(pad[0], pad[1], pad[2]))
        .with_bias(bias)
        .init(&device);
    let x = random([n, ci, size[0], size[1], size[2]], 1.0);
    let out: [usize; 3] =
        std::array::from_fn(|i| (size[i] + 2 * pad[i] - dilation * (k[i] - 1) - 1) / stride[i] + 1);
    let what = format!(
        "conv3d n{n} {ci}->{co} {size:?} k{k:?} s{stride:?} pad{pad:?} d{dilation} bias {bias}"
    );
    let g = random([n, co, out[0], out[1], out[2]], 1.0);
    // Exact weight and bias gradients of sum(conv(x) * g), in f64.
    let xs = x.to_data().to_vec::<f32>().unwrap();
    let gs = g.to_data().to_vec::<f32>().unwrap();
    let mut exact_dw = vec![0f64; co * ci * k.iter().product::<usize>()];
    let mut exact_db = vec![0f64; co];
    let at = |o: usize, kk: usize, d: usize, side: usize| {
        let v = (o * stride[d] + kk * dilation) as isize - pad[d] as isize;
        (v >= 0 && (v as usize) < side).then_some(v as usize)
    };
    for s in 0..n {
        for c in 0..co {
            for (q, &gv) in gs[(s * co + c) * out.iter().product::<usize>()..]
                [..out.iter().product::<usize>()]
                .iter()
                .enumerate()
            {
                let (ot, oy, ox) = (q / (out[1] * out[2]), (q / out[2]) % out[1], q % out[2]);
                let gv = gv as f64;
                exact_db[c] += gv;
                for cin in 0..ci {
                    for a in 0..k[0] {
                        let Some(it) = at(ot, a, 0, size[0]) else {
                            continue;
                        };
                        for i in 0..k[1] {
                            let Some(iy) = at(oy, i, 1, size[1]) else {
                                continue;
                            };
                            for j in 0..k[2] {
                                let Some(ix) = at(ox, j, 2, size[2]) else {
                                    continue;
                                };
                                let xv = xs[(((s * ci + cin) * size[0] + it) * size[1] + iy)
                                    * size[2]
                                    + ix] as f64;
                                exact_dw[(((c * ci + cin) * k[0] + a) * k[1] + i) * k[2] + j] +=
                                    xv * gv;
                            }
                        }
                    }
                }
            }
        }
    }
    let plain = conv.valid();
    check_conv(
        &what,
        (&x, &g),
        (&conv.weight, conv.bias.as_ref()),
        |x| cpu::conv3d(&conv, x),
        |x| cpu::conv3d(&plain, x),
        (exact_dw, exact_db),
    );
}

#[test]
fn conv3d_matches_burn() {
    let cases: [Case3Row; 16] = [
        // 3x3x3, padding 1, odd sizes
        (2, 3, 4, [5, 6, 7], [3, 3, 3], [1; 3], [1; 3], 1, true),
        // batch 1, spatial stride 2 with a 4x4 kernel, no bias
        (1, 2, 5, [4, 9, 8], [3, 4, 4], [1, 2, 2], [1; 3], 1, false),
        // temporal stride 2, no temporal padding
        (3, 4, 3, [6, 5, 5], [2, 3, 3], [2, 1, 1], [0, 1, 1], 1, true),
        // dilation 2
        (1, 3, 2, [5, 7, 7], [3, 3, 3], [1; 3], [2; 3], 2, true),
        // 1x1x1
        (2, 8, 6, [3, 4, 4], [1, 1, 1], [1; 3], [0; 3], 1, true),
        // padding beyond the kernel span; stride beyond the kernel
        (1, 2, 3, [2, 1, 3], [3, 3, 3], [1; 3], [3; 3], 1, true),
        (2, 3, 2, [5, 7, 7], [1, 1, 1], [2, 3, 3], [0; 3], 1, true),
        // 432 x 32 columns per output row: 15 row blocks of one sample
        (1, 16, 8, [8, 32, 32], [3, 3, 3], [1; 3], [1; 3], 1, true),
        // dilation 2, uneven kernel and padding; a 1x3x3 kernel
        (2, 3, 5, [4, 6, 30], [3, 2, 3], [1; 3], [2, 1, 1], 2, true),
        (3, 4, 4, [3, 5, 26], [1, 3, 3], [1; 3], [0, 1, 1], 1, false),
        // 32+ channels (a video VQGAN's residual blocks); temporal kernels 3 (padded,
        // unpadded) and 1
        (2, 32, 33, [4, 6, 7], [3, 3, 3], [1; 3], [1; 3], 1, true),
        (1, 33, 32, [5, 5, 6], [3, 3, 3], [1; 3], [0, 1, 1], 1, false),
        (2, 32, 32, [3, 4, 4], [1, 3, 3], [1; 3], [0, 0, 0], 1, true),
        // Winograd with two blocks of tile rows (16 and 1), temporal padding 2 (more output
        // frames than input), spatial padding 2
        (1, 32, 32, [6, 34, 32], [3, 3, 3], [1; 3], [1; 3], 1, true),
        (1, 32, 40, [2, 5, 4], [3, 3, 3], [1; 3], [2, 1, 1], 1, true),
        (1, 40, 32, [3, 3, 5], [3, 3, 3], [1; 3], [1, 2, 2], 1, false),
    ];
    for row in cases {
        conv3d_case(row);
    }
}

#[test]
fn conv2d_winograd_blocks_within_samples_match_burn() {
    // One thread: tasks of 2 samples of 7 tile rows, 9 tile rows per block (256 channels), so
    // a block ends inside a sample and the next starts there.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    pool.install(|| {
        conv_case(&ConvCase {
            n: 5,
            ci: 256,
            co: 256,
            h: 13,
            w: 13,
            k: [3, 3],
            stride: 1,
            pad: [1; 4],
            dilation: 1,
            bias: true,
        })
    });
}

#[test]
fn activations_match_burn() {
    for shape in [[2, 3, 5, 7], [1, 1, 1, 1], [1, 16, 14, 14]] {
        let x = random(shape, 3.0);
        compare(
            "gelu",
            x.clone(),
            shape,
            cpu::gelu,
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        compare(
            "silu",
            x.clone(),
            shape,
            cpu::silu,
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        compare(
            "tanh",
            x.clone(),
            shape,
            cpu::tanh,
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        let xi = x.inner();
        assert_close(
            "tanh (plain)",
            cpu::tanh(xi.clone()),
            cpu::with_reference_ops(|| cpu::tanh(xi.clone())),
        );
        assert_close(
            "gelu (plain)",
            cpu::gelu(xi.clone()),
            cpu::with_reference_ops(|| cpu::gelu(xi.clone())),
        );
        assert_close(
            "silu (plain)",
            cpu::silu(xi.clone()),
            cpu::with_reference_ops(|| cpu::silu(xi)),
        );
    }
    // Far tails: saturated, finite gradients.
    let x = Tensor::<B, 1>::from_floats([-60.0, -9.0, -0.0, 1e-8, 9.0, 60.0], &Default::default())
        .reshape([1, 1, 2, 3]);
    compare(
        "gelu tails",
        x.clone(),
        [1, 1, 2, 3],
        cpu::gelu,
        |_| -> [Tensor<Flex, 1>; 0] { [] },
    );
    compare(
        "tanh tails",
        x.clone(),
        [1, 1, 2, 3],
        cpu::tanh,
        |_| -> [Tensor<Flex, 1>; 0] { [] },
    );
    compare(
        "silu tails",
        x,
        [1, 1, 2, 3],
        cpu::silu,
        |_| -> [Tensor<Flex, 1>; 0] { [] },
    );
}

fn random_norm(groups: usize, channels: usize) -> GroupNorm<B> {
    let mut norm = GroupNormConfig::new(groups, channels)
        .with_epsilon(1e-6)
        .init(&Default::default());
    norm.gamma = Some(Param::from_tensor(random([channels], 1.0).add_scalar(1.0)));
    norm.beta = Some(Param::from_tensor(random([channels], 0.5)));
    norm
}

#[test]
fn group_norm_matches_burn() {
    for (groups, shape) in [(4, [2, 8, 5, 3]), (32, [1, 64, 7, 9]), (1, [3, 5, 4, 4])] {
        let norm = random_norm(groups, shape[1]);
        // An offset and scale per sample, so normalization has something to undo.
        let x = random(shape, 2.0).add_scalar(0.7);
        for fused in [false, true] {
            let f = |x| {
                if fused {
                    cpu::group_norm_silu(&norm, x)
                } else {
                    cpu::group_norm(&norm, x)
                }
            };
            compare(
                &format!("group norm {groups} groups {shape:?} silu {fused}"),
                x.clone(),
                shape,
                f,
                |g| {
                    [
                        norm.gamma
                            .as_ref()
                            .unwrap()
                            .grad(g)
                            .expect("gamma gradient"),
                        norm.beta.as_ref().unwrap().grad(g).expect("beta gradient"),
                    ]
                },
            );
        }
        let plain = norm.valid();
        let xi = x.inner();
        assert_close(
            "group norm silu (plain)",
            cpu::group_norm_silu(&plain, xi.clone()),
            cpu::with_reference_ops(|| cpu::group_norm_silu(&plain, xi)),
        );
    }
}

#[test]
fn pooling_and_upsampling_match_burn() {
    for shape in [[2, 3, 7, 9], [1, 1, 4, 4], [256, 2, 28, 28]] {
        let x = random(shape, 1.0);
        let pooled = [shape[0], shape[1], shape[2] / 2, shape[3] / 2];
        compare(
            "max pool 2x2",
            x.clone(),
            pooled,
            cpu::max_pool2x2,
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        let up = [shape[0], shape[1], shape[2] * 2, shape[3] * 2];
        compare(
            "nearest x2",
            x.clone(),
            up,
            cpu::upsample_nearest2,
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        let xi = x.inner();
        assert_close(
            "max pool (plain)",
            cpu::max_pool2x2(xi.clone()),
            cpu::with_reference_ops(|| cpu::max_pool2x2(xi.clone())),
        );
        assert_close(
            "nearest x2 (plain)",
            cpu::upsample_nearest2(xi.clone()),
            cpu::with_reference_ops(|| cpu::upsample_nearest2(xi)),
        );
    }
}

#[test]
fn reference_switch_is_scoped() {
    assert!(cpu::kernels_enabled());
    cpu::with_reference_ops(|| assert!(!cpu::kernels_enabled()));
    assert!(cpu::kernels_enabled());
}

#[test]
fn attention_matches_burn() {
    // (batch, tokens, heads, dim_head): several heads, one head, odd sizes, a single token.
    for (b, n, h, dh) in [(2, 9, 3, 4), (3, 16, 1, 8), (1, 1, 2, 5), (2, 65, 4, 16)] {
        let x = random([b, n, 3 * h * dh], 1.5);
        compare(
            &format!("attention b{b} n{n} h{h} dh{dh}"),
            x.clone(),
            [b, n, h * dh],
            |x| cpu::multi_head_attention(x, h, dh),
            |_| -> [Tensor<Flex, 1>; 0] { [] },
        );
        let xi = x.inner();
        assert_close(
            "attention (plain)",
            cpu::multi_head_attention(xi.clone(), h, dh),
            cpu::with_reference_ops(|| cpu::multi_head_attention(xi, h, dh)),
        );
    }
}

#[test]
fn layer_norm_matches_burn() {
    // Rows of 1, 7 and 256 features; 3 to 520 rows (several tasks of rows in the backward).
    for (shape, eps) in [([2, 3, 7], 1e-5), ([4, 130, 256], 1e-6), ([1, 5, 1], 1e-5)] {
        let d = shape[2];
        let mut norm = LayerNormConfig::new(d)
            .with_epsilon(eps)
            .init::<B>(&Default::default());
        norm.gamma = Param::from_tensor(random([d], 1.0).add_scalar(1.0));
        norm.beta = Some(Param::from_tensor(random([d], 0.5)));
        let x = random(shape, 2.0).add_scalar(0.7);
        compare(
            &format!("layer norm {shape:?}"),
            x.clone(),
            shape,
            |x| cpu::layer_norm(&norm, eps, x),
            |g| {
                [
                    norm.gamma.grad(g).expect("gamma gradient"),
                    norm.beta.as_ref().unwrap().grad(g).expect("beta gradient"),
                ]
            },
        );
        let plain = norm.valid();
        let xi = x.inner();
        assert_close(
            "layer norm (plain)",
            cpu::layer_norm(&plain, eps, xi.clone()),
            cpu::with_reference_ops(|| cpu::layer_norm(&plain, eps, xi)),
        );
    }
}
