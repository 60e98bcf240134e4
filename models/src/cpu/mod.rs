//! rotor's own CPU kernels for the layers that dominate a training step on the CPU backend
//! (`Autodiff<Flex>`, and plain `Flex` for evaluation): 2-D convolution (im2col + Flex's
//! batched GEMM, forward and both backward products; Winograd F(2x2, 3x3) for 3x3 stride-1
//! layers with 32+ channels), 3-D convolution (vol2col + GEMM, for video models; Winograd
//! F(2x2, 3x3) in space with the three temporal taps in one GEMM for 3x3x3 stride-1 layers),
//! multi-head attention over a fused qkv input, GELU, SiLU and tanh, LayerNorm, GroupNorm
//! (optionally fused with SiLU), 2x2 max-pooling and nearest x2 upsampling; and the AdamW
//! update as one pass.
//! Each is ONE autodiff operation with its own backward, parallel over samples and channels
//! with rayon, vectorized for the machine's SIMD width at run time (pulp).
//!
//! The entry points take burn modules and tensors of any backend: on `Autodiff<Flex>` / `Flex`
//! with f32 tensors they run rotor's kernels, on every other backend (CUDA) or dtype they call
//! burn's own operations, so models are written once. [`with_reference_ops`] runs a closure with
//! burn's operations on the CPU too: the tests compare both paths, and it is the baseline of the
//! speed benchmark.

mod activation;
mod adamw;
mod attention;
mod conv2d;
mod conv3d;
mod conv_op;
mod group_norm;
mod layer_norm;
mod pool;
mod reduce;
mod simd;
mod tensor;
mod upsample;
mod winograd;
mod winograd3d;

use std::cell::Cell;

pub use activation::{gelu, silu, tanh};
pub use adamw::{AdamWHyper, adamw_update};
pub use attention::multi_head_attention;
pub use conv2d::conv2d;
pub use conv3d::conv3d;
pub use group_norm::{group_norm, group_norm_silu};
pub use layer_norm::layer_norm;
pub use pool::max_pool2x2;
pub use upsample::upsample_nearest2;

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with burn's own operations instead of rotor's CPU kernels (on this thread).
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REFERENCE.with(|r| r.replace(true)));
    f()
}

/// Whether rotor's kernels are used on this thread (false inside [`with_reference_ops`]).
pub fn kernels_enabled() -> bool {
    !REFERENCE.with(Cell::get)
}
