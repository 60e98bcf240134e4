//! Convolution + BatchNorm (eval mode) + ReLU units of the metric networks (FID Inception, I3D),
//! built from a PyTorch state dict with the BatchNorm folded into the convolution:
//! `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)` (computed in f64). The
//! networks only ever run in eval mode, where this is the same affine map, one pass cheaper.
//!
//! [`WeightTaker`] hands out the dict's tensors by name and remembers which were used, so a
//! build fails listing every missing, mis-shaped and unused key: a different network is never
//! loaded silently.

use std::collections::BTreeSet;

use burn::{
    module::Param,
    nn::{
        PaddingConfig2d, PaddingConfig3d,
        conv::{Conv2d, Conv3d},
    },
    tensor::{Tensor, TensorData, activation::relu, backend::Backend},
};

use crate::{ModelError, StateDict, TensorEntry, cpu};

/// Hands out a state dict's tensors by name and checks, at the end, that all fit and all were used.
pub(crate) struct WeightTaker<'a> {
    dict: &'a StateDict,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> WeightTaker<'a> {
    pub(crate) fn new(dict: &'a StateDict) -> Self {
        Self {
            dict,
            used: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// The tensor `key`, which must have `rank` dimensions (and the given sizes where `Some`).
    pub(crate) fn take(&mut self, key: &str, shape: &[Option<usize>]) -> Option<&'a TensorEntry> {
        let Some(entry) = self.dict.get(key) else {
            self.problems.push(format!("missing key `{key}`"));
            return None;
        };
        self.used.insert(key.to_string());
        let fits = entry.shape.len() == shape.len()
            && entry
                .shape
                .iter()
                .zip(shape)
                .all(|(have, want)| want.is_none_or(|w| w == *have));
        if !fits {
            let want: Vec<String> = shape
                .iter()
                .map(|s| s.map_or("_".to_string(), |s| s.to_string()))
                .collect();
            self.problems.push(format!(
                "`{key}` has shape {:?}, expected [{}]",
                entry.shape,
                want.join(", ")
            ));
            return None;
        }
        Some(entry)
    }

    /// Fails listing every problem and every key no layer used (`num_batches_tracked` aside).
    pub(crate) fn finish(self, network: &str) -> Result<(), ModelError> {
        let unused: Vec<&str> = self
            .dict
            .names()
            .filter(|n| !self.used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .collect();
        if self.problems.is_empty() && unused.is_empty() {
            return Ok(());
        }
        let mut msg = format!("the weights are not {network}'s:");
        for p in self.problems.iter().take(20) {
            msg += &format!("\n  {p}");
        }
        if self.problems.len() > 20 {
            msg += &format!("\n  ... and {} more problems", self.problems.len() - 20);
        }
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(20).copied().collect();
            msg += &format!(
                "\n  unexpected keys ({}): {}",
                unused.len(),
                shown.join(", ")
            );
        }
        Err(ModelError::WeightMismatch(msg))
    }
}

/// The folded weight `[co, ...]` and bias `[co]` of `name.<conv>.weight` and `name.bn.*`.
fn folded(
    taker: &mut WeightTaker,
    name: &str,
    conv: &str,
    rank: usize,
    eps: f64,
) -> Option<(Vec<usize>, Vec<f32>, Vec<f32>)> {
    let w = taker.take(&format!("{name}.{conv}.weight"), &vec![None; rank]);
    let co = w.map(|w| w.shape[0]);
    let mut bn = Vec::new();
    for p in ["weight", "bias", "running_mean", "running_var"] {
        bn.push(taker.take(&format!("{name}.bn.{p}"), &[co]));
    }
    let (w, [g, beta, mean, var]) = (w?, [bn[0]?, bn[1]?, bn[2]?, bn[3]?]);
    let co = w.shape[0];
    let per = w.values.len() / co;
    let mut weight = Vec::with_capacity(w.values.len());
    let mut bias = Vec::with_capacity(co);
    for o in 0..co {
        let scale = g.values[o] as f64 / (var.values[o] as f64 + eps).sqrt();
        weight.extend(
            w.values[o * per..(o + 1) * per]
                .iter()
                .map(|&v| (v as f64 * scale) as f32),
        );
        bias.push((beta.values[o] as f64 - mean.values[o] as f64 * scale) as f32);
    }
    Some((w.shape.clone(), weight, bias))
}

/// `Conv2d(bias=False) -> BatchNorm2d -> ReLU` (pytorch-fid's `BasicConv2d`), folded.
#[derive(Debug)]
pub(crate) struct ConvBnRelu2d<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> ConvBnRelu2d<B> {
    /// `name.conv.weight` and `name.bn.*`, with this stride; `same` pads `(k - 1)/2` on each
    /// side (the Mixed blocks' stride-1 layers), otherwise there is no padding.
    pub(crate) fn load(
        taker: &mut WeightTaker,
        name: &str,
        stride: usize,
        same: bool,
        eps: f64,
        device: &B::Device,
    ) -> Option<Self> {
        let (shape, weight, bias) = folded(taker, name, "conv", 4, eps)?;
        let dims = [shape[0], shape[1], shape[2], shape[3]];
        let pad = if same {
            [dims[2] / 2, dims[3] / 2]
        } else {
            [0, 0]
        };
        Some(Self {
            conv: Conv2d {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(weight, dims),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(bias, [dims[0]]),
                    device,
                ))),
                stride: [stride; 2],
                kernel_size: [dims[2], dims[3]],
                dilation: [1, 1],
                groups: 1,
                padding: PaddingConfig2d::Explicit(pad[0], pad[1], pad[0], pad[1]),
            },
        })
    }

    /// `relu(bn(conv(x)))`.
    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(cpu::conv2d(&self.conv, x))
    }
}

/// TF-style "SAME" padding of one axis: `(before, after)`, the odd cell after.
pub(crate) fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let pad = if size.is_multiple_of(stride) {
        kernel.saturating_sub(stride)
    } else {
        kernel.saturating_sub(size % stride)
    };
    (pad / 2, pad - pad / 2)
}

/// I3D's `Unit3D`: `Conv3d(bias=False)` with TF "SAME" padding computed from the input size ->
/// BatchNorm3d -> ReLU, folded.
#[derive(Debug)]
pub(crate) struct ConvBnRelu3d<B: Backend> {
    conv: Conv3d<B>,
}

impl<B: Backend> ConvBnRelu3d<B> {
    /// `name.conv3d.weight` and `name.bn.*`, with this stride on every axis.
    pub(crate) fn load(
        taker: &mut WeightTaker,
        name: &str,
        stride: usize,
        eps: f64,
        device: &B::Device,
    ) -> Option<Self> {
        let (shape, weight, bias) = folded(taker, name, "conv3d", 5, eps)?;
        let dims = [shape[0], shape[1], shape[2], shape[3], shape[4]];
        Some(Self {
            conv: Conv3d {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(weight, dims),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(bias, [dims[0]]),
                    device,
                ))),
                stride: [stride; 3],
                kernel_size: [dims[2], dims[3], dims[4]],
                dilation: [1, 1, 1],
                groups: 1,
                padding: PaddingConfig3d::Valid,
            },
        })
    }

    /// `relu(bn(conv(pad_same(x))))` on `[B, C, T, H, W]`.
    pub(crate) fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [_, _, t, h, w] = x.dims();
        let k = self.conv.kernel_size;
        let s = self.conv.stride;
        let pads = [
            same_padding(t, k[0], s[0]),
            same_padding(h, k[1], s[1]),
            same_padding(w, k[2], s[2]),
        ];
        let x = if pads.iter().all(|&(a, b)| a == 0 && b == 0) {
            x
        } else {
            x.pad(
                [pads[0], pads[1], pads[2]],
                burn::tensor::ops::PadMode::Constant(0.0),
            )
        };
        relu(cpu::conv3d(&self.conv, x))
    }
}

#[cfg(test)]
mod tests {
    use super::same_padding;

    #[test]
    fn same_padding_puts_the_odd_cell_after() {
        // I3D's first conv: kernel 7, stride 2 on 224 and on 16 frames pads 2 before, 3 after.
        assert_eq!(same_padding(224, 7, 2), (2, 3));
        assert_eq!(same_padding(16, 7, 2), (2, 3));
        assert_eq!(same_padding(112, 3, 2), (0, 1));
        assert_eq!(same_padding(7, 3, 1), (1, 1));
        assert_eq!(same_padding(8, 2, 2), (0, 0));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
    }
}
