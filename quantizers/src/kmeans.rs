//! k-means initialization of a codebook from a batch of latents (vector-quantize-pytorch's
//! `kmeans`): means start at randomly chosen latents, then Lloyd iterations; a cluster that ends
//! up empty keeps its previous mean.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend};

use crate::{
    Distance, QuantRng,
    init::{l2_normalize, sample_rows},
    search::nearest,
    vq::histogram,
};

/// Returns `(means [K, d], bins [K])`: cluster centers and their sizes after `iters` iterations.
pub(crate) fn kmeans<B: Backend>(
    samples: Tensor<B, 2>,
    k: usize,
    iters: usize,
    distance: Distance,
    rng: &mut QuantRng,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let samples = samples.detach();
    let device = samples.device();
    let [n, d] = samples.dims();
    let rows = sample_rows(n, k, rng);
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [k]), &device);
    let mut means = samples.clone().select(0, rows);
    let mut bins = Tensor::<B, 1>::zeros([k], &device);
    for _ in 0..iters {
        let assign = nearest(samples.clone(), means.clone(), distance);
        bins = histogram(assign.clone(), k);
        let sums = Tensor::<B, 2>::zeros([k, d], &device).select_assign(
            0,
            assign,
            samples.clone(),
            IndexingUpdateOp::Add,
        );
        let empty = bins.clone().lower_equal_elem(0.0).float().reshape([k, 1]);
        let mut new_means = sums / bins.clone().clamp_min(1.0).reshape([k, 1]);
        if distance == Distance::Cosine {
            new_means = l2_normalize(new_means);
        }
        means = means * empty.clone() + new_means * (empty.neg() + 1.0);
    }
    (means, bins)
}
