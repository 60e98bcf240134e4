//! What a data-parallel step synchronizes, on top of a [`Communicator`]: parameter gradients
//! (mean, fixed parameter order, fixed-size buckets), initial weights (rank 0's), the quantizer's
//! EMA statistics (sum; restart candidates gathered from all ranks) and LFQ's global-batch code
//! distribution.

use burn::{
    module::{Module, ModuleMapper, Param, ParamId},
    optim::GradientsParams,
    tensor::{Tensor, TensorData, backend::AutodiffBackend, backend::Backend},
};
use quantizers::{EmaStats, QuantOut};

use crate::{
    comm::communicator::{CommError, Communicator},
    grad_norm::{ParamIds, by_rank},
};

/// Floats per all-reduce bucket (16 MiB).
pub const BUCKET: usize = 1 << 22;

fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    quantizers::host::read_f32(t, quantizers::host::HostRead::Staging)
}

/// A gradient taken out of `GradientsParams`, flattened on its device.
struct Flat<Bi: Backend> {
    id: ParamId,
    rank: usize,
    shape: Vec<usize>,
    values: Tensor<Bi, 1>,
}

fn take<B: AutodiffBackend, const D: usize>(
    grads: &mut GradientsParams,
    id: ParamId,
) -> Option<Flat<B::InnerBackend>> {
    grads.remove::<B::InnerBackend, D>(id).map(|g| {
        let shape = g.dims().to_vec();
        Flat {
            id,
            rank: D,
            values: g.reshape([shape.iter().product::<usize>()]),
            shape,
        }
    })
}

fn put<B: AutodiffBackend, const D: usize>(grads: &mut GradientsParams, f: Flat<B::InnerBackend>) {
    let shape: [usize; D] = f.shape.try_into().expect("rank matches");
    grads.register::<B::InnerBackend, D>(f.id, f.values.reshape(shape));
}

/// Sum over processes of a flat tensor: in place on the device when the communicator can
/// (NCCL on burn-cuda), else staged through host memory (one read, one write).
fn reduce_flat<Bi: Backend>(
    comm: &mut dyn Communicator,
    mut t: Tensor<Bi, 1>,
) -> Result<Tensor<Bi, 1>, CommError> {
    let on_device = comm.all_reduce_device(&mut t)?;
    report_path(on_device);
    if on_device {
        return Ok(t);
    }
    let device = t.device();
    let [n] = t.dims();
    let mut v = host(t);
    comm.all_reduce_sum(&mut v)?;
    Ok(Tensor::from_data(TensorData::new(v, [n]), &device))
}

/// Says once per process which way gradients travel.
fn report_path(on_device: bool) {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    REPORTED.call_once(|| {
        if on_device {
            tracing::info!("gradient all-reduce: in place on the device (NCCL, no host staging)");
        } else {
            tracing::info!("gradient all-reduce: staged through host memory");
        }
    });
}

/// Mean of every gradient over processes, in the module's parameter order, in buckets of at most
/// [`BUCKET`] floats (each bucket concatenated on the device, reduced there or through the host).
pub fn all_reduce_grads<B: AutodiffBackend, M: Module<B>>(
    comm: &mut dyn Communicator,
    module: &M,
    mut grads: GradientsParams,
) -> Result<GradientsParams, CommError> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(grads);
    }
    let ids = ParamIds::of::<B, M>(module);
    let mut pending: Vec<Flat<B::InnerBackend>> = Vec::new();
    let mut size = 0;
    let scale = 1.0 / world as f32;
    let flush = |pending: &mut Vec<Flat<B::InnerBackend>>,
                 grads: &mut GradientsParams,
                 comm: &mut dyn Communicator|
     -> Result<(), CommError> {
        let bucket = Tensor::cat(pending.iter().map(|f| f.values.clone()).collect(), 0);
        let bucket = reduce_flat(comm, bucket)? * scale;
        let mut at = 0;
        for mut f in pending.drain(..) {
            let [n] = f.values.dims();
            f.values = bucket.clone().narrow(0, at, n);
            at += n;
            by_rank!(f.rank, put, grads, f);
        }
        Ok(())
    };
    for (id, d) in ids.0 {
        if let Some(f) = by_rank!(d, take, &mut grads, id) {
            size += f.values.dims()[0];
            pending.push(f);
            if size >= BUCKET {
                flush(&mut pending, &mut grads, comm)?;
                size = 0;
            }
        }
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut grads, comm)?;
    }
    Ok(grads)
}

struct Broadcaster<'a> {
    comm: &'a mut dyn Communicator,
    error: Option<CommError>,
}

impl<B: Backend> ModuleMapper<B> for Broadcaster<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, t, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, t, mapper);
        }
        let shape = t.dims();
        let mut flat = t.clone().reshape([shape.iter().product::<usize>()]);
        let new = match self.comm.broadcast_device(&mut flat) {
            Ok(true) => flat.reshape(shape),
            Ok(false) => {
                let mut v = host(t.clone());
                if let Err(e) = self.comm.broadcast(&mut v) {
                    self.error = Some(e);
                    return Param::from_mapped_value(id, t, mapper);
                }
                Tensor::<B, D>::from_data(TensorData::new(v, shape), &t.device())
            }
            Err(e) => {
                self.error = Some(e);
                return Param::from_mapped_value(id, t, mapper);
            }
        };
        let new = if t.is_require_grad() {
            new.require_grad()
        } else {
            new
        };
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Every parameter and buffer set to rank 0's value.
pub fn broadcast_module<B: Backend, M: Module<B>>(
    comm: &mut dyn Communicator,
    module: M,
) -> Result<M, CommError> {
    if comm.world_size() == 1 {
        return Ok(module);
    }
    let mut b = Broadcaster { comm, error: None };
    let m = module.map(&mut b);
    match b.error {
        Some(e) => Err(e),
        None => Ok(m),
    }
}

/// Rows of every rank concatenated in rank order (`[world * n, d]`; equal `n` on all ranks).
fn all_gather_rows<Bk: Backend>(
    comm: &mut dyn Communicator,
    t: Tensor<Bk, 2>,
) -> Result<Tensor<Bk, 2>, CommError> {
    let [n, d] = t.dims();
    let (w, r) = (comm.world_size(), comm.rank());
    let device = t.device();
    let mut buf = vec![0f32; w * n * d];
    buf[r * n * d..(r + 1) * n * d].copy_from_slice(&host(t));
    comm.all_reduce_sum(&mut buf)?;
    Ok(Tensor::from_data(TensorData::new(buf, [w * n, d]), &device))
}

fn reduce_tensor<Bk: Backend, const D: usize>(
    comm: &mut dyn Communicator,
    t: Tensor<Bk, D>,
    broadcast: bool,
) -> Result<Tensor<Bk, D>, CommError> {
    let shape = t.dims();
    let device = t.device();
    let mut v = host(t);
    if broadcast {
        comm.broadcast(&mut v)?;
    } else {
        comm.all_reduce_sum(&mut v)?;
    }
    Ok(Tensor::from_data(TensorData::new(v, shape), &device))
}

/// EMA counts and sums summed over processes; the restart candidates of all processes, in rank
/// order (= the global batch's order), so dead-code restart chooses exactly as one process would.
pub fn all_reduce_stats<Bk: Backend>(
    comm: &mut dyn Communicator,
    stats: Vec<EmaStats<Bk>>,
) -> Result<Vec<EmaStats<Bk>>, CommError> {
    if comm.world_size() == 1 {
        return Ok(stats);
    }
    stats
        .into_iter()
        .map(|s| {
            Ok(EmaStats {
                counts: reduce_tensor(comm, s.counts, false)?,
                sums: reduce_tensor(comm, s.sums, false)?,
                candidates: all_gather_rows(comm, s.candidates)?,
            })
        })
        .collect()
}

/// Rank 0's tensor everywhere.
pub fn broadcast_tensor<Bk: Backend, const D: usize>(
    comm: &mut dyn Communicator,
    t: Tensor<Bk, D>,
) -> Result<Tensor<Bk, D>, CommError> {
    if comm.world_size() == 1 {
        return Ok(t);
    }
    reduce_tensor(comm, t, true)
}

/// The quantizer's loss with LFQ's batch entropy over the global batch.
pub fn quantizer_loss<B: AutodiffBackend>(
    comm: &mut dyn Communicator,
    out: &QuantOut<B>,
) -> Result<Tensor<B, 1>, CommError> {
    if comm.world_size() == 1 || out.batch_entropy.is_empty() {
        return Ok(out.loss());
    }
    let device = out.quantized.device();
    let mut total = Tensor::<B, 1>::zeros([1], &device);
    for t in &out.losses {
        total = total + t.value.clone();
    }
    let world = comm.world_size() as f32;
    for be in &out.batch_entropy {
        let global = reduce_tensor(comm, be.local_mean_probs.clone().detach(), false)? / world;
        total = total + be.loss_with_global(global);
    }
    Ok(total)
}
