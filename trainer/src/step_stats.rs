//! A training step's figures: [`PendingStats`] while they are still on the device (what the
//! step accumulates, read at logging steps only, in one read) and [`StepStats`] once read.

use burn::tensor::{
    Tensor,
    backend::{AutodiffBackend, Backend},
};
use quantizers::{
    Usage, UsageTally,
    host::{HostRead, read_f32},
};

/// What one optimizer step measured.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    /// Total loss.
    pub loss: f32,
    /// Reconstruction loss.
    pub rec: f32,
    /// Quantizer loss (weighted).
    pub quant: f32,
    /// Fraction of codes used by the batch.
    pub used_fraction: f32,
    /// Perplexity of the batch's codes.
    pub perplexity: f32,
    /// Mean `||e - q||^2`.
    pub quant_error: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Codes restarted by dead-code restart.
    pub restarted: usize,
    /// The quantizer's weighted loss terms by name (`commitment`, `codebook`, ...).
    pub terms: Vec<(&'static str, f32)>,
    /// The objective's own logged terms by name (`l1`, `perceptual`, `g_loss`, `disc_loss`,
    /// ...; empty for the VQ-VAE objective).
    pub objective: Vec<(&'static str, f32)>,
    /// Code histograms and squared errors of the step's batch (this process's micro-batches;
    /// at logging steps, the global batch's).
    pub usage: UsageTally,
}

impl StepStats {
    /// Usage, perplexity and quantization error from the tally of code histograms.
    pub(crate) fn set_usage_figures(&mut self) {
        self.used_fraction = self.usage.used_fraction() as f32;
        self.perplexity = self.usage.perplexity() as f32;
        self.quant_error = self.usage.quant_error() as f32;
    }
}

/// A step's figures on the device. Every field is a device tensor; [`PendingStats::read`]
/// concatenates them and reads them back at once.
pub(crate) struct PendingStats<Bi: Backend> {
    device: Bi::Device,
    /// `[1]` total loss (mean over micro-batches).
    pub loss: Tensor<Bi, 1>,
    /// `[1]` reconstruction loss.
    pub rec: Tensor<Bi, 1>,
    /// `[1]` weighted quantizer loss.
    pub quant: Tensor<Bi, 1>,
    /// `[1]` global gradient norm before clipping.
    pub grad_norm: Option<Tensor<Bi, 1>>,
    /// `[1]` codes restarted.
    pub restarted: Option<Tensor<Bi, 1>>,
    terms: Vec<(&'static str, Tensor<Bi, 1>)>,
    /// The objective's terms, in its `term_names` order (absent: not produced this step, 0).
    objective: Vec<(&'static str, Option<Tensor<Bi, 1>>)>,
    counts: Vec<Tensor<Bi, 1>>,
    sq_err_sum: Option<Tensor<Bi, 1>>,
    latents: usize,
}

impl<Bi: Backend> PendingStats<Bi> {
    pub fn new(device: &Bi::Device, objective_terms: &[&'static str]) -> Self {
        let zero = || Tensor::zeros([1], device);
        Self {
            device: device.clone(),
            loss: zero(),
            rec: zero(),
            quant: zero(),
            grad_norm: None,
            restarted: None,
            terms: Vec::new(),
            objective: objective_terms.iter().map(|n| (*n, None)).collect(),
            counts: Vec::new(),
            sq_err_sum: None,
            latents: 0,
        }
    }

    fn sum(acc: &mut Option<Tensor<Bi, 1>>, t: Tensor<Bi, 1>) {
        *acc = Some(match acc.take() {
            Some(a) => a + t,
            None => t,
        });
    }

    /// Adds a micro-batch's value of the quantizer term `name` (already weighted).
    pub fn add_term(&mut self, name: &'static str, value: Tensor<Bi, 1>) {
        match self.terms.iter_mut().find(|(n, _)| *n == name) {
            Some((_, acc)) => *acc = acc.clone() + value,
            None => self.terms.push((name, value)),
        }
    }

    /// Adds `value` `[1]` to the objective's term `name` (one of its `term_names`).
    pub fn add_objective_term(&mut self, name: &'static str, value: Tensor<Bi, 1>) {
        match self.objective.iter_mut().find(|(n, _)| *n == name) {
            Some((_, acc)) => Self::sum(acc, value),
            None => debug_assert!(false, "objective term `{name}` not declared in term_names"),
        }
    }

    /// Adds a micro-batch's code histograms and squared errors.
    pub fn add_usage<B: AutodiffBackend<InnerBackend = Bi>>(&mut self, usage: &Usage<B>) {
        let counts = usage.counts.iter().map(|c| c.clone().inner());
        if self.counts.is_empty() {
            self.counts = counts.collect();
        } else {
            for (a, c) in self.counts.iter_mut().zip(counts) {
                *a = a.clone() + c;
            }
        }
        Self::sum(&mut self.sq_err_sum, usage.sq_err_sum.clone().inner());
        self.latents += usage.latents;
    }

    /// Everything read back in one read.
    pub fn read(self) -> StepStats {
        let zero = |n: usize| Tensor::<Bi, 1>::zeros([n], &self.device);
        let mut parts = vec![
            self.loss,
            self.rec,
            self.quant,
            self.grad_norm.unwrap_or_else(|| zero(1)),
            self.restarted.unwrap_or_else(|| zero(1)),
        ];
        let names: Vec<&'static str> = self.terms.iter().map(|(n, _)| *n).collect();
        parts.extend(self.terms.into_iter().map(|(_, t)| t));
        let objective_names: Vec<&'static str> = self.objective.iter().map(|(n, _)| *n).collect();
        parts.extend(
            self.objective
                .into_iter()
                .map(|(_, t)| t.unwrap_or_else(|| zero(1))),
        );
        let sizes: Vec<usize> = self.counts.iter().map(|c| c.dims()[0]).collect();
        parts.extend(self.counts);
        parts.push(self.sq_err_sum.unwrap_or_else(|| zero(1)));
        let v = read_f32(Tensor::cat(parts, 0), HostRead::Log);
        let mut it = v.iter().copied();
        let mut next = || it.next().unwrap_or(0.0);
        let mut out = StepStats {
            loss: next(),
            rec: next(),
            quant: next(),
            grad_norm: next() as f64,
            restarted: next() as usize,
            ..StepStats::default()
        };
        out.terms = names.into_iter().map(|n| (n, next())).collect();
        out.objective = objective_names.into_iter().map(|n| (n, next())).collect();
        let rest: Vec<f32> = std::iter::from_fn(|| Some(next()))
            .take(sizes.iter().sum::<usize>() + 1)
            .collect();
        out.usage = UsageTally::from_flat_counts(&rest, &sizes, self.latents as f64);
        out.set_usage_figures();
        out
    }
}
