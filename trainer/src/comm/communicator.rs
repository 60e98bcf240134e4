//! The `Communicator`: the collectives a data-parallel step needs (sum all-reduce and broadcast of
//! f32 buffers, a stop vote), behind one trait. [`SingleProcess`] is the identity; [`TcpRing`]
//! (`crate::ring`) connects CPU workers; `NcclComm` (feature `cuda`) connects GPUs and also
//! reduces device tensors in place (`all_reduce_device`), which the gradient all-reduce prefers
//! to staging through host memory.

/// A collective operation failed or timed out; the run must stop.
#[derive(Debug, Clone, PartialEq)]
pub struct CommError(pub String);

impl std::fmt::Display for CommError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collective operations over all processes of a run. Every process must call the same
/// operations in the same order with buffers of the same length.
pub trait Communicator {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Element-wise sum over processes, in place.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Rank 0's values everywhere, in place.
    fn broadcast(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Returns once every process has called it.
    fn barrier(&mut self) -> Result<(), CommError> {
        self.all_reduce_sum(&mut [0.0])
    }
    /// Element-wise sum over processes of a flat `f32` tensor `[n]`, in place on its device,
    /// where this communicator can read that tensor type's memory (NCCL on burn-cuda
    /// tensors). `Ok(false)`: it cannot, and the caller stages the values through host memory
    /// with [`Communicator::all_reduce_sum`]. `tensor` is a `&mut burn::tensor::Tensor<_, 1>`.
    fn all_reduce_device(&mut self, tensor: &mut dyn std::any::Any) -> Result<bool, CommError> {
        let _ = tensor;
        Ok(false)
    }
    /// Rank 0's flat `f32` tensor everywhere, in place on its device (as
    /// [`Communicator::all_reduce_device`]).
    fn broadcast_device(&mut self, tensor: &mut dyn std::any::Any) -> Result<bool, CommError> {
        let _ = tensor;
        Ok(false)
    }
    /// True on every process when any process votes true.
    fn any(&mut self, vote: bool) -> Result<bool, CommError> {
        let mut b = [if vote { 1.0 } else { 0.0 }];
        self.all_reduce_sum(&mut b)?;
        Ok(b[0] > 0.0)
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }

    fn broadcast(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }

    fn any(&mut self, vote: bool) -> Result<bool, CommError> {
        Ok(vote)
    }
}
