//! What the evaluation metrics can refuse.

/// An input the metrics cannot evaluate.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// A covariance needs at least two samples (it divides by N - 1).
    #[error("a covariance needs at least 2 samples, got {count}")]
    TooFewSamples {
        /// Samples accumulated.
        count: u64,
    },
    /// Two inputs that must agree in length (feature dimension, matrix size, row width) do not.
    #[error("dimension mismatch in {what}: expected {expected}, got {got}")]
    DimensionMismatch {
        /// Which input.
        what: &'static str,
        /// The length implied by the other inputs.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A feature dimension, class count or channel count of zero.
    #[error("{what} must be at least 1")]
    Empty {
        /// Which size.
        what: &'static str,
    },
    /// Fewer rows than requested splits (every split needs at least one row), or zero splits.
    #[error("inception score: {rows} rows cannot be divided into {splits} non-empty splits")]
    BadSplits {
        /// Rows (images) given.
        rows: usize,
        /// Splits asked for.
        splits: usize,
    },
    /// An image pair whose buffers do not hold height * width * channels values.
    #[error("image size mismatch: {height}x{width}x{channels} needs {expected} values, got {got}")]
    ImageSize {
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
        /// Channels.
        channels: usize,
        /// height * width * channels.
        expected: usize,
        /// Values in the buffer.
        got: usize,
    },
    /// SSIM's 11x11 Gaussian window needs an image at least that large.
    #[error("SSIM needs images of at least 11x11 pixels, got {height}x{width}")]
    ImageTooSmall {
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
    },
    /// A NaN or infinity in an input.
    #[error("non-finite value in {what}")]
    NonFinite {
        /// Which input.
        what: &'static str,
    },
    /// The matrix square root produced a non-finite or complex result.
    #[error("matrix square root is not real and finite: {detail}")]
    SquareRoot {
        /// What went wrong.
        detail: String,
    },
}
