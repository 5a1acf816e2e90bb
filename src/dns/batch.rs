//! Batched UDP I/O: `recvmmsg` and `sendmmsg` on a tokio socket, so one system call receives or
//! sends up to `BATCH` datagrams.
//!
//! Owns the only `unsafe` code in pinhole: building the kernel's message headers over buffers
//! this module owns, for the duration of one call. Nothing here parses DNS.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query accepted over UDP; longer datagrams are cut and then fail to parse.
pub const MAX_QUERY: usize = 4096;

/// Receive buffers and the peers they came from.
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: [libc::socklen_t; BATCH],
    count: usize,
}

// SAFETY: sockaddr_storage is plain data; the batch holds no pointers between calls.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; BATCH * MAX_QUERY],
            lens: [0; BATCH],
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            addr_lens: [0; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Number of datagrams received by the last `recv`.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last receive.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i * MAX_QUERY..i * MAX_QUERY + self.lens[i]]
    }

    /// Where datagram `i` came from.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        to_socket_addr(&self.addrs[i])
    }

    /// Waits until at least one datagram is there, then takes up to `BATCH` in one call.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.recv_now(socket.as_raw_fd())) {
                Ok(n) => {
                    self.count = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recv_now(&mut self, fd: i32) -> io::Result<usize> {
        // SAFETY: the iovecs point into `self.bufs` at disjoint MAX_QUERY-sized chunks and the
        // names into `self.addrs`; both outlive the call and nothing else touches them meanwhile.
        unsafe {
            let mut iovs: [libc::iovec; BATCH] = zeroed();
            let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
            let base = self.bufs.as_mut_ptr();
            for i in 0..BATCH {
                iovs[i].iov_base = base.add(i * MAX_QUERY).cast();
                iovs[i].iov_len = MAX_QUERY;
                hdrs[i].msg_hdr.msg_name =
                    (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdrs[i].msg_hdr.msg_namelen =
                    size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            let n = libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (i, hdr) in hdrs.iter().enumerate().take(n) {
                self.lens[i] = (hdr.msg_len as usize).min(MAX_QUERY);
                self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
            }
            Ok(n)
        }
    }
}

/// Answers gathered during one batch, sent back with `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: [libc::socklen_t; BATCH],
    count: usize,
}

// SAFETY: as for RecvBatch.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            // SAFETY: all-zero sockaddr_storage is valid.
            addrs: vec![unsafe { zeroed() }; BATCH],
            addr_lens: [0; BATCH],
            count: 0,
        }
    }
}

impl SendBatch {
    /// The buffer to write the next answer into; `commit` queues it for `peer_of` datagram `i`.
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.count]
    }

    /// Queues the buffer returned by `next_buf` to go back to where datagram `i` came from.
    pub fn commit(&mut self, from: &RecvBatch, i: usize) {
        self.addrs[self.count] = from.addrs[i];
        self.addr_lens[self.count] = from.addr_lens[i];
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sends every queued answer, waiting for the socket to be writable if the kernel's
    /// buffer is full. Answers that fail are counted as errors by the caller and skipped.
    pub async fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let mut start = 0;
        let mut result = Ok(());
        while start < self.count {
            match socket.try_io(Interest::WRITABLE, || {
                self.send_now(socket.as_raw_fd(), start)
            }) {
                Ok(sent) => start += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
                Err(e) => {
                    // One bad destination (e.g. unreachable) must not hold back the rest.
                    result = Err(e);
                    start += 1;
                }
            }
        }
        self.count = 0;
        result
    }

    fn send_now(&mut self, fd: i32, start: usize) -> io::Result<usize> {
        let n = self.count - start;
        // SAFETY: iovecs point into `self.bufs[start..count]`, names into `self.addrs`; they
        // are not modified during the call.
        unsafe {
            let mut iovs: [libc::iovec; BATCH] = zeroed();
            let mut hdrs: [libc::mmsghdr; BATCH] = zeroed();
            for j in 0..n {
                let i = start + j;
                iovs[j].iov_base = self.bufs[i].as_mut_ptr().cast();
                iovs[j].iov_len = self.bufs[i].len();
                hdrs[j].msg_hdr.msg_name =
                    (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdrs[j].msg_hdr.msg_namelen = self.addr_lens[i];
                hdrs[j].msg_hdr.msg_iov = &mut iovs[j];
                hdrs[j].msg_hdr.msg_iovlen = 1;
            }
            let sent = libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0);
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sent as usize)
        }
    }
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}
