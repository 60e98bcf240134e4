//! The VQ-VAE objective (Table 1, the peer): a pixel reconstruction loss (MSE or L1, optionally
//! on the reconstruction clamped to `[-1, 1]`) plus the quantizer's weighted losses.

use burn::{
    nn::conv::Conv2d,
    tensor::{Tensor, backend::AutodiffBackend},
};
use models::VqOutput;

use super::{GeneratorLoss, Objective};
use crate::Reconstruction;

/// Reconstruction + quantizer losses.
pub(crate) struct Vqvae {
    pub reconstruction: Reconstruction,
    pub clamp_output: bool,
    pub quantizer_weight: f32,
}

impl<B: AutodiffBackend> Objective<B> for Vqvae {
    fn quantizer_weight(&self) -> f32 {
        self.quantizer_weight
    }

    fn clamp_output(&self) -> bool {
        self.clamp_output
    }

    fn generator(
        &mut self,
        x: &Tensor<B, 4>,
        out: &VqOutput<B>,
        _last_layer: Option<&Conv2d<B>>,
        _step: usize,
        micro_batches: usize,
    ) -> GeneratorLoss<B> {
        let rec_img = if self.clamp_output {
            out.reconstruction.clone().clamp(-1.0, 1.0)
        } else {
            out.reconstruction.clone()
        };
        let rec = match self.reconstruction {
            Reconstruction::Mse => (rec_img - x.clone()).powi_scalar(2).mean(),
            Reconstruction::L1 => (rec_img - x.clone()).abs().mean(),
        };
        let value = rec.clone().inner();
        GeneratorLoss {
            backprop: rec / micro_batches as f32,
            value,
            terms: Vec::new(),
        }
    }
}
