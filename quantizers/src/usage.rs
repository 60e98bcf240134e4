//! Codebook usage: what one forward reports on the device ([`Usage`]: fraction of codes used,
//! perplexity, quantization error, and the code histograms behind them), and the host-side
//! [`UsageTally`] that adds histograms and squared errors over micro-batches and processes, so
//! a logged figure describes a whole (global) batch, never a mean of per-shard fractions.

use burn::tensor::{Tensor, backend::Backend};

use crate::{
    host::{HostRead, read_f32},
    quantizer::entropy,
};

/// Codebook usage of one forward, as device tensors (read them only when logging).
#[derive(Debug, Clone)]
pub struct Usage<B: Backend> {
    /// Fraction of the codebook used by this batch (mean over levels for residual stacks).
    pub used_fraction: Tensor<B, 1>,
    /// `exp(H(code histogram))` (mean over levels).
    pub perplexity: Tensor<B, 1>,
    /// Mean over latents of `||e - q||^2`, in the space where codes are looked up.
    pub quant_error: Tensor<B, 1>,
    /// The code histogram `[K]` of each level (one for a single quantizer).
    pub counts: Vec<Tensor<B, 1>>,
    /// Sum over latents of `||e - q||^2` `[1]` (`quant_error` times `latents`).
    pub sq_err_sum: Tensor<B, 1>,
    /// Latent vectors in this batch.
    pub latents: usize,
}

impl<B: Backend> Usage<B> {
    /// Usage from a code histogram `[K]` and per-latent squared errors `[N]`.
    pub(crate) fn from_counts(counts: Tensor<B, 1>, sq_err: Tensor<B, 1>) -> Self {
        let [k] = counts.dims();
        let [n] = sq_err.dims();
        let total = counts.clone().sum().clamp_min(1.0);
        let used_fraction = counts.clone().greater_elem(0.0).float().sum() / (k as f32);
        let p = counts.clone() / total;
        let perplexity = entropy(p).exp();
        Self {
            used_fraction,
            perplexity,
            quant_error: sq_err.clone().mean(),
            counts: vec![counts],
            sq_err_sum: sq_err.sum(),
            latents: n,
        }
    }

    /// Mean of several levels' usage, with the stack's own per-latent squared errors `[N]`.
    pub(crate) fn mean_of(levels: Vec<Usage<B>>, sq_err: Tensor<B, 1>) -> Self {
        let n = levels.len().max(1) as f32;
        let [latents] = sq_err.dims();
        let mut used = Vec::new();
        let mut ppl = Vec::new();
        let mut counts = Vec::new();
        for u in levels {
            used.push(u.used_fraction);
            ppl.push(u.perplexity);
            counts.extend(u.counts);
        }
        Self {
            used_fraction: Tensor::cat(used, 0).sum() / n,
            perplexity: Tensor::cat(ppl, 0).sum() / n,
            quant_error: sq_err.clone().mean(),
            counts,
            sq_err_sum: sq_err.sum(),
            latents,
        }
    }

    /// Host values `(used_fraction, perplexity, quant_error)`.
    pub fn to_host(&self) -> (f32, f32, f32) {
        let v = read_f32(
            Tensor::cat(
                vec![
                    self.used_fraction.clone(),
                    self.perplexity.clone(),
                    self.quant_error.clone(),
                ],
                0,
            ),
            HostRead::Log,
        );
        (v[0], v[1], v[2])
    }

    /// The histograms and squared-error sum on the host, as a tally of this batch.
    pub fn tally(&self) -> UsageTally {
        let mut all = self.counts.clone();
        all.push(self.sq_err_sum.clone());
        UsageTally::from_flat_counts(
            &read_f32(Tensor::cat(all, 0), HostRead::Log),
            &self.counts.iter().map(|c| c.dims()[0]).collect::<Vec<_>>(),
            self.latents as f64,
        )
    }
}

/// Code histograms and squared errors summed over any number of batches (micro-batches of a
/// step, processes of a data-parallel group): usage, perplexity and quantization error of their
/// union.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTally {
    /// Per level, the count of each code.
    pub counts: Vec<Vec<f64>>,
    /// Sum over latents of `||e - q||^2`.
    pub sq_err_sum: f64,
    /// Latent vectors counted.
    pub latents: f64,
}

impl UsageTally {
    /// Adds `other` (histograms of the same shape, or this tally empty).
    pub fn add(&mut self, other: &UsageTally) {
        if self.counts.is_empty() {
            self.counts = other.counts.iter().map(|c| vec![0.0; c.len()]).collect();
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        }
        self.sq_err_sum += other.sq_err_sum;
        self.latents += other.latents;
    }

    /// A tally from histograms of `sizes` codes laid end to end in `flat`, followed by the
    /// squared-error sum (what [`Usage::tally`] reads in one go).
    pub fn from_flat_counts(flat: &[f32], sizes: &[usize], latents: f64) -> Self {
        let mut at = 0;
        let counts = sizes
            .iter()
            .map(|&k| {
                let c = flat[at..at + k].iter().map(|&v| v as f64).collect();
                at += k;
                c
            })
            .collect();
        UsageTally {
            counts,
            sq_err_sum: flat.get(at).copied().unwrap_or(0.0) as f64,
            latents,
        }
    }

    /// Everything as one flat buffer (histograms, then the squared-error sum and the latent
    /// count), for a sum all-reduce; [`UsageTally::set_flat`] reads it back.
    pub fn to_flat(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.counts.iter().flatten().copied().collect();
        v.push(self.sq_err_sum);
        v.push(self.latents);
        v
    }

    /// Reads back a buffer of [`UsageTally::to_flat`]'s layout.
    pub fn set_flat(&mut self, v: &[f64]) {
        let mut it = v.iter().copied();
        for c in &mut self.counts {
            for a in c.iter_mut() {
                *a = it.next().unwrap_or(0.0);
            }
        }
        self.sq_err_sum = it.next().unwrap_or(0.0);
        self.latents = it.next().unwrap_or(0.0);
    }

    /// Fraction of codes used (mean over levels).
    pub fn used_fraction(&self) -> f64 {
        self.mean_over_levels(|c| {
            c.iter().filter(|&&n| n > 0.0).count() as f64 / c.len().max(1) as f64
        })
    }

    /// `exp(H)` of each level's histogram (with the quantizers' `p ln max(p, 1e-5)`), mean over
    /// levels.
    pub fn perplexity(&self) -> f64 {
        self.mean_over_levels(|c| {
            let total: f64 = c.iter().sum::<f64>().max(1.0);
            let h: f64 = c
                .iter()
                .map(|&n| {
                    let p = n / total;
                    -p * p.max(1e-5).ln()
                })
                .sum();
            h.exp()
        })
    }

    /// Mean over latents of `||e - q||^2`.
    pub fn quant_error(&self) -> f64 {
        self.sq_err_sum / self.latents.max(1.0)
    }

    fn mean_over_levels(&self, f: impl Fn(&[f64]) -> f64) -> f64 {
        if self.counts.is_empty() {
            return 0.0;
        }
        self.counts.iter().map(|c| f(c)).sum::<f64>() / self.counts.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(counts: Vec<Vec<f64>>, sq: f64, n: f64) -> UsageTally {
        UsageTally {
            counts,
            sq_err_sum: sq,
            latents: n,
        }
    }

    #[test]
    fn union_not_mean_of_fractions() {
        // Two halves using disjoint codes: each uses 2 of 4, together all 4.
        let mut t = UsageTally::default();
        t.add(&tally(vec![vec![3.0, 1.0, 0.0, 0.0]], 2.0, 4.0));
        t.add(&tally(vec![vec![0.0, 0.0, 2.0, 2.0]], 6.0, 4.0));
        assert_eq!(t.used_fraction(), 1.0);
        assert_eq!(t.quant_error(), 1.0);
        // p = (3, 1, 2, 2) / 8
        let h: f64 = [3.0f64, 1.0, 2.0, 2.0]
            .iter()
            .map(|n| -(n / 8.0) * (n / 8.0).ln())
            .sum();
        assert!((t.perplexity() - h.exp()).abs() < 1e-12);
        let mut back = UsageTally {
            counts: vec![vec![0.0; 4]],
            ..Default::default()
        };
        back.set_flat(&t.to_flat());
        assert_eq!(back, t);
    }

    #[test]
    fn levels_are_averaged() {
        let t = tally(vec![vec![1.0, 0.0], vec![1.0, 1.0]], 0.0, 2.0);
        assert_eq!(t.used_fraction(), 0.75);
        assert!((t.perplexity() - (1.0 + 2.0) / 2.0).abs() < 1e-12);
    }
}
