//! Bilinear resizing as PyTorch's `F.interpolate(mode="bilinear", align_corners=False,
//! antialias=False)` computes it, which is what the metric networks' preprocessing uses (FID
//! Inception to 299x299, I3D to 224x224), enlarging or shrinking alike. Per axis with input size
//! `n` and output size `m`: `src = max((o + 0.5) n/m - 0.5, 0)`, `i0 = floor(src)`,
//! `i1 = min(i0 + 1, n - 1)`, weight of `i1` = `src - i0`. The resize runs as two products with
//! interpolation matrices, so it is the same on every backend.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// The `[m, n]` interpolation matrix of one axis (row `o` holds output `o`'s two weights).
pub fn resize_matrix(n: usize, m: usize) -> Vec<f32> {
    let mut r = vec![0f32; m * n];
    let scale = n as f64 / m as f64;
    for o in 0..m {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let f = src - i0 as f64;
        r[o * n + i0] += (1.0 - f) as f32;
        r[o * n + i1] += f as f32;
    }
    r
}

/// Resizes `[N, C, H, W]` to `[N, C, out_h, out_w]` (unchanged when the size already matches).
pub fn resize_bilinear<B: Backend>(x: Tensor<B, 4>, [out_h, out_w]: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    if [h, w] == [out_h, out_w] {
        return x;
    }
    let device = x.device();
    // Columns: [N C H, W] . Rx^T [W, out_w].
    let rx = Tensor::<B, 2>::from_data(
        TensorData::new(resize_matrix(w, out_w), [out_w, w]),
        &device,
    );
    let x = x.reshape([n * c * h, w]).matmul(rx.transpose());
    // Rows: per plane [out_w, H] . Ry^T [H, out_h], then back to rows-major.
    let ry = Tensor::<B, 2>::from_data(
        TensorData::new(resize_matrix(h, out_h), [out_h, h]),
        &device,
    );
    let x = x
        .reshape([n * c, h, out_w])
        .swap_dims(1, 2)
        .reshape([n * c * out_w, h])
        .matmul(ry.transpose());
    x.reshape([n * c, out_w, out_h])
        .swap_dims(1, 2)
        .reshape([n, c, out_h, out_w])
}

#[cfg(test)]
mod tests {
    use super::resize_matrix;

    #[test]
    fn rows_are_convex_weights_following_the_half_pixel_rule() {
        for (n, m) in [(64, 299), (80, 299), (400, 299), (5, 5), (2, 7)] {
            let r = resize_matrix(n, m);
            for o in 0..m {
                let row = &r[o * n..(o + 1) * n];
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "{n}->{m} row {o} sums to {sum}");
                assert!(row.iter().all(|&v| v >= 0.0));
            }
        }
        // Same size: the identity.
        let r = resize_matrix(5, 5);
        for o in 0..5 {
            assert_eq!(r[o * 5 + o], 1.0);
        }
        // 2 -> 4: src = 0 (clamped), 0.25, 0.75, 1.25 -> clamped to the last pixel.
        let r = resize_matrix(2, 4);
        assert_eq!(&r[0..2], &[1.0, 0.0]);
        assert_eq!(&r[2..4], &[0.75, 0.25]);
        assert_eq!(&r[4..6], &[0.25, 0.75]);
        assert_eq!(&r[6..8], &[0.0, 1.0]);
    }
}
