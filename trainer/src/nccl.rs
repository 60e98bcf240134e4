//! `NcclComm`: the GPU workers' communicator, NCCL through cudarc's bindings (loaded at run time:
//! `libnccl.so` must be on the library path; the PyPI wheel ships only `libnccl.so.2`, link it).
//! Rank 0 creates the 128-byte unique id, the rendezvous hands it to the others
//! ([`NcclComm::unique_id_hex`], [`NcclComm::connect`]).
//!
//! Buffers are staged through device memory on this communicator's own stream (host -> device,
//! in-place all-reduce / broadcast, device -> host). The zero-copy path (all-reducing burn-cuda's
//! gradient buffers by their device pointers, REFERENCE.md 6.5) replaces the staging later; the
//! collective semantics are the same.

use std::sync::Arc;

use cudarc::{
    driver::{CudaContext, CudaStream},
    nccl::{Comm, Id, ReduceOp},
};

use crate::communicator::{CommError, Communicator};

/// NCCL over the GPUs of a run, one per process.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
}

fn err(what: &str, e: impl std::fmt::Debug) -> CommError {
    CommError(format!("NCCL {what}: {e:?}"))
}

impl NcclComm {
    /// A new unique id (rank 0), as hex for the rendezvous.
    pub fn unique_id_hex() -> Result<String, CommError> {
        let id = Id::new().map_err(|e| err("unique id (is libnccl.so on LD_LIBRARY_PATH?)", e))?;
        Ok(id
            .internal()
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect())
    }

    /// Joins the communicator of `world` ranks on GPU `ordinal`, with rank 0's id.
    pub fn connect(
        rank: usize,
        world: usize,
        ordinal: usize,
        id_hex: &str,
    ) -> Result<Self, CommError> {
        if id_hex.len() != 256 {
            return Err(CommError(format!(
                "NCCL unique id must be 128 bytes of hex, got {} chars",
                id_hex.len()
            )));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (i, b) in internal.iter_mut().enumerate() {
            let v = u8::from_str_radix(&id_hex[2 * i..2 * i + 2], 16)
                .map_err(|e| err("unique id", e))?;
            *b = v as std::ffi::c_char;
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err(&format!("GPU {ordinal}"), e))?;
        let stream = ctx.new_stream().map_err(|e| err("stream", e))?;
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
            .map_err(|e| err("init", e))?;
        Ok(Self {
            comm,
            stream,
            rank,
            world,
        })
    }

    fn staged(
        &mut self,
        buf: &mut [f32],
        op: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<f32>) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self
            .stream
            .clone_htod(buf)
            .map_err(|e| err("copy to device", e))?;
        op(&self.comm, &mut dev)?;
        self.stream
            .memcpy_dtoh(&dev, buf)
            .map_err(|e| err("copy to host", e))?;
        self.stream.synchronize().map_err(|e| err("synchronize", e))
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        self.staged(buf, |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| err("all_reduce", e))
        })
    }

    fn broadcast(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        self.staged(buf, |c, d| {
            c.broadcast_in_place(d, 0)
                .map(|_| ())
                .map_err(|e| err("broadcast", e))
        })
    }
}
