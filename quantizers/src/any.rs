//! `AnyQuantizer`: one module type that holds whichever quantizer a config chose, so models embed
//! a quantizer (and save it with their weights) without knowing which one it is.

use burn::{
    module::Module,
    tensor::{DType, FloatDType, Int, Tensor, backend::Backend},
};

use crate::{
    EmaStats, Fsq, Lfq, Mode, QuantOut, QuantRng, Quantizer, QuantizerError, ResidualQuantizer,
    StatsReport, VectorQuantizer,
};

/// Any quantizer of this crate, built by [`crate::QuantizerConfig::init`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AnyQuantizer<B: Backend> {
    /// Vector quantizer.
    Vq(VectorQuantizer<B>),
    /// Lookup-free quantizer.
    Lfq(Lfq<B>),
    /// Finite scalar quantizer.
    Fsq(Fsq<B>),
    /// Residual stack.
    Residual(ResidualQuantizer<B>),
}

/// One level of a residual stack: any quantizer but another stack.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LevelQuantizer<B: Backend> {
    /// Vector quantizer.
    Vq(VectorQuantizer<B>),
    /// Lookup-free quantizer.
    Lfq(Lfq<B>),
    /// Finite scalar quantizer.
    Fsq(Fsq<B>),
}

macro_rules! dispatch {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            AnyQuantizer::Vq($q) => $body,
            AnyQuantizer::Lfq($q) => $body,
            AnyQuantizer::Fsq($q) => $body,
            AnyQuantizer::Residual($q) => $body,
        }
    };
}

macro_rules! dispatch_level {
    ($self:expr, $q:ident => $body:expr) => {
        match $self {
            LevelQuantizer::Vq($q) => $body,
            LevelQuantizer::Lfq($q) => $body,
            LevelQuantizer::Fsq($q) => $body,
        }
    };
}

impl<B: Backend> Quantizer<B> for AnyQuantizer<B> {
    fn input_dim(&self) -> usize {
        dispatch!(self, q => q.input_dim())
    }

    fn codebook_size(&self) -> usize {
        dispatch!(self, q => q.codebook_size())
    }

    fn num_levels(&self) -> usize {
        dispatch!(self, q => q.num_levels())
    }

    fn ema_codebooks(&self) -> usize {
        dispatch!(self, q => q.ema_codebooks())
    }

    /// Mixed precision (16-bit latents): distances, codes, losses and EMA statistics in f32
    /// (the codebooks are f32), the quantized rows cast back to the latents' type.
    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        let dtype = latents.dtype();
        if !matches!(dtype, DType::BF16 | DType::F16) {
            return dispatch!(self, q => q.quantize(latents, mode));
        }
        let mut out = dispatch!(self, q => q.quantize(latents.cast(FloatDType::F32), mode));
        out.quantized = out.quantized.cast(dtype);
        out
    }

    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError> {
        dispatch!(self, q => q.apply_stats(stats, rng))
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        dispatch!(self, q => q.decode(indices))
    }

    fn needs_init(&self) -> bool {
        dispatch!(self, q => q.needs_init())
    }

    fn init_from_batch(&mut self, latents: Tensor<B, 2>, rng: &mut QuantRng) {
        dispatch!(self, q => q.init_from_batch(latents, rng))
    }
}

impl<B: Backend> Quantizer<B> for LevelQuantizer<B> {
    fn input_dim(&self) -> usize {
        dispatch_level!(self, q => q.input_dim())
    }

    fn codebook_size(&self) -> usize {
        dispatch_level!(self, q => q.codebook_size())
    }

    fn num_levels(&self) -> usize {
        dispatch_level!(self, q => q.num_levels())
    }

    fn ema_codebooks(&self) -> usize {
        dispatch_level!(self, q => q.ema_codebooks())
    }

    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        dispatch_level!(self, q => q.quantize(latents, mode))
    }

    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError> {
        dispatch_level!(self, q => q.apply_stats(stats, rng))
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        dispatch_level!(self, q => q.decode(indices))
    }

    fn needs_init(&self) -> bool {
        dispatch_level!(self, q => q.needs_init())
    }

    fn init_from_batch(&mut self, latents: Tensor<B, 2>, rng: &mut QuantRng) {
        dispatch_level!(self, q => q.init_from_batch(latents, rng))
    }
}
