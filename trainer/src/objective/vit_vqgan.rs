//! The ViT-VQGAN objective: enhancing-transformers' `VQLPIPSWithDiscriminator` (Table 4), with
//! its StyleGAN2 discriminator and R1 penalty. The formulas are on [`VitVqganObjective`].
//!
//! The generator's adversarial term backpropagates through the discriminator into `x^` in one
//! graph (there is no adaptive weight to measure, unlike taming's); the discriminator's turn
//! runs after the generator's optimizer step on the same micro-batches, its gradients through
//! the all-reduce seam, then AdamW. On an R1 step the penalty's second-order weight gradients
//! come from [`StyleGan2Discriminator::r1_penalty`]'s differentiable input gradient.

use std::path::Path;

use burn::{
    nn::conv::Conv2d,
    optim::{GradientsAccumulator, GradientsParams, Optimizer, adaptor::OptimizerAdaptor},
    tensor::{Tensor, activation, backend::AutodiffBackend},
};
use models::{Lpips, StyleGan2Discriminator, VqOutput};

use super::{
    GeneratorLoss, Inner, Objective, load_discriminator, save_discriminator, vqgan::RealFake,
};
use crate::{
    Communicator, DiscLoss, OptimConfig, TrainError, VitVqganObjective,
    adamw::FusedAdamW,
    comm::sync::{all_reduce_grads, broadcast_module},
};

type DiscOptim<B> = OptimizerAdaptor<FusedAdamW, StyleGan2Discriminator<B>, B>;

/// The logged terms: the generator's six, then the discriminator's four.
const TERMS: [&str; 10] = [
    "l1",
    "l2",
    "perceptual",
    "nll",
    "g_loss",
    "d_weight",
    "disc_loss",
    "logits_real",
    "logits_fake",
    "r1_reg",
];

/// The discriminator, its optimizer, LPIPS, and the step's micro-batches.
pub(crate) struct VitGan<B: AutodiffBackend> {
    cfg: VitVqganObjective,
    disc: Option<StyleGan2Discriminator<B>>,
    optim: DiscOptim<B>,
    optim_cfg: FusedAdamW,
    lpips: Option<Lpips<B>>,
    pairs: Vec<RealFake<B>>,
}

impl<B: AutodiffBackend> VitGan<B> {
    pub fn new(
        cfg: &VitVqganObjective,
        optim: &OptimConfig,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let lpips = if cfg.perceptual_weight > 0.0 {
            Some(cfg.lpips.load::<B>(device)?)
        } else {
            None
        };
        let optim_cfg = FusedAdamW::new(optim.betas, optim.eps, optim.weight_decay);
        Ok(Self {
            cfg: cfg.clone(),
            disc: Some(StyleGan2Discriminator::new(&cfg.discriminator, device)?),
            optim: optim_cfg.clone().init(),
            optim_cfg,
            lpips,
            pairs: Vec::new(),
        })
    }

    fn disc(&self) -> &StyleGan2Discriminator<B> {
        self.disc.as_ref().expect("discriminator present")
    }

    /// 1 from `disc_start` on, else 0.
    fn factor(&self, step: usize) -> f32 {
        if step >= self.cfg.disc_start {
            1.0
        } else {
            0.0
        }
    }
}

impl<B: AutodiffBackend> Objective<B> for VitGan<B> {
    fn quantizer_weight(&self) -> f32 {
        self.cfg.codebook_weight
    }

    fn term_names(&self) -> &'static [&'static str] {
        &TERMS
    }

    fn materialize(&self) {
        super::materialize(self.disc());
    }

    fn broadcast(&mut self, comm: &mut dyn Communicator) -> Result<(), TrainError> {
        let d = self.disc.take().expect("disc");
        self.disc = Some(broadcast_module(comm, d)?);
        Ok(())
    }

    fn check_micro_batch(&self, micro: usize) -> Result<(), TrainError> {
        self.disc()
            .stddev_group_for(micro)
            .map(|_| ())
            .map_err(|e| TrainError::Config {
                file: "run.batch_size".into(),
                message: format!(
                    "key `run.batch_size`: {e} (the discriminator's micro-batch is run.batch_size / \
                     processes / optim.accumulate x data.frames = {micro} images)"
                ),
            })
    }

    fn generator(
        &mut self,
        x: &Tensor<B, 4>,
        out: &VqOutput<B>,
        _last_layer: Option<&Conv2d<B>>,
        step: usize,
        micro_batches: usize,
    ) -> GeneratorLoss<B> {
        let c = &self.cfg;
        let x = x.clone().detach();
        let xhat = &out.reconstruction;
        let device = x.device();
        let diff = xhat.clone() - x.clone();
        let l1 = diff.clone().abs().mean();
        let l2 = diff.powi_scalar(2).mean();
        let perceptual = match &self.lpips {
            Some(lpips) if c.perceptual_weight > 0.0 => {
                lpips.forward(x.clone(), xhat.clone()).mean()
            }
            _ => Tensor::zeros([1], &device),
        };
        let nll = l1.clone() * c.loglaplace_weight
            + l2.clone() * c.loggaussian_weight
            + perceptual.clone() * c.perceptual_weight;
        let weight = self.factor(step) * c.adversarial_weight;
        let g = if self.factor(step) > 0.0 {
            let logits = self.disc().forward(xhat.clone());
            match c.disc_loss {
                DiscLoss::Vanilla => activation::softplus(logits.neg(), 1.0).mean(),
                DiscLoss::Hinge => logits.mean().neg(),
            }
        } else {
            Tensor::zeros([1], &device)
        };
        let loss = nll.clone() + g.clone() * weight;
        let value = loss.clone().inner();
        self.pairs
            .push((x.clone().inner(), xhat.clone().detach().inner()));
        let terms = vec![
            ("l1", l1.inner()),
            ("l2", l2.inner()),
            ("perceptual", perceptual.inner()),
            ("nll", nll.inner()),
            ("g_loss", g.inner()),
            ("d_weight", Inner::<B, 1>::from_floats([weight], &device)),
        ];
        GeneratorLoss {
            backprop: loss / micro_batches as f32,
            value,
            terms,
        }
    }

    fn discriminator_step(
        &mut self,
        comm: &mut dyn Communicator,
        step: usize,
        lr: f64,
    ) -> Result<Vec<(&'static str, Inner<B, 1>)>, TrainError> {
        let pairs = std::mem::take(&mut self.pairs);
        let f = self.factor(step);
        if f <= 0.0 || pairs.is_empty() {
            return Ok(Vec::new());
        }
        let r1_step = step.is_multiple_of(self.cfg.discriminator.do_r1_every);
        let disc = self.disc.take().expect("disc");
        let mut acc = GradientsAccumulator::<StyleGan2Discriminator<B>>::new();
        let n = pairs.len() as f32;
        let mut logs: Option<Inner<B, 1>> = None;
        for (x, xhat) in &pairs {
            let x = Tensor::<B, 4>::from_inner(x.clone());
            let (real, r1) = if r1_step {
                let r1 = disc.r1_penalty(x);
                (r1.logits.clone(), Some(r1))
            } else {
                (disc.forward(x), None)
            };
            let fake = disc.forward(Tensor::from_inner(xhat.clone()));
            let device = real.device();
            let logits = vec![real.clone().mean().inner(), fake.clone().mean().inner()];
            let d = match self.cfg.disc_loss {
                DiscLoss::Vanilla => {
                    activation::softplus(real.neg(), 1.0).mean()
                        + activation::softplus(fake, 1.0).mean()
                }
                DiscLoss::Hinge => {
                    activation::relu(real.neg() + 1.0).mean() + activation::relu(fake + 1.0).mean()
                }
            } * (0.5 * f);
            let (loss, r1_reg) = match r1 {
                Some(r1) => (d + r1.penalty, r1.grad_sq.inner()),
                None => (d, Inner::<B, 1>::zeros([1], &device)),
            };
            let mut parts = vec![loss.clone().inner()];
            parts.extend(logits);
            parts.push(r1_reg);
            let micro = Tensor::cat(parts, 0) / n;
            logs = Some(match logs {
                Some(l) => l + micro,
                None => micro,
            });
            let grads = (loss / n).backward();
            acc.accumulate(&disc, GradientsParams::from_grads(grads, &disc));
        }
        let grads = all_reduce_grads::<B, _>(comm, &disc, acc.grads())?;
        let lr = self.cfg.disc_lr.unwrap_or(lr);
        self.disc = Some(self.optim.step(lr, disc, grads));
        let logs = logs.expect("at least one micro-batch");
        Ok(TERMS[6..]
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, logs.clone().narrow(0, i, 1)))
            .collect())
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_discriminator(dir, self.disc(), &self.optim)
    }

    fn load(&mut self, dir: &Path, device: &B::Device) -> Result<(), TrainError> {
        let disc = self.disc.take().expect("disc");
        let (disc, optim) = load_discriminator(dir, disc, self.optim_cfg.clone().init(), device)?;
        self.disc = Some(disc);
        self.optim = optim;
        Ok(())
    }
}
