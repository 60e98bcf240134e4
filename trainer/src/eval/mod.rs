//! Evaluation: the paper's metrics over a tokenizer's reconstructions. The distances and scores
//! here are pure math on host values (float64 where the reference needs it); the feature networks
//! (FID Inception, I3D) live in `models`.

mod frechet;
mod inception_score;
mod metric_error;
mod ssim;

pub use frechet::{FeatureStats, FrechetDistance, frechet_distance};
pub use inception_score::{InceptionScore, inception_score};
pub use metric_error::MetricError;
pub use ssim::{Ssim, psnr_unit, ssim};
