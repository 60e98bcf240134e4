//! Gradient estimators: how the gradient crosses the non-differentiable nearest-code lookup.
//!
//! Every estimator maps the encoder vector `e` (with gradient) and its code `q` (a constant) to a
//! tensor whose forward value is `q`. They differ in the Jacobian `d q~ / d e` used in backward:
//!
//! * [`Estimator::Ste`]: identity (`q~ = e + sg(q - e)`).
//! * [`Estimator::Rotation`]: the rotation trick of Fifty et al. (Algorithm 1),
//!   `q~ = sg(lambda R) e` with `lambda = ||q||/||e||` and
//!   `R = I - 2 r r^T + 2 q^ e^^T`, `r = (e^ + q^)/||e^ + q^||`. Applied in O(d) per vector: no
//!   `d x d` matrix is ever formed; `lambda`, `r`, `e^`, `q^` are detached so only the trailing `e`
//!   carries gradient, giving `grad_e = lambda (g - 2 r (r.g) + 2 e^ (q^.g))`.
//! * [`Estimator::RotationUnscaled`]: Appendix A.9 with gamma = 1: `q~ = R e + sg(q - R e)`,
//!   Jacobian `R`.
//!
//! # Degenerate vectors (no NaN, ever)
//! * `e` antiparallel to `q` (`e^ = -q^`): the rotation plane is undefined and `e^ + q^ = 0`.
//!   When `||e^ + q^|| < 1e-3`, `r = 0` and `R = I + 2 q^ e^^T = I - 2 q^ q^^T`, the
//!   reflection across the hyperplane orthogonal to `q`. It still maps `e^` to `q^`, preserves
//!   norms and angles, and the forward value is still `q` (same as vector-quantize-pytorch).
//! * `||e|| < NORM_EPS`: the direction of `e` is meaningless and `lambda` would explode; the row
//!   falls back to the straight-through estimator (value `q`, identity Jacobian).
//! * `||q|| ~ 0`: `lambda ~ 0`, so the forward value is `q ~ 0` and the gradient vanishes with it,
//!   as the paper's formula says (finite, never NaN).

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Norms below this are treated as zero (the clamp of vector-quantize-pytorch's `safe_div`).
pub const NORM_EPS: f32 = 1e-6;

/// `||e^ + q^||` below this counts as antiparallel: `r = 0` (reflection). Closer to antiparallel
/// than this, f32 rounding in `e^ + q^` (~1e-7) would dominate the direction of `r`; above it
/// `r` is accurate to ~1e-4 and normalized exactly, so `R` stays orthogonal.
pub(crate) const ANTIPARALLEL_EPS: f32 = 1e-3;

/// Which gradient estimator carries gradients through the quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// Straight-through: gradient copied unchanged from `q` to `e`.
    Ste,
    /// The rotation trick (paper Algorithm 1): gradient rotated and rescaled by `lambda R`.
    #[default]
    Rotation,
    /// The rotation without rescaling (paper Appendix A.9, gamma = 1): gradient rotated by `R`.
    RotationUnscaled,
}

impl Estimator {
    /// Returns `q~`: forward value `q`, backward according to the estimator.
    ///
    /// `x` is the vector that was looked up (after any projection / normalization), `[N, D]`,
    /// carrying gradient; `q` is its code `[N, D]` (detached here whatever the caller passes).
    pub fn apply<B: Backend>(self, x: Tensor<B, 2>, q: Tensor<B, 2>) -> Tensor<B, 2> {
        let q = q.detach();
        match self {
            Estimator::Ste => x.clone() + (q - x).detach(),
            Estimator::Rotation | Estimator::RotationUnscaled => {
                let scaled = self == Estimator::Rotation;
                match crate::fused_rotation::try_rotation(x, q, scaled) {
                    Ok(fused) => fused,
                    Err((x, q)) => generic_rotation(x, q, scaled),
                }
            }
        }
    }
}

/// The rotation from generic tensor operations (any backend): `L(x) + sg(q - L(x))` with
/// `L = sg(lambda R)`, so the value is `q` whatever the rounding of `L(x)`, and the Jacobian is
/// `lambda R` (identity on straight-through fallback rows).
pub(crate) fn generic_rotation<B: Backend>(
    x: Tensor<B, 2>,
    q: Tensor<B, 2>,
    scaled: bool,
) -> Tensor<B, 2> {
    let c = RotationConstants::new(x.clone().detach(), q.clone(), scaled);
    let rotated = c.transform(x);
    rotated.clone() + (q - rotated).detach()
}

/// Row norms `[N, 1]` of a `[N, D]` tensor.
pub(crate) fn row_norms<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    x.powi_scalar(2).sum_dim(1).sqrt()
}

/// The detached per-row constants of `lambda R`, in the O(d) form
/// `lambda R x = lambda x - (2 lambda r) (r.x) + (2 lambda q^) (e^.x)`.
struct RotationConstants<B: Backend> {
    lambda: Tensor<B, 2>,
    r: Tensor<B, 2>,
    r_coef: Tensor<B, 2>,
    e_hat: Tensor<B, 2>,
    q_coef: Tensor<B, 2>,
}

impl<B: Backend> RotationConstants<B> {
    fn new(e: Tensor<B, 2>, q: Tensor<B, 2>, scaled: bool) -> Self {
        let e_norm = row_norms(e.clone());
        let q_norm = row_norms(q.clone());
        // 1 where the row can be rotated, 0 where ||e|| < eps (straight-through fallback).
        let keep = e_norm.clone().greater_equal_elem(NORM_EPS).float();
        let inv_e = e_norm.clamp_min(NORM_EPS).recip();
        let e_hat = e * inv_e.clone() * keep.clone();
        let q_hat = q * q_norm.clone().clamp_min(NORM_EPS).recip();
        let s = e_hat.clone() + q_hat.clone();
        let s_norm = row_norms(s.clone());
        let s_keep = s_norm.clone().greater_equal_elem(ANTIPARALLEL_EPS).float();
        let r = s * s_norm.clamp_min(ANTIPARALLEL_EPS).recip() * s_keep * keep.clone();
        let lambda = if scaled {
            // lambda = ||q||/||e|| on rotated rows, 1 on fallback rows.
            q_norm * inv_e * keep.clone() + (keep.neg() + 1.0)
        } else {
            Tensor::ones_like(&q_norm)
        };
        let r_coef = r.clone() * lambda.clone() * 2.0;
        let q_coef = q_hat * lambda.clone() * 2.0;
        Self {
            lambda,
            r,
            r_coef,
            e_hat,
            q_coef,
        }
    }

    /// `lambda R x` with gradient flowing through `x` only.
    fn transform(self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let along_r = (x.clone() * self.r).sum_dim(1);
        let along_e = (x.clone() * self.e_hat).sum_dim(1);
        x * self.lambda - self.r_coef * along_r + self.q_coef * along_e
    }
}
