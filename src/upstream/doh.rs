//! DNS over HTTPS to an upstream (RFC 8484): POST on one HTTP/2 connection per server,
//! streams multiplexed on it, a new connection when it breaks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamServer;
use crate::metrics::Metrics;

/// Largest answer body accepted.
const MAX_BODY: usize = 65_535;

pub struct DohClient {
    addr: SocketAddr,
    name: Option<ServerName<'static>>,
    uri: String,
    connector: TlsConnector,
    conn: tokio::sync::Mutex<Option<SendRequest<Bytes>>>,
}

fn h2_err(e: h2::Error) -> io::Error {
    io::Error::other(format!("HTTP/2: {e}"))
}

impl DohClient {
    pub fn new(server: &UpstreamServer, tls: &Arc<rustls::ClientConfig>) -> DohClient {
        let host = match (&server.name, server.addr) {
            (Some(n), _) => n.clone(),
            (None, SocketAddr::V4(a)) => a.ip().to_string(),
            (None, SocketAddr::V6(a)) => format!("[{}]", a.ip()),
        };
        let authority = if server.addr.port() == 443 {
            host
        } else {
            format!("{host}:{}", server.addr.port())
        };
        DohClient {
            addr: server.addr,
            name: super::server_name(server).ok(),
            uri: format!("https://{authority}{}", server.path),
            connector: TlsConnector::from(super::tls::with_alpn(tls, &[b"h2"])),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// POSTs one query and returns the answer body. A connection that turns out broken is
    /// replaced once.
    pub async fn exchange(&self, query: &[u8], metrics: &Metrics) -> io::Result<Vec<u8>> {
        let mut last = io::Error::other("no attempt");
        for _ in 0..2 {
            let (sender, fresh) = self.connection(metrics).await?;
            match self.post(sender, query).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    *self.conn.lock().await = None;
                    last = e;
                    if fresh {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    async fn post(&self, sender: SendRequest<Bytes>, query: &[u8]) -> io::Result<Vec<u8>> {
        let mut sender = sender.ready().await.map_err(h2_err)?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(&self.uri)
            .header(http::header::CONTENT_TYPE, "application/dns-message")
            .header(http::header::ACCEPT, "application/dns-message")
            .body(())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (response, mut body_tx) = sender.send_request(request, false).map_err(h2_err)?;
        body_tx
            .send_data(Bytes::copy_from_slice(query), true)
            .map_err(h2_err)?;
        let response = response.await.map_err(h2_err)?;
        if response.status() != http::StatusCode::OK {
            return Err(io::Error::other(format!(
                "HTTP status {}",
                response.status()
            )));
        }
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_err)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
            if out.len() > MAX_BODY {
                return Err(io::Error::other("answer body larger than 65,535 bytes"));
            }
        }
        Ok(out)
    }

    /// The live connection's handle, or a new connection's (`true`).
    async fn connection(&self, metrics: &Metrics) -> io::Result<(SendRequest<Bytes>, bool)> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref() {
            return Ok((s.clone(), false));
        }
        let tls = super::tls::connect(&self.connector, self.addr, self.name.as_ref()).await?;
        let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if !alpn_h2 {
            return Err(io::Error::other("server did not agree to HTTP/2 (ALPN h2)"));
        }
        let (sender, connection) = h2::client::handshake(tls).await.map_err(h2_err)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "DoH upstream connection ended");
            }
        });
        Metrics::inc(&metrics.upstream_connections_total);
        *conn = Some(sender.clone());
        Ok((sender, true))
    }
}
