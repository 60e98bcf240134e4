//! Element-wise loops run on all cores and compiled for the machine's SIMD width (pulp picks
//! AVX2+FMA or AVX-512 at run time; the loops auto-vectorize inside), and the branch-free f32
//! math they use: `exp` (Cody-Waite reduction + degree-7 polynomial, relative error < 2e-7
//! on [-87, 88]), `erf` (its Maclaurin series below 0.5, Abramowitz-Stegun 7.1.26 above; absolute error
//! < 4e-7, a few f32 ulps), `sigmoid`.

use rayon::prelude::*;

/// Elements per parallel task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

/// Runs `f` compiled for the best instruction set this CPU has.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `out[i] = f(a[i])`, in parallel.
pub(crate) fn map1(a: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    assert_eq!(a.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(o, a)| {
            vectorized(
                #[inline(always)]
                || {
                    for (o, &a) in o.iter_mut().zip(a) {
                        *o = f(a);
                    }
                },
            )
        });
}

/// `out[i] = f(a[i], b[i])`, in parallel.
pub(crate) fn map2(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(a.len(), out.len());
    assert_eq!(b.len(), out.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        *o = f(a, b);
                    }
                },
            )
        });
}

/// Independent f64 accumulators of the sums below: one accumulator is a chain of dependent
/// adds (several cycles each); eight fill the vector units.
const LANES: usize = 8;

/// `sum f(v[i])` accumulated in f64 (call inside [`vectorized`]).
#[inline(always)]
pub(crate) fn sum_f64(v: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
    acc.iter().sum::<f64>() + tail
}

/// `(sum f(a[i], b[i]).0, sum f(a[i], b[i]).1)` accumulated in f64 (call inside
/// [`vectorized`]).
#[inline(always)]
pub(crate) fn sum2_f64(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f64, f64)) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut s0, mut s1) = ([0f64; LANES], [0f64; LANES]);
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            let (p, q) = f(x[i], y[i]);
            s0[i] += p;
            s1[i] += q;
        }
    }
    let (mut t0, mut t1) = (s0.iter().sum::<f64>(), s1.iter().sum::<f64>());
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        let (p, q) = f(x, y);
        t0 += p;
        t1 += q;
    }
    (t0, t1)
}

/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` for f32, branch-free (vectorizes). Inputs are clamped to [-87, 88].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((ki + 127) << 23) as u32);
    p * scale
}

/// `(erf(x), e^{-x^2})`: the Gaussian factor comes for free and GELU's gradient needs it.
#[inline(always)]
pub(crate) fn erf_with_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    const FRAC_2_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let x2 = x * x;
    let gauss = exp(-x2);
    let tail = (1.0 - poly * gauss).copysign(x);
    // Near 0, `1 - poly gauss` cancels: the Maclaurin series (7 terms, error < 1e-9 there).
    let series = FRAC_2_SQRT_PI
        * x
        * (1.0
            + x2 * (-1.0 / 3.0
                + x2 * (1.0 / 10.0
                    + x2 * (-1.0 / 42.0
                        + x2 * (1.0 / 216.0 + x2 * (-1.0 / 1320.0 + x2 * (1.0 / 9360.0)))))));
    (if ax < 0.5 { series } else { tail }, gauss)
}

/// `1 / (1 + e^{-x})`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.00731;
        }
        assert!(worst < 2e-7, "relative error {worst}");
    }

    #[test]
    fn erf_matches_series() {
        // erf by its Taylor series in f64 (accurate to ~1e-11 for |x| <= 3.5; beyond, erf is
        // within 7.5e-7 of +-1).
        fn erf64(x: f64) -> f64 {
            if x.abs() > 3.5 {
                return x.signum();
            }
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let (e, g) = erf_with_gauss(x);
            let tolerance = if x.abs() > 3.5 { 1e-6 } else { 0.0 };
            let err = (e as f64 - erf64(x as f64)).abs() - tolerance;
            worst = worst.max(err);
            let want_g = (-(x * x) as f64).exp(); // the same rounded argument
            assert!(
                (g as f64 - want_g).abs() <= 2e-7 * want_g + 1e-38,
                "gauss at {x}"
            );
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "absolute error {worst}");
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!((sigmoid(20.0) - 1.0).abs() < 1e-7);
        assert!(sigmoid(-100.0) < 1e-30);
    }
}
