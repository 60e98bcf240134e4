//! # quantizers
//!
//! Every quantizer of "Restructuring Vector Quantization with the Rotation Trick" (Fifty et al.,
//! ICLR 2025) behind one trait, [`Quantizer`], built from one serde enum, [`QuantizerConfig`]:
//!
//! * [`VectorQuantizer`]: euclidean or cosine lookup (chunked, memory-bounded search), EMA or
//!   learnable codebook (taming's `legacy` beta), factorized codes, dead-code restart, k-means init;
//! * gradient estimators independent of the codebook: [`Estimator::Ste`],
//!   [`Estimator::Rotation`] (the paper's trick) and [`Estimator::RotationUnscaled`] (A.9);
//! * [`Lfq`] (lookup-free, entropy loss over the global batch), [`Fsq`] (finite scalar),
//!   [`ResidualQuantizer`] (a residual stack of any of them);
//! * usage metrics on every forward and exact `decode(indices)` round trips;
//! * [`shapes`]: image / video / token latents to `[N, D]` rows and back.
//!
//! The EMA update is split in two (`quantize` returns [`EmaStats`], [`Quantizer::apply_stats`]
//! applies them) so that a data-parallel trainer can sum the statistics over processes first.
//! This crate knows nothing of images, files or processes.

mod any;
mod config;
mod cpu_rotation;
#[cfg(feature = "wgpu")]
mod cube_rotation;
mod error;
mod estimator;
mod fsq;
mod fused_rotation;
pub mod host;
mod init;
mod kmeans;
mod lfq;
mod quantizer;
mod residual;
mod search;
pub mod shapes;
mod usage;
mod vq;

pub use any::{AnyQuantizer, LevelQuantizer};
pub use config::{QuantizerConfig, ResidualConfig};
pub use error::QuantizerError;
pub use estimator::{Estimator, NORM_EPS};
pub use fsq::{Fsq, FsqConfig};
pub use lfq::{Lfq, LfqConfig, MAX_LFQ_BITS};
pub use quantizer::{
    BatchEntropy, EmaStats, LossTerm, Mode, QuantOut, QuantRng, Quantizer, StatsReport,
};
pub use residual::ResidualQuantizer;
pub use search::{Distance, SCORE_BUDGET, nearest};
pub use usage::{Usage, UsageTally};
pub use vq::{CodebookLearning, VectorQuantizer, VqConfig};

/// The CPU training backend used by tests and CPU runs.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// burn's wgpu backend (feature `wgpu`): `Autodiff<burn_wgpu::Wgpu>` trains on any Vulkan, Metal or
/// DX12 device, Mesa's software Vulkan (lavapipe) included.
#[cfg(feature = "wgpu")]
pub use burn_wgpu;
