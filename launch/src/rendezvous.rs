//! The rendezvous: how one worker finds the run's store, the run's secret and its peers.
//! - Store: under torchrun with `TORCHELASTIC_USE_AGENT_STORE=True`, the agent's TCPStore at
//!   `MASTER_ADDR:MASTER_PORT` (rotor is one more client, no server of its own); otherwise rank 0
//!   serves one there ([`store::serve`], bound to `MASTER_ADDR`).
//! - Secret: `ROTOR_RUN_SECRET` when the environment has it (rotor's launcher sets a fresh one for
//!   a one-node run; set the same value on every node of a multi-node run); otherwise rank 0 makes
//!   one and hands it out through the store. The store then authenticates nobody: torchrun's never
//!   does, and rotor's warns when it is reachable from other machines.
//! - Peers: every rank binds its ring listener to the address it announces (the interface that
//!   routes to the master: loopback for one node, or `ROTOR_ADVERTISE_ADDR`), publishes it, and
//!   waits for everyone's; ranks that never come are named.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use trainer::RunSecret;

use crate::{env::WorkerEnv, store, store::Store};

/// What the rendezvous gives a worker.
pub struct Joined {
    /// The run's store (namespaced to this run and restart).
    pub store: Store,
    /// The run's secret (the ring's connections prove it).
    pub secret: RunSecret,
}

/// The run's secret from `ROTOR_RUN_SECRET`, if set.
fn env_secret() -> Option<RunSecret> {
    std::env::var("ROTOR_RUN_SECRET")
        .ok()
        .and_then(|t| RunSecret::from_text(&t))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn resolves_only_to_loopback(host: &str, port: u16) -> bool {
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map(|a| a.collect::<Vec<_>>())
        .is_ok_and(|a| !a.is_empty() && a.iter().all(|x| x.ip().is_loopback()))
}

/// Connects to (or, on rank 0, first serves) the run's store and settles the secret.
pub fn join(env: &WorkerEnv, timeout: Duration) -> Result<Joined> {
    let prefix = format!("/{}/rotor/{}/", env.run_id, env.restart);
    let (host, port) = (env.master_addr.as_str(), env.master_port);
    let from_env = env_secret();
    let mut store = if env.agent_store {
        Store::connect(host, port, &prefix, None, timeout)
            .context("joining torchrun's store (TORCHELASTIC_USE_AGENT_STORE=True)")?
    } else {
        if env.rank == 0 {
            if !is_loopback(host) && resolves_only_to_loopback(host, port) {
                tracing::warn!(
                    "MASTER_ADDR {host} resolves to a loopback address on this machine (see \
                     /etc/hosts): workers on other nodes cannot reach the rendezvous there; set \
                     MASTER_ADDR (or --master) to this node's network address"
                );
            }
            let at = store::serve(host, port, from_env.clone())?;
            if from_env.is_none() && !is_loopback(host) {
                tracing::warn!(
                    "the rendezvous store on {at} accepts anyone who can reach it: set \
                     ROTOR_RUN_SECRET to the same value for every worker of the run"
                );
            }
        }
        Store::connect(host, port, &prefix, from_env.as_ref(), timeout)?
    };
    let secret = match from_env {
        Some(s) => s,
        None if env.rank == 0 => {
            let s = RunSecret::random();
            store.set("secret", s.to_hex().as_bytes())?;
            s
        }
        None => {
            let hex = store.get("secret", "rank 0 to hand out the run's secret")?;
            std::str::from_utf8(&hex)
                .ok()
                .and_then(RunSecret::from_hex)
                .ok_or_else(|| anyhow!("the run's secret in the store is malformed"))?
        }
    };
    Ok(Joined { store, secret })
}

/// The address this worker announces to its peers: `ROTOR_ADVERTISE_ADDR`, else the local address
/// of the interface that routes to the master (loopback when the master is this machine).
fn advertised(env: &WorkerEnv) -> Result<IpAddr> {
    if let Ok(h) = std::env::var("ROTOR_ADVERTISE_ADDR") {
        return std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), 0))
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip())
            .with_context(|| {
                format!("ROTOR_ADVERTISE_ADDR={h} is not an address of this machine")
            });
    }
    let master =
        std::net::ToSocketAddrs::to_socket_addrs(&(env.master_addr.as_str(), env.master_port))
            .with_context(|| format!("cannot resolve MASTER_ADDR {}", env.master_addr))?
            .next()
            .with_context(|| format!("MASTER_ADDR {} has no address", env.master_addr))?;
    if master.ip().is_loopback() {
        return Ok(master.ip());
    }
    let unspecified: IpAddr = if master.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    // A UDP "connection" sends nothing: it only asks the kernel which interface routes there.
    let probe = UdpSocket::bind((unspecified, 0)).context("cannot find this machine's address")?;
    probe
        .connect(master)
        .with_context(|| format!("no route to the master {master}"))?;
    Ok(probe.local_addr()?.ip())
}

/// Binds this rank's ring listener, publishes its address and collects every rank's.
pub fn ring_addresses(
    env: &WorkerEnv,
    joined: &mut Joined,
) -> Result<(TcpListener, Vec<SocketAddr>)> {
    let ip = advertised(env)?;
    let (listener, local) =
        trainer::ring::bind(&ip.to_string()).map_err(|e| anyhow!("{e} (ROTOR_ADVERTISE_ADDR?)"))?;
    let store = &mut joined.store;
    store.set(&format!("addr/{}", env.rank), local.to_string().as_bytes())?;
    let keys: Vec<String> = (0..env.world_size).map(|r| format!("addr/{r}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if let Err(e) = store.wait(&refs, "every rank's ring address") {
        if e.downcast_ref::<store::WaitTimedOut>().is_none() {
            return Err(e);
        }
        let mut missing = Vec::new();
        for (r, k) in keys.iter().enumerate() {
            if !store.check(&[k])? {
                missing.push(match env.local_world {
                    Some(n) if n > 0 => format!("rank {r} (node {})", r / n),
                    _ => format!("rank {r}"),
                });
            }
        }
        if missing.is_empty() {
            return Err(e);
        }
        bail!(
            "rendezvous at {}:{}: waited {:?} for {} to join the run, in vain. Is every node's \
             launcher (or worker) started with the same --master / MASTER_ADDR:MASTER_PORT, \
             --nnodes and world size, and can it reach this address?",
            env.master_addr,
            env.master_port,
            store.timeout(),
            missing.join(", ")
        );
    }
    let mut addrs = Vec::with_capacity(env.world_size);
    for (r, k) in keys.iter().enumerate() {
        let raw = store.get(k, &format!("rank {r}'s ring address"))?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let sa: SocketAddr = text
            .parse()
            .with_context(|| format!("rank {r} published an unusable address {text:?}"))?;
        addrs.push(sa);
    }
    Ok((listener, addrs))
}
