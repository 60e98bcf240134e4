//! `launch --cpu N` (and `--gpus N`): start one worker process per device on this node, each with
//! `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and watch them. A worker that
//! fails (any exit code, or killed by a signal) stops the others within seconds and the launcher
//! exits non-zero naming the rank; with `--max-restarts K` the whole group restarts from the latest
//! checkpoint instead. SIGTERM / SIGUSR1 / SIGINT to the launcher are forwarded to the workers
//! (which checkpoint and exit 0).

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::{Child, Command, ExitStatus},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// What to start.
pub struct Group<'a> {
    /// The training config.
    pub config: &'a Path,
    /// `--set` overrides, passed on.
    pub overrides: &'a [String],
    /// `auto` or `never` for the first start (restarts always resume).
    pub resume: &'a str,
    /// Workers on this node.
    pub nproc: usize,
    /// Nodes in the run.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// `host:port` of the rendezvous (rank 0's node); `None`: this node, a free port.
    pub master: Option<String>,
    /// Group restarts allowed after a failure.
    pub max_restarts: usize,
    /// Collective / rendezvous timeout in seconds, passed on.
    pub timeout_s: u64,
    /// `CUDA_VISIBLE_DEVICES` per worker (GPU runs).
    pub gpus: bool,
    /// The backend of ring workers (`cpu`, or `wgpu` with `--device wgpu`).
    pub ring_device: &'static str,
    /// Workers run a subcommand instead of training: its name and own arguments (`eval
    /// --limit 4`, `encode --out DIR ...`).
    pub subcommand: Option<&'a [String]>,
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "an unknown status".into(),
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// Runs the group; returns when every worker exited 0, or with an error naming the failed rank.
pub fn run(group: &Group) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let exe = std::env::current_exe().context("cannot find the launch executable")?;
    let world = group.nproc * group.nnodes;
    // The workers' connections prove this secret: one node makes its own; the nodes of a
    // multi-node run share the ROTOR_RUN_SECRET they were started with (else rank 0 hands one out).
    let secret = std::env::var("ROTOR_RUN_SECRET")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| (group.nnodes == 1).then(|| trainer::RunSecret::random().to_hex()));
    let mut attempt = 0;
    loop {
        let (addr, port) = match &group.master {
            Some(m) => {
                let (h, p) = m
                    .rsplit_once(':')
                    .with_context(|| format!("--master {m}: expected HOST:PORT"))?;
                (
                    h.to_string(),
                    p.parse::<u16>()
                        .with_context(|| format!("--master {m}: bad port"))?,
                )
            }
            None => ("127.0.0.1".to_string(), free_port()?),
        };
        let resume = if attempt == 0 { group.resume } else { "auto" };
        let mut children: Vec<(usize, Child)> = Vec::new();
        for local in 0..group.nproc {
            let rank = group.node_rank * group.nproc + local;
            let mut cmd = Command::new(&exe);
            // Own process group: a terminal's Ctrl-C reaches only the launcher, which forwards
            // one SIGTERM (a second signal would make the workers exit without a checkpoint).
            cmd.process_group(0);
            cmd.arg("--timeout").arg(group.timeout_s.to_string());
            match group.subcommand {
                Some(args) => {
                    cmd.args(args);
                }
                None => {
                    cmd.arg("--resume").arg(resume);
                }
            }
            for o in group.overrides {
                cmd.arg("--set").arg(o);
            }
            cmd.arg(group.config)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", local.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_WORLD_SIZE", group.nproc.to_string())
                .env("MASTER_ADDR", &addr)
                .env("MASTER_PORT", port.to_string())
                .env("ROTOR_LAUNCHER_PID", std::process::id().to_string())
                .env("TORCHELASTIC_RESTART_COUNT", attempt.to_string());
            if let Some(s) = &secret {
                cmd.env("ROTOR_RUN_SECRET", s);
            }
            if group.gpus {
                cmd.env("CUDA_VISIBLE_DEVICES", local.to_string())
                    .env("ROTOR_DEVICE", "cuda");
            } else {
                cmd.env("ROTOR_DEVICE", group.ring_device);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start worker rank {rank}"))?;
            children.push((rank, child));
        }
        tracing::info!(
            "started {} workers (world size {world}, rendezvous {addr}:{port}, attempt {attempt})",
            group.nproc
        );
        let mut forwarded = false;
        let mut failures: Vec<(usize, ExitStatus)> = Vec::new();
        let mut done = vec![false; children.len()];
        loop {
            if stop.load(Ordering::SeqCst) && !forwarded {
                tracing::info!("signal received: asking the workers to checkpoint and stop");
                for (_, c) in &children {
                    signal(c, "TERM");
                }
                forwarded = true;
            }
            for (i, (rank, child)) in children.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                if let Some(status) = child.try_wait()? {
                    done[i] = true;
                    if !status.success() {
                        failures.push((*rank, status));
                    }
                }
            }
            if !failures.is_empty() {
                // A dead worker makes its peers fail their next collective at once: collect the
                // exits of the next moment so the cause (e.g. a rank killed by a signal) is named.
                let settle = Instant::now() + Duration::from_millis(500);
                while Instant::now() < settle {
                    for (i, (rank, child)) in children.iter_mut().enumerate() {
                        if !done[i]
                            && let Some(status) = child.try_wait()?
                        {
                            done[i] = true;
                            if !status.success() {
                                failures.push((*rank, status));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                break;
            }
            if done.iter().all(|d| *d) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !failures.is_empty() {
            // Killed by a signal first: the others usually failed because of it.
            failures.sort_by_key(|(r, st)| (st.signal().is_none(), *r));
            // Stop the others: TERM, then KILL after a grace period.
            for (i, (_, c)) in children.iter().enumerate() {
                if !done[i] {
                    signal(c, "TERM");
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            for (i, (_, c)) in children.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                while Instant::now() < deadline {
                    if c.try_wait()?.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if c.try_wait()?.is_none() {
                    let _ = c.kill();
                }
                let _ = c.wait();
            }
            let (rank, status) = failures[0];
            let mut what = format!("worker rank {rank} failed with {}", describe(status));
            for (r, st) in &failures[1..] {
                what += &format!(" (then rank {r}: {})", describe(*st));
            }
            if forwarded || stop.load(Ordering::SeqCst) || attempt >= group.max_restarts {
                bail!("{what}; the other workers were stopped");
            }
            attempt += 1;
            tracing::warn!(
                "{what}; restarting the group from the latest checkpoint (restart {attempt} of {})",
                group.max_restarts
            );
            continue;
        }
        return Ok(());
    }
}
