//! The `Quantizer` trait and what a forward pass returns.
//!
//! A training step with any quantizer is:
//!
//! ```text
//! out = quantizer.quantize(latents [N, D], Mode::Train)     // q~ (value q), indices, losses, stats
//! ... decoder, loss = objective + out.loss(), backward ...
//! stats = out.stats  (data-parallel: sum counts and sums over ranks; rank 0's candidates)
//! quantizer.apply_stats(stats, &mut rng)                      // EMA update + dead-code restart
//! ```
//!
//! The split between `quantize` and `apply_stats` is the seam where a data-parallel trainer puts
//! its all-reduce, so the EMA update on every rank equals the single-process update on the global
//! batch.

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::{QuantizerError, Usage};

/// The random number generator that drives dead-code restart and k-means initialization.
/// Explicit and seedable, so that every process of a data-parallel run makes the same choice and a
/// resumed run continues the same sequence (its state is serializable).
pub type QuantRng = rand_chacha::ChaCha8Rng;

/// Training or evaluation forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Gradient estimator applied, losses and EMA statistics produced.
    Train,
    /// Raw codes returned (`quantized == decode(indices)` exactly), no statistics.
    Eval,
}

/// A quantizer: maps latents `[N, D]` to codes of the same shape.
pub trait Quantizer<B: Backend> {
    /// Width `D` of the latents it accepts.
    fn input_dim(&self) -> usize;

    /// Number of codes of one level (the codebook of a VQ, `2^bits` for LFQ, prod(levels) for FSQ).
    fn codebook_size(&self) -> usize;

    /// Number of indices per latent (1, or the depth of a residual stack).
    fn num_levels(&self) -> usize {
        1
    }

    /// Number of [`EmaStats`] a training forward returns (EMA codebooks in it).
    fn ema_codebooks(&self) -> usize {
        0
    }

    /// Quantize `latents` `[N, D]`.
    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B>;

    /// Apply the (possibly all-reduced) statistics of a training forward: the EMA codebook
    /// update and dead-code restart. `stats` must be the `stats` of a [`QuantOut`] of this
    /// quantizer, in order. Quantizers without EMA state accept an empty vector.
    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError>;

    /// Codes `[N, D]` for indices `[N, num_levels]` (the eval-mode output for those indices).
    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2>;

    /// True when the quantizer wants [`Quantizer::init_from_batch`] before its first forward
    /// (k-means initialization configured and not yet done).
    fn needs_init(&self) -> bool {
        false
    }

    /// Initialize from a batch of latents `[N, D]` (k-means). In data-parallel training every
    /// rank must pass the same latents (rank 0's, broadcast) and an identically seeded `rng`.
    fn init_from_batch(&mut self, latents: Tensor<B, 2>, rng: &mut QuantRng) {
        let _ = (latents, rng);
    }
}

/// Per-code statistics of one EMA codebook for one forward pass. Summing `counts` and `sums`
/// over ranks (and using one rank's `candidates`) before `apply_stats` makes the update exact.
#[derive(Debug, Clone)]
pub struct EmaStats<B: Backend> {
    /// `[K]`: how many latents chose each code.
    pub counts: Tensor<B, 1>,
    /// `[K, d]`: sum of the (projected, normalized) latents that chose each code.
    pub sums: Tensor<B, 2>,
    /// `[M, d]`: vectors a dead code may be replaced by (this batch's latents).
    pub candidates: Tensor<B, 2>,
}

/// What `apply_stats` did, on the device (read it when logging: reading it every step would
/// wait for the device every step).
#[derive(Debug, Clone)]
pub struct StatsReport<B: Backend> {
    /// `[1]`: codes replaced by dead-code restart, summed over levels (`None` when no level
    /// restarts dead codes).
    pub restarted_codes: Option<Tensor<B, 1>>,
}

impl<B: Backend> Default for StatsReport<B> {
    fn default() -> Self {
        Self {
            restarted_codes: None,
        }
    }
}

impl<B: Backend> StatsReport<B> {
    /// Adds another level's report.
    pub fn add(&mut self, other: StatsReport<B>) {
        self.restarted_codes = match (self.restarted_codes.take(), other.restarted_codes) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// A named, already weighted scalar loss term.
#[derive(Debug, Clone)]
pub struct LossTerm<B: Backend> {
    /// `commitment`, `codebook`, `entropy`, ...
    pub name: &'static str,
    /// Scalar `[1]`, weight included.
    pub value: Tensor<B, 1>,
}

/// The part of LFQ's entropy loss that depends on the whole batch: `-weight * gamma * H(mean p)`.
/// In data-parallel training `mean p` must be the mean over the global batch: all-reduce
/// [`BatchEntropy::local_mean_probs`] (mean), then call [`BatchEntropy::loss_with_global`].
#[derive(Debug, Clone)]
pub struct BatchEntropy<B: Backend> {
    /// Mean code distribution over this process's latents `[C]`, carrying gradient.
    pub local_mean_probs: Tensor<B, 1>,
    /// `entropy_loss_weight * diversity_gamma`.
    pub weight: f32,
}

impl<B: Backend> BatchEntropy<B> {
    /// `-weight * H(local mean p)`: the single-process term.
    pub fn loss_local(&self) -> Tensor<B, 1> {
        entropy(self.local_mean_probs.clone()).mul_scalar(-self.weight)
    }

    /// `-weight * H(p_global)` with the value of the global mean and the gradient of this
    /// process's share: after the trainer's mean all-reduce of parameter gradients, this equals
    /// the single-process gradient on the global batch.
    pub fn loss_with_global(&self, global_mean_probs: Tensor<B, 1>) -> Tensor<B, 1> {
        let local = self.local_mean_probs.clone();
        let mixed = local.clone() + (global_mean_probs - local).detach();
        entropy(mixed).mul_scalar(-self.weight)
    }
}

/// `H(p) = -sum p ln(max(p, 1e-5))` over the last dimension (vector-quantize-pytorch's clamp).
pub(crate) fn entropy<B: Backend, const D: usize>(p: Tensor<B, D>) -> Tensor<B, D> {
    (p.clone() * p.clamp_min(1e-5).log()).sum_dim(D - 1).neg()
}

/// Everything a forward pass of a quantizer returns.
#[derive(Debug, Clone)]
pub struct QuantOut<B: Backend> {
    /// `q~` `[N, D]`: value of the codes, gradient per the estimator (train) / raw codes (eval).
    pub quantized: Tensor<B, 2>,
    /// `[N, num_levels]` code indices.
    pub indices: Tensor<B, 2, Int>,
    /// Weighted loss terms (empty in eval mode).
    pub losses: Vec<LossTerm<B>>,
    /// LFQ's global-batch entropy terms, one per LFQ level (train mode).
    pub batch_entropy: Vec<BatchEntropy<B>>,
    /// Statistics for [`Quantizer::apply_stats`] (train mode, EMA codebooks only).
    pub stats: Vec<EmaStats<B>>,
    /// Codebook usage of this batch.
    pub usage: Usage<B>,
}

impl<B: Backend> QuantOut<B> {
    /// Sum of all loss terms, with the batch entropy over this process's batch.
    pub fn loss(&self) -> Tensor<B, 1> {
        let device = self.quantized.device();
        let mut total = Tensor::<B, 1>::zeros([1], &device);
        for term in &self.losses {
            total = total + term.value.clone();
        }
        for be in &self.batch_entropy {
            total = total + be.loss_local();
        }
        total
    }

    /// Host value of a named loss term (for logging).
    pub fn loss_value(&self, name: &str) -> Option<f32> {
        self.losses
            .iter()
            .find(|t| t.name == name)
            .map(|t| crate::host::read_scalar(t.value.clone(), crate::host::HostRead::Log))
    }
}
