//! Multi-head scaled dot-product attention as enhancing-transformers' ViT and Hugging Face's
//! TimeSformer compute it: one fused `qkv` projection cut in thirds q | k | v, head `j` taking
//! features `j*dh..(j+1)*dh` of each, `softmax(q.k * dh^-0.5)` over the keys, heads concatenated
//! in order. The projections themselves live with the models (their names differ).

use burn::tensor::{Tensor, activation, backend::Backend};

/// Attention over the tokens of each sequence: `qkv` is `[B, N, 3 * heads * dim_head]`, the
/// result `[B, N, heads * dim_head]`.
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    dim_head: usize,
) -> Tensor<B, 3> {
    let [b, n, _] = qkv.dims();
    // [B, N, 3, h, dh] -> [3, B, h, N, dh]
    let qkv = qkv
        .reshape([b, n, 3, heads, dim_head])
        .permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, dim_head]);
    let (q, k, v) = (part(0), part(1), part(2));
    let scale = (dim_head as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let probs = activation::softmax(scores, 3);
    probs
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, n, heads * dim_head])
}

/// `linear` applied to tokens `[B, N, in]` as ONE matrix product over all `B*N` rows (burn's
/// `Linear` on a 3-D input runs a batched product per sample, and its weight gradient a sum of
/// per-sample products: slower, the same values up to summation order).
pub fn linear_tokens<B: Backend>(linear: &burn::nn::Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, n, d] = x.dims();
    let y = linear.forward(x.reshape([b * n, d]));
    let o = y.dims()[1];
    y.reshape([b, n, o])
}
