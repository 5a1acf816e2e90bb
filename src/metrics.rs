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
            /// Distributions (firewall write latency and batch sizes).
            pub histograms: Histograms,
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
                self.histograms.render(&mut out);
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
    upstream_fallbacks_total: "Queries for which every encrypted upstream failed and the plain ones were asked ([upstream] fallback = true).",
    upstream_no_fallback_total: "Queries for which every encrypted upstream failed and fallback is off (SERVFAIL).",
    upstream_connections_total: "Connections opened to DoT/DoH upstreams (each is reused for many queries).",
    dot_connections_total: "DNS over TLS connections after a completed handshake.",
    doh_connections_total: "DNS over HTTPS connections after a completed handshake.",
    doh_requests_total: "HTTP requests on the DoH listeners.",
    doh_bad_requests_total: "DoH requests refused with an HTTP error (wrong path, method, type or encoding).",
    tls_handshake_errors_total: "TLS handshakes on the DoT/DoH listeners that failed or timed out.",
    tls_reloads_total: "Times the DoT/DoH certificate was reloaded.",
    tls_reload_errors_total: "Certificate reloads that failed (the previous certificate stays in use).",
}

/// A fixed-bucket histogram (Prometheus `histogram` type), lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets.
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The value below which `q` (0..1) of the observations fall, as a bucket bound.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= want {
                return Some(self.bounds.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP pinhole_{name} {help}");
        let _ = writeln!(out, "# TYPE pinhole_{name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "pinhole_{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "pinhole_{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "pinhole_{name}_sum {}",
            self.sum.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "pinhole_{name}_count {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// Microsecond bounds for kernel write latency.
const LATENCY_US: &[u64] = &[
    25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400,
];
/// Elements per batch.
const BATCH_SIZES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// Distributions the firewall writer records.
#[derive(Debug)]
pub struct Histograms {
    /// Microseconds from sending a batch to its acknowledgement.
    pub nft_write_us: Histogram,
    /// Elements per batch.
    pub nft_batch_elements: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            nft_write_us: Histogram::new(LATENCY_US),
            nft_batch_elements: Histogram::new(BATCH_SIZES),
        }
    }
}

impl Histograms {
    pub fn render(&self, out: &mut String) {
        self.nft_write_us.render(
            "nft_write_microseconds",
            "Kernel write latency of one batch (send to acknowledgement).",
            out,
        );
        self.nft_batch_elements
            .render("nft_batch_elements", "Elements per netlink batch.", out);
    }
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
