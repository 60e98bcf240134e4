//! How workers talk: the [`Communicator`] trait (rank, world size, all-reduce, broadcast, the
//! stop agreement), its implementations (one process, the TCP ring of CPU workers, NCCL for
//! GPUs), and the data-parallel synchronization built on it ([`sync`]: gradient buckets, EMA
//! statistics, module broadcasts).

pub(crate) mod communicator;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod ring;
pub mod sync;
