//! Plain DNS to an upstream: UDP from a fresh random port per query, TCP when the answer is
//! truncated (or for one query on a new connection).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::is_answer_to;

/// One server: UDP first, TCP if the UDP answer is truncated.
pub async fn exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &[u8],
) -> std::io::Result<Vec<u8>> {
    let answer = udp_exchange(server, query, id, question).await?;
    if answer.get(2).is_some_and(|b| b & 0x02 != 0) {
        return tcp_exchange(server, query, id, question).await;
    }
    Ok(answer)
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
