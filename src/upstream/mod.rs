//! Upstream exchange: one question to the configured servers, the raw answer back.
//!
//! Owns the transports (plain UDP/TCP, DNS over TLS, DNS over HTTPS), failover in order of
//! health, per-attempt and overall timeouts, and the fallback from encrypted to plain servers
//! (only when `fallback` allows it; each fallback is logged and counted). The answer is
//! returned as the upstream sent it, checked for ID and question, so nothing is rewritten on
//! the way. It knows nothing of the cache, the policy or the client.

pub mod doh;
pub mod dot;
pub mod plain;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::time::{Instant, timeout_at};

use crate::config::{UpstreamConfig, UpstreamProto, UpstreamServer};
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
        server: String,
        source: std::io::Error,
    },
    #[error("upstream {0} sent a malformed or mismatched answer")]
    Malformed(String),
    #[error("every encrypted upstream failed and [upstream] fallback is off: {0}")]
    NoFallback(Box<UpstreamError>),
}

/// How one server is reached.
enum Link {
    Plain(SocketAddr),
    Tls(dot::DotClient),
    Https(doh::DohClient),
}

/// One upstream server and its recent health.
struct Server {
    label: String,
    link: Link,
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

/// The configured upstream servers: encrypted ones first, plain ones for fallback (or alone).
pub struct Upstreams {
    encrypted: Vec<Server>,
    plain: Vec<Server>,
    fallback: bool,
    attempt_timeout: Duration,
    timeout: Duration,
}

impl Upstreams {
    pub fn new(config: &UpstreamConfig) -> Upstreams {
        let tls = config.tls_client.clone();
        let mut encrypted = Vec::new();
        let mut plain = Vec::new();
        for s in &config.resolved {
            let link = match (s.proto, &tls) {
                (UpstreamProto::Plain, _) => Link::Plain(s.addr),
                (UpstreamProto::Tls, Some(tls)) => Link::Tls(dot::DotClient::new(s, tls)),
                (UpstreamProto::Https, Some(tls)) => Link::Https(doh::DohClient::new(s, tls)),
                // Validation builds the TLS settings whenever an encrypted server is listed.
                (_, None) => continue,
            };
            let server = Server {
                label: s.to_string(),
                link,
                failures: AtomicU32::new(0),
            };
            if s.is_encrypted() {
                encrypted.push(server);
            } else {
                plain.push(server);
            }
        }
        Upstreams {
            encrypted,
            plain,
            fallback: config.fallback,
            attempt_timeout: config.attempt_timeout(),
            timeout: config.timeout(),
        }
    }

    /// Asks the encrypted servers (or, with none listed, the plain ones) until one gives a
    /// usable answer. When every encrypted server fails, the plain servers are asked only if
    /// `fallback` is on; otherwise the error stands and the client gets SERVFAIL.
    pub async fn exchange(
        &self,
        q: &Question<'_>,
        metrics: &Metrics,
    ) -> Result<Vec<u8>, UpstreamError> {
        let deadline = Instant::now() + self.timeout;
        if self.encrypted.is_empty() {
            return self.ask(&self.plain, q, deadline, metrics).await;
        }
        let can_fall_back = self.fallback && !self.plain.is_empty();
        // Leave the plain servers at least one attempt's time.
        let encrypted_deadline = if can_fall_back {
            (deadline - self.attempt_timeout).max(Instant::now() + self.attempt_timeout / 2)
        } else {
            deadline
        };
        match self
            .ask(&self.encrypted, q, encrypted_deadline, metrics)
            .await
        {
            Ok(answer) => Ok(answer),
            Err(e) if can_fall_back => {
                Metrics::inc(&metrics.upstream_fallbacks_total);
                tracing::warn!(error = %e, "every encrypted upstream failed; falling back to plain DNS ([upstream] fallback = true)");
                self.ask(&self.plain, q, deadline, metrics).await
            }
            Err(e) => {
                Metrics::inc(&metrics.upstream_no_fallback_total);
                Err(UpstreamError::NoFallback(Box::new(e)))
            }
        }
    }

    /// Servers in order of health, again from the top while time is left (up to three rounds):
    /// with one server, a lost datagram costs one attempt, not the whole query. SERVFAIL and
    /// REFUSED make pinhole try the next server; if every server says so, the last such
    /// answer is returned as it is.
    async fn ask(
        &self,
        servers: &[Server],
        q: &Question<'_>,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut order: Vec<&Server> = servers.iter().collect();
        order.sort_by_key(|s| s.failures.load(Ordering::Relaxed).min(8));
        let mut last_answer = None;
        let mut last_error = None;
        let mut refusals = 0;
        for server in order.iter().cycle().take(order.len() * 3) {
            let attempt_deadline = (Instant::now() + self.attempt_timeout).min(deadline);
            match timeout_at(attempt_deadline, exchange_one(server, q, metrics)).await {
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
                    tracing::warn!(server = %server.label, error = %e, "upstream failed");
                    last_error = Some(e);
                }
                Err(_) => {
                    server.failures.fetch_add(1, Ordering::Relaxed);
                    Metrics::inc(&metrics.upstream_timeouts_total);
                    tracing::warn!(server = %server.label, timeout_ms = self.attempt_timeout.as_millis() as u64, "upstream did not answer in time");
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

/// One query to one server over its transport.
async fn exchange_one(
    server: &Server,
    q: &Question<'_>,
    metrics: &Metrics,
) -> Result<Vec<u8>, UpstreamError> {
    // DoH uses ID 0 (RFC 8484 section 4.1: friendlier to HTTP caches).
    let id: u16 = match server.link {
        Link::Https(_) => 0,
        _ => rand::random(),
    };
    let mut query = Vec::with_capacity(q.wire.len() + 24);
    wire::build_query(&mut query, id, q.wire, q.cd, q.dnssec_ok, UPSTREAM_PAYLOAD);
    let io = |source| UpstreamError::Io {
        server: server.label.clone(),
        source,
    };
    let answer = match &server.link {
        Link::Plain(addr) => plain::exchange(*addr, &query, id, q.wire)
            .await
            .map_err(io)?,
        Link::Tls(c) => c.exchange(&query, metrics).await.map_err(io)?,
        Link::Https(c) => c.exchange(&query, metrics).await.map_err(io)?,
    };
    if !is_answer_to(&answer, id, q.wire) {
        return Err(UpstreamError::Malformed(server.label.clone()));
    }
    Ok(answer)
}

fn is_answer_to(answer: &[u8], id: u16, question: &[u8]) -> bool {
    answer.len() >= wire::HEADER_LEN
        && wire::u16_at(answer, 0) == id
        && answer[2] & 0x80 != 0
        && wire::same_question(answer, question)
}

/// The name a server's certificate must carry (its IP address when none is configured).
fn server_name(
    s: &UpstreamServer,
) -> Result<rustls_pki_types::ServerName<'static>, std::io::Error> {
    let name = s.name.clone().unwrap_or_else(|| s.addr.ip().to_string());
    rustls_pki_types::ServerName::try_from(name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}
