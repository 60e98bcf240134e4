//! Training objectives behind one trait: what a micro-batch's reconstruction costs the generator
//! (the tensor to backpropagate and its named, logged terms), an optional discriminator turn
//! after the generator's optimizer step, what validation needs to know, and the checkpoint
//! parts the objective owns. One file per objective, like taming's `vqperceptual.py`:
//!
//! * [`vqvae`]: reconstruction (MSE or L1) + the quantizer's losses (Table 1, the peer);
//! * [`vqgan`]: taming's `VQLPIPSWithDiscriminator` (L1 + LPIPS, PatchGAN, adaptive weight);
//! * [`vit_vqgan`]: enhancing-transformers' ViT-VQGAN loss (log-Laplace/log-Gaussian + LPIPS,
//!   StyleGAN2 discriminator with R1).
//!
//! [`build`] is the only `match` on [`ObjectiveConfig`]; the loop in `train.rs` names no
//! objective. Every objective's discriminator gradients pass the data-parallel seam
//! (`sync::all_reduce_grads`) before its optimizer applies them.

pub(crate) mod vit_vqgan;
pub(crate) mod vqgan;
pub(crate) mod vqvae;

use std::path::Path;

use burn::{
    module::{AutodiffModule, Module, ModuleVisitor, Param},
    nn::conv::Conv2d,
    optim::Optimizer,
    record::Recorder,
    tensor::{Tensor, backend::AutodiffBackend},
};
use models::VqOutput;

use crate::{Communicator, ObjectiveConfig, OptimConfig, TrainError, train::recorder};

/// A tensor of the backend without autodiff.
pub(crate) type Inner<B, const D: usize> = Tensor<<B as AutodiffBackend>::InnerBackend, D>;

/// A micro-batch's generator side.
pub(crate) struct GeneratorLoss<B: AutodiffBackend> {
    /// What to backpropagate (the objective's terms, already divided by the number of
    /// micro-batches; the quantizer's loss is added by the loop).
    pub backprop: Tensor<B, 1>,
    /// `[1]` the value of those terms for this micro-batch (undivided): the `rec` figure.
    pub value: Inner<B, 1>,
    /// `[1]` logged terms of this micro-batch by name (undivided); names from
    /// [`Objective::term_names`].
    pub terms: Vec<(&'static str, Inner<B, 1>)>,
}

/// One training objective.
pub(crate) trait Objective<B: AutodiffBackend> {
    /// Weight of the quantizer's loss in the total.
    fn quantizer_weight(&self) -> f32;

    /// Whether reconstructions are clamped to `[-1, 1]` before the loss and in validation.
    fn clamp_output(&self) -> bool {
        false
    }

    /// The logged terms this objective reports at every logging step, in order (terms a step
    /// did not produce, such as the discriminator's before it starts, are logged as 0).
    fn term_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// Fails when the discriminator cannot take micro-batches of `micro` images (frames, for
    /// video: the objectives see clips as their frames).
    fn check_micro_batch(&self, _micro: usize) -> Result<(), TrainError> {
        Ok(())
    }

    /// Draws lazily initialized parameters (under the trainer's seeding lock).
    fn materialize(&self) {}

    /// Makes every process hold rank 0's discriminator (after building or resuming).
    fn broadcast(&mut self, _comm: &mut dyn Communicator) -> Result<(), TrainError> {
        Ok(())
    }

    /// Data-dependent initialization before the first micro-batch that needs it (ActNorm):
    /// from `x` on rank 0, then broadcast, so every process starts the same.
    fn prepare(
        &mut self,
        _x: &Tensor<B, 4>,
        _step: usize,
        _comm: &mut dyn Communicator,
    ) -> Result<(), TrainError> {
        Ok(())
    }

    /// The generator's terms for one of `micro_batches` micro-batches of the step `step`.
    /// `last_layer` is the decoder's last convolution when it has one (adaptive GAN weight).
    fn generator(
        &mut self,
        x: &Tensor<B, 4>,
        out: &VqOutput<B>,
        last_layer: Option<&Conv2d<B>>,
        step: usize,
        micro_batches: usize,
    ) -> GeneratorLoss<B>;

    /// The discriminator's turn after the generator's optimizer step (on the micro-batches the
    /// generator saw): gradients, the all-reduce seam, its optimizer step at `lr` (the
    /// generator's learning rate for this step). Returns its logged terms `[1]` each.
    fn discriminator_step(
        &mut self,
        _comm: &mut dyn Communicator,
        _step: usize,
        _lr: f64,
    ) -> Result<Vec<(&'static str, Inner<B, 1>)>, TrainError> {
        Ok(Vec::new())
    }

    /// Writes the objective's own checkpoint parts into `dir`.
    fn save(&self, _dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }

    /// Reads them back from a checkpoint directory.
    fn load(&mut self, _dir: &Path, _device: &B::Device) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The objective of `cfg` (`optim` gives the discriminators' optimizer settings).
pub(crate) fn build<B: AutodiffBackend>(
    cfg: &ObjectiveConfig,
    optim: &OptimConfig,
    device: &B::Device,
) -> Result<Box<dyn Objective<B>>, TrainError> {
    Ok(match cfg {
        ObjectiveConfig::Vqvae {
            reconstruction,
            clamp_output,
            quantizer_weight,
        } => Box::new(vqvae::Vqvae {
            reconstruction: *reconstruction,
            clamp_output: *clamp_output,
            quantizer_weight: *quantizer_weight,
        }),
        ObjectiveConfig::Vqgan(v) => Box::new(vqgan::Gan::new(v, optim.betas, device)?),
        ObjectiveConfig::VitVqgan(v) => Box::new(vit_vqgan::VitGan::new(v, optim, device)?),
    })
}

/// A checkpoint error for the part `what` of the checkpoint in `dir`.
pub(crate) fn ckpt_err(dir: &Path, what: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

/// Writes a discriminator (`disc.mpk`) and its optimizer state (`disc_optim.mpk`) into `dir`.
pub(crate) fn save_discriminator<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    dir: &Path,
    disc: &M,
    optim: &O,
) -> Result<(), TrainError> {
    disc.clone()
        .save_file(dir.join("disc"), &recorder())
        .map_err(|e| ckpt_err(dir, "discriminator", e))?;
    recorder()
        .record(optim.to_record(), dir.join("disc_optim"))
        .map_err(|e| ckpt_err(dir, "discriminator optimizer", e))
}

/// Reads what [`save_discriminator`] wrote: the weights into `disc`, the state into `fresh`.
pub(crate) fn load_discriminator<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    dir: &Path,
    disc: M,
    fresh: O,
    device: &B::Device,
) -> Result<(M, O), TrainError> {
    let disc = disc
        .load_file(dir.join("disc"), &recorder(), device)
        .map_err(|e| ckpt_err(dir, "discriminator", e))?;
    let record = recorder()
        .load(dir.join("disc_optim"), device)
        .map_err(|e| ckpt_err(dir, "discriminator optimizer", e))?;
    Ok((disc, fresh.load_record(record)))
}

/// Forces burn's lazily initialized parameters to draw their values.
pub(crate) fn materialize<B: AutodiffBackend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let _ = p.val();
        }
    }
    module.visit(&mut Touch);
}
