//! Lookup-free quantization (MAGVIT-2; vector-quantize-pytorch's `LFQ`): each of the `D` channels
//! is quantized to `+-scale` by its sign, so the implicit codebook is `{-s, s}^D` of size `2^D`.
//! Straight-through gradient. Bit order: the FIRST channel is the MOST significant bit
//! (vector-quantize-pytorch's; Open-MAGVIT2 uses the opposite).
//!
//! Auxiliary loss, per vector-quantize-pytorch:
//! `entropy_loss_weight * (mean_n H(p_n) - gamma * H(mean_n p_n)) + commitment_loss_weight * mean (x - q)^2`,
//! `p_n = softmax_j(2 inv_temperature x_n . c_j)` over all `2^D` codes, `H(p) = -sum p ln max(p, 1e-5)`.
//! Probabilities are computed a block of rows at a time (memory bounded by the block, not N x 2^D).
//! The batch term is returned as a [`BatchEntropy`] so data-parallel training can use the global batch.

use burn::{
    module::Module,
    tensor::{Int, Tensor, TensorData, activation::softmax, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    BatchEntropy, EmaStats, LossTerm, Mode, QuantOut, QuantRng, Quantizer, QuantizerError,
    StatsReport, Usage,
    error::{non_negative, positive},
    quantizer::entropy,
    search::rows_per_block,
    vq::histogram,
};

/// Largest `D` (bits) for which the entropy loss is computed (2^20 codes per row block).
pub const MAX_LFQ_BITS: usize = 20;

/// Configuration of [`Lfq`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LfqConfig {
    /// Bits `D` = latent width; codebook size `2^D`.
    pub dim: usize,
    /// Weight of the entropy term.
    #[serde(default = "default_entropy_weight")]
    pub entropy_loss_weight: f32,
    /// Weight of the commitment term `mean (x - q)^2`.
    #[serde(default = "default_commitment")]
    pub commitment_loss_weight: f32,
    /// `gamma`: weight of the batch (codebook) entropy inside the entropy term.
    #[serde(default = "default_gamma")]
    pub diversity_gamma: f32,
    /// Inverse temperature of the code distribution (vector-quantize-pytorch: 100).
    #[serde(default = "default_inv_temperature")]
    pub inv_temperature: f32,
    /// Magnitude `s` of the quantized values.
    #[serde(default = "default_scale")]
    pub codebook_scale: f32,
}

fn default_entropy_weight() -> f32 {
    0.1
}
fn default_commitment() -> f32 {
    0.25
}
fn default_gamma() -> f32 {
    1.0
}
fn default_inv_temperature() -> f32 {
    100.0
}
fn default_scale() -> f32 {
    1.0
}

impl LfqConfig {
    /// Defaults of vector-quantize-pytorch's LFQ with commitment 0.25.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            entropy_loss_weight: default_entropy_weight(),
            commitment_loss_weight: default_commitment(),
            diversity_gamma: default_gamma(),
            inv_temperature: default_inv_temperature(),
            codebook_scale: default_scale(),
        }
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), QuantizerError> {
        if self.dim == 0 || self.dim > MAX_LFQ_BITS {
            return Err(QuantizerError::config(
                "dim",
                format!("LFQ bits must be in 1..={MAX_LFQ_BITS}, got {}", self.dim),
            ));
        }
        for (key, v) in [
            ("entropy_loss_weight", self.entropy_loss_weight),
            ("commitment_loss_weight", self.commitment_loss_weight),
            ("diversity_gamma", self.diversity_gamma),
        ] {
            if !non_negative(v) {
                return Err(QuantizerError::config(
                    key,
                    format!("must be >= 0, got {v}"),
                ));
            }
        }
        for (key, v) in [
            ("inv_temperature", self.inv_temperature),
            ("codebook_scale", self.codebook_scale),
        ] {
            if !positive(v) {
                return Err(QuantizerError::config(key, format!("must be > 0, got {v}")));
            }
        }
        Ok(())
    }

    /// Builds the quantizer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Lfq<B>, QuantizerError> {
        self.validate()?;
        let d = self.dim;
        let k = 1usize << d;
        let s = self.codebook_scale;
        let mut codes = Vec::with_capacity(k * d);
        for j in 0..k {
            for i in 0..d {
                let bit = (j >> (d - 1 - i)) & 1;
                codes.push(if bit == 1 { s } else { -s });
            }
        }
        let bits: Vec<i64> = (0..d).map(|i| 1i64 << (d - 1 - i)).collect();
        Ok(Lfq {
            codes_t: Tensor::<B, 2>::from_data(TensorData::new(codes, [k, d]), device).transpose(),
            bit_values: Tensor::from_data(TensorData::new(bits, [1, d]), device),
            config: self.clone(),
        })
    }
}

/// Lookup-free quantizer.
#[derive(Module, Debug)]
pub struct Lfq<B: Backend> {
    /// `[D, 2^D]` all codes, transposed for the logits' matrix product.
    codes_t: Tensor<B, 2>,
    /// `[1, D]`: `2^(D-1-i)`.
    bit_values: Tensor<B, 2, Int>,
    #[module(skip)]
    config: LfqConfig,
}

impl<B: Backend> Lfq<B> {
    /// The configuration it was built from.
    pub fn config(&self) -> &LfqConfig {
        &self.config
    }

    /// `(mean_n H(p_n), mean_n p_n)` over the rows of `x`, computed by row blocks.
    fn entropy_terms(&self, x: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let [n, _] = x.dims();
        let k = self.codebook_size();
        let block = rows_per_block(k);
        let scale = 2.0 * self.config.inv_temperature;
        let mut entropy_sum: Option<Tensor<B, 1>> = None;
        let mut prob_sum: Option<Tensor<B, 1>> = None;
        let mut start = 0;
        while start < n {
            let len = block.min(n - start);
            let rows = x.clone().narrow(0, start, len);
            let p = softmax(rows.matmul(self.codes_t.clone()) * scale, 1);
            let h = entropy(p.clone()).sum().reshape([1]);
            let ps = p.sum_dim(0).reshape([k]);
            entropy_sum = Some(match entropy_sum {
                Some(e) => e + h,
                None => h,
            });
            prob_sum = Some(match prob_sum {
                Some(e) => e + ps,
                None => ps,
            });
            start += len;
        }
        let device = x.device();
        let n = n.max(1) as f32;
        (
            entropy_sum.unwrap_or_else(|| Tensor::zeros([1], &device)) / n,
            prob_sum.unwrap_or_else(|| Tensor::zeros([k], &device)) / n,
        )
    }
}

impl<B: Backend> Quantizer<B> for Lfq<B> {
    fn input_dim(&self) -> usize {
        self.config.dim
    }

    fn codebook_size(&self) -> usize {
        1 << self.config.dim
    }

    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        let [n, d] = latents.dims();
        assert_eq!(
            d, self.config.dim,
            "LFQ expects {} channels, got {d}",
            self.config.dim
        );
        let s = self.config.codebook_scale;
        let positive = latents.clone().detach().greater_elem(0.0);
        let q = positive.clone().float() * (2.0 * s) - s;
        let idx = (positive.int() * self.bit_values.clone())
            .sum_dim(1)
            .reshape([n]);
        let sq_err = (latents.clone().detach() - q.clone())
            .powi_scalar(2)
            .sum_dim(1)
            .reshape([n]);
        let usage = Usage::from_counts(histogram(idx.clone(), self.codebook_size()), sq_err);
        let indices = idx.reshape([n, 1]);
        if mode == Mode::Eval {
            return QuantOut {
                quantized: q,
                indices,
                losses: Vec::new(),
                batch_entropy: Vec::new(),
                stats: Vec::new(),
                usage,
            };
        }
        let quantized = latents.clone() + (q.clone() - latents.clone()).detach();
        let commitment = (latents.clone() - q).powi_scalar(2).mean();
        let mut losses = vec![LossTerm {
            name: "commitment",
            value: commitment * self.config.commitment_loss_weight,
        }];
        let w = self.config.entropy_loss_weight;
        let batch_entropy: Vec<_> = if w > 0.0 {
            let (per_sample, mean_probs) = self.entropy_terms(latents);
            losses.push(LossTerm {
                name: "per_sample_entropy",
                value: per_sample * w,
            });
            vec![BatchEntropy {
                local_mean_probs: mean_probs,
                weight: w * self.config.diversity_gamma,
            }]
        } else {
            Vec::new()
        };
        QuantOut {
            quantized,
            indices,
            losses,
            batch_entropy,
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
                "LFQ takes no EMA statistics".into(),
            ))
        }
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let s = self.config.codebook_scale;
        let idx = indices.narrow(1, 0, 1); // [N, 1]
        let bits = (idx / self.bit_values.clone()).remainder_scalar(2);
        bits.float() * (2.0 * s) - s
    }
}
