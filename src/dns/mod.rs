//! DNS serving: listeners, the request path, and the answers pinhole writes itself.
//!
//! Owns the sockets and their tasks. `Server::start` binds every listener before it returns, so
//! a returned server is ready to answer; dropping it stops every task.

pub mod batch;
pub mod chain;
pub mod ddr;
pub mod doh;
pub mod dot;
pub mod handler;
pub mod special;
pub mod strip;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policy;
pub use handler::{Handler, Step, Transport};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(
        "cannot create the control socket {path}: {source}; set [control] socket to a writable path, or remove the key to turn it off"
    )]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("[tls]: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(
        "cannot listen on {addr} ({proto}): {source}; is another DNS server running there, or does pinhole lack the right to bind the port (root or CAP_NET_BIND_SERVICE)?"
    )]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
}

/// A running server. Dropping it stops every listener.
pub struct Server {
    pub handler: Arc<Handler>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    dot: Vec<SocketAddr>,
    doh: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Binds every configured address (UDP and TCP on the same port; port 0 picks one) and
    /// starts serving. Must be called inside a tokio runtime.
    pub async fn start(
        config: &Config,
        policy: Policy,
        firewall: Option<Arc<crate::firewall::Firewall>>,
        metrics: Arc<Metrics>,
    ) -> Result<Server, ServeError> {
        let mut handler = Handler::new(config, policy, firewall, Arc::clone(&metrics));
        let encrypted = bind_encrypted(config, &mut handler)?;
        let handler = Arc::new(handler);
        let sockets = match config.server.udp_sockets {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let limits = tcp::TcpLimits {
            idle: Duration::from_millis(config.server.tcp_idle_timeout_ms),
            max_connections: config.server.tcp_max_connections,
            max_inflight: config.server.tcp_max_inflight,
        };
        let mut server = Server {
            handler: Arc::clone(&handler),
            udp: Vec::new(),
            tcp: Vec::new(),
            dot: Vec::new(),
            doh: Vec::new(),
            metrics_addr: None,
            tasks: JoinSet::new(),
        };
        for &addr in &config.server.listen {
            let bind_err = |proto, source| ServeError::Bind {
                addr,
                proto,
                source,
            };
            // The first UDP socket fixes the port (for port 0); the others share it. With port 0
            // the TCP port of the same number may be taken: pick another port then.
            let mut attempt = 0;
            let (std_sockets, tcp_listener, actual) = loop {
                attempt += 1;
                let first = udp::bind_reuseport(addr).map_err(|e| bind_err("udp", e))?;
                let actual = first.local_addr().map_err(|e| bind_err("udp", e))?;
                let mut std_sockets = vec![first];
                for _ in 1..sockets {
                    std_sockets.push(udp::bind_reuseport(actual).map_err(|e| bind_err("udp", e))?);
                }
                match bind_tcp(actual) {
                    Ok(l) => break (std_sockets, l, actual),
                    Err(e) if addr.port() == 0 && attempt < 20 => {
                        tracing::debug!(%actual, error = %e, "TCP port taken; choosing another");
                    }
                    Err(e) => return Err(bind_err("tcp", e)),
                }
            };
            for s in std_sockets {
                let s = tokio::net::UdpSocket::from_std(s).map_err(|e| bind_err("udp", e))?;
                server.tasks.spawn(udp::serve(s, Arc::clone(&handler)));
            }
            server
                .tasks
                .spawn(tcp::serve(tcp_listener, Arc::clone(&handler), limits));
            server.udp.push(actual);
            server.tcp.push(actual);
            tracing::info!(%actual, udp_sockets = sockets, "listening on UDP and TCP");
        }
        if let Some(enc) = encrypted {
            let handshake = Duration::from_millis(config.tls.handshake_timeout_ms);
            let dot_tls = tokio_rustls::TlsAcceptor::from(enc.store.server_config(&[b"dot"])?);
            let doh_tls = tokio_rustls::TlsAcceptor::from(enc.store.server_config(&[b"h2"])?);
            let path: Arc<str> = Arc::from(config.tls.doh_path.as_str());
            for (listener, actual) in enc.dot {
                server.tasks.spawn(dot::serve(
                    listener,
                    dot_tls.clone(),
                    Arc::clone(&handler),
                    limits,
                    handshake,
                ));
                server.dot.push(actual);
                tracing::info!(%actual, "listening for DNS over TLS");
            }
            for (listener, actual) in enc.doh {
                server.tasks.spawn(doh::serve(
                    listener,
                    doh_tls.clone(),
                    Arc::clone(&handler),
                    Arc::clone(&path),
                    limits,
                    handshake,
                ));
                server.doh.push(actual);
                tracing::info!(%actual, path = %config.tls.doh_path, "listening for DNS over HTTPS");
            }
            let interval = (config.tls.reload_check_s > 0)
                .then(|| Duration::from_secs(config.tls.reload_check_s));
            let hangup = tls::hangup();
            server.tasks.spawn(tls::watch(
                enc.store,
                hangup,
                interval,
                Arc::clone(&metrics),
            ));
        }
        if let Some(path) = &config.control.socket {
            let listener = crate::control::bind(path).map_err(|source| ServeError::Control {
                path: path.clone(),
                source,
            })?;
            server.tasks.spawn(crate::control::serve(
                listener,
                handler.firewall().cloned(),
                Arc::clone(&handler.metrics),
            ));
        }
        if let Some(addr) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr,
                    proto: "tcp (metrics)",
                    source,
                })?;
            let actual = listener.local_addr().map_err(|source| ServeError::Bind {
                addr,
                proto: "tcp (metrics)",
                source,
            })?;
            server.metrics_addr = Some(actual);
            server.tasks.spawn(crate::metrics::serve_http(
                listener,
                Arc::clone(&handler.metrics),
            ));
            tracing::info!(%actual, "metrics at /metrics");
        }
        Ok(server)
    }

    /// Where `/metrics` is served, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The addresses actually bound (with the port chosen for port 0).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// The DNS over TLS listeners actually bound.
    pub fn dot_addrs(&self) -> &[SocketAddr] {
        &self.dot
    }

    /// The DNS over HTTPS listeners actually bound.
    pub fn doh_addrs(&self) -> &[SocketAddr] {
        &self.doh
    }

    /// Stops every listener and waits for their tasks to end.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The encrypted listeners, bound, and the certificate they present.
struct Encrypted {
    store: Arc<tls::CertStore>,
    dot: Vec<(tokio::net::TcpListener, SocketAddr)>,
    doh: Vec<(tokio::net::TcpListener, SocketAddr)>,
}

/// Loads the certificate and binds the DoT and DoH listeners (if any), then gives the handler
/// the DDR answer for the ports actually bound.
fn bind_encrypted(config: &Config, handler: &mut Handler) -> Result<Option<Encrypted>, ServeError> {
    let tls = &config.tls;
    let (Some(cert), Some(key)) = (&tls.certificate, &tls.private_key) else {
        return Ok(None);
    };
    if !tls.enabled() {
        return Ok(None);
    }
    let store = Arc::new(tls::CertStore::load(
        &config.relative(cert),
        &config.relative(key),
    )?);
    let bind = |addrs: &[SocketAddr], proto: &'static str| {
        addrs
            .iter()
            .map(|&addr| {
                let err = |source| ServeError::Bind {
                    addr,
                    proto,
                    source,
                };
                let l = bind_tcp(addr).map_err(err)?;
                let actual = l.local_addr().map_err(err)?;
                Ok((l, actual))
            })
            .collect::<Result<Vec<_>, ServeError>>()
    };
    let dot = bind(&tls.dot_listen, "tcp (DoT)")?;
    let doh = bind(&tls.doh_listen, "tcp (DoH)")?;
    let hints = |bound: &[(tokio::net::TcpListener, SocketAddr)]| -> Vec<std::net::IpAddr> {
        if !tls.ddr_addresses.is_empty() {
            return tls.ddr_addresses.clone();
        }
        let mut v: Vec<std::net::IpAddr> = bound
            .iter()
            .map(|(_, a)| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        v.dedup();
        v
    };
    let (dot_hints, doh_hints) = (hints(&dot), hints(&doh));
    let mut endpoints = Vec::new();
    if let Some((_, a)) = doh.first() {
        endpoints.push(ddr::Endpoint {
            alpn: "h2",
            port: a.port(),
            doh_path: Some(&tls.doh_path),
            addrs: &doh_hints,
        });
    }
    if let Some((_, a)) = dot.first() {
        endpoints.push(ddr::Endpoint {
            alpn: "dot",
            port: a.port(),
            doh_path: None,
            addrs: &dot_hints,
        });
    }
    let target = tls.hostname.as_deref().unwrap_or(".");
    handler.set_ddr(ddr::records(target, &endpoints));
    Ok(Some(Encrypted { store, dot, doh }))
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}
