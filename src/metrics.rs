//! Counters for every outcome and every fault, cheap enough for the per-query path.
//!
//! Owns the counters and their Prometheus text rendering. It never logs and never decides:
//! the code that sees a fault counts it here and logs it itself.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Process-wide counters; one field per outcome or fault.
        #[derive(Default, Debug)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP pinhole_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE pinhole_{} counter", stringify!($name));
                    let _ = writeln!(out, "pinhole_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                out
            }

            /// (name, value) pairs, for logs and tests.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    queries_udp_total: "Queries received over UDP.",
    queries_tcp_total: "Queries received over TCP.",
    cache_hits_total: "Answers served from the cache.",
    cache_misses_total: "Queries that went upstream (or joined a query in flight).",
    inflight_joined_total: "Queries that waited for an identical query already sent upstream.",
    blocked_total: "Queries answered with a block answer by policy.",
    special_total: "Queries for special names answered locally.",
    refused_acl_total: "Queries refused because the client is not in allow_clients.",
    formerr_total: "Malformed queries answered with FORMERR.",
    notimp_total: "Queries with an unsupported opcode answered with NOTIMP.",
    dropped_total: "Packets dropped without an answer (too short, or a response).",
    truncated_total: "UDP answers truncated (TC set) to fit the client's size.",
    servfail_total: "SERVFAIL answers pinhole produced because no upstream answered.",
    upstream_errors_total: "Upstream exchanges that failed with an error.",
    upstream_timeouts_total: "Upstream attempts that timed out.",
    upstream_malformed_total: "Upstream answers that could not be parsed.",
    overload_dropped_total: "Queries dropped because too many were waiting for upstreams.",
    tcp_rejected_total: "TCP connections closed at once because the limit was reached.",
    tcp_idle_closed_total: "TCP connections closed after the idle timeout.",
    io_errors_total: "Socket send or receive errors on listeners.",
    nft_batches_total: "nftables netlink batches sent.",
    nft_elements_total: "Set elements written in those batches.",
    nft_write_micros_total: "Microseconds spent sending batches and waiting for their acknowledgement.",
    nft_errors_total: "nftables batches the kernel rejected.",
    nft_repairs_total: "Times the table or sets were found removed and recreated.",
    firewall_failures_total: "Answers whose set write failed or missed its deadline.",
    journal_errors_total: "Journal writes that failed.",
}

impl Metrics {
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves the counters at `GET /metrics` (Prometheus text format) on `listener` until the task
/// is aborted. Minimal HTTP/1.0: one request per connection, anything else gets 404. This stays
/// small on purpose; once pinhole serves DoH it moves onto that HTTP stack.
pub async fn serve_http(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut req))
                    .await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&req[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
