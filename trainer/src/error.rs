//! Errors of the trainer: configuration, data, checkpoints, and everything below them.

use std::path::PathBuf;

use thiserror::Error;

/// What can stop a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The config file is unreadable, has an unknown key, a wrong type or an impossible value.
    #[error("{file}: {message}")]
    Config {
        /// The config file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A dataset cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// Reading or writing the run directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint is unusable.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model could not be built or loaded.
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// The weights of `model.init_from` cannot be read or do not fit the model.
    #[error("model.init_from = {path}: {error}")]
    InitFrom {
        /// The weight file.
        path: PathBuf,
        /// What is wrong (a mismatch lists every missing, unexpected and mis-shaped key).
        error: models::ModelError,
    },
    /// The quantizer refused its statistics.
    #[error(transparent)]
    Quantizer(#[from] quantizers::QuantizerError),
    /// A metric's computation failed.
    #[error("evaluation: {0}")]
    Metric(#[from] crate::eval::MetricError),
    /// A metric network's weight file is missing, unreadable or not the pinned one.
    #[error("{key}: {path}: {reason}")]
    MetricWeights {
        /// The config key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A collective operation with the other workers failed or timed out.
    #[error("data-parallel collective: {0}")]
    Collective(String),
    /// The loss became NaN or infinite.
    #[error(
        "step {step}: loss is {value}: training diverged (lower optim.lr or enable optim.grad_clip)"
    )]
    Diverged {
        /// The step.
        step: usize,
        /// The value.
        value: f32,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<crate::comm::communicator::CommError> for TrainError {
    fn from(e: crate::comm::communicator::CommError) -> Self {
        Self::Collective(e.0)
    }
}
