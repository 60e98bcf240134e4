//! LPIPS (Zhang et al.), as taming-transformers uses it: inputs in `[-1, 1]` are shifted and
//! scaled, passed through VGG16's features; at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the
//! activations of both images are unit-normalized over channels, their squared difference is
//! weighted by a 1x1 conv head (no bias), averaged over space, and summed over the five taps.
//!
//! No weights are ever downloaded. Real use loads torchvision's VGG16 ImageNet weights
//! (`vgg16-397923af.pth`, keys `features.<i>.*`) and the LPIPS v0.1 heads (`vgg.pth` from the
//! `lpips` PyPI wheel, keys `lin<k>.model.1.weight`) from files the user supplies, or one taming
//! `LPIPS` state dict (keys `net.slice<s>.<i>.*`, `lin<k>.model.1.weight`).

use std::path::Path;

use burn::{
    module::{Module, Param, ParamId},
    nn::{PaddingConfig2d, conv::Conv2d, conv::Conv2dConfig},
    tensor::{Tensor, TensorData, activation::relu, backend::Backend},
};

use crate::{
    ModelError, StateDict,
    weights::{Naming, TorchKey, export_weights, load_weights},
};

/// Indices of VGG16's 13 convs in torchvision's `features`.
const VGG_CONVS: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
/// Channels of the 13 convs.
const VGG_WIDTHS: [usize; 13] = [
    64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512,
];
/// The tap (slice) each conv belongs to; taps end after convs 1, 3, 6, 9, 12.
const SLICE_OF: [usize; 13] = [1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5];
/// Channels at the five taps.
pub const LPIPS_CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];

/// Where the LPIPS weights come from (config keys `vgg16` and `heads`). Nothing is downloaded.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsWeights {
    /// torchvision's VGG16 ImageNet weights (`vgg16-397923af.pth`, or a safetensors copy).
    #[serde(default)]
    pub vgg16: Option<std::path::PathBuf>,
    /// The LPIPS v0.1 VGG heads (`lpips/weights/v0.1/vgg.pth` in the `lpips` PyPI wheel).
    #[serde(default)]
    pub heads: Option<std::path::PathBuf>,
}

/// How to obtain the LPIPS weight files, for error messages.
pub const LPIPS_HOWTO: &str = "LPIPS needs two weight files that rotor never downloads: \
torchvision's VGG16 ImageNet weights (on a machine with network: \
`python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"` leaves \
~/.cache/torch/hub/checkpoints/vgg16-397923af.pth) and the LPIPS v0.1 heads \
(`pip download lpips==0.1.4`, then unzip lpips/weights/v0.1/vgg.pth from the wheel). \
Set their paths as `vgg16` and `heads`, or set the perceptual weight to 0.";

impl LpipsWeights {
    /// Loads LPIPS from the configured files; without them, an error that says which files are
    /// needed and how to get them.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<Lpips<B>, ModelError> {
        match (&self.vgg16, &self.heads) {
            (Some(vgg), Some(heads)) => Lpips::from_files(vgg, heads, device),
            (None, _) => Err(ModelError::config(
                "lpips.vgg16",
                format!("no VGG16 weight file configured. {LPIPS_HOWTO}"),
            )),
            (_, None) => Err(ModelError::config(
                "lpips.heads",
                format!("no LPIPS heads file configured. {LPIPS_HOWTO}"),
            )),
        }
    }
}

/// The LPIPS network.
#[derive(Module, Debug)]
pub struct Lpips<B: Backend> {
    /// `[1, 3, 1, 1]` input shift (constant).
    pub shift: Param<Tensor<B, 4>>,
    /// `[1, 3, 1, 1]` input scale (constant).
    pub scale: Param<Tensor<B, 4>>,
    /// VGG16's 13 convs.
    pub convs: Vec<Conv2d<B>>,
    /// The five 1x1 heads.
    pub lins: Vec<Conv2d<B>>,
}

fn constant<B: Backend>(v: [f32; 3], device: &B::Device) -> Param<Tensor<B, 4>> {
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1]), device),
    )
}

impl<B: Backend> Lpips<B> {
    /// The architecture with random weights and LPIPS's scaling constants; load real weights
    /// with [`Lpips::from_files`] or [`Lpips::load_taming`].
    pub fn new(device: &B::Device) -> Self {
        let mut convs = Vec::new();
        let mut c_in = 3;
        for w in VGG_WIDTHS {
            convs.push(
                Conv2dConfig::new([c_in, w], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            c_in = w;
        }
        let lins = LPIPS_CHANNELS
            .iter()
            .map(|c| {
                Conv2dConfig::new([*c, 1], [1, 1])
                    .with_bias(false)
                    .init(device)
            })
            .collect();
        Self {
            shift: constant([-0.030, -0.088, -0.188], device),
            scale: constant([0.458, 0.448, 0.450], device),
            convs,
            lins,
        }
        .no_grad()
    }

    /// Loads torchvision's VGG16 weights (`features.<i>.weight|bias`; other keys such as the
    /// classifier are ignored) and the LPIPS heads (`lin<k>.model.1.weight`) from two files.
    pub fn from_files(vgg16: &Path, heads: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let vgg = StateDict::load(vgg16)?;
        let heads_dict = StateDict::load(heads)?;
        let mut dict = StateDict::default();
        for (k, idx) in VGG_CONVS.iter().enumerate() {
            for p in ["weight", "bias"] {
                let key = format!("features.{idx}.{p}");
                let entry = vgg.get(&key).ok_or_else(|| {
                    ModelError::WeightMismatch(format!(
                        "{}: no `{key}`: expected torchvision's VGG16 state dict (vgg16-397923af.pth)",
                        vgg16.display()
                    ))
                })?;
                dict.insert(format!("net.slice{}.{idx}.{p}", SLICE_OF[k]), entry.clone());
            }
        }
        for k in 0..5 {
            let key = format!("lin{k}.model.1.weight");
            let entry = heads_dict.get(&key).ok_or_else(|| {
                ModelError::WeightMismatch(format!(
                    "{}: no `{key}`: expected the LPIPS v0.1 VGG heads (lpips/weights/v0.1/vgg.pth)",
                    heads.display()
                ))
            })?;
            dict.insert(key, entry.clone());
        }
        Self::new(device).load_taming(&dict)
    }

    /// Loads a taming `LPIPS` state dict (`scaling_layer.*` optional).
    pub fn load_taming(self, dict: &StateDict) -> Result<Self, ModelError> {
        Ok(load_weights(self, dict, &LpipsNaming)?.no_grad())
    }

    /// The weights under taming's names.
    pub fn export_taming(&self) -> StateDict {
        export_weights(self, &LpipsNaming)
    }

    /// The five VGG activations of `x` (already scaled).
    fn features(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut taps = Vec::with_capacity(5);
        let mut h = x;
        for (k, conv) in self.convs.iter().enumerate() {
            if k > 0 && SLICE_OF[k] != SLICE_OF[k - 1] {
                h = crate::cpu::max_pool2x2(h);
            }
            h = relu(crate::cpu::conv2d(conv, h));
            if k + 1 == self.convs.len() || SLICE_OF[k + 1] != SLICE_OF[k] {
                taps.push(h.clone());
            }
        }
        taps
    }

    /// LPIPS distance `[B, 1, 1, 1]` between images `a` and `b` in `[-1, 1]`; gradients flow to
    /// both inputs (the network itself is frozen).
    pub fn forward(&self, a: Tensor<B, 4>, b: Tensor<B, 4>) -> Tensor<B, 4> {
        let scale = |x: Tensor<B, 4>| (x - self.shift.val()) / self.scale.val();
        let fa = self.features(scale(a));
        let fb = self.features(scale(b));
        let mut total: Option<Tensor<B, 4>> = None;
        for ((x, y), lin) in fa.into_iter().zip(fb).zip(&self.lins) {
            let d = (unit_normalize(x) - unit_normalize(y)).powi_scalar(2);
            let v = crate::cpu::conv2d(lin, d).mean_dim(2).mean_dim(3);
            total = Some(match total {
                Some(t) => t + v,
                None => v,
            });
        }
        total.expect("five taps")
    }
}

/// `x / (||x||_channels + 1e-10)`.
fn unit_normalize<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / (norm + 1e-10)
}

struct LpipsNaming;

impl Naming for LpipsNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            ["shift"] | ["scale"] => TorchKey {
                key: format!("scaling_layer.{path}"),
                transpose: false,
                optional: true,
            },
            ["convs", k, p] => {
                let k: usize = k.parse().unwrap_or(0);
                TorchKey::new(format!("net.slice{}.{}.{p}", SLICE_OF[k], VGG_CONVS[k]))
            }
            ["lins", k, p] => TorchKey::new(format!("lin{k}.model.1.{p}")),
            _ => TorchKey::new(path),
        }
    }
}
