//! DNS over TLS to an upstream (RFC 7858): one long-lived connection per server, queries
//! pipelined on it and matched by message ID, a new connection when it breaks or idles out.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

use crate::config::UpstreamServer;
use crate::metrics::Metrics;

/// A connection with nothing in flight for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Queries in flight on one connection at most.
const MAX_INFLIGHT: usize = 1024;

struct Request {
    query: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

/// Answers awaited on a connection: wire ID → (the caller's ID, where the answer goes).
type Pending = Arc<Mutex<HashMap<u16, (u16, oneshot::Sender<Vec<u8>>)>>>;

pub struct DotClient {
    addr: SocketAddr,
    name: Option<ServerName<'static>>,
    connector: TlsConnector,
    conn: tokio::sync::Mutex<Option<mpsc::Sender<Request>>>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "DoT connection closed")
}

impl DotClient {
    pub fn new(server: &UpstreamServer, tls: &Arc<rustls::ClientConfig>) -> DotClient {
        DotClient {
            addr: server.addr,
            name: super::server_name(server).ok(),
            connector: TlsConnector::from(super::tls::with_alpn(tls, &[b"dot"])),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends one query (any ID) and returns the answer with the same ID. A connection that
    /// turns out closed is replaced once.
    pub async fn exchange(&self, query: &[u8], metrics: &Metrics) -> io::Result<Vec<u8>> {
        let mut last = closed();
        for _ in 0..2 {
            let (tx, fresh) = self.connection(metrics).await?;
            let (reply, rx) = oneshot::channel();
            let sent = tx
                .send(Request {
                    query: query.to_vec(),
                    reply,
                })
                .await;
            if sent.is_ok()
                && let Ok(answer) = rx.await
            {
                return Ok(answer);
            }
            last = closed();
            if fresh {
                break;
            }
        }
        Err(last)
    }

    /// The live connection, or a new one (`true`).
    async fn connection(&self, metrics: &Metrics) -> io::Result<(mpsc::Sender<Request>, bool)> {
        let mut conn = self.conn.lock().await;
        if let Some(tx) = conn.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok((tx.clone(), false));
        }
        let tls = super::tls::connect(&self.connector, self.addr, self.name.as_ref()).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run(tls, rx));
        Metrics::inc(&metrics.upstream_connections_total);
        *conn = Some(tx.clone());
        Ok((tx, true))
    }
}

/// Owns one connection: writes queries with IDs unique on it, hands answers back by ID.
async fn run(stream: tokio_rustls::client::TlsStream<TcpStream>, mut rx: mpsc::Receiver<Request>) {
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::new(writer);
    let pending: Pending = Arc::default();
    let answers = Arc::clone(&pending);
    let mut read_task = tokio::spawn(async move {
        loop {
            let len = usize::from(reader.read_u16().await?);
            let mut buf = vec![0u8; len];
            reader.read_exact(&mut buf).await?;
            if buf.len() < 2 {
                continue;
            }
            let wire_id = u16::from_be_bytes([buf[0], buf[1]]);
            let waiter = answers.lock().ok().and_then(|mut m| m.remove(&wire_id));
            if let Some((id, tx)) = waiter {
                buf[..2].copy_from_slice(&id.to_be_bytes());
                let _ = tx.send(buf);
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    let mut next: u16 = rand::random();
    loop {
        tokio::select! {
            req = tokio::time::timeout(IDLE, rx.recv()) => match req {
                Ok(Some(mut r)) => {
                    if r.query.len() < 12 || r.query.len() > usize::from(u16::MAX) {
                        continue;
                    }
                    let registered = match pending.lock() {
                        Ok(mut map) => {
                            // Forget callers that gave up (their attempt timed out).
                            if map.len() > 64 {
                                map.retain(|_, (_, tx)| !tx.is_closed());
                            }
                            if map.len() >= MAX_INFLIGHT {
                                false // dropping the reply tells the caller
                            } else {
                                while map.contains_key(&next) {
                                    next = next.wrapping_add(1);
                                }
                                let id = u16::from_be_bytes([r.query[0], r.query[1]]);
                                r.query[..2].copy_from_slice(&next.to_be_bytes());
                                map.insert(next, (id, r.reply));
                                next = next.wrapping_add(1);
                                true
                            }
                        }
                        Err(_) => break,
                    };
                    if !registered {
                        continue;
                    }
                    let len = (r.query.len() as u16).to_be_bytes();
                    if writer.write_all(&len).await.is_err() || writer.write_all(&r.query).await.is_err() {
                        break;
                    }
                    if rx.is_empty() && writer.flush().await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    if pending.lock().map(|m| m.is_empty()).unwrap_or(true) {
                        break;
                    }
                }
            },
            _ = &mut read_task => break,
        }
    }
    read_task.abort();
    // Dropping the waiters tells their callers the connection is gone.
    if let Ok(mut m) = pending.lock() {
        m.clear();
    }
}
