//! The I3D network of the FVD code of VideoGPT and TATS (`InceptionI3d(400, in_channels=3)`,
//! piergiaj/pytorch-i3d's port of DeepMind's Kinetics-400 I3D) and its preprocessing: frames
//! truncated to bytes (`(x*255).astype(uint8)`, as the sampling scripts do), each resized on its
//! 0..255 values to 224x224 (bilinear, align_corners=False, no antialiasing), then `2x/255 - 1`.
//! TF "SAME" padding is computed from each input size (the odd cell after), max-pools pad with
//! zeros, BatchNorm eps is 1e-5 (VideoGPT's / TATS' copy of the network; piergiaj's original
//! uses 1e-3; folded into the convolutions on load), and the FVD embedding is
//! the 400 logits averaged over the remaining time positions.
//!
//! Weights come only from a file the user supplies (`i3d_pretrained_400.pt`, converted to
//! safetensors), under the module's names (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1a.bn.*`,
//! ..., `logits.conv3d.weight` / `.bias`).

use burn::tensor::{Tensor, TensorData, backend::Backend, module::max_pool2d};

use crate::{
    ModelError, StateDict,
    bilinear::resize_bilinear,
    folded_conv::{ConvBnRelu3d, WeightTaker, same_padding},
};

/// The BatchNorm3d eps of VideoGPT's / TATS' `pytorch_i3d.py` (torch's default).
const BN_EPS: f64 = 1e-5;

/// The frames' side after preprocessing.
pub const I3D_SIZE: usize = 224;

/// Number of logits (Kinetics-400 classes): the FVD embedding's width.
pub const I3D_CLASSES: usize = 400;

/// The fewest frames the network accepts (three temporal stride-2 stages must leave two
/// positions for the final 2x7x7 average pool).
pub const I3D_MIN_FRAMES: usize = 9;

type Unit<B> = ConvBnRelu3d<B>;

/// `MaxPool3dSamePadding`: zero "SAME" padding, then a max-pool without implicit padding.
fn max_pool3d_same<B: Backend>(x: Tensor<B, 5>, k: [usize; 3], s: [usize; 3]) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    let pads = [
        same_padding(t, k[0], s[0]),
        same_padding(h, k[1], s[1]),
        same_padding(w, k[2], s[2]),
    ];
    let x = x.pad(pads, burn::tensor::ops::PadMode::Constant(0.0));
    let [_, _, tp, hp, wp] = x.dims();
    // A 3-D max is a max over time of spatial maxima.
    let x = max_pool2d(
        x.reshape([b, c * tp, hp, wp]),
        [k[1], k[2]],
        [s[1], s[2]],
        [0, 0],
        [1, 1],
        false,
    );
    let [_, _, ho, wo] = x.dims();
    let x = x.reshape([b, c, tp, ho * wo]);
    let x = if k[0] == 1 && s[0] == 1 {
        x
    } else {
        max_pool2d(x, [k[0], 1], [s[0], 1], [0, 0], [1, 1], false)
    };
    let to = x.dims()[2];
    x.reshape([b, c, to, ho, wo])
}

/// An Inception block: `[b0; b1a -> b1b; b2a -> b2b; maxpool -> b3b]`.
#[derive(Debug)]
struct Mixed<B: Backend> {
    b0: Unit<B>,
    b1: [Unit<B>; 2],
    b2: [Unit<B>; 2],
    b3: Unit<B>,
}

impl<B: Backend> Mixed<B> {
    fn load(taker: &mut WeightTaker, n: &str, device: &B::Device) -> Option<Self> {
        let mut u = |b: &str| Unit::load(taker, &format!("{n}.{b}"), 1, BN_EPS, device);
        let (b0, b1a, b1b, b2a, b2b, b3b) =
            (u("b0"), u("b1a"), u("b1b"), u("b2a"), u("b2b"), u("b3b"));
        Some(Self {
            b0: b0?,
            b1: [b1a?, b1b?],
            b2: [b2a?, b2b?],
            b3: b3b?,
        })
    }

    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let a = self.b0.forward(x.clone());
        let b = self.b1[1].forward(self.b1[0].forward(x.clone()));
        let c = self.b2[1].forward(self.b2[0].forward(x.clone()));
        let d = self.b3.forward(max_pool3d_same(x, [3; 3], [1; 3]));
        Tensor::cat(vec![a, b, c, d], 1)
    }
}

/// The FVD I3D (see the module doc).
#[derive(Debug)]
pub struct I3d<B: Backend> {
    conv_1a: Unit<B>,
    conv_2b: Unit<B>,
    conv_2c: Unit<B>,
    mixed_3: Vec<Mixed<B>>,
    mixed_4: Vec<Mixed<B>>,
    mixed_5: Vec<Mixed<B>>,
    /// `[1024, 400]` (PyTorch's 1x1x1 conv `[400, 1024, 1, 1, 1]`, transposed).
    logits_weight: Tensor<B, 2>,
    logits_bias: Tensor<B, 1>,
}

impl<B: Backend> I3d<B> {
    /// Builds the network from a state dict under pytorch-i3d's names; fails listing every
    /// missing, mis-shaped or unexpected key.
    pub fn from_state_dict(dict: &StateDict, device: &B::Device) -> Result<Self, ModelError> {
        let mut t = WeightTaker::new(dict);
        let conv_1a = Unit::load(&mut t, "Conv3d_1a_7x7", 2, BN_EPS, device);
        let conv_2b = Unit::load(&mut t, "Conv3d_2b_1x1", 1, BN_EPS, device);
        let conv_2c = Unit::load(&mut t, "Conv3d_2c_3x3", 1, BN_EPS, device);
        let mut mixed = |names: &[&str]| -> Option<Vec<Mixed<B>>> {
            let v: Vec<_> = names
                .iter()
                .map(|n| Mixed::load(&mut t, n, device))
                .collect();
            v.into_iter().collect()
        };
        let mixed_3 = mixed(&["Mixed_3b", "Mixed_3c"]);
        let mixed_4 = mixed(&["Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"]);
        let mixed_5 = mixed(&["Mixed_5b", "Mixed_5c"]);
        let w = t.take(
            "logits.conv3d.weight",
            &[Some(I3D_CLASSES), Some(1024), Some(1), Some(1), Some(1)],
        );
        let b = t.take("logits.conv3d.bias", &[Some(I3D_CLASSES)]);
        let head = w.zip(b).map(|(w, b)| {
            let w = Tensor::<B, 2>::from_data(
                TensorData::new(w.values.clone(), [I3D_CLASSES, 1024]),
                device,
            );
            let b =
                Tensor::<B, 1>::from_data(TensorData::new(b.values.clone(), [I3D_CLASSES]), device);
            (w.transpose(), b)
        });
        t.finish("the FVD I3D's")?;
        let missing = || ModelError::WeightMismatch("I3D weights incomplete".into());
        let (logits_weight, logits_bias) = head.ok_or_else(missing)?;
        Ok(Self {
            conv_1a: conv_1a.ok_or_else(missing)?,
            conv_2b: conv_2b.ok_or_else(missing)?,
            conv_2c: conv_2c.ok_or_else(missing)?,
            mixed_3: mixed_3.ok_or_else(missing)?,
            mixed_4: mixed_4.ok_or_else(missing)?,
            mixed_5: mixed_5.ok_or_else(missing)?,
            logits_weight,
            logits_bias,
        })
    }

    /// TATS's preprocessing of `clips` clips given as frames `[clips*T, 3, H, W]` in `[0, 1]`
    /// (clip-major): bytes `floor(255 x)` (values clamped to `[0, 1]` first), bilinear resize to
    /// 224x224 on those bytes, `2x/255 - 1`, laid out `[clips, 3, T, 224, 224]`.
    pub fn preprocess(frames: Tensor<B, 4>, clips: usize) -> Tensor<B, 5> {
        let [n, c, _, _] = frames.dims();
        let t = n / clips.max(1);
        let bytes = (frames.clamp(0.0, 1.0) * 255.0).floor();
        let x = resize_bilinear(bytes, [I3D_SIZE; 2]) * (2.0 / 255.0) - 1.0;
        x.reshape([clips, t, c, I3D_SIZE, I3D_SIZE]).swap_dims(1, 2)
    }

    /// The FVD embeddings `[B, 400]` of preprocessed clips `[B, 3, T, 224, 224]`, `T >= 9`.
    pub fn forward_preprocessed(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let x = self.conv_1a.forward(x);
        let x = max_pool3d_same(x, [1, 3, 3], [1, 2, 2]);
        let x = self.conv_2c.forward(self.conv_2b.forward(x));
        let mut x = max_pool3d_same(x, [1, 3, 3], [1, 2, 2]);
        for m in &self.mixed_3 {
            x = m.forward(x);
        }
        x = max_pool3d_same(x, [3, 3, 3], [2, 2, 2]);
        for m in &self.mixed_4 {
            x = m.forward(x);
        }
        x = max_pool3d_same(x, [2, 2, 2], [2, 2, 2]);
        for m in &self.mixed_5 {
            x = m.forward(x);
        }
        // Average pool (2, 7, 7) stride 1 without padding, the 1x1x1 logits conv, mean over
        // the remaining time positions (the conv is affine, so the mean can go first).
        let [b, c, t, h, w] = x.dims();
        let spatial = x.reshape([b, c, t, h * w]).mean_dim(3).reshape([b, c, t]);
        let pooled = (spatial.clone().slice([0..b, 0..c, 0..t - 1])
            + spatial.slice([0..b, 0..c, 1..t]))
            * 0.5;
        let mean = pooled.mean_dim(2).reshape([b, c]);
        mean.matmul(self.logits_weight.clone()) + self.logits_bias.clone().unsqueeze::<2>()
    }

    /// The FVD embeddings of `clips` clips given as frames `[clips*T, 3, H, W]` in `[0, 1]`.
    pub fn forward(&self, frames: Tensor<B, 4>, clips: usize) -> Tensor<B, 2> {
        self.forward_preprocessed(Self::preprocess(frames, clips))
    }
}

/// Every tensor of the FVD I3D's state dict, `(name, shape)` (what [`I3d::from_state_dict`]
/// reads; tests build random-weight files from it).
pub fn i3d_shapes() -> Vec<(String, Vec<usize>)> {
    let mut units: Vec<(String, Vec<usize>)> = vec![
        ("Conv3d_1a_7x7".into(), vec![64, 3, 7, 7, 7]),
        ("Conv3d_2b_1x1".into(), vec![64, 64, 1, 1, 1]),
        ("Conv3d_2c_3x3".into(), vec![192, 64, 3, 3, 3]),
    ];
    let blocks: [(&str, [usize; 6]); 9] = [
        ("Mixed_3b", [64, 96, 128, 16, 32, 32]),
        ("Mixed_3c", [128, 128, 192, 32, 96, 64]),
        ("Mixed_4b", [192, 96, 208, 16, 48, 64]),
        ("Mixed_4c", [160, 112, 224, 24, 64, 64]),
        ("Mixed_4d", [128, 128, 256, 24, 64, 64]),
        ("Mixed_4e", [112, 144, 288, 32, 64, 64]),
        ("Mixed_4f", [256, 160, 320, 32, 128, 128]),
        ("Mixed_5b", [256, 160, 320, 32, 128, 128]),
        ("Mixed_5c", [384, 192, 384, 48, 128, 128]),
    ];
    let mut cin = 192;
    for (name, [c0, c1a, c1b, c2a, c2b, c3]) in blocks {
        for (b, shape) in [
            ("b0", [c0, cin, 1, 1, 1]),
            ("b1a", [c1a, cin, 1, 1, 1]),
            ("b1b", [c1b, c1a, 3, 3, 3]),
            ("b2a", [c2a, cin, 1, 1, 1]),
            ("b2b", [c2b, c2a, 3, 3, 3]),
            ("b3b", [c3, cin, 1, 1, 1]),
        ] {
            units.push((format!("{name}.{b}"), shape.to_vec()));
        }
        cin = c0 + c1b + c2b + c3;
    }
    let mut out = Vec::new();
    for (name, shape) in units {
        let co = shape[0];
        out.push((format!("{name}.conv3d.weight"), shape));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{name}.bn.{p}"), vec![co]));
        }
    }
    out.push((
        "logits.conv3d.weight".into(),
        vec![I3D_CLASSES, cin, 1, 1, 1],
    ));
    out.push(("logits.conv3d.bias".into(), vec![I3D_CLASSES]));
    out
}
