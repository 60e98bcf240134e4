//! The data-parallel seams of a training step. A step reduces gradients between backward and the
//! optimizer, and the quantizer's EMA statistics before `apply_stats`; with one process both are
//! identities. Multi-process implementations (TCP ring, NCCL) plug in here.

use burn::{optim::GradientsParams, tensor::backend::AutodiffBackend};
use quantizers::EmaStats;

/// Collective operations a training step needs.
pub trait Collective<B: AutodiffBackend> {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Mean of every parameter gradient over processes (fixed parameter order).
    fn all_reduce_grads(&mut self, grads: GradientsParams) -> GradientsParams;
    /// Sum of EMA counts and sums over processes; rank 0's replacement candidates.
    fn all_reduce_stats(
        &mut self,
        stats: Vec<EmaStats<B::InnerBackend>>,
    ) -> Vec<EmaStats<B::InnerBackend>>;
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl<B: AutodiffBackend> Collective<B> for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_grads(&mut self, grads: GradientsParams) -> GradientsParams {
        grads
    }

    fn all_reduce_stats(
        &mut self,
        stats: Vec<EmaStats<B::InnerBackend>>,
    ) -> Vec<EmaStats<B::InnerBackend>> {
        stats
    }
}
