//! Feature statistics (mean, unbiased covariance) and the Fréchet distance between two Gaussians:
//! FID (pytorch-fid) and FVD (the tf-gan formulation of TATS / VideoGPT) are both this distance on
//! different features.

use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use super::MetricError;

/// A streaming accumulator of `dim`-dimensional features in float64: their count, mean and
/// unbiased covariance (divided by N - 1, as `numpy.cov(rowvar=False)`).
///
/// For accuracy the sums are kept relative to a shift K, the first row pushed: `sum(x - K)` and
/// the upper triangle of `sum((x - K)(x - K)^T)`, so that the covariance does not come from the
/// difference of two large numbers when the features have a large mean. Accumulators (one per
/// rank or shard) combine with [`FeatureStats::merge`]; the result depends only on the order of
/// pushes and merges, never on threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FeatureStatsData", into = "FeatureStatsData")]
pub struct FeatureStats {
    dim: usize,
    count: u64,
    /// K: the first row pushed (empty while `count == 0`).
    shift: Vec<f64>,
    /// sum(x - K), `dim` values.
    sum: Vec<f64>,
    /// sum((x - K)(x - K)^T), row-major `dim x dim`; only the upper triangle (j >= i) is kept.
    sum_sq: Vec<f64>,
}

/// The serialized form of [`FeatureStats`], validated on the way back in.
#[derive(Serialize, Deserialize)]
struct FeatureStatsData {
    dim: usize,
    count: u64,
    shift: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl From<FeatureStats> for FeatureStatsData {
    fn from(s: FeatureStats) -> Self {
        Self {
            dim: s.dim,
            count: s.count,
            shift: s.shift,
            sum: s.sum,
            sum_sq: s.sum_sq,
        }
    }
}

impl TryFrom<FeatureStatsData> for FeatureStats {
    type Error = MetricError;

    fn try_from(d: FeatureStatsData) -> Result<Self, MetricError> {
        let shift_len = if d.count == 0 { 0 } else { d.dim };
        check_len("FeatureStats shift", shift_len, d.shift.len())?;
        check_len("FeatureStats sum", d.dim, d.sum.len())?;
        check_len("FeatureStats sum_sq", d.dim * d.dim, d.sum_sq.len())?;
        if d.dim == 0 {
            return Err(MetricError::Empty {
                what: "feature dimension",
            });
        }
        Ok(Self {
            dim: d.dim,
            count: d.count,
            shift: d.shift,
            sum: d.sum,
            sum_sq: d.sum_sq,
        })
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), MetricError> {
    if expected == got {
        Ok(())
    } else {
        Err(MetricError::DimensionMismatch {
            what,
            expected,
            got,
        })
    }
}

impl FeatureStats {
    /// An empty accumulator of `dim`-dimensional features (a `dim` of 0 makes every push fail).
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            count: 0,
            shift: Vec::new(),
            sum: vec![0.0; dim],
            sum_sq: vec![0.0; dim * dim],
        }
    }

    /// The feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows accumulated.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds one feature row (widened to float64).
    ///
    /// # Errors
    /// A row whose length is not `dim`, or a non-finite value (the accumulator is unchanged).
    pub fn push(&mut self, row: &[f32]) -> Result<(), MetricError> {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        self.push_f64(&row)
    }

    /// Adds one feature row.
    ///
    /// # Errors
    /// A row whose length is not `dim`, or a non-finite value (the accumulator is unchanged).
    pub fn push_f64(&mut self, row: &[f64]) -> Result<(), MetricError> {
        if self.dim == 0 {
            return Err(MetricError::Empty {
                what: "feature dimension",
            });
        }
        check_len("feature row", self.dim, row.len())?;
        if row.iter().any(|v| !v.is_finite()) {
            return Err(MetricError::NonFinite {
                what: "feature row",
            });
        }
        if self.count == 0 {
            self.shift = row.to_vec();
        }
        let d: Vec<f64> = row.iter().zip(&self.shift).map(|(x, k)| x - k).collect();
        let n = self.dim;
        for (i, &di) in d.iter().enumerate() {
            self.sum[i] += di;
            let upper = &mut self.sum_sq[i * n + i..(i + 1) * n];
            for (q, &dj) in upper.iter_mut().zip(&d[i..]) {
                *q += di * dj;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Adds everything `other` accumulated, as if its rows had been pushed here (up to
    /// rounding). Deterministic: the same merges in the same order give the same bits.
    ///
    /// # Errors
    /// Accumulators of different dimensions.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<(), MetricError> {
        check_len("merged FeatureStats", self.dim, other.dim)?;
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            *self = other.clone();
            return Ok(());
        }
        // Re-express other's sums relative to this shift: x - K = (x - K') + d with d = K' - K.
        //   sum(x - K) = S' + n' d
        //   sum((x - K)(x - K)^T) = Q' + S' d^T + d S'^T + n' d d^T
        let n = self.dim;
        let m = other.count as f64;
        let d: Vec<f64> = other
            .shift
            .iter()
            .zip(&self.shift)
            .map(|(k2, k)| k2 - k)
            .collect();
        let s2 = &other.sum;
        for i in 0..n {
            self.sum[i] += s2[i] + m * d[i];
            let (di, si) = (d[i], s2[i]);
            let row = i * n;
            for j in i..n {
                self.sum_sq[row + j] +=
                    other.sum_sq[row + j] + si * d[j] + di * s2[j] + m * di * d[j];
            }
        }
        self.count += other.count;
        Ok(())
    }

    /// The column means (all zeros while empty).
    pub fn mean(&self) -> Vec<f64> {
        if self.count == 0 {
            return vec![0.0; self.dim];
        }
        let n = self.count as f64;
        self.shift
            .iter()
            .zip(&self.sum)
            .map(|(k, s)| k + s / n)
            .collect()
    }

    /// The unbiased covariance (divided by N - 1), row-major `dim x dim`, exactly symmetric.
    ///
    /// # Errors
    /// Fewer than 2 rows.
    pub fn covariance(&self) -> Result<Vec<f64>, MetricError> {
        if self.count < 2 {
            return Err(MetricError::TooFewSamples { count: self.count });
        }
        let n = self.dim;
        let count = self.count as f64;
        let denom = count - 1.0;
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                // sum((x-K)_i (x-K)_j) - sum(x-K)_i sum(x-K)_j / N
                let c = (self.sum_sq[i * n + j] - self.sum[i] * self.sum[j] / count) / denom;
                cov[i * n + j] = c;
                cov[j * n + i] = c;
            }
        }
        Ok(cov)
    }
}

/// The Fréchet distance between two Gaussians and the trace of the matrix root in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetDistance {
    /// |mu_a - mu_b|^2 + Tr sigma_a + Tr sigma_b - 2 `trace_sqrt` (FID, FVD).
    pub distance: f64,
    /// Tr sqrt(sigma_a sigma_b).
    pub trace_sqrt: f64,
}

/// The Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (`sigma_*` row-major
/// `D x D`, symmetric positive semi-definite).
///
/// Tr sqrt(sigma_a sigma_b) is taken by the symmetric route: sigma_a^1/2 from a symmetric
/// eigendecomposition (negative eigenvalues clipped to 0), then the eigenvalues l_i of the
/// symmetric sigma_a^1/2 sigma_b sigma_a^1/2, trace = sum sqrt(max(l_i, 0)). For PSD inputs this
/// is the trace of pytorch-fid's `scipy.linalg.sqrtm(sigma_a @ sigma_b)` and of tf-gan's
/// SVD-based root, also when the covariances are rank-deficient (fewer samples than
/// dimensions). Single-threaded and deterministic; compute the statistics in float64.
///
/// # Errors
/// Inconsistent sizes, an empty dimension, a non-finite input, or a non-finite result.
pub fn frechet_distance(
    mu_a: &[f64],
    sigma_a: &[f64],
    mu_b: &[f64],
    sigma_b: &[f64],
) -> Result<FrechetDistance, MetricError> {
    let n = mu_a.len();
    if n == 0 {
        return Err(MetricError::Empty {
            what: "feature dimension",
        });
    }
    check_len("mu_b", n, mu_b.len())?;
    check_len("sigma_a", n * n, sigma_a.len())?;
    check_len("sigma_b", n * n, sigma_b.len())?;
    for (what, values) in [
        ("mu_a", mu_a),
        ("mu_b", mu_b),
        ("sigma_a", sigma_a),
        ("sigma_b", sigma_b),
    ] {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(MetricError::NonFinite { what });
        }
    }

    // faer's blocked algorithms (a 2048-d eigendecomposition in seconds), on one thread: the
    // same bits whatever the load and thread count (faer's SIMD kernels are chosen per CPU, so
    // two different CPUs may differ in the last bits).
    faer::set_global_parallelism(faer::Par::Seq);
    let sym = |v: &[f64]| Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (v[i * n + j] + v[j * n + i]));
    let (sa, sb) = (sym(sigma_a), sym(sigma_b));
    let failed = |e: faer::linalg::evd::EvdError| MetricError::SquareRoot {
        detail: format!("eigendecomposition did not converge: {e:?}"),
    };

    // sigma_a^1/2 = V diag(sqrt(max(l, 0))) V^T.
    let eig = sa.self_adjoint_eigen(Side::Lower).map_err(failed)?;
    let (v, l) = (eig.U(), eig.S().column_vector());
    let scaled = Mat::<f64>::from_fn(n, n, |i, j| v[(i, j)] * l[j].max(0.0).sqrt());
    let root = &scaled * v.transpose();
    let sqrt_a = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (root[(i, j)] + root[(j, i)]));

    let m = &sqrt_a * &sb * &sqrt_a;
    let m = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eigenvalues = m.self_adjoint_eigenvalues(Side::Lower).map_err(failed)?;
    let trace_sqrt: f64 = eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
    if !trace_sqrt.is_finite() {
        return Err(MetricError::SquareRoot {
            detail: format!("Tr sqrt(sigma_a sigma_b) = {trace_sqrt}"),
        });
    }

    let mean_term: f64 = mu_a.iter().zip(mu_b).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |m: &Mat<f64>| (0..n).map(|i| m[(i, i)]).sum::<f64>();
    let distance = mean_term + trace(&sa) + trace(&sb) - 2.0 * trace_sqrt;
    if !distance.is_finite() {
        return Err(MetricError::SquareRoot {
            detail: format!("distance = {distance}"),
        });
    }
    Ok(FrechetDistance {
        distance,
        trace_sqrt,
    })
}

/// The Fréchet distance of two sets of feature rows (`[n_a, dim]`, `[n_b, dim]`, row-major)
/// with fewer rows than dimensions, without any `dim x dim` decomposition: with centered rows
/// `X_a`, `X_b`, `Tr sqrt(sigma_a sigma_b)` is the sum of the singular values of
/// `X_a X_b^T / sqrt((n_a - 1)(n_b - 1))` (the nonzero eigenvalues of `sigma_a sigma_b` are those
/// of that product times its transpose). The same number as [`frechet_distance`] on the rows'
/// statistics, in milliseconds instead of seconds for 2048-d features and a few samples.
///
/// # Errors
/// Fewer than 2 rows, inconsistent sizes, non-finite values.
pub fn frechet_distance_of_rows(
    rows_a: &[f64],
    rows_b: &[f64],
    dim: usize,
) -> Result<FrechetDistance, MetricError> {
    if dim == 0 {
        return Err(MetricError::Empty {
            what: "feature dimension",
        });
    }
    // Centered rows and the column means.
    let centered =
        |rows: &[f64], what: &'static str| -> Result<(Vec<f64>, Vec<f64>, usize), MetricError> {
            check_len(what, rows.len() / dim * dim, rows.len())?;
            let n = rows.len() / dim;
            if n < 2 {
                return Err(MetricError::TooFewSamples { count: n as u64 });
            }
            if rows.iter().any(|v| !v.is_finite()) {
                return Err(MetricError::NonFinite { what });
            }
            let mut mean = vec![0f64; dim];
            for r in rows.chunks_exact(dim) {
                for (m, v) in mean.iter_mut().zip(r) {
                    *m += *v;
                }
            }
            mean.iter_mut().for_each(|m| *m /= n as f64);
            let mut c = rows.to_vec();
            for r in c.chunks_exact_mut(dim) {
                for (x, m) in r.iter_mut().zip(&mean) {
                    *x -= m;
                }
            }
            Ok((c, mean, n))
        };
    let (xa, mu_a, na) = centered(rows_a, "rows_a")?;
    let (xb, mu_b, nb) = centered(rows_b, "rows_b")?;
    let mean_term: f64 = mu_a.iter().zip(&mu_b).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |x: &[f64], n: usize| x.iter().map(|v| v * v).sum::<f64>() / (n - 1) as f64;
    faer::set_global_parallelism(faer::Par::Seq);
    let scale = (((na - 1) * (nb - 1)) as f64).sqrt();
    let cross = Mat::<f64>::from_fn(na, nb, |i, j| {
        let (a, b) = (&xa[i * dim..(i + 1) * dim], &xb[j * dim..(j + 1) * dim]);
        a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>() / scale
    });
    let singular = cross
        .singular_values()
        .map_err(|e| MetricError::SquareRoot {
            detail: format!("singular values did not converge: {e:?}"),
        })?;
    let trace_sqrt: f64 = singular.iter().sum();
    let distance = mean_term + trace(&xa, na) + trace(&xb, nb) - 2.0 * trace_sqrt;
    if !distance.is_finite() {
        return Err(MetricError::SquareRoot {
            detail: format!("distance = {distance}"),
        });
    }
    Ok(FrechetDistance {
        distance,
        trace_sqrt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn noise(seed: u64, len: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn stats(rows: &[f64], dim: usize) -> FeatureStats {
        let mut s = FeatureStats::new(dim);
        for row in rows.chunks(dim) {
            s.push_f64(row).unwrap();
        }
        s
    }

    #[test]
    fn covariance_matches_two_pass_formula() {
        let dim = 4;
        // A large offset: the naive sum-of-squares formula would lose digits here.
        let rows: Vec<f64> = noise(1, 40 * dim).iter().map(|v| v + 1.0e6).collect();
        let s = stats(&rows, dim);
        let n = 40.0;
        let mean: Vec<f64> = (0..dim)
            .map(|j| rows.iter().skip(j).step_by(dim).sum::<f64>() / n)
            .collect();
        for (got, want) in s.mean().iter().zip(&mean) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        let cov = s.covariance().unwrap();
        for i in 0..dim {
            for j in 0..dim {
                let want: f64 = rows
                    .chunks(dim)
                    .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                    .sum::<f64>()
                    / (n - 1.0);
                let got = cov[i * dim + j];
                assert!((got - want).abs() < 1e-12, "({i},{j}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn merge_equals_pushing_all_rows() {
        let dim = 5;
        let rows = noise(2, 30 * dim);
        let all = stats(&rows, dim);
        let mut a = stats(&rows[..11 * dim], dim);
        // b's shift (its first row) differs from a's.
        let b = stats(&rows[11 * dim..], dim);
        a.merge(&b).unwrap();
        a.merge(&FeatureStats::new(dim)).unwrap();
        assert_eq!(a.count(), all.count());
        let (ca, call) = (a.covariance().unwrap(), all.covariance().unwrap());
        for (x, y) in ca.iter().zip(&call) {
            assert!((x - y).abs() < 1e-13, "{x} vs {y}");
        }
        for (x, y) in a.mean().iter().zip(&all.mean()) {
            assert!((x - y).abs() < 1e-13, "{x} vs {y}");
        }
        let mut empty = FeatureStats::new(dim);
        empty.merge(&all).unwrap();
        assert_eq!(empty, all);
        assert!(empty.merge(&FeatureStats::new(dim + 1)).is_err());
    }

    #[test]
    fn covariance_needs_two_rows_and_matching_dims() {
        let mut s = FeatureStats::new(3);
        assert!(s.covariance().is_err());
        s.push(&[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(
            s.covariance(),
            Err(MetricError::TooFewSamples { count: 1 })
        ));
        assert!(s.push(&[1.0, 2.0]).is_err());
        assert!(s.push(&[1.0, f32::NAN, 2.0]).is_err());
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let s = stats(&noise(3, 12), 3);
        let json = serde_json::to_string(&s).unwrap();
        let back: FeatureStats = serde_json::from_str(&json).unwrap();
        // serde_json (without `float_roundtrip`) may move the last bit of a float.
        assert_eq!((back.dim(), back.count()), (s.dim(), s.count()));
        let (cb, cs) = (back.covariance().unwrap(), s.covariance().unwrap());
        assert!(cb.iter().zip(&cs).all(|(x, y)| (x - y).abs() < 1e-14));
        let bad = json.replacen("\"dim\":3", "\"dim\":4", 1);
        assert!(serde_json::from_str::<FeatureStats>(&bad).is_err());
    }

    #[test]
    fn identical_statistics_have_zero_distance() {
        let dim = 6;
        let s = stats(&noise(4, 50 * dim), dim);
        let (mu, sigma) = (s.mean(), s.covariance().unwrap());
        let fd = frechet_distance(&mu, &sigma, &mu, &sigma).unwrap();
        assert!(fd.distance.abs() < 1e-12, "{}", fd.distance);
        let trace: f64 = (0..dim).map(|i| sigma[i * dim + i]).sum();
        assert!((fd.trace_sqrt - trace).abs() < 1e-12);
    }

    #[test]
    fn one_dimensional_gaussians_match_closed_form() {
        let (m1, s1, m2, s2) = (0.5_f64, 1.7_f64, -1.25_f64, 0.3_f64);
        let fd = frechet_distance(&[m1], &[s1 * s1], &[m2], &[s2 * s2]).unwrap();
        let want = (m1 - m2).powi(2) + s1 * s1 + s2 * s2 - 2.0 * s1 * s2;
        assert!(
            (fd.distance - want).abs() < 1e-12,
            "{} vs {want}",
            fd.distance
        );
        assert!((fd.trace_sqrt - s1 * s2).abs() < 1e-12);
    }

    #[test]
    fn diagonal_covariances_match_closed_form_and_rank_deficiency_is_fine() {
        let a = [4.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0];
        let b = [1.0, 0.0, 0.0, 0.0, 16.0, 0.0, 0.0, 0.0, 25.0];
        let fd = frechet_distance(&[0.0; 3], &a, &[1.0, 0.0, 0.0], &b).unwrap();
        // Tr sqrt = 2*1 + 3*4 + 0*5; distance = 1 + 13 + 42 - 28.
        assert!((fd.trace_sqrt - 14.0).abs() < 1e-12, "{}", fd.trace_sqrt);
        assert!((fd.distance - 28.0).abs() < 1e-12, "{}", fd.distance);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(frechet_distance(&[0.0], &[1.0], &[0.0, 1.0], &[1.0]).is_err());
        assert!(frechet_distance(&[0.0], &[f64::NAN], &[0.0], &[1.0]).is_err());
        assert!(frechet_distance(&[], &[], &[], &[]).is_err());
    }
}
