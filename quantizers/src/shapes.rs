//! Latent layouts: images `[B, C, H, W]`, videos `[B, C, T, H, W]` and token sequences `[B, N, C]`
//! flattened to the `[N, D]` rows a quantizer works on (channels last), and back.

use burn::tensor::{Int, Tensor, backend::Backend};

/// `[B, C, H, W]` -> `[B*H*W, C]` (rows in `b, h, w` order).
pub fn flatten_image<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, h, w] = x.dims();
    x.permute([0, 2, 3, 1]).reshape([b * h * w, c])
}

/// Inverse of [`flatten_image`] for `[B*H*W, C]` rows.
pub fn unflatten_image<B: Backend>(rows: Tensor<B, 2>, [b, h, w]: [usize; 3]) -> Tensor<B, 4> {
    let [_, c] = rows.dims();
    rows.reshape([b, h, w, c]).permute([0, 3, 1, 2])
}

/// `[B, C, T, H, W]` -> `[B*T*H*W, C]`.
pub fn flatten_video<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 2> {
    let [b, c, t, h, w] = x.dims();
    x.permute([0, 2, 3, 4, 1]).reshape([b * t * h * w, c])
}

/// Inverse of [`flatten_video`].
pub fn unflatten_video<B: Backend>(rows: Tensor<B, 2>, [b, t, h, w]: [usize; 4]) -> Tensor<B, 5> {
    let [_, c] = rows.dims();
    rows.reshape([b, t, h, w, c]).permute([0, 4, 1, 2, 3])
}

/// `[B, N, C]` -> `[B*N, C]`.
pub fn flatten_tokens<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, n, c] = x.dims();
    x.reshape([b * n, c])
}

/// Inverse of [`flatten_tokens`].
pub fn unflatten_tokens<B: Backend>(rows: Tensor<B, 2>, [b, n]: [usize; 2]) -> Tensor<B, 3> {
    let [_, c] = rows.dims();
    rows.reshape([b, n, c])
}

/// Indices `[B*H*W, L]` -> `[B, L, H, W]` (one map per level).
pub fn index_map<B: Backend>(
    indices: Tensor<B, 2, Int>,
    [b, h, w]: [usize; 3],
) -> Tensor<B, 4, Int> {
    let [_, l] = indices.dims();
    indices.reshape([b, h, w, l]).permute([0, 3, 1, 2])
}
