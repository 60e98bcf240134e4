//! Errors of the quantizers crate: invalid configurations and inputs that do not fit a quantizer.

use thiserror::Error;

/// What can go wrong when building or driving a quantizer.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantizerError {
    /// A configuration value is out of its valid range; `key` names the offending key.
    #[error("invalid quantizer config `{key}`: {reason}")]
    InvalidConfig {
        /// Dotted name of the key inside the quantizer config (e.g. `decay`).
        key: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// Latents of the wrong width were given to a quantizer.
    #[error("latent dimension mismatch: quantizer expects {expected} channels, got {got}")]
    DimMismatch {
        /// Channels the quantizer was configured for.
        expected: usize,
        /// Channels of the tensor it received.
        got: usize,
    },
    /// `apply_stats` received statistics that do not belong to this quantizer.
    #[error("codebook statistics mismatch: {0}")]
    StatsMismatch(String),
}

impl QuantizerError {
    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// `v >= 0` and finite (not NaN, not infinite).
pub(crate) fn non_negative(v: f32) -> bool {
    v >= 0.0 && v.is_finite()
}

/// `v > 0` and finite (not NaN, not infinite).
pub(crate) fn positive(v: f32) -> bool {
    v > 0.0 && v.is_finite()
}
