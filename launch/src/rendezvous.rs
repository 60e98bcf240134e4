//! The rendezvous: rank 0 serves a small TCP key-value store (tokio) that the other workers join
//! with a timeout. Workers publish their ring addresses under `addr/<rank>` and read everyone's.
//! Protocol, one request per line: `SET <key> <value>` -> `OK`; `GET <key>` -> `VAL <value>` once the
//! key exists (the server holds the request until then).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::TcpListener,
    sync::{Mutex, Notify},
};

#[derive(Default)]
struct Store {
    map: Mutex<HashMap<String, String>>,
    changed: Notify,
}

/// Starts the store on `0.0.0.0:port` in a background thread; returns once it listens.
pub fn serve(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the rendezvous runtime")?;
    let listener = rt
        .block_on(TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| {
            format!("cannot serve the rendezvous on port {port} (in use? set MASTER_PORT)")
        })?;
    std::thread::Builder::new()
        .name("rendezvous".into())
        .spawn(move || {
            let store = Arc::new(Store::default());
            rt.block_on(async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let store = store.clone();
                    tokio::spawn(async move {
                        let (r, mut w) = sock.into_split();
                        let mut lines = TokioBufReader::new(r).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let reply = match line.split_once(' ') {
                                Some(("SET", kv)) => {
                                    let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
                                    store.map.lock().await.insert(k.to_string(), v.to_string());
                                    store.changed.notify_waiters();
                                    "OK".to_string()
                                }
                                Some(("GET", k)) => loop {
                                    let notified = store.changed.notified();
                                    if let Some(v) = store.map.lock().await.get(k) {
                                        break format!("VAL {v}");
                                    }
                                    notified.await;
                                },
                                _ => "ERR bad request".to_string(),
                            };
                            if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        })
        .context("cannot spawn the rendezvous thread")?;
    Ok(())
}

/// A connection to the store.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    addr: String,
}

impl Client {
    /// Connects to `host:port`, retrying until `timeout`.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        let addr = format!("{host}:{port}");
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .and_then(|sa| TcpStream::connect_timeout(&sa, Duration::from_secs(1)).ok());
            if let Some(s) = attempt {
                s.set_read_timeout(Some(timeout)).ok();
                return Ok(Self {
                    reader: BufReader::new(s.try_clone()?),
                    writer: s,
                    addr,
                });
            }
            if Instant::now() >= deadline {
                bail!(
                    "cannot reach the rendezvous at {addr} within {timeout:?}: is rank 0 running, and are MASTER_ADDR/MASTER_PORT right?"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn request(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply).with_context(|| {
            format!("rendezvous at {}: no answer to `{line}` in time", self.addr)
        })?;
        if reply.is_empty() {
            return Err(anyhow!("rendezvous at {} closed the connection", self.addr));
        }
        Ok(reply.trim_end().to_string())
    }

    /// Stores `key = value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match self.request(&format!("SET {key} {value}"))?.as_str() {
            "OK" => Ok(()),
            other => bail!("rendezvous: unexpected reply {other:?}"),
        }
    }

    /// Waits for `key` and returns its value.
    pub fn get(&mut self, key: &str) -> Result<String> {
        let reply = self.request(&format!("GET {key}"))?;
        reply
            .strip_prefix("VAL ")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("rendezvous: unexpected reply {reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_waits_for_keys_and_clients_time_out_naming_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        serve(port).unwrap();
        let waiter = std::thread::spawn(move || {
            let mut c = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
            c.get("addr/1").unwrap()
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut c = Client::connect("127.0.0.1", port, Duration::from_secs(5)).unwrap();
        c.set("addr/1", "10.0.0.2:4000").unwrap();
        assert_eq!(waiter.join().unwrap(), "10.0.0.2:4000");
        assert_eq!(c.get("addr/1").unwrap(), "10.0.0.2:4000");
        let unused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Client::connect("127.0.0.1", unused, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{unused}")), "{err}");
    }
}
