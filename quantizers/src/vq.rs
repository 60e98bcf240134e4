//! The vector quantizer: nearest-code lookup (euclidean or cosine) in a codebook learned by EMA or
//! by gradient, with any gradient estimator, optional factorized (low-dimensional) codes,
//! dead-code restart and k-means initialization.
//!
//! Pipeline of a training forward, after vector-quantize-pytorch:
//! `e -> project_in (factorized) -> l2norm (cosine) = x -> nearest code q -> estimator(x, q)
//! -> project_out`, with the commitment loss `mean((x - sg q)^2)` and, for a learnable codebook,
//! the codebook loss `mean((q - sg x)^2)`.

use burn::{
    module::{Module, Param, ParamId},
    nn::Linear,
    tensor::{IndexingUpdateOp, Int, Tensor, TensorData, backend::Backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    Distance, EmaStats, Estimator, LossTerm, Mode, QuantOut, QuantRng, Quantizer, QuantizerError,
    StatsReport, Usage,
    error::{non_negative, positive},
    init::{l2_normalize, linear, sample_rows, uniform},
    kmeans::kmeans,
    search::nearest,
};

/// How the codebook is learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CodebookLearning {
    /// Exponential moving average of assigned latents (vector-quantize-pytorch, Table 1).
    Ema {
        /// EMA decay `d` of counts and sums (vector-quantize-pytorch 0.8; taming/VideoGPT 0.99).
        #[serde(default = "default_decay")]
        decay: f32,
        /// Laplace smoothing `eps` of the counts.
        #[serde(default = "default_eps")]
        eps: f32,
        /// Initial EMA count of every code: 1.0 (vector-quantize-pytorch >= 1.x) or 0.0 (the
        /// paper's vendored Table 1 copy, taming's EMAVectorQuantizer).
        #[serde(default = "default_init_cluster_size")]
        init_cluster_size: f32,
    },
    /// A trainable codebook with codebook loss (taming `VectorQuantizer2`, enhancing's ViT-VQGAN).
    Learnable {
        /// Weight `beta` of one of the two loss terms.
        #[serde(default = "default_beta")]
        beta: f32,
        /// taming's `legacy = True`: `mean((sg q - x)^2) + beta mean((q - sg x)^2)` (beta on the
        /// codebook term); false: `beta mean((sg q - x)^2) + mean((q - sg x)^2)`.
        #[serde(default = "default_legacy")]
        legacy: bool,
    },
}

fn default_decay() -> f32 {
    0.8
}
fn default_eps() -> f32 {
    1e-5
}
fn default_init_cluster_size() -> f32 {
    1.0
}
fn default_beta() -> f32 {
    0.25
}
fn default_legacy() -> bool {
    true
}

impl Default for CodebookLearning {
    fn default() -> Self {
        Self::Ema {
            decay: default_decay(),
            eps: default_eps(),
            init_cluster_size: default_init_cluster_size(),
        }
    }
}

/// Configuration of a [`VectorQuantizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqConfig {
    /// Width of the latents given to the quantizer.
    pub dim: usize,
    /// Number of codes K.
    pub codebook_size: usize,
    /// Width of the codes when factorized (ViT-VQGAN: 32 or 8); `None` = `dim`, no projection.
    #[serde(default)]
    pub codebook_dim: Option<usize>,
    /// Euclidean or cosine lookup.
    #[serde(default)]
    pub distance: Distance,
    /// Gradient estimator.
    #[serde(default)]
    pub estimator: Estimator,
    /// EMA or learnable codebook.
    #[serde(default)]
    pub codebook: CodebookLearning,
    /// Weight of the commitment loss `mean((x - sg q)^2)` (EMA codebooks; learnable codebooks
    /// weight both terms with `beta`/`legacy`).
    #[serde(default = "one")]
    pub commitment_weight: f32,
    /// EMA count below which a code is dead and restarted from a batch vector; 0 disables.
    #[serde(default)]
    pub dead_code_threshold: f32,
    /// Initialize the codebook by k-means on the first batch.
    #[serde(default)]
    pub kmeans_init: bool,
    /// Lloyd iterations of the k-means initialization.
    #[serde(default = "default_kmeans_iters")]
    pub kmeans_iters: usize,
    /// Seed of the initial codebook and projections.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f32 {
    1.0
}
fn default_kmeans_iters() -> usize {
    10
}

/// The largest codebook a VQ layer accepts (2^24 codes, as FSQ's limit).
pub const MAX_CODEBOOK_SIZE: usize = 1 << 24;

/// The widest code vector a VQ layer accepts.
pub const MAX_CODE_WIDTH: usize = 65_536;

impl VqConfig {
    /// A config with the defaults of vector-quantize-pytorch (EMA 0.8, rotation trick).
    pub fn new(dim: usize, codebook_size: usize) -> Self {
        Self {
            dim,
            codebook_size,
            codebook_dim: None,
            distance: Distance::default(),
            estimator: Estimator::default(),
            codebook: CodebookLearning::default(),
            commitment_weight: 1.0,
            dead_code_threshold: 0.0,
            kmeans_init: false,
            kmeans_iters: default_kmeans_iters(),
            seed: 0,
        }
    }

    /// Width of the codes.
    pub fn code_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.dim)
    }

    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), QuantizerError> {
        if self.dim == 0 {
            return Err(QuantizerError::config("dim", "must be at least 1"));
        }
        if self.codebook_size < 1 {
            return Err(QuantizerError::config(
                "codebook_size",
                "must be at least 1",
            ));
        }
        if self.codebook_size > MAX_CODEBOOK_SIZE {
            return Err(QuantizerError::config(
                "codebook_size",
                format!(
                    "must be at most 2^24 = {MAX_CODEBOOK_SIZE}, got {}",
                    self.codebook_size
                ),
            ));
        }
        for (key, v) in [("dim", Some(self.dim)), ("codebook_dim", self.codebook_dim)] {
            if let Some(v) = v
                && v > MAX_CODE_WIDTH
            {
                return Err(QuantizerError::config(
                    key,
                    format!("must be at most {MAX_CODE_WIDTH}, got {v}"),
                ));
            }
        }
        let floats = self.codebook_size as u128 * self.codebook_dim.unwrap_or(self.dim) as u128;
        if floats > 1 << 31 {
            return Err(QuantizerError::config(
                "codebook_size",
                format!("codebook_size x code width = {floats} values is too large (at most 2^31)"),
            ));
        }
        if self.codebook_dim == Some(0) {
            return Err(QuantizerError::config(
                "codebook_dim",
                "must be at least 1 (or absent for no projection)",
            ));
        }
        match &self.codebook {
            CodebookLearning::Ema {
                decay,
                eps,
                init_cluster_size,
            } => {
                if !(0.0..1.0).contains(decay) {
                    return Err(QuantizerError::config(
                        "codebook.decay",
                        format!("must be in [0, 1), got {decay}"),
                    ));
                }
                if !positive(*eps) {
                    return Err(QuantizerError::config(
                        "codebook.eps",
                        format!("must be finite and > 0, got {eps}"),
                    ));
                }
                if !non_negative(*init_cluster_size) {
                    return Err(QuantizerError::config(
                        "codebook.init_cluster_size",
                        format!("must be finite and >= 0, got {init_cluster_size}"),
                    ));
                }
            }
            CodebookLearning::Learnable { beta, .. } => {
                if !non_negative(*beta) {
                    return Err(QuantizerError::config(
                        "codebook.beta",
                        format!("must be finite and >= 0, got {beta}"),
                    ));
                }
                if self.dead_code_threshold > 0.0 {
                    return Err(QuantizerError::config(
                        "dead_code_threshold",
                        "dead-code restart needs EMA usage counts: use codebook.kind = \"ema\" or set it to 0",
                    ));
                }
            }
        }
        if !non_negative(self.commitment_weight) {
            return Err(QuantizerError::config(
                "commitment_weight",
                format!("must be finite and >= 0, got {}", self.commitment_weight),
            ));
        }
        if !non_negative(self.dead_code_threshold) {
            return Err(QuantizerError::config(
                "dead_code_threshold",
                format!("must be finite and >= 0, got {}", self.dead_code_threshold),
            ));
        }
        if self.kmeans_init && self.kmeans_iters == 0 {
            return Err(QuantizerError::config("kmeans_iters", "must be at least 1"));
        }
        Ok(())
    }

    /// Builds the quantizer on `device`.
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<VectorQuantizer<B>, QuantizerError> {
        self.validate()?;
        let k = self.codebook_size;
        let d = self.code_dim();
        let learnable = matches!(self.codebook, CodebookLearning::Learnable { .. });
        let mut codebook = if learnable {
            // taming: U(-1/K, 1/K)
            uniform::<B>(k, d, 1.0 / k as f32, self.seed, device)
        } else {
            // vector-quantize-pytorch: kaiming-uniform on (1, K, d) = U(+-sqrt(6/(K d)))
            uniform::<B>(k, d, (6.0 / (k * d) as f32).sqrt(), self.seed, device)
        };
        if self.distance == Distance::Cosine && !learnable {
            codebook = l2_normalize(codebook);
        }
        let init_n = match self.codebook {
            CodebookLearning::Ema {
                init_cluster_size, ..
            } => init_cluster_size,
            CodebookLearning::Learnable { .. } => 0.0,
        };
        let (project_in, project_out) = match self.codebook_dim {
            Some(cd) if cd != self.dim => (
                Some(linear::<B>(self.dim, cd, self.seed.wrapping_add(1), device)),
                Some(linear::<B>(cd, self.dim, self.seed.wrapping_add(2), device)),
            ),
            _ => (None, None),
        };
        let codebook = if learnable {
            Param::from_tensor(codebook)
        } else {
            Param::initialized(ParamId::new(), codebook.clone())
        };
        Ok(VectorQuantizer {
            embed_avg: constant(codebook.val().detach()),
            codebook,
            cluster_size: constant(Tensor::full([k], init_n, device)),
            initialized: constant(Tensor::full(
                [1],
                if self.kmeans_init { 0.0 } else { 1.0 },
                device,
            )),
            project_in,
            project_out,
            config: self.clone(),
        })
    }
}

fn constant<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::initialized(ParamId::new(), t.detach())
}

fn replace<B: Backend, const D: usize>(p: &mut Param<Tensor<B, D>>, t: Tensor<B, D>) {
    *p = Param::initialized(p.id, t.detach());
}

/// A vector quantizer. Its codebook, EMA counts (`cluster_size`) and sums (`embed_avg`) are module
/// parameters so they are saved and loaded with the model; only a learnable codebook and the
/// projections receive gradients.
#[derive(Module, Debug)]
pub struct VectorQuantizer<B: Backend> {
    /// `[K, d]` codes (unit rows for EMA cosine codebooks).
    pub codebook: Param<Tensor<B, 2>>,
    /// `[K]` EMA counts `n`.
    pub cluster_size: Param<Tensor<B, 1>>,
    /// `[K, d]` EMA sums `m`.
    pub embed_avg: Param<Tensor<B, 2>>,
    /// `[1]`: 0 until k-means initialization has run (1 when it is not configured).
    pub initialized: Param<Tensor<B, 1>>,
    /// Factorized codes: `dim -> codebook_dim`.
    pub project_in: Option<Linear<B>>,
    /// Factorized codes: `codebook_dim -> dim`.
    pub project_out: Option<Linear<B>>,
    #[module(skip)]
    config: VqConfig,
}

impl<B: Backend> VectorQuantizer<B> {
    /// The configuration it was built from.
    pub fn config(&self) -> &VqConfig {
        &self.config
    }

    fn is_learnable(&self) -> bool {
        matches!(self.config.codebook, CodebookLearning::Learnable { .. })
    }

    /// The codes as used by the lookup (normalized for a learnable cosine codebook).
    fn codes(&self) -> Tensor<B, 2> {
        let c = self.codebook.val();
        if self.is_learnable() && self.config.distance == Distance::Cosine {
            l2_normalize(c)
        } else {
            c
        }
    }

    /// Latents -> the vectors that are looked up.
    fn to_lookup_space(&self, latents: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = match &self.project_in {
            Some(p) => p.forward(latents),
            None => latents,
        };
        match self.config.distance {
            Distance::Cosine => l2_normalize(x),
            Distance::Euclidean => x,
        }
    }

    fn project_back(&self, q: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.project_out {
            Some(p) => p.forward(q),
            None => q,
        }
    }
}

/// Code histogram `[K]` of `indices` `[N]`.
pub(crate) fn histogram<B: Backend>(indices: Tensor<B, 1, Int>, k: usize) -> Tensor<B, 1> {
    let device = indices.device();
    let [n] = indices.dims();
    Tensor::<B, 1>::zeros([k], &device).select_assign(
        0,
        indices,
        Tensor::ones([n], &device),
        IndexingUpdateOp::Add,
    )
}

impl<B: Backend> Quantizer<B> for VectorQuantizer<B> {
    fn input_dim(&self) -> usize {
        self.config.dim
    }

    fn codebook_size(&self) -> usize {
        self.config.codebook_size
    }

    fn ema_codebooks(&self) -> usize {
        usize::from(!self.is_learnable())
    }

    fn quantize(&self, latents: Tensor<B, 2>, mode: Mode) -> QuantOut<B> {
        let [n, dim] = latents.dims();
        assert_eq!(
            dim,
            self.config.dim,
            "{}",
            QuantizerError::DimMismatch {
                expected: self.config.dim,
                got: dim
            }
        );
        let k = self.config.codebook_size;
        let x = self.to_lookup_space(latents);
        let codes = self.codes();
        let idx = nearest(x.clone(), codes.clone(), self.config.distance);
        let q = codes.select(0, idx.clone());
        let q_const = q.clone().detach();
        let x_const = x.clone().detach();
        let counts = histogram(idx.clone(), k);
        let sq_err = (x_const.clone() - q_const.clone())
            .powi_scalar(2)
            .sum_dim(1)
            .reshape([n]);
        let usage = Usage::from_counts(counts.clone(), sq_err);
        let indices = idx.clone().reshape([n, 1]);

        if mode == Mode::Eval {
            return QuantOut {
                quantized: self.project_back(q_const),
                indices,
                losses: Vec::new(),
                batch_entropy: Vec::new(),
                stats: Vec::new(),
                usage,
            };
        }

        let quantized = self.config.estimator.apply(x.clone(), q_const.clone());
        let commit = (x.clone() - q_const).powi_scalar(2).mean();
        let mut losses = Vec::new();
        let mut stats = Vec::new();
        match self.config.codebook {
            CodebookLearning::Ema { .. } => {
                losses.push(LossTerm {
                    name: "commitment",
                    value: commit * self.config.commitment_weight,
                });
                let [_, d] = x_const.dims();
                let sums = Tensor::<B, 2>::zeros([k, d], &x_const.device()).select_assign(
                    0,
                    idx,
                    x_const.clone(),
                    IndexingUpdateOp::Add,
                );
                stats.push(EmaStats {
                    counts,
                    sums,
                    candidates: x_const,
                });
            }
            CodebookLearning::Learnable { beta, legacy } => {
                let codebook_loss = (q - x_const).powi_scalar(2).mean();
                let (wc, wb) = if legacy { (1.0, beta) } else { (beta, 1.0) };
                losses.push(LossTerm {
                    name: "commitment",
                    value: commit * wc,
                });
                losses.push(LossTerm {
                    name: "codebook",
                    value: codebook_loss * wb,
                });
            }
        }
        QuantOut {
            quantized: self.project_back(quantized),
            indices,
            losses,
            batch_entropy: Vec::new(),
            stats,
            usage,
        }
    }

    fn apply_stats(
        &mut self,
        stats: Vec<EmaStats<B>>,
        rng: &mut QuantRng,
    ) -> Result<StatsReport<B>, QuantizerError> {
        let CodebookLearning::Ema { decay, eps, .. } = self.config.codebook else {
            if stats.is_empty() {
                return Ok(StatsReport::default());
            }
            return Err(QuantizerError::StatsMismatch(
                "a learnable codebook takes no EMA statistics".into(),
            ));
        };
        let mut stats = stats;
        if stats.len() != 1 {
            return Err(QuantizerError::StatsMismatch(format!(
                "a vector quantizer takes exactly one EmaStats, got {}",
                stats.len()
            )));
        }
        let EmaStats {
            counts,
            sums,
            candidates,
        } = stats.pop().expect("one");
        let k = self.config.codebook_size;
        let d = self.config.code_dim();
        if counts.dims() != [k] || sums.dims() != [k, d] {
            return Err(QuantizerError::StatsMismatch(format!(
                "expected counts [{k}] and sums [{k}, {d}], got {:?} and {:?}",
                counts.dims(),
                sums.dims()
            )));
        }
        let n = self.cluster_size.val() * decay + counts * (1.0 - decay);
        let m = self.embed_avg.val() * decay + sums * (1.0 - decay);
        let mut cluster_size = n.clone();
        let mut embed_avg = m.clone();
        let mut codebook = ema_codebook(n, m, eps, self.config.distance);

        let mut report = StatsReport::default();
        let threshold = self.config.dead_code_threshold;
        let [available, _] = candidates.dims();
        if threshold > 0.0 && available > 0 {
            // On the device, with no read: `K` candidate rows are drawn every step (the host
            // RNG needs only the candidate count), and the i-th dead code, in code order, takes
            // the i-th draw.
            let device = codebook.device();
            let rows = sample_rows(available, k, rng);
            let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [k]), &device);
            let samples = candidates.select(0, rows);
            let dead = cluster_size.clone().lower_elem(threshold).float(); // 1 on dead codes
            let order = (dead.clone().cumsum(0) - 1.0).clamp_min(0.0).int();
            let mask = dead.clone().reshape([k, 1]);
            let keep = mask.clone().neg() + 1.0;
            let placed = samples.select(0, order) * mask.clone();
            codebook = codebook * keep.clone() + placed.clone();
            embed_avg = embed_avg * keep.clone() + placed * threshold;
            cluster_size = cluster_size * keep.reshape([k]) + dead.clone() * threshold;
            report.restarted_codes = Some(dead.sum());
        }
        replace(&mut self.cluster_size, cluster_size);
        replace(&mut self.embed_avg, embed_avg);
        replace(&mut self.codebook, codebook);
        Ok(report)
    }

    fn decode(&self, indices: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [n, _] = indices.dims();
        let q = self
            .codes()
            .detach()
            .select(0, indices.narrow(1, 0, 1).reshape([n]));
        self.project_back(q)
    }

    fn needs_init(&self) -> bool {
        self.config.kmeans_init
            && crate::host::read_scalar(self.initialized.val(), crate::host::HostRead::Init) < 0.5
    }

    fn init_from_batch(&mut self, latents: Tensor<B, 2>, rng: &mut QuantRng) {
        let x = self.to_lookup_space(latents).detach();
        let (means, bins) = kmeans(
            x,
            self.config.codebook_size,
            self.config.kmeans_iters,
            self.config.distance,
            rng,
        );
        let [k] = bins.dims();
        replace(
            &mut self.embed_avg,
            means.clone() * bins.clone().reshape([k, 1]),
        );
        replace(&mut self.cluster_size, bins);
        if self.is_learnable() {
            self.codebook = Param::initialized(self.codebook.id, means.detach().require_grad());
        } else {
            replace(&mut self.codebook, means);
        }
        let device = self.initialized.device();
        replace(&mut self.initialized, Tensor::ones([1], &device));
    }
}

/// `e_k = m_k / n~_k`, `n~_k = (n_k + eps) / (sum n + K eps) * sum n` (l2-normalized for cosine).
fn ema_codebook<B: Backend>(
    n: Tensor<B, 1>,
    m: Tensor<B, 2>,
    eps: f32,
    distance: Distance,
) -> Tensor<B, 2> {
    let [k] = n.dims();
    let total = n.clone().sum();
    let smoothed = (n + eps) / (total.clone() + eps * k as f32) * total;
    let codebook = m / smoothed.reshape([k, 1]);
    match distance {
        Distance::Cosine => l2_normalize(codebook),
        Distance::Euclidean => codebook,
    }
}
