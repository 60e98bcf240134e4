//! The rendezvous store, spoken in the wire protocol of torch's c10d `TCPStore` (torch 2.15,
//! REFERENCE.md 7.5), so that one client serves every way a run starts:
//! - under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) the workers are clients of the store
//!   torchrun's agent already serves at `MASTER_ADDR:MASTER_PORT`;
//! - otherwise (rotor's launcher, SLURM, hand-set `RANK`/`WORLD_SIZE`) rank 0 serves
//!   [`serve`], a store that speaks the same protocol (the queries rotor uses), bound to the
//!   address the run was told about, and requires the run's secret when there is one: after the
//!   TCPStore handshake a client sends query `0x80`, gets a nonce and answers with an HMAC of the
//!   secret ([`RunSecret`]); anything else is logged and the connection closed.
//!
//! Keys are namespaced `/<run id>/rotor/<restart>/<name>`: torchrun's store outlives worker
//! restarts, and a key of an earlier attempt must not satisfy a WAIT of this one.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::{Mutex, Notify},
};
use trainer::RunSecret;

/// torch's `QueryType` codes (2.15) and rotor's authentication query.
mod query {
    pub const VALIDATE: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const GET: u8 = 0x03;
    pub const ADD: u8 = 0x04;
    pub const CHECK: u8 = 0x05;
    pub const WAIT: u8 = 0x06;
    pub const CANCEL_WAIT: u8 = 0x0c;
    pub const PING: u8 = 0x0d;
    /// rotor's store only: prove the run secret.
    pub const AUTH: u8 = 0x80;
}
/// `VALIDATE`'s magic number.
const MAGIC: u32 = 0x3C85_F7CE;
/// `CHECK` / `WAIT` replies.
const READY: u8 = 0x00;
const NOT_READY: u8 = 0x01;
const WAIT_CANCELED: u8 = 0x01;
/// What the client's and the store's proofs are bound to.
const CONTEXT: &[u8] = b"rotor-store-v1";
const SERVER_CONTEXT: &[u8] = b"rotor-store-server-v1";
/// Limits of torch's libuv server, kept by rotor's server.
const MAX_KEY: u64 = 8 << 10;
const MAX_VALUE: u64 = 8 << 20;
const MAX_KEYS: u64 = 131_072;
/// How long a new connection may take to say hello and prove itself.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A WAIT that timed out (the keys did not all appear in time); the connection stays usable.
#[derive(Debug)]
pub struct WaitTimedOut(String);

impl std::fmt::Display for WaitTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WaitTimedOut {}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The most connections rotor's store serves at once (a run needs one or two per worker).
const MAX_CONNECTIONS: usize = 4096;

fn push_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
    buf.extend_from_slice(b);
}

/// A client connection to a TCPStore (torch's or rotor's).
pub struct Store {
    stream: TcpStream,
    addr: SocketAddr,
    prefix: String,
    timeout: Duration,
}

impl Store {
    /// Connects to `host:port`, trying every address `host` resolves to and retrying (backoff
    /// 100 ms x 1.5, at most 2 s) until `timeout`; then the TCPStore handshake (VALIDATE + PING)
    /// and, with `secret`, rotor's proof. `prefix` goes before every key.
    pub fn connect(
        host: &str,
        port: u16,
        prefix: &str,
        secret: Option<&RunSecret>,
        timeout: Duration,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(100);
        let mut last = String::from("no address");
        loop {
            let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = format!("cannot resolve {host}: {e}");
                    Vec::new()
                }
            };
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(stream) => {
                        let mut s = Self {
                            stream,
                            addr,
                            prefix: prefix.to_string(),
                            timeout,
                        };
                        s.handshake(secret)?;
                        return Ok(s);
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "cannot reach the rendezvous store at {host}:{port} within {timeout:?} ({last}): \
                     is rank 0 (or torchrun's agent) running there, and are MASTER_ADDR / \
                     MASTER_PORT (or --master) right?"
                );
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = pause.mul_f64(1.5).min(Duration::from_secs(2));
        }
    }

    fn handshake(&mut self, secret: Option<&RunSecret>) -> Result<()> {
        self.stream.set_nodelay(true).ok();
        self.stream
            .set_write_timeout(Some(self.timeout))
            .context("store socket")?;
        let nonce = std::process::id().to_le_bytes();
        let mut hello = vec![query::VALIDATE];
        hello.extend_from_slice(&MAGIC.to_le_bytes());
        hello.push(query::PING);
        hello.extend_from_slice(&nonce);
        self.send(&hello)?;
        let mut echo = [0u8; 4];
        self.read_within(&mut echo, self.timeout.min(HANDSHAKE), "the handshake")?;
        if echo != nonce {
            bail!(
                "{} answered the TCPStore handshake with {echo:02x?}, not the nonce: is it a \
                 TCPStore of the same torch version (2.15)?",
                self.addr
            );
        }
        if let Some(secret) = secret {
            // Mutual: the store proves the secret over our nonce, then we over its nonce.
            let mine = RunSecret::nonce();
            let mut hello = vec![query::AUTH];
            hello.extend_from_slice(&mine);
            self.send(&hello)?;
            let mut reply = [0u8; trainer::auth::NONCE_LEN + trainer::auth::PROOF_LEN];
            self.read_within(&mut reply, self.timeout.min(HANDSHAKE), "the run secret")
                .with_context(|| {
                    format!(
                        "the rendezvous store at {} does not take rotor's run secret: is it \
                         another program's, torchrun's (then TORCHELASTIC_USE_AGENT_STORE must be \
                         True), or did rank 0 start without ROTOR_RUN_SECRET?",
                        self.addr
                    )
                })?;
            let (theirs, proof) = reply.split_at(trainer::auth::NONCE_LEN);
            if !secret.verify(SERVER_CONTEXT, &mine, b"", proof) {
                bail!(
                    "the rendezvous store at {} does not know this run's secret: it belongs to \
                     another run (every process of a run needs the same ROTOR_RUN_SECRET)",
                    self.addr
                );
            }
            self.send(&secret.proof(CONTEXT, theirs, b""))?;
            let mut ack = [0u8; 1];
            self.read_within(&mut ack, self.timeout.min(HANDSHAKE), "the run secret")
                .with_context(|| {
                    format!(
                        "the rendezvous store at {} refused this worker's run secret: every \
                         process of a run needs the same ROTOR_RUN_SECRET",
                        self.addr
                    )
                })?;
            if ack[0] != 1 {
                bail!(
                    "rendezvous store at {}: unexpected answer to the run secret",
                    self.addr
                );
            }
        }
        Ok(())
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).with_context(|| {
            format!(
                "rendezvous store at {}: connection lost (did rank 0 or torchrun's agent exit?)",
                self.addr
            )
        })
    }

    fn read_raw(&mut self, buf: &mut [u8], patience: Duration) -> std::io::Result<()> {
        self.stream
            .set_read_timeout(Some(patience.max(Duration::from_millis(1))))?;
        self.stream.read_exact(buf)
    }

    fn explain(&self, e: std::io::Error, patience: Duration, what: &str) -> anyhow::Error {
        let why = if is_timeout(&e) {
            format!("no answer within {patience:?}")
        } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "it closed the connection (rank 0 or torchrun's agent exited, or rotor's store \
             refused this process: without the run's ROTOR_RUN_SECRET it lets nobody in)"
                .to_string()
        } else {
            e.to_string()
        };
        anyhow::anyhow!("rendezvous store at {}: {what}: {why}", self.addr)
    }

    fn read_within(&mut self, buf: &mut [u8], patience: Duration, what: &str) -> Result<()> {
        self.read_raw(buf, patience)
            .map_err(|e| self.explain(e, patience, what))
    }

    /// How long a query may wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// Stores `name = value` (no reply: a later query on this connection is ordered after it).
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<()> {
        let mut req = vec![query::SET];
        push_bytes(&mut req, &self.key(name));
        push_bytes(&mut req, value);
        self.send(&req)
    }

    /// Waits (up to the timeout) until every key exists; `what` says what the keys stand for in
    /// the error. A timed-out wait is cancelled on the server, as torch does.
    pub fn wait(&mut self, names: &[&str], what: &str) -> Result<()> {
        let mut req = vec![query::WAIT];
        req.extend_from_slice(&(names.len() as u64).to_le_bytes());
        for n in names {
            push_bytes(&mut req, &self.key(n));
        }
        self.send(&req)?;
        let mut reply = [0u8; 1];
        match self.read_raw(&mut reply, self.timeout) {
            Ok(()) if reply[0] == READY => return Ok(()),
            Ok(()) => bail!(
                "rendezvous store at {}: WAIT answered {:#04x}",
                self.addr,
                reply[0]
            ),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(self.explain(e, self.timeout, what)),
        }
        // Timed out: cancel. The store answers WAIT_CANCELED, after READY if that raced ahead.
        self.send(&[query::CANCEL_WAIT])?;
        self.read_within(&mut reply, HANDSHAKE, "cancelling a wait")?;
        if reply[0] == READY {
            self.read_within(&mut reply, HANDSHAKE, "cancelling a wait")?;
            return Ok(());
        }
        Err(WaitTimedOut(format!(
            "waited {:?} for {what} at the rendezvous store {}, in vain",
            self.timeout, self.addr
        ))
        .into())
    }

    /// Waits for `name`, then reads it (WAIT then GET, as torch's client does).
    pub fn get(&mut self, name: &str, what: &str) -> Result<Vec<u8>> {
        self.wait(&[name], what)?;
        let mut req = vec![query::GET];
        push_bytes(&mut req, &self.key(name));
        self.send(&req)?;
        let mut len = [0u8; 8];
        self.read_within(&mut len, HANDSHAKE, what)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_VALUE {
            bail!(
                "rendezvous store at {}: a value of {len} bytes for {what}",
                self.addr
            );
        }
        let mut value = vec![0u8; len as usize];
        self.read_within(&mut value, HANDSHAKE, what)?;
        Ok(value)
    }

    /// Adds `delta` to the counter `name` (absent = 0); returns the new value.
    #[cfg(test)]
    pub fn add(&mut self, name: &str, delta: i64) -> Result<i64> {
        let mut req = vec![query::ADD];
        push_bytes(&mut req, &self.key(name));
        req.extend_from_slice(&delta.to_le_bytes());
        self.send(&req)?;
        let mut v = [0u8; 8];
        self.read_within(&mut v, HANDSHAKE, "a counter")?;
        Ok(i64::from_le_bytes(v))
    }

    /// Whether every key exists now.
    pub fn check(&mut self, names: &[&str]) -> Result<bool> {
        let mut req = vec![query::CHECK];
        req.extend_from_slice(&(names.len() as u64).to_le_bytes());
        for n in names {
            push_bytes(&mut req, &self.key(n));
        }
        self.send(&req)?;
        let mut r = [0u8; 1];
        self.read_within(&mut r, HANDSHAKE, "a check")?;
        Ok(r[0] == READY)
    }
}

#[derive(Default)]
struct Shared {
    map: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    changed: Notify,
}

/// Serves a store on `host:port` (the first address `host` resolves to that this machine can bind;
/// port 0: one the system picks) in a background thread; returns the address once it listens.
/// With `secret`, clients must prove it (and the store proves it to them).
pub fn serve(host: &str, port: u16, secret: Option<RunSecret>) -> Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the rendezvous runtime")?;
    let ips: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the rendezvous host {host}"))?
        .map(|a| a.ip())
        .collect();
    let mut listener = None;
    let mut errors = Vec::new();
    for ip in ips {
        match rt.block_on(TcpListener::bind((ip, port))) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) => errors.push(format!("{ip}: {e}")),
        }
    }
    let Some(listener) = listener else {
        bail!(
            "cannot serve the rendezvous on {host}:{port} ({}): is the port in use (choose \
             another MASTER_PORT / --master port), and is {host} an address of this machine?",
            errors.join("; ")
        );
    };
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("rendezvous".into())
        .spawn(move || {
            let shared = Arc::new(Shared::default());
            let secret = Arc::new(secret);
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            rt.block_on(async move {
                loop {
                    let (sock, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors, an aborted connection: wait, do not spin.
                            tracing::debug!("rendezvous store {local}: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            "rendezvous store {local}: refused the connection from {peer}: \
                             {MAX_CONNECTIONS} connections are open"
                        );
                        continue;
                    };
                    let (shared, secret) = (shared.clone(), secret.clone());
                    tokio::spawn(async move {
                        sock.set_nodelay(true).ok();
                        if let Err(why) = session(sock, &shared, secret.as_ref().as_ref()).await {
                            tracing::warn!(
                                "rendezvous store {local}: refused the connection from {peer}: {why}"
                            );
                        }
                        drop(slot);
                    });
                }
            });
        })
        .context("cannot spawn the rendezvous thread")?;
    Ok(local)
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

async fn read_bytes(r: &mut Reader, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let len = r.read_u64_le().await.map_err(|e| e.to_string())?;
    if len > limit {
        return Err(format!("a {what} of {len} bytes (limit {limit})"));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(b)
}

async fn read_keys(r: &mut Reader) -> Result<Vec<Vec<u8>>, String> {
    let n = r.read_u64_le().await.map_err(|e| e.to_string())?;
    if n > MAX_KEYS {
        return Err(format!("{n} keys in one query (limit {MAX_KEYS})"));
    }
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        keys.push(read_bytes(r, MAX_KEY, "key").await?);
    }
    Ok(keys)
}

/// One client connection. `Ok` when the client hung up; `Err` says why it was cut off.
async fn session(
    sock: tokio::net::TcpStream,
    shared: &Shared,
    secret: Option<&RunSecret>,
) -> Result<(), String> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    // Until the client has said hello (and proven the secret, when there is one), everything must
    // happen within HANDSHAKE: a stranger cannot hold a connection open.
    let hello = async {
        let io = |e: std::io::Error| e.to_string();
        let code = r.read_u8().await.map_err(io)?;
        let magic = r.read_u32_le().await.map_err(io)?;
        if code != query::VALIDATE || magic != MAGIC {
            return Err(format!(
                "it did not open with the TCPStore handshake (first bytes {code:#04x} {magic:#010x})"
            ));
        }
        let Some(secret) = secret else {
            return Ok(());
        };
        loop {
            match r.read_u8().await.map_err(io)? {
                query::PING => {
                    let nonce = r.read_u32_le().await.map_err(io)?;
                    w.write_all(&nonce.to_le_bytes()).await.map_err(io)?;
                }
                query::AUTH => {
                    let mut theirs = [0u8; trainer::auth::NONCE_LEN];
                    r.read_exact(&mut theirs).await.map_err(io)?;
                    let mine = RunSecret::nonce();
                    let mut reply = mine.to_vec();
                    reply.extend_from_slice(&secret.proof(SERVER_CONTEXT, &theirs, b""));
                    w.write_all(&reply).await.map_err(io)?;
                    let mut proof = [0u8; trainer::auth::PROOF_LEN];
                    r.read_exact(&mut proof).await.map_err(io)?;
                    if !secret.verify(CONTEXT, &mine, b"", &proof) {
                        return Err(
                            "a wrong proof of the run secret (another run's worker?)".into()
                        );
                    }
                    w.write_all(&[1]).await.map_err(io)?;
                    return Ok(());
                }
                code => {
                    return Err(format!(
                        "query {code:#04x} before proving the run secret (a process of another \
                         run, or one without ROTOR_RUN_SECRET?)"
                    ));
                }
            }
        }
    };
    tokio::time::timeout(HANDSHAKE, hello)
        .await
        .map_err(|_| format!("no handshake within {HANDSHAKE:?}"))??;
    let io = |e: std::io::Error| e.to_string();
    loop {
        let code = match r.read_u8().await {
            Ok(c) => c,
            Err(_) => return Ok(()),
        };
        match code {
            query::VALIDATE => {
                if r.read_u32_le().await.map_err(io)? != MAGIC {
                    return Err("a wrong VALIDATE magic".into());
                }
            }
            query::PING => {
                let nonce = r.read_u32_le().await.map_err(io)?;
                w.write_all(&nonce.to_le_bytes()).await.map_err(io)?;
            }
            query::AUTH if secret.is_some() => return Err("a second run-secret handshake".into()),
            query::AUTH => {
                return Err(
                    "it offers a run secret, and this store has none (rank 0 was \
                            started without ROTOR_RUN_SECRET?)"
                        .into(),
                );
            }
            query::SET => {
                let k = read_bytes(&mut r, MAX_KEY, "key").await?;
                let v = read_bytes(&mut r, MAX_VALUE, "value").await?;
                shared.map.lock().await.insert(k, v);
                shared.changed.notify_waiters();
            }
            query::GET => {
                let k = read_bytes(&mut r, MAX_KEY, "key").await?;
                let v = shared.map.lock().await.get(&k).cloned().unwrap_or_default();
                let mut out = Vec::with_capacity(8 + v.len());
                push_bytes(&mut out, &v);
                w.write_all(&out).await.map_err(io)?;
            }
            query::ADD => {
                let k = read_bytes(&mut r, MAX_KEY, "key").await?;
                let delta = r.read_i64_le().await.map_err(io)?;
                let mut map = shared.map.lock().await;
                let now = match map.get(&k) {
                    None => 0,
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or("ADD to a value that is not a number")?,
                };
                let new = now.wrapping_add(delta);
                map.insert(k, new.to_string().into_bytes());
                drop(map);
                shared.changed.notify_waiters();
                w.write_all(&new.to_le_bytes()).await.map_err(io)?;
            }
            query::CHECK => {
                let keys = read_keys(&mut r).await?;
                let map = shared.map.lock().await;
                let all = keys.iter().all(|k| map.contains_key(k));
                drop(map);
                w.write_all(&[if all { READY } else { NOT_READY }])
                    .await
                    .map_err(io)?;
            }
            query::WAIT => {
                let keys = read_keys(&mut r).await?;
                loop {
                    let notified = shared.changed.notified();
                    let all = {
                        let map = shared.map.lock().await;
                        keys.iter().all(|k| map.contains_key(k))
                    };
                    if all {
                        w.write_all(&[READY]).await.map_err(io)?;
                        break;
                    }
                    tokio::select! {
                        _ = notified => {}
                        c = r.read_u8() => match c {
                            Ok(query::CANCEL_WAIT) => {
                                w.write_all(&[WAIT_CANCELED]).await.map_err(io)?;
                                break;
                            }
                            Ok(other) => {
                                return Err(format!("query {other:#04x} during a WAIT"));
                            }
                            Err(_) => return Ok(()),
                        },
                    }
                }
            }
            query::CANCEL_WAIT => w.write_all(&[WAIT_CANCELED]).await.map_err(io)?,
            other => return Err(format!("an unsupported query {other:#04x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One recorded run of torch's client against torch's server (scripts/record-tcpstore.py).
    struct Transcript {
        ops: Vec<serde_json::Value>,
        /// (client to server?, bytes), consecutive bytes of one direction merged.
        events: Vec<(bool, Vec<u8>)>,
        prefix: String,
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn transcript() -> Transcript {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/tcpstore-torch.json"
        );
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            t["torch"].as_str().unwrap().starts_with("2.15"),
            "re-record: {path}"
        );
        Transcript {
            ops: t["ops"].as_array().unwrap().clone(),
            events: t["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["dir"] == "c2s", unhex(e["hex"].as_str().unwrap())))
                .collect(),
            prefix: t["key_prefix"].as_str().unwrap().to_string(),
        }
    }

    fn strs(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// Runs the transcript's operations through rotor's client, checking each result against
    /// what torch's client got.
    fn run_ops(store: &mut Store, ops: &[serde_json::Value]) {
        for op in ops {
            let what = op[0].as_str().unwrap();
            match what {
                "set" => store
                    .set(op[1].as_str().unwrap(), op[2].as_str().unwrap().as_bytes())
                    .unwrap(),
                "wait" => {
                    let keys = strs(&op[1]);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    store.wait(&refs, "keys").unwrap();
                }
                "get" => assert_eq!(
                    store.get(op[1].as_str().unwrap(), "a key").unwrap(),
                    op[2].as_str().unwrap().as_bytes()
                ),
                "check" => {
                    let keys = strs(&op[1]);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    assert_eq!(store.check(&refs).unwrap(), op[2].as_bool().unwrap());
                }
                "add" => assert_eq!(
                    store
                        .add(op[1].as_str().unwrap(), op[2].as_i64().unwrap())
                        .unwrap(),
                    op[3].as_i64().unwrap()
                ),
                "wait_times_out" => {
                    let keys = strs(&op[1]);
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let err = store.wait(&refs, "rank 9").unwrap_err().to_string();
                    assert!(err.contains("rank 9"), "{err}");
                }
                other => panic!("unknown op {other} in the transcript"),
            }
        }
    }

    #[test]
    fn client_sends_exactly_what_torchs_client_sent_and_reads_torchs_server() {
        let t = transcript();
        let mut events = t.events.clone();
        // The PING nonce is the client's pid: patch in ours.
        let pid = std::process::id().to_le_bytes();
        assert_eq!(events[0].1[5], query::PING);
        events[0].1[6..10].copy_from_slice(&pid);
        events[1].1[..4].copy_from_slice(&pid);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for (i, (c2s, bytes)) in events.iter().enumerate() {
                if *c2s {
                    let mut got = vec![0u8; bytes.len()];
                    s.read_exact(&mut got)
                        .unwrap_or_else(|e| panic!("exchange {i}: {e}"));
                    assert_eq!(
                        got, *bytes,
                        "exchange {i}: rotor's client sent {got:02x?}, torch's sent {bytes:02x?}"
                    );
                } else {
                    s.write_all(bytes).unwrap();
                }
            }
            // Nothing more than torch sent.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "extra bytes {rest:02x?}");
        });
        let mut store =
            Store::connect("127.0.0.1", port, &t.prefix, None, Duration::from_secs(1)).unwrap();
        run_ops(&mut store, &t.ops);
        drop(store);
        server.join().unwrap();
    }

    #[test]
    fn server_answers_torchs_client_exactly_as_torchs_server_did() {
        let t = transcript();
        let port = serve("127.0.0.1", 0, None).unwrap().port();
        // The other rank's key, set on its own connection as in the recording.
        let mut other =
            Store::connect("127.0.0.1", port, &t.prefix, None, Duration::from_secs(5)).unwrap();
        other.set("addr/1", b"127.0.0.1:40002").unwrap();
        assert!(other.check(&["addr/1"]).unwrap());
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for (i, (c2s, bytes)) in t.events.iter().enumerate() {
            if *c2s {
                s.write_all(bytes).unwrap();
            } else {
                let mut got = vec![0u8; bytes.len()];
                s.read_exact(&mut got)
                    .unwrap_or_else(|e| panic!("exchange {i}: {e}"));
                assert_eq!(
                    got, *bytes,
                    "exchange {i}: rotor's server answered differently"
                );
            }
        }
    }

    #[test]
    fn server_refuses_strangers_and_garbage_and_keeps_serving() {
        let secret = RunSecret::random();
        let port = serve("127.0.0.1", 0, Some(secret.clone())).unwrap().port();
        let t = Duration::from_secs(30);
        let mut good = Store::connect("127.0.0.1", port, "/r/rotor/0/", Some(&secret), t).unwrap();
        // A waiter on its own connection, woken by a set on another.
        let waiter = {
            let secret = secret.clone();
            std::thread::spawn(move || {
                let mut w =
                    Store::connect("127.0.0.1", port, "/r/rotor/0/", Some(&secret), t).unwrap();
                w.get("late", "the late key").unwrap()
            })
        };
        let closed = |mut s: TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut b = [0u8; 64];
            matches!(s.read(&mut b), Ok(0) | Err(_))
        };
        // Garbage instead of the handshake.
        let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
        g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(closed(g));
        // torch's handshake, then a SET without proving the secret: refused, nothing stored.
        let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req = vec![query::VALIDATE];
        req.extend_from_slice(&MAGIC.to_le_bytes());
        req.push(query::SET);
        push_bytes(&mut req, b"/r/rotor/0/late");
        push_bytes(&mut req, b"forged");
        raw.write_all(&req).unwrap();
        assert!(closed(raw));
        // A worker of another run.
        let err = Store::connect(
            "127.0.0.1",
            port,
            "/r/rotor/0/",
            Some(&RunSecret::random()),
            t,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("ROTOR_RUN_SECRET"), "{err:#}");
        // A proven client announcing an absurd length is cut off without the allocation.
        let mut greedy =
            Store::connect("127.0.0.1", port, "/r/rotor/0/", Some(&secret), t).unwrap();
        let mut req = vec![query::SET];
        req.extend_from_slice(&u64::MAX.to_le_bytes());
        greedy.send(&req).unwrap();
        assert!(greedy.check(&["x"]).is_err());
        // The store still works for the run.
        assert!(!good.check(&["late"]).unwrap());
        good.set("late", b"value").unwrap();
        assert_eq!(waiter.join().unwrap(), b"value");
        assert_eq!(good.get("late", "it").unwrap(), b"value");
    }

    #[test]
    fn clients_time_out_naming_the_address_and_what_they_waited_for() {
        // Port 1 (tcpmux): privileged and unused, so no other test can take it in between.
        let unused = 1;
        let err = Store::connect("127.0.0.1", unused, "/", None, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{unused}")), "{err}");
        let port = serve("127.0.0.1", 0, None).unwrap().port();
        let mut s =
            Store::connect("127.0.0.1", port, "/x/", None, Duration::from_millis(500)).unwrap();
        let start = Instant::now();
        let err = s.get("addr/1", "rank 1 (node 1)").unwrap_err();
        assert!(err.downcast_ref::<WaitTimedOut>().is_some(), "{err}");
        let err = err.to_string();
        assert!(err.contains("rank 1 (node 1)"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        // The connection is still usable after the cancelled wait.
        s.set("addr/1", b"a").unwrap();
        assert_eq!(s.get("addr/1", "it").unwrap(), b"a");
    }
}
