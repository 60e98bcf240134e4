//! `TcpRing`: the CPU workers' communicator. Each rank keeps one persistent TCP connection to the
//! next rank and one from the previous; a sum all-reduce is a reduce-scatter followed by an
//! all-gather around the ring (the algorithm gloo and NCCL use): `2 (W-1)/W` of the buffer crosses
//! each link, whatever the world size. Buffers of any length work (chunks differ by at most one
//! element). Sends run on a second thread while the receive proceeds, so large buffers cannot
//! deadlock. Every receive has a timeout: a peer that died or hangs aborts the run with a message.
//!
//! Connections prove they belong to the run: the accepting rank sends a random nonce, the
//! connecting rank answers with its rank and an HMAC of the run's secret ([`RunSecret`]). A
//! stranger, a worker of another run or garbage bytes are logged and refused while the ring keeps
//! waiting for its real neighbour; the listener closes once the ring is connected.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use crate::{
    auth::{NONCE_LEN, PROOF_LEN, RunSecret},
    comm::communicator::{CommError, Communicator},
};

/// What the ring's proofs are bound to (a store proof cannot be replayed here): the connecting
/// rank's, and the accepting rank's.
const CONTEXT: &[u8] = b"rotor-ring-v1";
const ACCEPT_CONTEXT: &[u8] = b"rotor-ring-accept-v1";
/// Connections being checked at once; more are dropped at once (a flood cannot exhaust threads).
const MAX_CHECKING: usize = 64;
/// The longest a connection may take to prove itself before it is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A ring of TCP connections between the ranks of a run.
pub struct TcpRing {
    rank: usize,
    world: usize,
    next: TcpStream,
    prev: TcpStream,
    timeout: Duration,
}

fn chunk_range(n: usize, world: usize, i: usize) -> std::ops::Range<usize> {
    let base = n / world;
    let extra = n % world;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl TcpRing {
    /// Connects rank `rank` of `world`: `listener` is this rank's bound socket, `addrs[r]` the
    /// address every rank listens on, `secret` the run's. Connecting and accepting give up after
    /// `timeout`.
    pub fn connect(
        rank: usize,
        world: usize,
        listener: TcpListener,
        addrs: &[SocketAddr],
        secret: &RunSecret,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        assert!(world >= 2 && rank < world && addrs.len() == world);
        let next_rank = (rank + 1) % world;
        let deadline = Instant::now() + timeout;
        let target = addrs[next_rank];
        let key = secret.clone();
        let connector = std::thread::spawn(move || -> Result<TcpStream, CommError> {
            loop {
                match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    Ok(s) => {
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_secs(1));
                        return prove(s, rank, next_rank, target, &key, left);
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(CommError(format!(
                            "ring: cannot reach rank {next_rank} at {target} within the timeout: {e}"
                        )));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        listener
            .set_nonblocking(true)
            .map_err(|e| CommError(format!("ring: listener: {e}")))?;
        let prev_rank = (rank + world - 1) % world;
        // Each connection proves itself on its own thread: a silent or slow stranger cannot
        // hold up the real neighbour queued behind it.
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, Result<TcpStream, String>)>();
        let checking = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let prev = 'accept: loop {
            while let Ok((peer, verdict)) = rx.try_recv() {
                match verdict {
                    Ok(s) => break 'accept s,
                    Err(why) => tracing::warn!(
                        "ring: rank {rank} refused a connection from {peer}: {why} (still waiting for rank {prev_rank})"
                    ),
                }
            }
            if Instant::now() >= deadline {
                return Err(CommError(format!(
                    "ring: rank {prev_rank} did not connect to rank {rank} within {timeout:?}"
                )));
            }
            match listener.accept() {
                Ok((s, peer)) => {
                    use std::sync::atomic::Ordering::SeqCst;
                    if checking.fetch_add(1, SeqCst) >= MAX_CHECKING {
                        checking.fetch_sub(1, SeqCst);
                        tracing::warn!(
                            "ring: rank {rank} refused a connection from {peer}: {MAX_CHECKING} others are being checked"
                        );
                        continue;
                    }
                    let (tx, secret, checking) = (tx.clone(), secret.clone(), checking.clone());
                    std::thread::spawn(move || {
                        let verdict = check(s, rank, prev_rank, &secret, timeout);
                        checking.fetch_sub(1, SeqCst);
                        let _ = tx.send((peer, verdict));
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    // Out of descriptors, an aborted connection: transient; the deadline bounds it.
                    tracing::debug!("ring: rank {rank}: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        drop(listener);
        let next = connector
            .join()
            .map_err(|_| CommError("ring: connector thread panicked".into()))??;
        for s in [&next, &prev] {
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(timeout))
                .map_err(|e| CommError(e.to_string()))?;
            s.set_write_timeout(Some(timeout))
                .map_err(|e| CommError(e.to_string()))?;
        }
        Ok(Self {
            rank,
            world,
            next,
            prev,
            timeout,
        })
    }

    /// Sends `send` to the next rank while receiving `recv.len()` floats from the previous one.
    fn exchange(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        let bytes = to_bytes(send);
        let mut incoming = vec![0u8; recv.len() * 4];
        let (next, prev) = (&mut self.next, &mut self.prev);
        let (rank, world, timeout) = (self.rank, self.world, self.timeout);
        let (sent, received) = std::thread::scope(|s| {
            let h = s.spawn(move || next.write_all(&bytes));
            let r = prev.read_exact(&mut incoming);
            (h.join(), r)
        });
        let prev_rank = (rank + world - 1) % world;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(CommError(format!(
                    "collective failed sending to rank {}: {e} (did it exit?)",
                    (rank + 1) % world
                )));
            }
            Err(_) => return Err(CommError("collective sender thread panicked".into())),
        }
        received.map_err(|e| {
            let why = if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                format!("no data within the collective timeout ({timeout:?})")
            } else {
                e.to_string()
            };
            CommError(format!(
                "collective failed receiving from rank {prev_rank}: {why}"
            ))
        })?;
        for (dst, c) in recv.iter_mut().zip(incoming.chunks_exact(4)) {
            *dst = f32::from_le_bytes(c.try_into().unwrap());
        }
        Ok(())
    }
}

impl Communicator for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let (w, r, n) = (self.world, self.rank, buf.len());
        let mut tmp = vec![0f32; n / w + 1];
        // Reduce-scatter: after W-1 steps rank r holds the full sum of chunk (r + 1) % W.
        for s in 0..w - 1 {
            let send = chunk_range(n, w, (r + w - s) % w);
            let recv = chunk_range(n, w, (r + w - s - 1) % w);
            let out = buf[send].to_vec();
            let len = recv.len();
            self.exchange(&out, &mut tmp[..len])?;
            for (d, v) in buf[recv].iter_mut().zip(&tmp[..len]) {
                *d += v;
            }
        }
        // All-gather: pass the reduced chunks around.
        for s in 0..w - 1 {
            let send = chunk_range(n, w, (r + 1 + w - s) % w);
            let recv = chunk_range(n, w, (r + w - s) % w);
            let out = buf[send].to_vec();
            let len = recv.len();
            self.exchange(&out, &mut tmp[..len])?;
            buf[recv].copy_from_slice(&tmp[..len]);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        // Around the ring from rank 0: each rank receives from prev, then forwards (but the last).
        let n = buf.len();
        if self.rank != 0 {
            let mut incoming = vec![0u8; n * 4];
            self.prev.read_exact(&mut incoming).map_err(|e| {
                CommError(format!(
                    "broadcast: nothing from rank {} within {:?}: {e}",
                    (self.rank + self.world - 1) % self.world,
                    self.timeout
                ))
            })?;
            for (d, c) in buf.iter_mut().zip(incoming.chunks_exact(4)) {
                *d = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        if self.rank + 1 != self.world {
            self.next.write_all(&to_bytes(buf)).map_err(|e| {
                CommError(format!("broadcast: sending to rank {}: {e}", self.rank + 1))
            })?;
        }
        Ok(())
    }
}

/// The connecting side of the handshake: read the acceptor's nonce, answer with rank, own nonce
/// and proof, then check the acceptor's proof over our nonce (it must be rank `next_rank`).
fn prove(
    mut s: TcpStream,
    rank: usize,
    next_rank: usize,
    target: SocketAddr,
    secret: &RunSecret,
    timeout: Duration,
) -> Result<TcpStream, CommError> {
    let fail = |e: std::io::Error| {
        CommError(format!(
            "ring: handshake with rank {next_rank} at {target}: {e} (does a worker of this run \
             listen there? Every worker needs the same ROTOR_RUN_SECRET)"
        ))
    };
    s.set_read_timeout(Some(timeout)).map_err(fail)?;
    s.set_write_timeout(Some(timeout)).map_err(fail)?;
    let mut nonce = [0u8; NONCE_LEN];
    s.read_exact(&mut nonce).map_err(fail)?;
    let claim = (rank as u32).to_le_bytes();
    let mine = RunSecret::nonce();
    let mut answer = claim.to_vec();
    answer.extend_from_slice(&mine);
    answer.extend_from_slice(&secret.proof(CONTEXT, &nonce, &claim));
    s.write_all(&answer).map_err(fail)?;
    let mut proof = [0u8; PROOF_LEN];
    s.read_exact(&mut proof).map_err(fail)?;
    if !secret.verify(
        ACCEPT_CONTEXT,
        &mine,
        &(next_rank as u32).to_le_bytes(),
        &proof,
    ) {
        return Err(CommError(format!(
            "ring: the process at {target} is not rank {next_rank} of this run (it does not know \
             the run's secret)"
        )));
    }
    Ok(s)
}

/// The accepting side: send a nonce, check that the answer comes from `want_rank` of this run,
/// then prove to it that this is rank `me` of the same run.
fn check(
    mut s: TcpStream,
    me: usize,
    want_rank: usize,
    secret: &RunSecret,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let io = |e: std::io::Error| format!("no valid handshake ({e})");
    s.set_nonblocking(false).map_err(io)?;
    let patience = Some(timeout.min(HANDSHAKE));
    s.set_read_timeout(patience).map_err(io)?;
    s.set_write_timeout(patience).map_err(io)?;
    let nonce = RunSecret::nonce();
    s.write_all(&nonce).map_err(io)?;
    let mut answer = [0u8; 4 + NONCE_LEN + PROOF_LEN];
    s.read_exact(&mut answer).map_err(io)?;
    let (claim, rest) = answer.split_at(4);
    let (theirs, proof) = rest.split_at(NONCE_LEN);
    if !secret.verify(CONTEXT, &nonce, claim, proof) {
        return Err("it does not know the run's secret".into());
    }
    let claimed = u32::from_le_bytes(claim.try_into().unwrap()) as usize;
    if claimed != want_rank {
        return Err(format!(
            "it is rank {claimed}, not the previous rank {want_rank}"
        ));
    }
    s.write_all(&secret.proof(ACCEPT_CONTEXT, theirs, &(me as u32).to_le_bytes()))
        .map_err(io)?;
    Ok(s)
}

/// Binds a listener for the ring on `host` (port chosen by the OS).
pub fn bind(host: &str) -> Result<(TcpListener, SocketAddr), CommError> {
    let l = TcpListener::bind((host, 0))
        .map_err(|e| CommError(format!("cannot listen on {host}: {e}")))?;
    let a = l.local_addr().map_err(|e| CommError(e.to_string()))?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(world: usize) -> Vec<TcpRing> {
        let secret = RunSecret::random();
        let bound: Vec<(TcpListener, SocketAddr)> =
            (0..world).map(|_| bind("127.0.0.1").unwrap()).collect();
        let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.1).collect();
        let handles: Vec<_> = bound
            .into_iter()
            .enumerate()
            .map(|(r, (l, _))| {
                let (addrs, secret) = (addrs.clone(), secret.clone());
                std::thread::spawn(move || {
                    TcpRing::connect(r, world, l, &addrs, &secret, Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn ring_all_reduce_equals_local_sum_and_broadcast_copies_rank0() {
        for world in [2usize, 3] {
            let rings = ring(world);
            let handles: Vec<_> = rings
                .into_iter()
                .map(|mut c| {
                    std::thread::spawn(move || {
                        for n in [1usize, 2, 3, 5, 7, 1000, 1_000_003] {
                            let r = c.rank();
                            let mut buf: Vec<f32> = (0..n)
                                .map(|i| ((i * 7 + r * 13) % 101) as f32 * 0.5)
                                .collect();
                            c.all_reduce_sum(&mut buf).unwrap();
                            for (i, v) in buf.iter().enumerate() {
                                let want: f32 = (0..world)
                                    .map(|q| ((i * 7 + q * 13) % 101) as f32 * 0.5)
                                    .sum();
                                assert_eq!(*v, want, "world {world} n {n} element {i}");
                            }
                            let mut b: Vec<f32> = (0..n).map(|i| (i + 100 * r) as f32).collect();
                            c.broadcast(&mut b).unwrap();
                            assert!(b.iter().enumerate().all(|(i, v)| *v == i as f32));
                        }
                        c.barrier().unwrap();
                        assert!(c.any(c.rank() == 1).unwrap());
                        assert!(!c.any(false).unwrap());
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn a_dead_peer_gives_an_error_naming_it_not_a_hang() {
        let mut rings = ring(2);
        let dead = rings.pop().unwrap();
        drop(dead);
        let mut c = rings.pop().unwrap();
        let start = Instant::now();
        let err = c.all_reduce_sum(&mut [1.0; 16]).unwrap_err();
        assert!(err.0.contains("rank 1"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(9));
    }

    #[test]
    fn strangers_and_garbage_are_refused_while_the_ring_connects() {
        let secret = RunSecret::random();
        let bound: Vec<(TcpListener, SocketAddr)> =
            (0..2).map(|_| bind("127.0.0.1").unwrap()).collect();
        let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.1).collect();
        // Before any worker accepts: garbage, a silent connection, a worker of another run (right
        // protocol, wrong secret) and a right-secret peer claiming the wrong rank, on both ports.
        let mut noise = Vec::new();
        for a in &addrs {
            let mut g = TcpStream::connect(a).unwrap();
            g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            noise.push(g);
            noise.push(TcpStream::connect(a).unwrap());
        }
        let imposters: Vec<_> = addrs
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                let other = RunSecret::random();
                let a = *a;
                let prev = (i + 1) % 2;
                let same = secret.clone();
                [
                    std::thread::spawn(move || {
                        let s = TcpStream::connect(a).unwrap();
                        prove(s, prev, i, a, &other, Duration::from_secs(20)).is_err()
                    }),
                    std::thread::spawn(move || {
                        let s = TcpStream::connect(a).unwrap();
                        // Rank i claiming to be its own predecessor's successor: wrong rank.
                        prove(s, i, i, a, &same, Duration::from_secs(20)).is_err()
                    }),
                ]
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let handles: Vec<_> = bound
            .into_iter()
            .enumerate()
            .map(|(r, (l, _))| {
                let (addrs, secret) = (addrs.clone(), secret.clone());
                std::thread::spawn(move || {
                    let mut c = TcpRing::connect(r, 2, l, &addrs, &secret, Duration::from_secs(30))
                        .unwrap();
                    let mut buf = vec![r as f32 + 1.0; 1001];
                    c.all_reduce_sum(&mut buf).unwrap();
                    buf
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap().iter().all(|v| *v == 3.0));
        }
        for i in imposters {
            assert!(i.join().unwrap(), "an imposter was let into the ring");
        }
        drop(noise);
    }

    #[test]
    fn a_squatter_on_a_ranks_address_is_detected_by_the_connecting_rank() {
        // Something listens where rank 1 should, talks the handshake, but has no secret.
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = squatter.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = squatter.accept().unwrap();
            s.write_all(&RunSecret::nonce()).unwrap();
            let mut answer = [0u8; 4 + NONCE_LEN + PROOF_LEN];
            s.read_exact(&mut answer).unwrap();
            s.write_all(&RunSecret::nonce()).unwrap(); // not a proof
        });
        let s = TcpStream::connect(at).unwrap();
        let err = prove(s, 0, 1, at, &RunSecret::random(), Duration::from_secs(10)).unwrap_err();
        assert!(err.0.contains("is not rank 1 of this run"), "{err}");
        fake.join().unwrap();
    }
}
