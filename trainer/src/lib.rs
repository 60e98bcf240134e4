//! # trainer
//!
//! One rotor worker's job: configuration schema, data (datasets, sharding, prefetch), objectives,
//! optimizers and schedules, the train loop with its gradient and codebook synchronization seams,
//! checkpoints and metrics.
//!
//! Status: built with the trainer issue (#4); today it re-exports the layers below it.

pub use models;
pub use models::quantizers;
