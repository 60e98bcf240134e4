//! One worker of a data-parallel run: join the rendezvous (torchrun's store, or one rank 0
//! serves), publish this worker's ring address, connect the TCP ring (or NCCL), train. SIGTERM / SIGUSR1 / SIGINT make every
//! worker finish the current step; rank 0 writes a checkpoint and all exit 0 (a second signal
//! exits at once). A worker whose launcher died exits instead of running on as an orphan.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result};
use trainer::{Communicator, Resume, TrainConfig, Trainer, ValStats, ring::TcpRing};

use crate::{Cpu, env::WorkerEnv, rendezvous};

/// Installs SIGTERM, SIGUSR1 and SIGINT handlers that set `stop` (the first time) or exit
/// (the second time).
pub fn install_stop_signals(stop: &Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    for sig in [SIGTERM, SIGUSR1, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    Ok(())
}

/// Exits this process if the launcher that started it (`ROTOR_LAUNCHER_PID`) is gone.
fn watch_launcher() {
    let Some(pid) = std::env::var("ROTOR_LAUNCHER_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != pid {
                eprintln!("worker: the launcher (pid {pid}) is gone; exiting");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// How a run ended.
pub struct Outcome {
    /// Steps done.
    pub step: usize,
    /// Stopped early on request (checkpoint written).
    pub stopped: bool,
    /// The run directory.
    pub run_dir: std::path::PathBuf,
    /// Final validation (default when stopped, or on ranks other than 0).
    pub val: ValStats,
}

/// Which backend trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// burn's Flex CPU backend (TCP ring between processes).
    Cpu,
    /// burn-cuda on GPU `LOCAL_RANK` (NCCL between processes).
    Cuda,
    /// burn's wgpu backend on the default adapter (any Vulkan / Metal / DX12 device; TCP ring
    /// between processes). Needs the feature `wgpu`.
    Wgpu,
}

/// Trains on the ring-connected host backends (Flex, wgpu) with `comm`.
fn train_host(
    device: DeviceKind,
    cfg: TrainConfig,
    resume: Resume,
    comm: Box<dyn Communicator>,
    stop: Arc<AtomicBool>,
    started: impl FnOnce(&Path),
) -> Result<Outcome> {
    match device {
        DeviceKind::Cpu => train_with::<Cpu>(cfg, Default::default(), resume, comm, stop, started),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            type Wgpu = burn::backend::Autodiff<trainer::quantizers::burn_wgpu::Wgpu>;
            let device = trainer::quantizers::burn_wgpu::WgpuDevice::default();
            tracing::info!("training on wgpu ({device:?})");
            train_with::<Wgpu>(cfg, device, resume, comm, stop, started)
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => anyhow::bail!(
            "this launch binary was built without the wgpu backend: rebuild with \
             `cargo build --release -p launch --features wgpu`"
        ),
        DeviceKind::Cuda => unreachable!("CUDA trains through NCCL"),
    }
}

/// Where a torchrun / SLURM job's first attempt leaves its run id once training has started in
/// a run directory: a restart of the same job may then resume whatever `--resume` said.
pub fn first_attempt_marker(run_dir: &Path) -> PathBuf {
    run_dir.join("logs").join("first-attempt-run-id")
}

/// Whether a run id names one job (torchrun's `none` and rotor's default do not).
pub fn distinctive_run_id(run_id: &str) -> bool {
    !matches!(run_id.trim(), "" | "none" | "rotor")
}

/// What a worker records once its trainer is set up (the resume decision was accepted).
fn started_by(env: &WorkerEnv) -> impl FnOnce(&Path) + use<> {
    let (rank, restart, run_id) = (env.rank, env.restart, env.run_id.clone());
    move |run_dir: &Path| {
        if rank == 0 && restart == 0 && distinctive_run_id(&run_id) {
            let marker = first_attempt_marker(run_dir);
            if let Err(e) = std::fs::write(&marker, &run_id) {
                tracing::warn!("cannot write {}: {e}", marker.display());
            }
        }
    }
}

fn train_with<B: burn::tensor::backend::AutodiffBackend>(
    cfg: TrainConfig,
    device: B::Device,
    resume: Resume,
    comm: Box<dyn Communicator>,
    stop: Arc<AtomicBool>,
    started: impl FnOnce(&Path),
) -> Result<Outcome> {
    let mut trainer =
        Trainer::<B>::with_communicator(cfg, device, resume, comm)?.with_stop_flag(stop);
    started(trainer.run_dir());
    let val = trainer.run()?;
    Ok(Outcome {
        step: trainer.step(),
        stopped: trainer.stopped(),
        run_dir: trainer.run_dir().to_path_buf(),
        val,
    })
}

/// A host-backend worker's ring with the other workers (rendezvous first).
pub fn connect_ring(env: &WorkerEnv, timeout: Duration) -> Result<Box<dyn Communicator>> {
    watch_launcher();
    let mut joined = rendezvous::join(env, timeout)?;
    let (listener, addrs) = rendezvous::ring_addresses(env, &mut joined)?;
    let ring = TcpRing::connect(
        env.rank,
        env.world_size,
        listener,
        &addrs,
        &joined.secret,
        timeout,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        "rank {}/{} ({}): ring connected, rendezvous {}:{}",
        env.rank,
        env.world_size,
        env.source,
        env.master_addr,
        env.master_port
    );
    Ok(Box::new(ring))
}

/// The communicator of a subcommand (`eval`, `encode`) that runs either as one process or as a
/// worker started by `--cpu N`, torchrun or srun (CPU / wgpu workers only: `what` names the
/// subcommand in the refusal on GPUs). Returns it and this process's rank.
pub fn subcommand_comm(
    device: DeviceKind,
    timeout: Duration,
    what: &str,
) -> Result<(Box<dyn Communicator>, usize)> {
    let worker =
        crate::env::detect(&|k| std::env::var(k).ok()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match worker {
        Some(env) if matches!(device, DeviceKind::Cuda) => anyhow::bail!(
            "rank {}: data-parallel `launch {what}` runs on CPU or wgpu workers; on a GPU, run it \
             as one process",
            env.rank
        ),
        Some(env) => Ok((connect_ring(&env, timeout)?, env.rank)),
        None => Ok((Box::new(trainer::SingleProcess), 0)),
    }
}

/// Trains as one process (`env` is `None`) or as one worker of a run.
///
/// On the host backends (CPU, wgpu) the whole worker runs on a thread of a rayon pool (as many
/// threads as cores, or `RAYON_NUM_THREADS`): the training loop's serial work and the CPU
/// kernels' parallel work then share the same threads. Run from the main thread, the loop
/// competed for the cores with the pool's workers spinning between kernels (about 5% of a ViT
/// step on two cores). Results do not depend on the threads (see `models::cpu`).
pub fn run(
    cfg: TrainConfig,
    env: Option<&WorkerEnv>,
    resume: Resume,
    timeout: Duration,
    device: DeviceKind,
) -> Result<Outcome> {
    if matches!(device, DeviceKind::Cuda) {
        return run_here(cfg, env, resume, timeout, device);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("rotor-worker-{i}"))
        .build()
        .map_err(|e| anyhow::anyhow!("starting the training threads: {e}"))?;
    pool.install(|| run_here(cfg, env, resume, timeout, device))
}

fn run_here(
    cfg: TrainConfig,
    env: Option<&WorkerEnv>,
    resume: Resume,
    timeout: Duration,
    device: DeviceKind,
) -> Result<Outcome> {
    // Handlers first: a stop request during the rendezvous or model setup is honoured at the
    // first step boundary instead of killing the process.
    let stop = Arc::new(AtomicBool::new(false));
    install_stop_signals(&stop)?;
    let Some(env) = env else {
        return match device {
            DeviceKind::Cuda => cuda::single(cfg, resume, stop),
            host => train_host(
                host,
                cfg,
                resume,
                Box::new(trainer::SingleProcess),
                stop,
                |_: &Path| {},
            ),
        };
    };
    match device {
        DeviceKind::Cuda => {
            watch_launcher();
            let mut joined = rendezvous::join(env, timeout)?;
            cuda::worker(cfg, env, &mut joined.store, resume, stop)
        }
        host => {
            let ring = connect_ring(env, timeout)?;
            train_host(host, cfg, resume, ring, stop, started_by(env))
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::{Arc, atomic::AtomicBool};

    use anyhow::{Result, anyhow};
    use trainer::{Resume, TrainConfig, nccl::NcclComm};

    use super::{Outcome, started_by, train_with};
    use crate::{env::WorkerEnv, store::Store};

    type Gpu = burn::backend::Autodiff<burn::backend::Cuda>;

    /// The GPU ordinal: `CUDA_VISIBLE_DEVICES` set by rotor's launcher leaves one GPU (0);
    /// under torchrun or srun without it, the local rank.
    fn ordinal(local_rank: usize) -> usize {
        match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(v) if !v.contains(',') && !v.is_empty() => 0,
            _ => local_rank,
        }
    }

    pub fn single(cfg: TrainConfig, resume: Resume, stop: Arc<AtomicBool>) -> Result<Outcome> {
        // World size 1 still goes through NCCL, so a one-GPU run exercises the GPU collective.
        let id = NcclComm::unique_id_hex().map_err(|e| anyhow!("{e}"))?;
        let comm = NcclComm::connect(0, 1, ordinal(0), &id).map_err(|e| anyhow!("{e}"))?;
        let device = burn::backend::cuda::CudaDevice::new(ordinal(0));
        train_with::<Gpu>(
            cfg,
            device,
            resume,
            Box::new(comm),
            stop,
            |_: &std::path::Path| {},
        )
    }

    pub fn worker(
        cfg: TrainConfig,
        env: &WorkerEnv,
        store: &mut Store,
        resume: Resume,
        stop: Arc<AtomicBool>,
    ) -> Result<Outcome> {
        if env.rank == 0 {
            let id = NcclComm::unique_id_hex().map_err(|e| anyhow!("{e}"))?;
            store.set("nccl_id", id.as_bytes())?;
        }
        let id = String::from_utf8_lossy(&store.get("nccl_id", "rank 0's NCCL id")?).to_string();
        let gpu = ordinal(env.local_rank);
        let comm =
            NcclComm::connect(env.rank, env.world_size, gpu, &id).map_err(|e| anyhow!("{e}"))?;
        tracing::info!(
            "rank {}/{}: NCCL connected on GPU {gpu}",
            env.rank,
            env.world_size
        );
        train_with::<Gpu>(
            cfg,
            burn::backend::cuda::CudaDevice::new(gpu),
            resume,
            Box::new(comm),
            stop,
            started_by(env),
        )
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use std::sync::{Arc, atomic::AtomicBool};

    use anyhow::{Result, bail};
    use trainer::{Resume, TrainConfig};

    use super::Outcome;
    use crate::{env::WorkerEnv, store::Store};

    const NO_CUDA: &str = "this launch binary was built without GPU support: rebuild with \
        `cargo build --release -p launch --features cuda`, or train on the CPU (--device cpu / --cpu N)";

    pub fn single(_: TrainConfig, _: Resume, _: Arc<AtomicBool>) -> Result<Outcome> {
        bail!(NO_CUDA)
    }

    pub fn worker(
        _: TrainConfig,
        _: &WorkerEnv,
        _: &mut Store,
        _: Resume,
        _: Arc<AtomicBool>,
    ) -> Result<Outcome> {
        bail!(NO_CUDA)
    }
}
