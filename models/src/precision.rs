//! Mixed precision (`run.precision = "bf16"`), the way torch's autocast does it: the model
//! computes in a 16-bit type from a differentiable copy of its f32 weights (the master weights,
//! which the optimizer updates in f32), while normalizations and the quantizer (distances, codes,
//! losses, EMA statistics) compute in f32.

use burn::{
    module::{Module, ModuleMapper, Param},
    tensor::{DType, FloatDType, Tensor, backend::Backend},
};

/// Whether `dtype` is a 16-bit float type (a mixed-precision compute type).
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// Casts every float parameter, keeping its id.
struct CastParams(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// `module` with every float parameter cast to `dtype`. The casts are differentiable: gradients of
/// the copy's parameters reach the original ones (in their own type) through them.
pub fn cast_module<B: Backend, M: Module<B>>(module: M, dtype: FloatDType) -> M {
    module.map(&mut CastParams(dtype))
}

/// `f(module, x)` in f32 when `x` is in a 16-bit type (autocast's f32 operations: the
/// normalizations): the module's parameters and `x` cast up, the result cast back to `x`'s type.
/// Otherwise `f(module, x)` as it is.
pub(crate) fn in_f32<B: Backend, M: Module<B>, const D: usize>(
    module: &M,
    x: Tensor<B, D>,
    f: impl FnOnce(&M, Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        return f(module, x);
    }
    let up = cast_module(module.clone(), FloatDType::F32);
    f(&up, x.cast(FloatDType::F32)).cast(dtype)
}

/// burn's `LayerNorm` in f32 under mixed precision (see [`in_f32`]).
pub(crate) fn layer_norm_f32<B: Backend, const D: usize>(
    norm: &burn::nn::LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    in_f32(norm, x, |norm, x| norm.forward(x))
}
