//! Seeded, host-side initialization of codebooks and projections, so that every process of a
//! data-parallel run (and every rerun with the same seed) starts from identical values whatever
//! the backend's own RNG does.

use burn::{
    module::Param,
    nn::Linear,
    tensor::{Tensor, TensorData, backend::Backend},
};
use rand::{Rng, SeedableRng};

use crate::QuantRng;

/// A `[rows, cols]` tensor with entries uniform in `[-bound, bound)`.
pub(crate) fn uniform<B: Backend>(
    rows: usize,
    cols: usize,
    bound: f32,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut rng = QuantRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// A torch-style `Linear(d_in -> d_out)` (weights and bias uniform in `+-1/sqrt(d_in)`), stored as
/// burn's `[d_in, d_out]` row layout.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    seed: u64,
    device: &B::Device,
) -> Linear<B> {
    let bound = 1.0 / (d_in as f32).sqrt();
    let weight = uniform::<B>(d_in, d_out, bound, seed, device);
    let bias = uniform::<B>(1, d_out, bound, seed ^ 0x9e37_79b9_7f4a_7c15, device).reshape([d_out]);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// `[rows, D]` l2-normalized rows (norms clamped at 1e-6), gradient flowing.
pub(crate) fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norms = crate::estimator::row_norms(x.clone()).clamp_min(crate::NORM_EPS);
    x / norms
}

/// Choose `num` row indices out of `available` (without replacement when possible, as
/// vector-quantize-pytorch's `sample_vectors`).
pub(crate) fn sample_rows(available: usize, num: usize, rng: &mut QuantRng) -> Vec<i64> {
    if available >= num {
        rand::seq::index::sample(rng, available, num)
            .into_iter()
            .map(|i| i as i64)
            .collect()
    } else {
        (0..num)
            .map(|_| rng.random_range(0..available) as i64)
            .collect()
    }
}
