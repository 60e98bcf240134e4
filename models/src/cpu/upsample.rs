//! Nearest-neighbour x2 upsampling (every pixel becomes a 2x2 block, `nn.Upsample(scale_factor=2,
//! mode="nearest")`): forward and backward (the sum of each block's four gradients) are one
//! parallel pass over planes each, where burn's expand/reshape form materializes strided copies
//! and reduces in the backward.

use burn::{backend::flex::FlexTensor, tensor::Tensor, tensor::backend::Backend};
use rayon::prelude::*;

use super::tensor::{
    Routed, cast, contiguous, dims, flex_primitive, flex_tensor, from_vec, route, unary_autodiff,
    values,
};

/// `[batch, channels, h, w]` -> `[batch, channels, 2h, 2w]`.
pub fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    match route(x) {
        Routed::Autodiff(x) => cast(unary_autodiff(
            x,
            |x| (forward(x), dims::<4>(x)),
            |shape, g| backward(*shape, g),
        )),
        Routed::Plain(x) => cast(flex_tensor::<4>(forward(&flex_primitive(x)))),
        Routed::Other(x) => {
            let [b, c, h, w] = x.dims();
            x.reshape([b, c, h, 1, w, 1])
                .expand([b, c, h, 2, w, 2])
                .reshape([b, c, 2 * h, 2 * w])
        }
    }
}

fn forward(x: &FlexTensor) -> FlexTensor {
    let [n, c, h, w] = dims::<4>(x);
    let x = contiguous(x);
    let xs = values(&x);
    let mut out = vec![0f32; n * c * 4 * h * w];
    out.par_chunks_mut(4 * h * w)
        .zip(xs.par_chunks(h * w))
        .for_each(|(o, src)| {
            for y in 0..h {
                let row = &src[y * w..][..w];
                let (top, bottom) = o[2 * y * 2 * w..][..4 * w].split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    from_vec(out, &[n, c, 2 * h, 2 * w])
}

fn backward([n, c, h, w]: [usize; 4], g: &FlexTensor) -> FlexTensor {
    let g = contiguous(g);
    let gs = values(&g);
    let mut dx = vec![0f32; n * c * h * w];
    dx.par_chunks_mut(h * w)
        .zip(gs.par_chunks(4 * h * w))
        .for_each(|(d, src)| {
            for y in 0..h {
                let (top, bottom) = src[2 * y * 2 * w..][..4 * w].split_at(2 * w);
                for (x, out) in d[y * w..][..w].iter_mut().enumerate() {
                    *out = (top[2 * x] + top[2 * x + 1]) + (bottom[2 * x] + bottom[2 * x + 1]);
                }
            }
        });
    from_vec(dx, &[n, c, h, w])
}
