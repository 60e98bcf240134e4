//! Residual stacks of any quantizer (vector-quantize-pytorch's `ResidualVQ`): level `l` quantizes
//! what the previous levels left, `r_{l+1} = r_l - sg(q_l)`, and the output is `sum_l q_l`. Each
//! level keeps its own estimator, so its gradient reaches the input through its own residual.

use burn::{
    module::Module,
    tensor::{Int, Tensor, backend::Backend},
};

use crate::{
    EmaStats, LevelQuantizer, Mode, QuantOut, QuantRng, Quantizer, QuantizerError, StatsReport,
    Usage,
};

/// A residual stack of quantizers that all take the same latent width.
#[derive(Module, Debug)]
pub struct ResidualQuantizer<B: Backend> {
    /// The levels, coarse to fine.
    pub layers: Vec<LevelQuantizer<B>>,
}

impl<B: Backend> Quantizer<B> for ResidualQuantizer<B> {
    fn input_dim(&self) -> usize {
        self.layers[0].input_dim()
    }

    fn codebook_size(&self) -> usize {
        self.layers[0].codebook_size()
    }

    fn num_levels(&self) -> usize {
        self.layers.iter().map(|l| l.num_levels()).sum()
    }

    fn ema_codebooks(&self) -> usize {
        self.layers.iter().map(|l| l.ema_codebooks()).sum()
    }

    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        let [n, _] = latents.dims();
        let mut residual = latents.clone();
        let mut quantized: Option<Tensor<B, 2>> = None;
        let mut indices = Vec::with_capacity(self.layers.len());
        let mut losses = Vec::new();
        let mut batch_entropy = Vec::new();
        let mut stats = Vec::new();
        let mut usages = Vec::new();
        for layer in &self.layers {
            let out = layer.quantize(residual.clone(), mode);
            residual = residual - out.quantized.clone().detach();
            quantized = Some(match quantized {
                Some(q) => q + out.quantized,
                None => out.quantized,
            });
            indices.push(out.indices);
            losses.extend(out.losses);
            batch_entropy.extend(out.batch_entropy);
            stats.extend(out.stats);
            usages.push(out.usage);
        }
        let quantized = quantized.expect("a residual stack has at least one level");
        let sq_err = (latents.detach() - quantized.clone().detach())
            .powi_scalar(2)
            .sum_dim(1)
            .reshape([n]);
        QuantOut {
            quantized,
            indices: Tensor::cat(indices, 1),
            losses,
            batch_entropy,
            stats,
            usage: Usage::mean_of(usages, sq_err),
        }
    }

    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError> {
        let expected = self.ema_codebooks();
        if stats.len() != expected {
            return Err(QuantizerError::StatsMismatch(format!(
                "residual stack has {expected} EMA codebooks, got {} statistics",
                stats.len()
            )));
        }
        let mut stats = stats.into_iter();
        let mut report = StatsReport::default();
        for layer in &mut self.layers {
            let mine: Vec<_> = stats.by_ref().take(layer.ema_codebooks()).collect();
            report.add(layer.apply_stats(mine, rng)?);
        }
        Ok(report)
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let mut start = 0;
        let mut total: Option<Tensor<B, 2>> = None;
        for layer in &self.layers {
            let width = layer.num_levels();
            let q = layer.decode(indices.clone().narrow(1, start, width));
            start += width;
            total = Some(match total {
                Some(t) => t + q,
                None => q,
            });
        }
        total.expect("a residual stack has at least one level")
    }

    fn needs_init(&self) -> bool {
        self.layers.iter().any(|l| l.needs_init())
    }

    fn init_from_batch(&mut self, latents: Tensor<B, 2>, rng: &mut QuantRng) {
        // Each level is initialized on the residual the previous (initialized) levels leave.
        let mut residual = latents;
        for layer in &mut self.layers {
            if layer.needs_init() {
                layer.init_from_batch(residual.clone(), rng);
            }
            let out = layer.quantize(residual.clone(), Mode::Eval);
            residual = residual - out.quantized.detach();
        }
    }
}
