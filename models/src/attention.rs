//! Multi-head scaled dot-product attention as enhancing-transformers' ViT and Hugging Face's
//! TimeSformer compute it: one fused `qkv` projection cut in thirds q | k | v, head `j` taking
//! features `j*dh..(j+1)*dh` of each, `softmax(q.k * dh^-0.5)` over the keys, heads concatenated
//! in order. The projections themselves live with the models (their names differ).

use burn::tensor::{Tensor, backend::Backend};

/// Attention over the tokens of each sequence: `qkv` is `[B, N, 3 * heads * dim_head]`, the
/// result `[B, N, heads * dim_head]` ([`crate::cpu::multi_head_attention`]: one fused
/// operation on the CPU backend, burn's operations elsewhere).
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    dim_head: usize,
) -> Tensor<B, 3> {
    crate::cpu::multi_head_attention(qkv, heads, dim_head)
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
