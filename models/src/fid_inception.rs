//! The FID Inception network exactly as pytorch-fid 0.3.0 builds it (`InceptionV3` with
//! `FIDInceptionA/C/E`, TF's 2015-12-05 Inception graph): bilinear resize to 299x299 without
//! antialiasing, `[0, 1] -> [-1, 1]`, BatchNorm eps 1e-3, average pools that do not count the
//! padding, a max-pool in the last block's pool branch; outputs the 2048-d `pool3` features (FID)
//! and the 1008 logits (Inception Score: without the fc bias, as improved-gan and
//! pytorch-image-generation-metrics compute it).
//!
//! Weights come only from a file the user supplies (pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth`, converted to safetensors), under torchvision
//! `Inception3` names (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, ...,
//! `fc.weight`); BatchNorm is folded into the convolutions on load.

use burn::tensor::{
    Tensor, TensorData,
    backend::Backend,
    module::{avg_pool2d, max_pool2d},
};

use crate::{
    ModelError, StateDict,
    bilinear::resize_bilinear,
    folded_conv::{ConvBnRelu2d, WeightTaker},
};

/// pytorch-fid's BatchNorm eps (TF's; not torch's default 1e-5).
const BN_EPS: f64 = 1e-3;

/// The network's input side.
pub const FID_INCEPTION_SIZE: usize = 299;

/// Width of the `pool3` features.
pub const FID_FEATURES: usize = 2048;

/// Number of logits (TF's Inception has 1008 classes, 1000 used).
pub const FID_CLASSES: usize = 1008;

type Unit<B> = ConvBnRelu2d<B>;

fn max_pool_3x3_s2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false)
}

fn avg_pool_3x3_same<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false)
}

/// Loads one unit; `None` (with the problem recorded) when its weights are missing or misfit.
struct Units<'a, 'd, B: Backend> {
    taker: WeightTaker<'a>,
    device: &'d B::Device,
}

impl<B: Backend> Units<'_, '_, B> {
    fn unit(&mut self, name: &str, stride: usize, same: bool) -> Option<Unit<B>> {
        Unit::load(&mut self.taker, name, stride, same, BN_EPS, self.device)
    }

    /// A stride-1 "same" unit of block `block`.
    fn same(&mut self, block: &str, branch: &str) -> Option<Unit<B>> {
        self.unit(&format!("{block}.{branch}"), 1, true)
    }
}

/// Mixed_5b/5c/5d (`FIDInceptionA`).
#[derive(Debug)]
struct BlockA<B: Backend> {
    b1x1: Unit<B>,
    b5x5: [Unit<B>; 2],
    b3x3dbl: [Unit<B>; 3],
    pool: Unit<B>,
}

impl<B: Backend> BlockA<B> {
    fn load(u: &mut Units<B>, n: &str) -> Option<Self> {
        let b1x1 = u.same(n, "branch1x1");
        let b5 = [u.same(n, "branch5x5_1"), u.same(n, "branch5x5_2")];
        let b3 = [
            u.same(n, "branch3x3dbl_1"),
            u.same(n, "branch3x3dbl_2"),
            u.same(n, "branch3x3dbl_3"),
        ];
        let pool = u.same(n, "branch_pool");
        let [b5a, b5b] = b5;
        let [b3a, b3b, b3c] = b3;
        Some(Self {
            b1x1: b1x1?,
            b5x5: [b5a?, b5b?],
            b3x3dbl: [b3a?, b3b?, b3c?],
            pool: pool?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = self.b1x1.forward(x.clone());
        let b = chain(&self.b5x5, x.clone());
        let c = chain(&self.b3x3dbl, x.clone());
        let d = self.pool.forward(avg_pool_3x3_same(x));
        Tensor::cat(vec![a, b, c, d], 1)
    }
}

fn chain<B: Backend>(units: &[Unit<B>], mut x: Tensor<B, 4>) -> Tensor<B, 4> {
    for u in units {
        x = u.forward(x);
    }
    x
}

/// Mixed_6a (`InceptionB`): grid reduction 35 -> 17.
#[derive(Debug)]
struct BlockB<B: Backend> {
    b3x3: Unit<B>,
    b3x3dbl: [Unit<B>; 3],
}

impl<B: Backend> BlockB<B> {
    fn load(u: &mut Units<B>, n: &str) -> Option<Self> {
        let b3x3 = u.unit(&format!("{n}.branch3x3"), 2, false);
        let d1 = u.same(n, "branch3x3dbl_1");
        let d2 = u.same(n, "branch3x3dbl_2");
        let d3 = u.unit(&format!("{n}.branch3x3dbl_3"), 2, false);
        Some(Self {
            b3x3: b3x3?,
            b3x3dbl: [d1?, d2?, d3?],
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = self.b3x3.forward(x.clone());
        let b = chain(&self.b3x3dbl, x.clone());
        let c = max_pool_3x3_s2(x);
        Tensor::cat(vec![a, b, c], 1)
    }
}

/// Mixed_6b..6e (`FIDInceptionC`): factorized 7x7 branches.
#[derive(Debug)]
struct BlockC<B: Backend> {
    b1x1: Unit<B>,
    b7x7: [Unit<B>; 3],
    b7x7dbl: [Unit<B>; 5],
    pool: Unit<B>,
}

impl<B: Backend> BlockC<B> {
    fn load(u: &mut Units<B>, n: &str) -> Option<Self> {
        let b1x1 = u.same(n, "branch1x1");
        let s: Vec<_> = (1..=3)
            .map(|i| u.same(n, &format!("branch7x7_{i}")))
            .collect();
        let d: Vec<_> = (1..=5)
            .map(|i| u.same(n, &format!("branch7x7dbl_{i}")))
            .collect();
        let pool = u.same(n, "branch_pool");
        let s: Option<Vec<_>> = s.into_iter().collect();
        let d: Option<Vec<_>> = d.into_iter().collect();
        Some(Self {
            b1x1: b1x1?,
            b7x7: s?.try_into().ok()?,
            b7x7dbl: d?.try_into().ok()?,
            pool: pool?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = self.b1x1.forward(x.clone());
        let b = chain(&self.b7x7, x.clone());
        let c = chain(&self.b7x7dbl, x.clone());
        let d = self.pool.forward(avg_pool_3x3_same(x));
        Tensor::cat(vec![a, b, c, d], 1)
    }
}

/// Mixed_7a (`InceptionD`): grid reduction 17 -> 8.
#[derive(Debug)]
struct BlockD<B: Backend> {
    b3x3: [Unit<B>; 2],
    b7x7x3: [Unit<B>; 4],
}

impl<B: Backend> BlockD<B> {
    fn load(u: &mut Units<B>, n: &str) -> Option<Self> {
        let a1 = u.same(n, "branch3x3_1");
        let a2 = u.unit(&format!("{n}.branch3x3_2"), 2, false);
        let b1 = u.same(n, "branch7x7x3_1");
        let b2 = u.same(n, "branch7x7x3_2");
        let b3 = u.same(n, "branch7x7x3_3");
        let b4 = u.unit(&format!("{n}.branch7x7x3_4"), 2, false);
        Some(Self {
            b3x3: [a1?, a2?],
            b7x7x3: [b1?, b2?, b3?, b4?],
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = chain(&self.b3x3, x.clone());
        let b = chain(&self.b7x7x3, x.clone());
        let c = max_pool_3x3_s2(x);
        Tensor::cat(vec![a, b, c], 1)
    }
}

/// Mixed_7b / 7c (`FIDInceptionE_1` / `_2`): expanded filter banks; 7c's pool branch max-pools.
#[derive(Debug)]
struct BlockE<B: Backend> {
    b1x1: Unit<B>,
    b3x3_1: Unit<B>,
    b3x3_2: [Unit<B>; 2],
    dbl_1: Unit<B>,
    dbl_2: Unit<B>,
    dbl_3: [Unit<B>; 2],
    pool: Unit<B>,
    max_pool: bool,
}

impl<B: Backend> BlockE<B> {
    fn load(u: &mut Units<B>, n: &str, max_pool: bool) -> Option<Self> {
        let b1x1 = u.same(n, "branch1x1");
        let b3x3_1 = u.same(n, "branch3x3_1");
        let b2a = u.same(n, "branch3x3_2a");
        let b2b = u.same(n, "branch3x3_2b");
        let dbl_1 = u.same(n, "branch3x3dbl_1");
        let dbl_2 = u.same(n, "branch3x3dbl_2");
        let d3a = u.same(n, "branch3x3dbl_3a");
        let d3b = u.same(n, "branch3x3dbl_3b");
        let pool = u.same(n, "branch_pool");
        Some(Self {
            b1x1: b1x1?,
            b3x3_1: b3x3_1?,
            b3x3_2: [b2a?, b2b?],
            dbl_1: dbl_1?,
            dbl_2: dbl_2?,
            dbl_3: [d3a?, d3b?],
            pool: pool?,
            max_pool,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let a = self.b1x1.forward(x.clone());
        let t = self.b3x3_1.forward(x.clone());
        let b = Tensor::cat(
            vec![self.b3x3_2[0].forward(t.clone()), self.b3x3_2[1].forward(t)],
            1,
        );
        let t = self.dbl_2.forward(self.dbl_1.forward(x.clone()));
        let c = Tensor::cat(
            vec![self.dbl_3[0].forward(t.clone()), self.dbl_3[1].forward(t)],
            1,
        );
        let pooled = if self.max_pool {
            // The TF graph's quirk: pytorch-fid's FIDInceptionE_2 max-pools here.
            max_pool2d(x, [3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_3x3_same(x)
        };
        let d = self.pool.forward(pooled);
        Tensor::cat(vec![a, b, c, d], 1)
    }
}

/// What one forward pass gives.
#[derive(Debug, Clone)]
pub struct InceptionFeatures<B: Backend> {
    /// `[B, 2048]`: the features FID compares.
    pub pool3: Tensor<B, 2>,
    /// `[B, 1008]`: `fc(pool3)` with its bias.
    pub logits: Tensor<B, 2>,
    /// `[B, 1008]`: `pool3 . fc.weight^T` without the bias, what the Inception Score softmaxes.
    pub logits_is: Tensor<B, 2>,
}

/// pytorch-fid's `InceptionV3` (see the module doc).
#[derive(Debug)]
pub struct FidInception<B: Backend> {
    stem: Vec<Unit<B>>,
    mixed_5: Vec<BlockA<B>>,
    mixed_6a: BlockB<B>,
    mixed_6: Vec<BlockC<B>>,
    mixed_7a: BlockD<B>,
    mixed_7: Vec<BlockE<B>>,
    /// `[2048, 1008]` (transposed from PyTorch's `[1008, 2048]`).
    fc_weight: Tensor<B, 2>,
    fc_bias: Tensor<B, 1>,
}

impl<B: Backend> FidInception<B> {
    /// Builds the network from a state dict under torchvision `Inception3` names; fails listing
    /// every missing, mis-shaped or unexpected key.
    pub fn from_state_dict(dict: &StateDict, device: &B::Device) -> Result<Self, ModelError> {
        let mut u = Units {
            taker: WeightTaker::new(dict),
            device,
        };
        let stem = [
            u.unit("Conv2d_1a_3x3", 2, false),
            u.unit("Conv2d_2a_3x3", 1, false),
            u.unit("Conv2d_2b_3x3", 1, true),
            u.unit("Conv2d_3b_1x1", 1, false),
            u.unit("Conv2d_4a_3x3", 1, false),
        ];
        let mixed_5: Vec<_> = ["Mixed_5b", "Mixed_5c", "Mixed_5d"]
            .iter()
            .map(|n| BlockA::load(&mut u, n))
            .collect();
        let mixed_6a = BlockB::load(&mut u, "Mixed_6a");
        let mixed_6: Vec<_> = ["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
            .iter()
            .map(|n| BlockC::load(&mut u, n))
            .collect();
        let mixed_7a = BlockD::load(&mut u, "Mixed_7a");
        let mixed_7 = [
            BlockE::load(&mut u, "Mixed_7b", false),
            BlockE::load(&mut u, "Mixed_7c", true),
        ];
        let fc_w = u
            .taker
            .take("fc.weight", &[Some(FID_CLASSES), Some(FID_FEATURES)]);
        let fc_b = u.taker.take("fc.bias", &[Some(FID_CLASSES)]);
        let fc = fc_w.zip(fc_b).map(|(w, b)| {
            let w = Tensor::<B, 2>::from_data(
                TensorData::new(w.values.clone(), [FID_CLASSES, FID_FEATURES]),
                device,
            );
            let b =
                Tensor::<B, 1>::from_data(TensorData::new(b.values.clone(), [FID_CLASSES]), device);
            (w.transpose(), b)
        });
        u.taker.finish("pytorch-fid's FID Inception")?;
        let missing = || ModelError::WeightMismatch("FID Inception weights incomplete".into());
        let (fc_weight, fc_bias) = fc.ok_or_else(missing)?;
        Ok(Self {
            stem: stem
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(missing)?,
            mixed_5: mixed_5
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(missing)?,
            mixed_6a: mixed_6a.ok_or_else(missing)?,
            mixed_6: mixed_6
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(missing)?,
            mixed_7a: mixed_7a.ok_or_else(missing)?,
            mixed_7: mixed_7
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(missing)?,
            fc_weight,
            fc_bias,
        })
    }

    /// pytorch-fid's input transform: `[B, 3, H, W]` in `[0, 1]` -> `[B, 3, 299, 299]` in
    /// `[-1, 1]` (bilinear, align_corners=False, no antialiasing, whatever the input size).
    pub fn preprocess(x: Tensor<B, 4>) -> Tensor<B, 4> {
        resize_bilinear(x, [FID_INCEPTION_SIZE; 2]) * 2.0 - 1.0
    }

    /// Features of images `[B, 3, H, W]` in `[0, 1]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> InceptionFeatures<B> {
        self.forward_preprocessed(Self::preprocess(x))
    }

    /// Features of an already preprocessed batch `[B, 3, 299, 299]`.
    pub fn forward_preprocessed(&self, x: Tensor<B, 4>) -> InceptionFeatures<B> {
        let [s1a, s2a, s2b, s3b, s4a] = [0, 1, 2, 3, 4].map(|i| &self.stem[i]);
        let x = s2b.forward(s2a.forward(s1a.forward(x)));
        let x = s4a.forward(s3b.forward(max_pool_3x3_s2(x)));
        let mut x = max_pool_3x3_s2(x);
        for b in &self.mixed_5 {
            x = b.forward(x);
        }
        x = self.mixed_6a.forward(x);
        for b in &self.mixed_6 {
            x = b.forward(x);
        }
        x = self.mixed_7a.forward(x);
        for b in &self.mixed_7 {
            x = b.forward(x);
        }
        let [n, c, h, w] = x.dims();
        let pool3 = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        let logits_is = pool3.clone().matmul(self.fc_weight.clone());
        let logits = logits_is.clone() + self.fc_bias.clone().unsqueeze::<2>();
        InceptionFeatures {
            pool3,
            logits,
            logits_is,
        }
    }
}

/// Every tensor of the FID Inception's state dict, `(name, shape)`, in torchvision `Inception3`
/// naming (what [`FidInception::from_state_dict`] reads; tests build random-weight files from it).
pub fn fid_inception_shapes() -> Vec<(String, Vec<usize>)> {
    let mut convs: Vec<(String, [usize; 4])> = vec![
        ("Conv2d_1a_3x3".into(), [32, 3, 3, 3]),
        ("Conv2d_2a_3x3".into(), [32, 32, 3, 3]),
        ("Conv2d_2b_3x3".into(), [64, 32, 3, 3]),
        ("Conv2d_3b_1x1".into(), [80, 64, 1, 1]),
        ("Conv2d_4a_3x3".into(), [192, 80, 3, 3]),
    ];
    let mut add = |block: &str, list: &[(&str, [usize; 4])]| {
        for (b, s) in list {
            convs.push((format!("{block}.{b}"), *s));
        }
    };
    for (block, i, pool) in [
        ("Mixed_5b", 192, 32),
        ("Mixed_5c", 256, 64),
        ("Mixed_5d", 288, 64),
    ] {
        add(
            block,
            &[
                ("branch1x1", [64, i, 1, 1]),
                ("branch5x5_1", [48, i, 1, 1]),
                ("branch5x5_2", [64, 48, 5, 5]),
                ("branch3x3dbl_1", [64, i, 1, 1]),
                ("branch3x3dbl_2", [96, 64, 3, 3]),
                ("branch3x3dbl_3", [96, 96, 3, 3]),
                ("branch_pool", [pool, i, 1, 1]),
            ],
        );
    }
    add(
        "Mixed_6a",
        &[
            ("branch3x3", [384, 288, 3, 3]),
            ("branch3x3dbl_1", [64, 288, 1, 1]),
            ("branch3x3dbl_2", [96, 64, 3, 3]),
            ("branch3x3dbl_3", [96, 96, 3, 3]),
        ],
    );
    for (block, c) in [
        ("Mixed_6b", 128),
        ("Mixed_6c", 160),
        ("Mixed_6d", 160),
        ("Mixed_6e", 192),
    ] {
        add(
            block,
            &[
                ("branch1x1", [192, 768, 1, 1]),
                ("branch7x7_1", [c, 768, 1, 1]),
                ("branch7x7_2", [c, c, 1, 7]),
                ("branch7x7_3", [192, c, 7, 1]),
                ("branch7x7dbl_1", [c, 768, 1, 1]),
                ("branch7x7dbl_2", [c, c, 7, 1]),
                ("branch7x7dbl_3", [c, c, 1, 7]),
                ("branch7x7dbl_4", [c, c, 7, 1]),
                ("branch7x7dbl_5", [192, c, 1, 7]),
                ("branch_pool", [192, 768, 1, 1]),
            ],
        );
    }
    add(
        "Mixed_7a",
        &[
            ("branch3x3_1", [192, 768, 1, 1]),
            ("branch3x3_2", [320, 192, 3, 3]),
            ("branch7x7x3_1", [192, 768, 1, 1]),
            ("branch7x7x3_2", [192, 192, 1, 7]),
            ("branch7x7x3_3", [192, 192, 7, 1]),
            ("branch7x7x3_4", [192, 192, 3, 3]),
        ],
    );
    for (block, i) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
        add(
            block,
            &[
                ("branch1x1", [320, i, 1, 1]),
                ("branch3x3_1", [384, i, 1, 1]),
                ("branch3x3_2a", [384, 384, 1, 3]),
                ("branch3x3_2b", [384, 384, 3, 1]),
                ("branch3x3dbl_1", [448, i, 1, 1]),
                ("branch3x3dbl_2", [384, 448, 3, 3]),
                ("branch3x3dbl_3a", [384, 384, 1, 3]),
                ("branch3x3dbl_3b", [384, 384, 3, 1]),
                ("branch_pool", [192, i, 1, 1]),
            ],
        );
    }
    let mut out = Vec::new();
    for (name, s) in convs {
        out.push((format!("{name}.conv.weight"), s.to_vec()));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{name}.bn.{p}"), vec![s[0]]));
        }
    }
    out.push(("fc.weight".into(), vec![FID_CLASSES, FID_FEATURES]));
    out.push(("fc.bias".into(), vec![FID_CLASSES]));
    out
}
