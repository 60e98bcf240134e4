//! rotor's AdamW: burn's `AdamW` (same state record, same arithmetic, bit for bit) with each
//! parameter's update run as one fused pass on the CPU backend
//! ([`models::cpu::adamw_update`]); burn's tensor operations on other backends. Checkpoints
//! written with burn's optimizer load here and back.

use burn::{
    module::AutodiffModule,
    optim::{
        AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer, adaptor::OptimizerAdaptor,
    },
    tensor::{
        Tensor,
        backend::{AutodiffBackend, Backend},
    },
};
use models::cpu::{AdamWHyper, adamw_update};

/// AdamW with decoupled weight decay.
#[derive(Clone, Debug)]
pub struct FusedAdamW {
    hyper: AdamWHyper,
}

impl FusedAdamW {
    /// betas `(beta_1, beta_2)`, `eps`, decoupled `weight_decay`.
    pub fn new(betas: [f32; 2], eps: f32, weight_decay: f32) -> Self {
        Self {
            hyper: AdamWHyper {
                beta_1: betas[0],
                beta_2: betas[1],
                epsilon: eps,
                weight_decay,
            },
        }
    }

    /// The optimizer of module `M`'s parameters.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        self,
    ) -> OptimizerAdaptor<FusedAdamW, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, None),
        };
        let (param, m, v) = adamw_update(&self.hyper, lr, time, tensor, grad, moments);
        let momentum = AdaptiveMomentumState::new(time, m, v);
        (param, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::{
        backend::Flex,
        optim::AdamWConfig,
        tensor::{Distribution, Tensor},
    };

    fn bits(t: &Tensor<Flex, 2>) -> Vec<u32> {
        t.to_data()
            .to_vec::<f32>()
            .expect("f32")
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Four steps of rotor's and burn's AdamW on the same parameters and gradients: the same
    /// bits for the parameter and both moments, fused (CPU kernel) and through burn's
    /// operations, with and without weight decay.
    fn same_as_burn(weight_decay: f32, reference_ops: bool) {
        let device = Default::default();
        let burn_opt = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.99)
            .with_epsilon(1e-8)
            .with_weight_decay(weight_decay)
            .build();
        let ours = FusedAdamW::new([0.9, 0.99], 1e-8, weight_decay);
        // 3 x 20,000 elements: several parallel chunks.
        let shape = [3, 20_000];
        let mut p_burn = Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let mut p_ours = p_burn.clone();
        let (mut s_burn, mut s_ours) = (None, None);
        for step in 0..4 {
            let g = Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 0.1), &device);
            let lr = 1e-3 * (step + 1) as f64;
            (p_burn, s_burn) =
                SimpleOptimizer::<Flex>::step(&burn_opt, lr, p_burn, g.clone(), s_burn);
            let run = || {
                SimpleOptimizer::<Flex>::step(&ours, lr, p_ours.clone(), g.clone(), s_ours.clone())
            };
            (p_ours, s_ours) = if reference_ops {
                models::cpu::with_reference_ops(run)
            } else {
                run()
            };
            let (a, b) = (s_burn.as_ref().unwrap(), s_ours.as_ref().unwrap());
            let what = format!("step {step}, decay {weight_decay}, reference ops {reference_ops}");
            assert_eq!(bits(&p_burn), bits(&p_ours), "parameter, {what}");
            assert_eq!(
                bits(&a.momentum.moment_1),
                bits(&b.momentum.moment_1),
                "m, {what}"
            );
            assert_eq!(
                bits(&a.momentum.moment_2),
                bits(&b.momentum.moment_2),
                "v, {what}"
            );
            assert_eq!(a.momentum.time, b.momentum.time);
        }
    }

    #[test]
    fn fused_adamw_gives_burns_bits() {
        for decay in [0.0, 1e-4, 0.05] {
            same_as_burn(decay, false);
            same_as_burn(decay, true);
        }
    }
}
