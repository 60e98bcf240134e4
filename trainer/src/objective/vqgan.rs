//! The VQGAN objective (taming's `VQLPIPSWithDiscriminator`) for the generator step, and the
//! discriminator step that alternates with it.
//!
//! Generator: `nll = mean(|x - x^| + perceptual_weight * LPIPS(x, x^))`, `g = -mean(D(x^))`,
//! `L = nll + d_w * f * g + codebook_weight * q_loss` with `f = disc_factor` from `disc_start` on
//! (0 before) and the adaptive weight
//! `d_w = clamp(||dnll/dW|| / (||dg/dW|| + 1e-4), 0, 1e4) * disc_weight` at the decoder's last
//! layer `W`. burn has no `retain_graph`, so the two gradients are taken on detached copies: the
//! gradients of `nll` and `g` with respect to a leaf copy of `x^` (one LPIPS and one D pass), then
//! their gradients at `W` through a leaf copy of the last conv applied to its (detached) input.
//! The generator's backward uses `sum(x^ * sg(dnll/dx^ + d_w f dg/dx^))`, which carries exactly
//! the gradient of `nll + d_w f g` through `x^`, so nothing is computed twice.
//!
//! Discriminator: `f * 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x^)))` (hinge) or with softplus
//! (vanilla), on `x^` detached, with its own Adam optimizer.

use std::path::Path;

use burn::{
    module::Param,
    nn::conv::Conv2d,
    optim::{Adam, AdamConfig, GradientsParams, Optimizer, adaptor::OptimizerAdaptor},
    tensor::{Tensor, activation, backend::AutodiffBackend},
};
use models::{Lpips, NLayerDiscriminator, VqOutput};

use super::{GeneratorLoss, Inner, Objective, load_discriminator, save_discriminator};
use crate::{
    Communicator, DiscLoss, TrainError, VqganObjective,
    comm::sync::{all_reduce_grads, broadcast_module},
};

/// A micro-batch's real images and (detached) reconstructions.
pub(crate) type RealFake<B> = (
    Tensor<<B as AutodiffBackend>::InnerBackend, 4>,
    Tensor<<B as AutodiffBackend>::InnerBackend, 4>,
);

pub(crate) type DiscOptim<B> = OptimizerAdaptor<Adam, NLayerDiscriminator<B>, B>;

/// The discriminator, its optimizer and LPIPS.
pub(crate) struct Gan<B: AutodiffBackend> {
    pub cfg: VqganObjective,
    pub disc: Option<NLayerDiscriminator<B>>,
    pub optim: DiscOptim<B>,
    pub lpips: Option<Lpips<B>>,
    /// The discriminator's ActNorm is known to be initialized (saves reading its flag).
    pub disc_initialized: bool,
    /// This step's micro-batches, for the discriminator's turn.
    pub pairs: Vec<RealFake<B>>,
    /// Adam betas (to rebuild the optimizer when loading its state).
    pub betas: [f32; 2],
}

impl<B: AutodiffBackend> Gan<B> {
    pub fn new(
        cfg: &VqganObjective,
        betas: [f32; 2],
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let lpips = if cfg.perceptual_weight > 0.0 {
            Some(cfg.lpips.load::<B>(device)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            disc: Some(cfg.discriminator.init::<B>(device)?),
            optim: AdamConfig::new()
                .with_beta_1(betas[0])
                .with_beta_2(betas[1])
                .init(),
            lpips,
            disc_initialized: false,
            pairs: Vec::new(),
            betas,
        })
    }

    pub fn disc(&self) -> &NLayerDiscriminator<B> {
        self.disc.as_ref().expect("discriminator present")
    }

    /// `disc_factor` from `disc_start` on.
    pub fn factor(&self, step: usize) -> f32 {
        if step >= self.cfg.disc_start {
            self.cfg.disc_factor
        } else {
            0.0
        }
    }

    /// Generator terms for one micro-batch: returns the tensor to backpropagate (carrying the
    /// gradient of `nll + d_w f g` through `x^`, scaled by `scale`), the value `[1]` of
    /// `nll + d_w f g`, and the first [`GanLogs::GENERATOR`] logged fields `[l1, perceptual, nll,
    /// g, d_weight]`, all on the device (the adaptive weight too: nothing here waits for it).
    pub fn generator_terms(
        &mut self,
        x: &Tensor<B, 4>,
        xhat: &Tensor<B, 4>,
        features: &Tensor<B, 4>,
        last: Option<&Conv2d<B>>,
        step: usize,
        scale: f32,
    ) -> (Tensor<B, 1>, Inner<B, 1>, Inner<B, 1>) {
        let x = x.clone().detach();
        let device = x.device();
        let zero = || Inner::<B, 1>::zeros([1], &device);
        // d nll / d x^ on a leaf copy.
        let leaf = xhat.clone().detach().require_grad();
        let l1 = (x.clone() - leaf.clone()).abs();
        let l1_mean = l1.clone().mean().inner();
        let (nll, perceptual) = match &self.lpips {
            Some(lpips) if self.cfg.perceptual_weight > 0.0 => {
                let p = lpips.forward(x.clone(), leaf.clone());
                let p_mean = p.clone().mean().inner();
                ((l1 + p * self.cfg.perceptual_weight).mean(), p_mean)
            }
            _ => (l1.mean(), zero()),
        };
        let nll_value = nll.clone().inner();
        let grads = nll.backward();
        let grad_nll = leaf.grad(&grads).expect("nll reaches x^");
        let f = self.factor(step);
        let mut total = grad_nll.clone();
        let mut value = nll_value.clone();
        let (mut g_value, mut d_weight) = (zero(), zero());
        if f > 0.0 {
            let leaf = xhat.clone().detach().require_grad();
            if self.disc_needs_init() {
                // (The trainer initializes ActNorm from rank 0's batch before this; a direct
                // caller gets the single-process behaviour.)
                self.init_disc(x.clone());
            }
            let g = self.disc().forward(leaf.clone()).mean().neg();
            g_value = g.clone().inner();
            let grads = g.backward();
            let grad_g = leaf.grad(&grads).expect("g reaches x^");
            d_weight = match last {
                Some(last) => {
                    let n_nll = last_layer_grad_norm(last, features, grad_nll.clone());
                    let n_g = last_layer_grad_norm(last, features, grad_g.clone());
                    (n_nll / (n_g + 1e-4)).clamp(0.0, 1e4) * self.cfg.disc_weight
                }
                // No 2-D last convolution (the 3-D conv VQGAN): a fixed weight, as TATS.
                None => Inner::<B, 1>::ones([1], &device) * self.cfg.disc_weight,
            };
            total = total + grad_g * (d_weight.clone() * f).reshape([1, 1, 1, 1]);
            value = value + d_weight.clone() * f * g_value.clone();
        }
        let backprop = (xhat.clone() * Tensor::from_inner(total * scale)).sum();
        let logs = Tensor::cat(vec![l1_mean, perceptual, nll_value, g_value, d_weight], 0);
        (backprop, value, logs)
    }

    /// True until the discriminator's ActNorm layers were initialized (read once, then known).
    pub fn disc_needs_init(&mut self) -> bool {
        if self.disc_initialized {
            return false;
        }
        let needs = self.disc().needs_init();
        self.disc_initialized = !needs;
        needs
    }

    /// Initializes the discriminator's ActNorm layers from `x`.
    pub fn init_disc(&mut self, x: Tensor<B, 4>) {
        self.disc.as_mut().expect("disc").init_from_batch(x);
        self.disc_initialized = true;
    }

    /// One discriminator update on micro-batches (at least one) of (real, reconstruction) pairs:
    /// its gradients and the discriminator's logged fields `[disc_loss, logits_real,
    /// logits_fake]` (means over the micro-batches, on the device).
    pub fn disc_grads(
        &mut self,
        pairs: &[RealFake<B>],
        step: usize,
    ) -> (GradientsParams, Inner<B, 1>) {
        use burn::optim::GradientsAccumulator;
        let f = self.factor(step);
        let disc = self.disc.take().expect("disc");
        let mut acc = GradientsAccumulator::<NLayerDiscriminator<B>>::new();
        let n = pairs.len() as f32;
        let mut logs: Option<Inner<B, 1>> = None;
        for (x, xhat) in pairs {
            let real = disc.forward(Tensor::from_inner(x.clone()));
            let fake = disc.forward(Tensor::from_inner(xhat.clone()));
            let logits = Tensor::cat(
                vec![real.clone().mean().inner(), fake.clone().mean().inner()],
                0,
            );
            let loss = match self.cfg.disc_loss {
                DiscLoss::Hinge => {
                    activation::relu(real.neg() + 1.0).mean() + activation::relu(fake + 1.0).mean()
                }
                DiscLoss::Vanilla => {
                    activation::softplus(real.neg(), 1.0).mean()
                        + activation::softplus(fake, 1.0).mean()
                }
            } * (0.5 * f);
            let micro = Tensor::cat(vec![loss.clone().inner(), logits], 0) / n;
            logs = Some(match logs {
                Some(l) => l + micro,
                None => micro,
            });
            let grads = (loss / n).backward();
            acc.accumulate(&disc, GradientsParams::from_grads(grads, &disc));
        }
        self.disc = Some(disc);
        (acc.grads(), logs.expect("at least one micro-batch"))
    }

    /// Applies (all-reduced) discriminator gradients.
    pub fn step_disc(&mut self, lr: f64, grads: GradientsParams) {
        let disc = self.disc.take().expect("disc");
        self.disc = Some(self.optim.step(lr, disc, grads));
    }
}

/// The logged terms: the generator's five, then the discriminator's three.
const TERMS: [&str; 8] = [
    "l1",
    "perceptual",
    "nll",
    "g_loss",
    "d_weight",
    "disc_loss",
    "logits_real",
    "logits_fake",
];

/// `[n]` -> `n` named `[1]` terms.
fn named<B: AutodiffBackend>(
    names: &[&'static str],
    v: Inner<B, 1>,
) -> Vec<(&'static str, Inner<B, 1>)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, v.clone().narrow(0, i, 1)))
        .collect()
}

impl<B: AutodiffBackend> Objective<B> for Gan<B> {
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

    fn prepare(
        &mut self,
        x: &Tensor<B, 4>,
        step: usize,
        comm: &mut dyn Communicator,
    ) -> Result<(), TrainError> {
        if self.factor(step) > 0.0 && self.disc_needs_init() {
            // ActNorm's data-dependent init from rank 0's batch, the same everywhere.
            self.init_disc(x.clone());
            self.broadcast(comm)?;
        }
        Ok(())
    }

    fn generator(
        &mut self,
        x: &Tensor<B, 4>,
        out: &VqOutput<B>,
        last_layer: Option<&Conv2d<B>>,
        step: usize,
        micro_batches: usize,
    ) -> GeneratorLoss<B> {
        let (backprop, value, logs) = self.generator_terms(
            x,
            &out.reconstruction,
            &out.decoder_features,
            last_layer,
            step,
            1.0 / micro_batches as f32,
        );
        self.pairs.push((
            x.clone().inner(),
            out.reconstruction.clone().detach().inner(),
        ));
        GeneratorLoss {
            backprop,
            value,
            terms: named::<B>(&TERMS[..5], logs),
        }
    }

    fn discriminator_step(
        &mut self,
        comm: &mut dyn Communicator,
        step: usize,
        lr: f64,
    ) -> Result<Vec<(&'static str, Inner<B, 1>)>, TrainError> {
        let pairs = std::mem::take(&mut self.pairs);
        if self.factor(step) <= 0.0 || pairs.is_empty() {
            return Ok(Vec::new());
        }
        let disc_lr = self.cfg.disc_lr.unwrap_or(lr);
        let (grads, logs) = self.disc_grads(&pairs, step);
        let grads = all_reduce_grads::<B, _>(comm, self.disc(), grads)?;
        self.step_disc(disc_lr, grads);
        Ok(named::<B>(&TERMS[5..], logs))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_discriminator(dir, self.disc(), &self.optim)
    }

    fn load(&mut self, dir: &Path, device: &B::Device) -> Result<(), TrainError> {
        let disc = self.disc.take().expect("disc");
        let (disc, optim) = load_discriminator(
            dir,
            disc,
            AdamConfig::new()
                .with_beta_1(self.betas[0])
                .with_beta_2(self.betas[1])
                .init(),
            device,
        )?;
        self.disc = Some(disc);
        self.optim = optim;
        Ok(())
    }
}

/// `||dL/dW||` at the last conv for `dL/dx^ = upstream`: the gradient of
/// `sum(conv(sg h, W') * sg upstream)` with respect to a leaf copy `W'` of its weight.
fn last_layer_grad_norm<B: AutodiffBackend>(
    last: &Conv2d<B>,
    features: &Tensor<B, 4>,
    upstream: Tensor<B::InnerBackend, 4>,
) -> Inner<B, 1> {
    let upstream_device = upstream.device();
    let mut conv = last.clone();
    let w = last.weight.val().detach().require_grad();
    conv.weight = Param::from_tensor(w.clone());
    conv.bias = last
        .bias
        .as_ref()
        .map(|b| Param::from_tensor(b.val().detach()));
    let y = conv.forward(features.clone().detach());
    let grads = (y * Tensor::from_inner(upstream)).sum().backward();
    let device = upstream_device;
    w.grad(&grads)
        .map(|g| g.powi_scalar(2).sum().sqrt())
        .unwrap_or_else(|| Inner::<B, 1>::zeros([1], &device))
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, Flex},
        tensor::Distribution,
    };
    use models::{AutoencoderConfig, DiscriminatorConfig, VqModelConfig};
    use quantizers::{Mode, QuantizerConfig, VqConfig};

    use super::*;

    type B = Autodiff<Flex>;

    /// The adaptive weight from leaf copies equals the one from full backward passes through the
    /// generator (what taming computes with autograd.grad at the last layer).
    #[test]
    fn adaptive_weight_matches_direct_gradients() {
        let device = Default::default();
        let model = VqModelConfig {
            autoencoder: AutoencoderConfig {
                ch: 32,
                ch_mult: vec![1, 2],
                num_res_blocks: 1,
                attn_resolutions: vec![],
                resolution: 16,
                in_channels: 3,
                out_ch: 3,
                z_channels: 8,
                dropout: 0.0,
                resamp_with_conv: true,
                double_z: false,
            },
            quantizer: QuantizerConfig::Vq(VqConfig::new(8, 16)),
            init_from: None,
        }
        .init::<B>(&device)
        .unwrap();
        let cfg = VqganObjective {
            codebook_weight: 1.0,
            perceptual_weight: 0.0,
            lpips: Default::default(),
            disc_start: 0,
            disc_weight: 0.8,
            disc_factor: 1.0,
            disc_loss: DiscLoss::Hinge,
            discriminator: DiscriminatorConfig {
                ndf: 8,
                n_layers: 2,
                ..DiscriminatorConfig::new()
            },
            disc_lr: None,
        };
        let mut gan = Gan::<B>::new(&cfg, [0.5, 0.9], &device).unwrap();
        // Eval-mode BatchNorm would differ from train mode: compare in train mode, with the
        // discriminator's batch statistics, on the same inputs.
        let x = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &device);
        let out = model.forward(x.clone(), Mode::Eval);
        let (_, _, logs) = gan.generator_terms(
            &x,
            &out.reconstruction,
            &out.decoder_features,
            Some(&model.decoder.conv_out),
            0,
            1.0,
        );

        let norm = |loss: Tensor<B, 1>| {
            let grads = loss.backward();
            let g = model.decoder.conv_out.weight.grad(&grads).unwrap();
            use burn::tensor::ElementConversion;
            g.powi_scalar(2).sum().sqrt().into_scalar().elem::<f64>()
        };
        let xhat = model.forward(x.clone(), Mode::Eval).reconstruction;
        let n_nll = norm((x.clone() - xhat).abs().mean());
        let xhat = model.forward(x.clone(), Mode::Eval).reconstruction;
        let n_g = norm(gan.disc().forward(xhat).mean().neg());
        let want = (n_nll / (n_g + 1e-4)).clamp(0.0, 1e4) * 0.8;
        let got = logs.into_data().to_vec::<f32>().unwrap()[4] as f64;
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1e-6),
            "adaptive weight {got}, direct {want}"
        );
        assert!(got > 0.0);
    }
}
