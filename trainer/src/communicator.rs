//! The `Communicator`: the collectives a data-parallel step needs (sum all-reduce and broadcast of
//! f32 buffers, a stop vote), behind one trait. [`SingleProcess`] is the identity; [`TcpRing`]
//! (`crate::ring`) connects CPU workers; an NCCL implementation plugs in the same way.

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
