//! # trainer
//!
//! One rotor worker's job: the configuration schema ([`TrainConfig`]), data ([`data`]: datasets,
//! transform, deterministic shardable order, prefetching loader), the objective, AdamW with
//! warmup/decay, accumulation and global-norm clipping, the training loop ([`Trainer`]) with its
//! data-parallel seams ([`Collective`]), validation, metrics and atomic checkpoints.

mod adamw;
pub mod auth;
mod checkpoint;
mod comm;
mod config;
pub mod data;
mod error;
pub mod eval;
mod grad_norm;
mod metrics;
mod objective;
#[cfg(feature = "cuda")]
pub use comm::nccl;
pub use comm::ring;
mod schedule;
mod step_stats;
pub mod tensorboard;
pub use comm::sync;
pub mod tokens;
mod train;

pub use auth::RunSecret;
pub use checkpoint::{Checkpoints, RngState, TrainState};
pub use comm::communicator::{CommError, Communicator, SingleProcess};
pub use config::{
    DataConfig, DataSource, DiscLoss, EvalConfig, MetricWeights, ObjectiveConfig, OptimConfig,
    Precision, Reconstruction, RunConfig, Schedule, TrainConfig, VitVqganObjective, VqganObjective,
};
pub use error::TrainError;
pub use grad_norm::{clip_global_norm, global_norm};
pub use metrics::{MetricsWriter, psnr, save_grid};
pub use models;
pub use models::quantizers;
pub use schedule::learning_rate;
pub use step_stats::StepStats;
pub use train::{Resume, Trainer, ValStats};
