//! Upstream exchange: one question to the configured servers, the raw answer back.
//!
//! Owns transports (UDP with a fresh random port per query, TCP when the answer is truncated),
//! failover in order of health, per-attempt and overall timeouts. The answer is returned as the
//! upstream sent it, checked for ID and question, so nothing is rewritten on the way. It knows
//! nothing of the cache, the policy or the client.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use crate::dns::wire;
use crate::metrics::Metrics;

/// The EDNS payload pinhole advertises to upstreams.
pub const UPSTREAM_PAYLOAD: u16 = 1232;

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
    #[error("upstream {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {0} sent a malformed or mismatched answer")]
    Malformed(SocketAddr),
}

/// One upstream server and its recent health.
struct Server {
    addr: SocketAddr,
    /// Consecutive failures; 0 = healthy. Servers with fewer failures are tried first.
    failures: AtomicU32,
}

/// What to ask: the question as the client wrote it, and the flags that change the answer.
pub struct Question<'a> {
    /// QNAME (wire), QTYPE, QCLASS.
    pub wire: &'a [u8],
    pub cd: bool,
    pub dnssec_ok: bool,
}

/// The configured upstream servers.
pub struct Upstreams {
    servers: Vec<Server>,
    attempt_timeout: Duration,
    timeout: Duration,
}

impl Upstreams {
    pub fn new(addrs: &[SocketAddr], attempt_timeout: Duration, timeout: Duration) -> Upstreams {
        Upstreams {
            servers: addrs
                .iter()
                .map(|&addr| Server {
                    addr,
                    failures: AtomicU32::new(0),
                })
                .collect(),
            attempt_timeout,
            timeout,
        }
    }

    /// Servers in the order to try them: fewest recent failures first, config order on ties.
    fn order(&self) -> Vec<&Server> {
        let mut v: Vec<&Server> = self.servers.iter().collect();
        v.sort_by_key(|s| s.failures.load(Ordering::Relaxed).min(8));
        v
    }

    /// Asks the servers until one gives a usable answer, each at most `attempt_timeout`, going
    /// round the list up to three times within `timeout`. SERVFAIL and REFUSED make pinhole try
    /// the next server; if every server says so, the last such answer is returned as it is.
    pub async fn exchange(
        &self,
        q: &Question<'_>,
        metrics: &Metrics,
    ) -> Result<Vec<u8>, UpstreamError> {
        let deadline = Instant::now() + self.timeout;
        let mut last_answer = None;
        let mut last_error = None;
        // Servers in order of health, again from the top while time is left: with one server, a
        // lost datagram costs one attempt, not the whole query.
        let order = self.order();
        let attempts = order.iter().cycle().take(order.len() * 3);
        let mut refusals = 0;
        for server in attempts {
            let attempt_deadline = (Instant::now() + self.attempt_timeout).min(deadline);
            match timeout_at(attempt_deadline, exchange_one(server.addr, q)).await {
                Ok(Ok(answer)) => {
                    server.failures.store(0, Ordering::Relaxed);
                    let rcode = answer.get(3).map_or(0, |b| b & 0x0f);
                    if rcode == wire::RCODE_SERVFAIL || rcode == wire::RCODE_REFUSED {
                        last_answer = Some(answer);
                        refusals += 1;
                        if refusals >= order.len() {
                            break;
                        }
                        continue;
                    }
                    return Ok(answer);
                }
                Ok(Err(e)) => {
                    server.failures.fetch_add(1, Ordering::Relaxed);
                    Metrics::inc(&metrics.upstream_errors_total);
                    tracing::warn!(server = %server.addr, error = %e, "upstream failed");
                    last_error = Some(e);
                }
                Err(_) => {
                    server.failures.fetch_add(1, Ordering::Relaxed);
                    Metrics::inc(&metrics.upstream_timeouts_total);
                    tracing::warn!(server = %server.addr, timeout_ms = self.attempt_timeout.as_millis() as u64, "upstream did not answer in time");
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if let Some(answer) = last_answer {
            return Ok(answer);
        }
        Err(last_error.unwrap_or(UpstreamError::Timeout(self.timeout)))
    }
}

/// One server: UDP first, TCP if the UDP answer is truncated.
async fn exchange_one(server: SocketAddr, q: &Question<'_>) -> Result<Vec<u8>, UpstreamError> {
    let id: u16 = rand::random();
    let mut query = Vec::with_capacity(q.wire.len() + 24);
    wire::build_query(&mut query, id, q.wire, q.cd, q.dnssec_ok, UPSTREAM_PAYLOAD);
    let io = |source| UpstreamError::Io { server, source };
    let answer = udp_exchange(server, &query, id, q.wire).await.map_err(io)?;
    if answer.get(2).is_some_and(|b| b & 0x02 != 0) {
        return tcp_exchange(server, &query, id, q.wire).await.map_err(io);
    }
    Ok(answer)
}

fn is_answer_to(answer: &[u8], id: u16, question: &[u8]) -> bool {
    answer.len() >= wire::HEADER_LEN
        && wire::u16_at(answer, 0) == id
        && answer[2] & 0x80 != 0
        && wire::same_question(answer, question)
}

/// UDP from a fresh socket on a random port, connected to the server so that only its answers
/// arrive; answers with another ID or question are ignored (spoofing attempts, stale answers).
async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    // Answers are bounded by the advertised payload; a larger datagram arrives cut, fails the
    // checks below or the scan, and is never taken as complete. No zeroing of the buffer.
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        socket.recv_buf(&mut buf).await?;
        if is_answer_to(&buf, id, question) {
            return Ok(buf);
        }
    }
}

/// TCP, one query on a new connection (RFC 7766 framing).
async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    loop {
        let len = usize::from(stream.read_u16().await?);
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        if is_answer_to(&buf, id, question) {
            return Ok(buf);
        }
    }
}
