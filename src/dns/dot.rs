//! The DNS over TLS listener (RFC 7858): TLS handshakes, then the TCP listener's pipelined
//! framing inside TLS, with the same policy, cache and allowlist as every other listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::dns::handler::Handler;
use crate::dns::tcp::{self, TcpLimits};
use crate::metrics::Metrics;

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    limits: TcpLimits,
    handshake_timeout: Duration,
) {
    tcp::accept_each(
        listener,
        Arc::clone(&handler),
        limits,
        "DoT",
        move |stream, peer| {
            let (handler, acceptor) = (Arc::clone(&handler), acceptor.clone());
            async move {
                let metrics = Arc::clone(&handler.metrics);
                let hs = tcp::tls_handshake(&acceptor, stream, handshake_timeout, &metrics, "DoT");
                if let Some(tls) = hs.await {
                    Metrics::inc(&metrics.dot_connections_total);
                    tcp::connection(tls, peer.ip(), handler, limits).await;
                }
            }
        },
    )
    .await
}
