//! Every read of a tensor's values into host memory, counted per thread by purpose.
//!
//! On a GPU backend a read waits for every queued kernel: one read per micro-batch serializes
//! the device with the host. rotor's libraries read tensors only through this module, so a test
//! can show how many reads a training step makes ([`counts`]) and a source check can show that
//! nothing reads around it (only this file and the Flex-only CPU kernels call `into_data` or
//! `into_scalar`).

use std::cell::Cell;

use burn::tensor::{BasicOps, ElementConversion, Tensor, TensorData, TensorKind, backend::Backend};

/// Why a tensor is read to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRead {
    /// Logged figures (once per logging step).
    Log,
    /// A collective staged through host memory (gradients, EMA statistics, broadcasts).
    Staging,
    /// One-time setup: data-dependent initialization, checks of loaded state.
    Init,
    /// Writing a checkpoint or exporting weights.
    Checkpoint,
    /// Validation and evaluation.
    Eval,
}

const KINDS: usize = 5;

impl HostRead {
    fn index(self) -> usize {
        match self {
            HostRead::Log => 0,
            HostRead::Staging => 1,
            HostRead::Init => 2,
            HostRead::Checkpoint => 3,
            HostRead::Eval => 4,
        }
    }
}

/// Reads made on this thread so far, by purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostReads {
    /// [`HostRead::Log`].
    pub log: u64,
    /// [`HostRead::Staging`].
    pub staging: u64,
    /// [`HostRead::Init`].
    pub init: u64,
    /// [`HostRead::Checkpoint`].
    pub checkpoint: u64,
    /// [`HostRead::Eval`].
    pub eval: u64,
}

impl HostReads {
    /// Reads of every purpose.
    pub fn total(&self) -> u64 {
        self.log + self.staging + self.init + self.checkpoint + self.eval
    }

    /// Reads made since `earlier`.
    pub fn since(&self, earlier: &HostReads) -> HostReads {
        HostReads {
            log: self.log - earlier.log,
            staging: self.staging - earlier.staging,
            init: self.init - earlier.init,
            checkpoint: self.checkpoint - earlier.checkpoint,
            eval: self.eval - earlier.eval,
        }
    }
}

thread_local! {
    static COUNTS: Cell<[u64; KINDS]> = const { Cell::new([0; KINDS]) };
}

/// The reads made on this thread so far.
pub fn counts() -> HostReads {
    let c = COUNTS.with(Cell::get);
    HostReads {
        log: c[0],
        staging: c[1],
        init: c[2],
        checkpoint: c[3],
        eval: c[4],
    }
}

fn count(why: HostRead) {
    COUNTS.with(|c| {
        let mut v = c.get();
        v[why.index()] += 1;
        c.set(v);
    });
}

/// The values of `t` on the host (waits for the device).
pub fn read<B: Backend, const D: usize, K: TensorKind<B> + BasicOps<B>>(
    t: Tensor<B, D, K>,
    why: HostRead,
) -> TensorData {
    count(why);
    t.into_data()
}

/// The values of a float tensor as `f32`, in row-major order.
pub fn read_f32<B: Backend, const D: usize>(t: Tensor<B, D>, why: HostRead) -> Vec<f32> {
    read(t, why)
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float tensors convert to f32")
}

/// The values of an integer tensor as `i64`.
pub fn read_i64<B: Backend, const D: usize>(
    t: Tensor<B, D, burn::tensor::Int>,
    why: HostRead,
) -> Vec<i64> {
    read(t, why)
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int tensors convert to i64")
}

/// The single value of a one-element float tensor.
pub fn read_scalar<B: Backend, const D: usize>(t: Tensor<B, D>, why: HostRead) -> f32 {
    count(why);
    t.into_scalar().elem::<f32>()
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn reads_are_counted_by_purpose_on_this_thread() {
        let before = counts();
        let t = Tensor::<Flex, 1>::from_floats([1.0, 2.0], &Default::default());
        assert_eq!(read_f32(t.clone(), HostRead::Log), vec![1.0, 2.0]);
        assert_eq!(read_scalar(t.sum(), HostRead::Staging), 3.0);
        let d = counts().since(&before);
        assert_eq!((d.log, d.staging, d.total()), (1, 1, 2));
        // Another thread's reads are its own.
        std::thread::spawn(|| {
            let t = Tensor::<Flex, 1>::from_floats([1.0], &Default::default());
            read(t, HostRead::Eval);
        })
        .join()
        .unwrap();
        assert_eq!(counts().since(&before).total(), 2);
    }
}
