//! Evaluation: the paper's metrics over a tokenizer's reconstructions. The distances and scores
//! here are pure math on host values (float64 where the reference needs it); the feature networks
//! (FID Inception, I3D) live in `models`.

mod evaluate;
mod frechet;
mod inception_score;
mod metric_error;
mod ssim;

pub(crate) use evaluate::usage_figures;
pub use evaluate::{
    EvalInputs, EvalReport, METRIC_WEIGHTS_HOWTO, MetricNets, eval_lpips, evaluate, write_report,
};
pub use frechet::{FeatureStats, FrechetDistance, frechet_distance, frechet_distance_of_rows};
pub use inception_score::{InceptionScore, inception_score};
pub use metric_error::MetricError;
pub use ssim::{Ssim, psnr_unit, ssim};
