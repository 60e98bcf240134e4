//! Nearest-code search, chunked so memory stays bounded.
//!
//! Euclidean: `argmin_k ||x||^2 - 2 x.c_k + ||c_k||^2` (the `||x||^2` term is constant per row and
//! dropped); cosine: `argmax_k x.c_k` on unit vectors. Scores are computed by matrix product, a
//! block of rows at a time, so that at most [`SCORE_BUDGET`] scores exist at once: N = 65,536
//! latents against K = 16,384 codes never materialize the N x K matrix.

use burn::tensor::{Int, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Largest number of scores (rows x codes) held in memory at once: 4 Mi floats, 16 MiB.
pub const SCORE_BUDGET: usize = 1 << 22;

/// How latents are compared with codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Squared euclidean distance.
    #[default]
    Euclidean,
    /// Cosine similarity: latents and codes are l2-normalized, the largest dot product wins.
    Cosine,
}

/// Rows per block so that `rows * codes <= SCORE_BUDGET` (at least one row).
pub fn rows_per_block(codes: usize) -> usize {
    (SCORE_BUDGET / codes.max(1)).max(1)
}

/// Index `[N]` of the nearest code for every row of `x` `[N, D]` in `codebook` `[K, D]`.
/// Runs without gradient tracking.
pub fn nearest<B: Backend>(
    x: Tensor<B, 2>,
    codebook: Tensor<B, 2>,
    distance: Distance,
) -> Tensor<B, 1, Int> {
    let x = x.detach();
    let codebook = codebook.detach();
    let [n, _] = x.dims();
    let [k, _] = codebook.dims();
    let block = rows_per_block(k);
    let (weights, bias) = match distance {
        // -2 C^T (exact scaling) and ||c||^2, so a block costs one matmul and one add.
        Distance::Euclidean => (
            codebook.clone().transpose() * -2.0,
            Some(codebook.powi_scalar(2).sum_dim(1).transpose()),
        ),
        Distance::Cosine => (codebook.transpose(), None),
    };
    let mut parts = Vec::with_capacity(n.div_ceil(block));
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let rows = x.clone().narrow(0, start, len);
        let scores = rows.matmul(weights.clone());
        let best = match &bias {
            Some(bias) => (scores + bias.clone()).argmin(1),
            None => scores.argmax(1),
        };
        parts.push(best.reshape([len]));
        start += len;
    }
    if parts.len() == 1 {
        parts.pop().expect("one block")
    } else {
        Tensor::cat(parts, 0)
    }
}
