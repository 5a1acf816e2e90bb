//! The TCP listener: pipelined queries answered concurrently and out of order (RFC 7766),
//! with an idle timeout and bounds on connections and on queries in flight per connection.
//!
//! Owns connections and framing, for plain TCP and for DoT (the same framing inside TLS).
//! hickory-server's TCP listener answers one request at a time per connection; this one reads
//! on while earlier queries wait for upstreams.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::dns::handler::{Handler, Step, Transport};
use crate::dns::udp::log_fault;
use crate::metrics::Metrics;

/// Limits for TCP clients.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub idle: Duration,
    pub max_connections: usize,
    pub max_inflight: usize,
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, handler: Arc<Handler>, limits: TcpLimits) {
    accept_each(
        listener,
        Arc::clone(&handler),
        limits,
        "TCP",
        move |stream, peer| connection(stream, peer.ip(), Arc::clone(&handler), limits),
    )
    .await
}

/// The accept loop of every stream listener (TCP, DoT, DoH): bounded by
/// `limits.max_connections` (further connections are closed at once, logged and counted), each
/// connection served by `serve` in its own task with `TCP_NODELAY` set.
pub async fn accept_each<F, Fut>(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: TcpLimits,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log_fault(
                    &handler.metrics.io_errors_total,
                    &format!("{what} accept failed"),
                    &e,
                );
                // Out of file descriptors and the like: give the system a moment.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            log_fault(
                &handler.metrics.tcp_rejected_total,
                &format!("{what} connection limit reached; closing new connection"),
                &limits.max_connections,
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = serve(stream, peer);
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// A TLS handshake bounded by `timeout`; a failure is logged (rate-limited) and counted.
pub async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    metrics: &Metrics,
    what: &'static str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            log_fault(
                &metrics.tls_handshake_errors_total,
                &format!("{what} TLS handshake failed"),
                &e,
            );
            None
        }
        Err(_) => {
            log_fault(
                &metrics.tls_handshake_errors_total,
                &format!("{what} TLS handshake timed out"),
                &timeout.as_millis(),
            );
            None
        }
    }
}

/// Serves one stream connection (TCP, or TLS for DoT) until the client closes it or idles.
pub async fn connection<S>(
    stream: S,
    client: std::net::IpAddr,
    handler: Arc<Handler>,
    limits: TcpLimits,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.max_inflight);
    let writer_task = tokio::spawn(async move {
        let mut writer = BufWriter::new(writer);
        while let Some(msg) = rx.recv().await {
            let Ok(len) = u16::try_from(msg.len()) else {
                continue;
            };
            if writer.write_all(&len.to_be_bytes()).await.is_err()
                || writer.write_all(&msg).await.is_err()
            {
                return;
            }
            // Flush when nothing else is queued, so pipelined answers share a segment.
            if rx.is_empty() && writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let inflight = Arc::new(Semaphore::new(limits.max_inflight));
    loop {
        let len = match tokio::time::timeout(limits.idle, reader.read_u16()).await {
            Err(_) => {
                Metrics::inc(&handler.metrics.tcp_idle_closed_total);
                break;
            }
            Ok(Err(_)) => break,
            Ok(Ok(len)) => usize::from(len),
        };
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(limits.idle, reader.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let mut out = Vec::new();
        match handler.answer_local(&packet, client, Transport::Tcp, &mut out) {
            Step::Answered => {
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Step::Dropped => {}
            Step::Upstream => {
                let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
                    break;
                };
                let (handler, tx) = (Arc::clone(&handler), tx.clone());
                tokio::spawn(async move {
                    if handler
                        .answer_upstream(&packet, Transport::Tcp, &mut out)
                        .await
                    {
                        let _ = tx.send(out).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(tx);
    let _ = writer_task.await;
}
