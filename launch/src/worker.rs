//! One worker of a data-parallel run: join the rendezvous (rank 0 serves it), publish this
//! worker's ring address, connect the TCP ring, train. SIGTERM / SIGUSR1 / SIGINT make every
//! worker finish the current step; rank 0 writes a checkpoint and all exit 0 (a second signal
//! exits at once). A worker whose launcher died exits instead of running on as an orphan.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context, Result};
use trainer::{Resume, TrainConfig, Trainer, ValStats, ring::TcpRing};

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

fn advertised_host(master: &str) -> String {
    if let Ok(h) = std::env::var("ROTOR_ADVERTISE_ADDR") {
        return h;
    }
    if master == "127.0.0.1" || master == "localhost" || master == "::1" {
        return "127.0.0.1".into();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// Runs this worker to the end of the config (or until asked to stop).
pub fn run_worker(
    cfg: TrainConfig,
    env: &WorkerEnv,
    resume: Resume,
    timeout: Duration,
) -> Result<(Trainer<Cpu>, ValStats)> {
    watch_launcher();
    if env.rank == 0 {
        rendezvous::serve(env.master_port)?;
    }
    let mut store = rendezvous::Client::connect(&env.master_addr, env.master_port, timeout)?;
    let bind = if advertised_host(&env.master_addr) == "127.0.0.1" {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let (listener, local) = trainer::ring::bind(bind).map_err(|e| anyhow::anyhow!("{e}"))?;
    let me = format!("{}:{}", advertised_host(&env.master_addr), local.port());
    store.set(&format!("addr/{}", env.rank), &me)?;
    let mut addrs = Vec::with_capacity(env.world_size);
    for r in 0..env.world_size {
        let a = store.get(&format!("addr/{r}"))?;
        let sa: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&a)
            .ok()
            .and_then(|mut i| i.next())
            .with_context(|| format!("rank {r} published an unusable address {a:?}"))?;
        addrs.push(sa);
    }
    let ring = TcpRing::connect(env.rank, env.world_size, listener, &addrs, timeout)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        "rank {}/{} ({}): ring connected, rendezvous {}:{}",
        env.rank,
        env.world_size,
        env.source,
        env.master_addr,
        env.master_port
    );
    let mut trainer =
        Trainer::<Cpu>::with_communicator(cfg, Default::default(), resume, Box::new(ring))?;
    install_stop_signals(&trainer.stop_flag())?;
    let val = trainer.run()?;
    Ok((trainer, val))
}
