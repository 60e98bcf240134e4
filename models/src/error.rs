//! Errors of the models crate: invalid architecture configs and weight files that do not fit.

use thiserror::Error;

/// What can go wrong when building a network or loading its weights.
#[derive(Debug, Error)]
pub enum ModelError {
    /// An architecture value is invalid; `key` names it.
    #[error("invalid model config `{key}`: {reason}")]
    InvalidConfig {
        /// The offending key (e.g. `ch_mult`).
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A weight file could not be read or parsed.
    #[error("cannot read weights from {path}: {reason}")]
    WeightFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The weights do not match the network.
    #[error("{0}")]
    WeightMismatch(String),
    /// The quantizer config is invalid or does not fit the network.
    #[error(transparent)]
    Quantizer(#[from] quantizers::QuantizerError),
}

impl ModelError {
    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error with its config key under `prefix` (`prefix.key`).
    pub(crate) fn under(self, prefix: &str) -> Self {
        match self {
            Self::InvalidConfig { key, reason } => Self::InvalidConfig {
                key: format!("{prefix}.{key}"),
                reason,
            },
            other => other,
        }
    }
}
