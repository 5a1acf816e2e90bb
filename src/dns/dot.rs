//! The DNS over TLS listener (RFC 7858): TLS handshakes, then the TCP listener's pipelined
//! framing inside TLS, with the same policy, cache and allowlist as every other listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::dns::handler::Handler;
use crate::dns::tcp::{self, TcpLimits};
use crate::dns::udp::log_fault;
use crate::metrics::Metrics;

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    limits: TcpLimits,
    handshake_timeout: Duration,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log_fault(&handler.metrics.io_errors_total, "DoT accept failed", &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            log_fault(
                &handler.metrics.tcp_rejected_total,
                "DoT connection limit reached; closing new connection",
                &limits.max_connections,
            );
            continue;
        };
        let (handler, acceptor) = (Arc::clone(&handler), acceptor.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    Metrics::inc(&handler.metrics.dot_connections_total);
                    tcp::connection(tls, peer.ip(), handler, limits).await;
                }
                Ok(Err(e)) => log_fault(
                    &handler.metrics.tls_handshake_errors_total,
                    "DoT TLS handshake failed",
                    &e,
                ),
                Err(_) => log_fault(
                    &handler.metrics.tls_handshake_errors_total,
                    "DoT TLS handshake timed out",
                    &handshake_timeout.as_millis(),
                ),
            }
            drop(permit);
        });
    }
}
