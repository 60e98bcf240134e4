//! Finite scalar quantization (Mentzer et al.; vector-quantize-pytorch's `FSQ`): every channel is
//! bounded by `tanh` and rounded to one of `L_i` levels; the codebook is the grid of all level
//! combinations, of size `prod L_i`. No parameters, no loss; straight-through rounding.
//!
//! Per channel with `L` levels: `h = (L-1)(1+1e-3)/2`, `off = 0.5` if `L` is even else 0,
//! `s = atanh(off/h)`, `bounded = tanh(z + s) h - off`, `code = round_ste(bounded) / (L div 2)`.
//! Index: `sum_i (code_i (L_i div 2) + L_i div 2) prod_{j<i} L_j` (first channel least significant).

use burn::{
    module::Module,
    tensor::{Int, Tensor, TensorData, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    EmaStats, Mode, QuantOut, QuantRng, Quantizer, QuantizerError, StatsReport, Usage,
    vq::histogram,
};

/// Configuration of [`Fsq`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsqConfig {
    /// Levels per channel; the latent width is `levels.len()`. FSQ paper: `[8, 5, 5, 5]` (2^10),
    /// `[8, 6, 5]` (2^8), `[7, 5, 5, 5, 5]` (2^12), `[8, 8, 8, 6, 5]` (2^14).
    pub levels: Vec<u32>,
}

impl FsqConfig {
    /// Checks the levels; the error names the key.
    pub fn validate(&self) -> Result<(), QuantizerError> {
        if self.levels.is_empty() {
            return Err(QuantizerError::config(
                "levels",
                "needs at least one channel",
            ));
        }
        if let Some(l) = self.levels.iter().find(|l| **l < 2) {
            return Err(QuantizerError::config(
                "levels",
                format!("every channel needs at least 2 levels, got {l}"),
            ));
        }
        let size = self
            .levels
            .iter()
            .try_fold(1u64, |acc, l| acc.checked_mul(*l as u64));
        match size {
            Some(s) if s <= (1 << 24) => Ok(()),
            _ => Err(QuantizerError::config(
                "levels",
                "the codebook (product of levels) must stay <= 2^24 codes",
            )),
        }
    }

    /// Builds the quantizer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Fsq<B>, QuantizerError> {
        self.validate()?;
        let d = self.levels.len();
        let row = |f: &dyn Fn(u32) -> f32| {
            let v: Vec<f32> = self.levels.iter().map(|l| f(*l)).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [1, d]), device)
        };
        let half_width = |l: u32| (l - 1) as f32 * (1.0 + 1e-3) / 2.0;
        let offset = |l: u32| if l.is_multiple_of(2) { 0.5 } else { 0.0 };
        let mut basis = Vec::with_capacity(d);
        let mut acc = 1.0f32;
        for l in &self.levels {
            basis.push(acc);
            acc *= *l as f32;
        }
        Ok(Fsq {
            half_width: row(&half_width),
            offset: row(&offset),
            shift: row(&|l| (offset(l) / half_width(l)).atanh()),
            half_levels: row(&|l| (l / 2) as f32),
            basis_int: Tensor::from_data(
                TensorData::new(basis.iter().map(|b| *b as i64).collect::<Vec<_>>(), [1, d]),
                device,
            ),
            levels_int: Tensor::from_data(
                TensorData::new(
                    self.levels.iter().map(|l| *l as i64).collect::<Vec<_>>(),
                    [1, d],
                ),
                device,
            ),
            basis: Tensor::from_data(TensorData::new(basis, [1, d]), device),
            config: self.clone(),
        })
    }
}

/// Finite scalar quantizer. Its per-channel constants are plain tensors (not saved: they follow
/// from the config).
#[derive(Module, Debug)]
pub struct Fsq<B: Backend> {
    half_width: Tensor<B, 2>,
    offset: Tensor<B, 2>,
    shift: Tensor<B, 2>,
    half_levels: Tensor<B, 2>,
    basis: Tensor<B, 2>,
    basis_int: Tensor<B, 2, Int>,
    levels_int: Tensor<B, 2, Int>,
    #[module(skip)]
    config: FsqConfig,
}

impl<B: Backend> Fsq<B> {
    /// The configuration it was built from.
    pub fn config(&self) -> &FsqConfig {
        &self.config
    }

    /// `[N, d]` codes in `[-1, 1]`, straight-through through the rounding.
    fn codes(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let bounded =
            (z + self.shift.clone()).tanh() * self.half_width.clone() - self.offset.clone();
        let rounded = bounded.clone() + (bounded.clone().round() - bounded).detach();
        rounded / self.half_levels.clone()
    }

    fn indices_of(&self, codes: Tensor<B, 2>) -> Tensor<B, 1, Int> {
        let [n, _] = codes.dims();
        let level = codes.detach() * self.half_levels.clone() + self.half_levels.clone();
        (level * self.basis.clone())
            .sum_dim(1)
            .round()
            .int()
            .reshape([n])
    }
}

impl<B: Backend> Quantizer<B> for Fsq<B> {
    fn input_dim(&self) -> usize {
        self.config.levels.len()
    }

    fn codebook_size(&self) -> usize {
        self.config.levels.iter().map(|l| *l as usize).product()
    }

    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        let [n, d] = latents.dims();
        assert_eq!(
            d,
            self.input_dim(),
            "FSQ expects {} channels, got {d}",
            self.input_dim()
        );
        let codes = self.codes(latents.clone());
        let idx = self.indices_of(codes.clone());
        let sq_err = (latents.detach() - codes.clone().detach())
            .powi_scalar(2)
            .sum_dim(1)
            .reshape([n]);
        let usage = Usage::from_counts(histogram(idx.clone(), self.codebook_size()), sq_err);
        let quantized = match mode {
            Mode::Train => codes,
            Mode::Eval => codes.detach(),
        };
        QuantOut {
            quantized,
            indices: idx.reshape([n, 1]),
            losses: Vec::new(),
            batch_entropy: Vec::new(),
            stats: Vec::new(),
            usage,
        }
    }

    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        _rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError> {
        if stats.is_empty() {
            Ok(StatsReport::default())
        } else {
            Err(QuantizerError::StatsMismatch(
                "FSQ takes no EMA statistics".into(),
            ))
        }
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        // Integer arithmetic: exact for every index of the codebook.
        let idx = indices.narrow(1, 0, 1); // [N, 1]
        let level = (idx / self.basis_int.clone()).remainder(self.levels_int.clone());
        (level.float() - self.half_levels.clone()) / self.half_levels.clone()
    }
}
