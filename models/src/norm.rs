//! The discriminator's normalizations with PyTorch's exact semantics: `BatchNorm2d` (batch
//! statistics in training, running statistics updated with the UNBIASED variance, as torch does;
//! burn's own BatchNorm uses the biased one) and taming's `ActNorm` (per-channel affine with
//! data-dependent initialization from the first batch).

use burn::{
    module::{Module, Param, ParamId, RunningState},
    tensor::{Tensor, backend::Backend},
};

/// Training mode = the backend records gradients (burn's convention).
pub(crate) fn training<B: Backend>(x: &Tensor<B, 4>) -> bool {
    B::ad_enabled(&x.device())
}

/// Per-channel `[C]` mean and biased variance over batch and space of `[B, C, H, W]`.
fn channel_stats<B: Backend>(x: &Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>, usize) {
    let [b, c, h, w] = x.dims();
    let flat = x.clone().swap_dims(0, 1).reshape([c, b * h * w]);
    let mean = flat.clone().mean_dim(1);
    let var = (flat - mean.clone()).powi_scalar(2).mean_dim(1);
    (mean.reshape([c]), var.reshape([c]), b * h * w)
}

/// `torch.nn.BatchNorm2d(C, eps, momentum)` with affine weights.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean `[C]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance `[C]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    #[module(skip)]
    momentum: f64,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> BatchNorm2d<B> {
    /// Weight 1, bias 0, running mean 0, running var 1 (torch defaults); `weight_init` overrides
    /// the weight (pix2pix init draws it from N(1, 0.02)).
    pub fn new(
        c: usize,
        momentum: f64,
        eps: f64,
        weight_init: Option<Tensor<B, 1>>,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: Param::from_tensor(weight_init.unwrap_or_else(|| Tensor::ones([c], device))),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            momentum,
            eps,
        }
    }

    /// Normalizes `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, c, _, _] = x.dims();
        let (mean, var) = if training(&x) {
            let (mean, var, n) = channel_stats(&x);
            let unbiased = var.clone().detach() * (n as f64 / (n.max(2) - 1) as f64);
            let m = self.momentum;
            // update + value_sync: the new value is in place at once (visitors, export and
            // checkpoints read it without synchronizing).
            self.running_mean
                .update(self.running_mean.value_sync() * (1.0 - m) + mean.clone().detach() * m);
            self.running_var
                .update(self.running_var.value_sync() * (1.0 - m) + unbiased * m);
            self.running_mean.value_sync();
            self.running_var.value_sync();
            (mean, var)
        } else {
            (self.running_mean.value(), self.running_var.value())
        };
        let scale = self.weight.val() / (var + self.eps).sqrt();
        let shift = self.bias.val() - mean * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

/// taming's `ActNorm`: `scale * (x + loc)`, initialized from the first batch so that its output
/// has zero mean and unit variance per channel.
#[derive(Module, Debug)]
pub struct ActNorm<B: Backend> {
    /// `[1, C, 1, 1]`.
    pub loc: Param<Tensor<B, 4>>,
    /// `[1, C, 1, 1]`.
    pub scale: Param<Tensor<B, 4>>,
    /// `[1]`: 0 until the data-dependent initialization ran.
    pub initialized: Param<Tensor<B, 1>>,
}

impl<B: Backend> ActNorm<B> {
    /// Uninitialized ActNorm over `c` channels (loc 0, scale 1).
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            loc: Param::from_tensor(Tensor::zeros([1, c, 1, 1], device)),
            scale: Param::from_tensor(Tensor::ones([1, c, 1, 1], device)),
            initialized: Param::initialized(ParamId::new(), Tensor::zeros([1], device)),
        }
    }

    /// True until [`ActNorm::initialize`] ran.
    pub fn needs_init(&self) -> bool {
        quantizers::host::read_scalar(self.initialized.val(), quantizers::host::HostRead::Init)
            < 0.5
    }

    /// `loc = -mean`, `scale = 1 / (std + 1e-6)` per channel of `x` (unbiased std, as taming).
    pub fn initialize(&mut self, x: &Tensor<B, 4>) {
        let [_, c, _, _] = x.dims();
        let (mean, var, n) = channel_stats(&x.clone().detach());
        let std = (var * (n as f64 / (n.max(2) - 1) as f64)).sqrt();
        let grad = self.loc.is_require_grad();
        let set = |t: Tensor<B, 1>| {
            let t = t.reshape([1, c, 1, 1]).detach();
            if grad { t.require_grad() } else { t }
        };
        self.loc = Param::initialized(self.loc.id, set(mean.neg()));
        self.scale = Param::initialized(self.scale.id, set((std + 1e-6).recip()));
        let device = x.device();
        self.initialized = Param::initialized(self.initialized.id, Tensor::ones([1], &device));
    }

    /// `scale * (x + loc)`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (x + self.loc.val()) * self.scale.val()
    }
}
