//! The UDP listener: several SO_REUSEPORT sockets per address, each with one receive loop.
//!
//! Owns the sockets and the loop. Datagrams are received and answered in batches (`recvmmsg`,
//! `sendmmsg`); local answers (cache hits, blocks, errors) are written into reused buffers by the
//! loop itself: no task, no allocation. Only queries that need an
//! upstream become tasks, bounded in number. It decides nothing about the query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::dns::batch::{RecvBatch, SendBatch};
use crate::dns::handler::{Handler, Step, Transport};

/// Queries waiting for an upstream, per socket, before new ones are dropped.
const MAX_PENDING_PER_SOCKET: usize = 4096;

/// Opens one UDP socket with SO_REUSEPORT on `addr`.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Bursts of queries should wait in the kernel rather than be dropped.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Logs a fault only when its counter reaches a power of two, so a flood of the same fault
/// cannot flood the log; the metric counts every one.
pub fn log_fault(
    counter: &std::sync::atomic::AtomicU64,
    what: &str,
    error: &dyn std::fmt::Display,
) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::warn!(count = n, error = %error, "{what}");
    }
}

/// Serves one socket until the task is aborted: receive a batch, answer what can be answered
/// at once into the send batch, hand the rest to upstream tasks, send the batch.
pub async fn serve(socket: UdpSocket, handler: Arc<Handler>) {
    let socket = Arc::new(socket);
    let pending = Arc::new(AtomicUsize::new(0));
    let mut rx = RecvBatch::default();
    let mut tx = SendBatch::default();
    loop {
        if let Err(e) = rx.recv(&socket).await {
            log_fault(&handler.metrics.io_errors_total, "UDP receive failed", &e);
            continue;
        }
        for i in 0..rx.len() {
            let Some(peer) = rx.peer(i) else { continue };
            let packet = rx.packet(i);
            match handler.answer_local(packet, peer.ip(), Transport::Udp, tx.next_buf()) {
                Step::Answered => tx.commit(&rx, i),
                Step::Dropped => {}
                Step::Upstream => spawn_upstream(&socket, &handler, &pending, packet, peer),
            }
        }
        if !tx.is_empty()
            && let Err(e) = tx.flush(&socket).await
        {
            log_fault(&handler.metrics.io_errors_total, "UDP send failed", &e);
        }
    }
}

/// Answers one query that needs an upstream in its own task, bounded per socket.
fn spawn_upstream(
    socket: &Arc<UdpSocket>,
    handler: &Arc<Handler>,
    pending: &Arc<AtomicUsize>,
    packet: &[u8],
    peer: SocketAddr,
) {
    if pending.load(Ordering::Relaxed) >= MAX_PENDING_PER_SOCKET {
        log_fault(
            &handler.metrics.overload_dropped_total,
            "too many queries waiting for upstreams; dropping",
            &MAX_PENDING_PER_SOCKET,
        );
        return;
    }
    pending.fetch_add(1, Ordering::Relaxed);
    let packet = packet.to_vec();
    let (socket, handler, pending) = (Arc::clone(socket), Arc::clone(handler), Arc::clone(pending));
    tokio::spawn(async move {
        let mut out = Vec::new();
        if handler
            .answer_upstream(&packet, Transport::Udp, &mut out)
            .await
            && let Err(e) = socket.send_to(&out, peer).await
        {
            log_fault(&handler.metrics.io_errors_total, "UDP send failed", &e);
        }
        pending.fetch_sub(1, Ordering::Relaxed);
    });
}
