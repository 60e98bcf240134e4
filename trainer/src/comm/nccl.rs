//! `NcclComm`: the GPU workers' communicator, NCCL through cudarc's bindings (loaded at run time:
//! `libnccl.so` must be on the library path; the PyPI wheel ships only `libnccl.so.2`, link it).
//! Rank 0 creates the 128-byte unique id, the rendezvous hands it to the others
//! ([`NcclComm::unique_id_hex`], [`NcclComm::connect`]).
//!
//! Two paths with the same collective semantics:
//! - **on the device** ([`Communicator::all_reduce_device`], [`Communicator::broadcast_device`]):
//!   a flat burn-cuda tensor is resolved to its cubecl buffer, the device is synchronized (cubecl's
//!   stream is private, so NCCL cannot be queued behind its kernels: the host waits for them
//!   instead), and NCCL reduces the buffer in place by its device pointer on this
//!   communicator's stream (REFERENCE.md 6.5). The gradient all-reduce takes this path.
//! - **staged** (`all_reduce_sum`, `broadcast` on host slices): host -> device on this stream,
//!   in place, device -> host. The fallback for tensors that are not burn-cuda's (said once in
//!   the log), for host values (stop votes, logged figures), and what `ROTOR_NCCL_STAGED=1`
//!   forces for comparison.

use std::{any::Any, sync::Arc};

use burn::{
    backend::{Cuda, cuda::CudaDevice},
    tensor::{DType, Tensor, backend::Backend},
};
use burn_cubecl::{CubeBackend, cubecl::cuda::CudaRuntime, tensor::CubeTensor};

use cudarc::{
    driver::{CudaContext, CudaStream},
    nccl::{Comm, Id, ReduceOp},
};

use crate::comm::communicator::{CommError, Communicator};

/// NCCL over the GPUs of a run, one per process.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    /// `ROTOR_NCCL_STAGED=1`: never the device path.
    staged_only: bool,
    /// The fallback to staging was logged.
    fallback_logged: bool,
}

/// burn-cuda's backend without fusion: what a fusion tensor resolves to.
type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;

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
        let staged_only = std::env::var("ROTOR_NCCL_STAGED").is_ok_and(|v| v == "1");
        if staged_only {
            tracing::info!("ROTOR_NCCL_STAGED=1: NCCL collectives staged through host memory");
        }
        Ok(Self {
            comm,
            stream,
            rank,
            world,
            staged_only,
            fallback_logged: false,
        })
    }

    /// Runs `op` on the device memory of a flat burn-cuda `f32` tensor, in place. `Ok(false)`
    /// when `tensor` is not one (or staging is forced).
    fn in_place(
        &mut self,
        tensor: &mut dyn Any,
        op: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<f32>) -> Result<(), CommError>,
    ) -> Result<bool, CommError> {
        if self.staged_only {
            return Ok(false);
        }
        let Some(t) = tensor.downcast_mut::<Tensor<Cuda, 1>>() else {
            if !self.fallback_logged {
                self.fallback_logged = true;
                tracing::warn!(
                    "NCCL: these tensors are not burn-cuda's; collectives are staged through host memory"
                );
            }
            return Ok(false);
        };
        let [n] = t.dims();
        if n == 0 {
            return Ok(true);
        }
        let device: CudaDevice = t.device();
        // The fusion tensor's buffer, materialized (a clone: `t` keeps its handle alive).
        let fused = t.clone().into_primitive().tensor();
        let cube: CubeTensor<CudaRuntime> =
            fused.client.clone().resolve_tensor_float::<Cube>(fused);
        if cube.dtype != DType::F32 || !cube.is_contiguous() {
            return Err(CommError(format!(
                "NCCL device path needs a contiguous f32 buffer, got {:?} (contiguous: {})",
                cube.dtype,
                cube.is_contiguous()
            )));
        }
        // Every kernel that writes the buffer has finished before NCCL reads it.
        <Cuda as Backend>::sync(&device).map_err(|e| err("device sync", e))?;
        let resource = cube
            .client
            .get_resource(cube.handle.clone())
            .map_err(|e| err("device buffer", e))?;
        let gpu = resource.resource();
        if (gpu.size as usize) < n * size_of::<f32>() {
            return Err(CommError(format!(
                "NCCL device path: buffer of {} bytes for {n} floats",
                gpu.size
            )));
        }
        // SAFETY: `gpu.ptr` is the start (offset included) of a live allocation of at least
        // `n` f32 on this process's GPU, in the primary context cudarc's stream shares with
        // cubecl; `resource` pins it (no reuse) until after the stream synchronizes below,
        // and every kernel writing it has finished (device sync above). The slice is leaked
        // before it could free memory that cubecl owns.
        let mut slice = unsafe { self.stream.upgrade_device_ptr::<f32>(gpu.ptr, n) };
        let result = op(&self.comm, &mut slice);
        let synced = self.stream.synchronize().map_err(|e| err("synchronize", e));
        let _ = slice.leak();
        drop(resource);
        result?;
        synced?;
        Ok(true)
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

    fn all_reduce_device(&mut self, tensor: &mut dyn Any) -> Result<bool, CommError> {
        self.in_place(tensor, |c, d| {
            c.all_reduce_in_place(d, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| err("all_reduce", e))
        })
    }

    fn broadcast_device(&mut self, tensor: &mut dyn Any) -> Result<bool, CommError> {
        self.in_place(tensor, |c, d| {
            c.broadcast_in_place(d, 0)
                .map(|_| ())
                .map_err(|e| err("broadcast", e))
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
