//! The DNS over HTTPS listener (RFC 8484): HTTP/2 over TLS, GET (`?dns=` base64url) and POST
//! (`application/dns-message`) on the configured path, answered through the same request path
//! as every other listener.
//!
//! Owns the HTTP side only: status codes for what is not a DNS query, and the response headers.
//! A query the policy drops (`drop`) gets no response: its stream is reset.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::dns::handler::{Handler, Transport};
use crate::dns::tcp::{self, TcpLimits};
use crate::dns::udp::log_fault;
use crate::dns::wire;
use crate::metrics::Metrics;

const CONTENT_TYPE: &str = "application/dns-message";
/// Largest DNS message in a request.
const MAX_QUERY: usize = 65_535;

/// Accepts connections until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    path: Arc<str>,
    limits: TcpLimits,
    handshake_timeout: Duration,
) {
    tcp::accept_each(
        listener,
        Arc::clone(&handler),
        limits,
        "DoH",
        move |stream, peer| {
            let (handler, acceptor, path) =
                (Arc::clone(&handler), acceptor.clone(), Arc::clone(&path));
            async move {
                let metrics = Arc::clone(&handler.metrics);
                let hs = tcp::tls_handshake(&acceptor, stream, handshake_timeout, &metrics, "DoH");
                if let Some(tls) = hs.await {
                    Metrics::inc(&metrics.doh_connections_total);
                    connection(tls, peer.ip(), handler, path, limits).await;
                }
            }
        },
    )
    .await
}

async fn connection<S>(
    tls: S,
    client: IpAddr,
    handler: Arc<Handler>,
    path: Arc<str>,
    limits: TcpLimits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max_streams = u32::try_from(limits.max_inflight).unwrap_or(u32::MAX);
    let mut conn = match h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .handshake(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            log_fault(
                &handler.metrics.doh_bad_requests_total,
                "DoH: not an HTTP/2 client",
                &e,
            );
            return;
        }
    };
    loop {
        let next = match tokio::time::timeout(limits.idle, conn.accept()).await {
            Err(_) => {
                Metrics::inc(&handler.metrics.tcp_idle_closed_total);
                conn.graceful_shutdown();
                // Let the GOAWAY go out.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.accept()).await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "DoH connection ended");
                return;
            }
            Ok(Some(Ok(x))) => x,
        };
        let (request, respond) = next;
        let (handler, path) = (Arc::clone(&handler), Arc::clone(&path));
        tokio::spawn(async move {
            handle(request, respond, client, &handler, &path).await;
        });
    }
}

/// Answers one HTTP request.
async fn handle(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    client: IpAddr,
    handler: &Arc<Handler>,
    path: &str,
) {
    Metrics::inc(&handler.metrics.doh_requests_total);
    let query = match read_query(request, path).await {
        Ok(q) => q,
        Err((status, why)) => {
            Metrics::inc(&handler.metrics.doh_bad_requests_total);
            tracing::debug!(%status, why, "DoH request refused");
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(());
            if let Ok(response) = response
                && let Ok(mut body) = respond.send_response(response, false)
            {
                let _ = body.send_data(Bytes::from(format!("{why}\n")), true);
            }
            return;
        }
    };
    let mut out = Vec::new();
    if !handler
        .answer(&query, client, Transport::Tcp, &mut out)
        .await
    {
        // No answer at all (the `drop` action, or not a query): reset the stream.
        respond.send_reset(h2::Reason::CANCEL);
        return;
    }
    // The answer's smallest TTL bounds how long an HTTP cache may keep it (RFC 8484 5.1).
    let max_age = wire::scan_response(&out)
        .and_then(|s| s.min_ttl.or(s.negative_ttl))
        .unwrap_or(0);
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .header(http::header::CONTENT_LENGTH, out.len())
        .header(http::header::CACHE_CONTROL, format!("max-age={max_age}"))
        .body(());
    let Ok(response) = response else { return };
    match respond.send_response(response, false) {
        Ok(mut body) => {
            let _ = body.send_data(Bytes::from(out), true);
        }
        Err(e) => tracing::debug!(error = %e, "DoH response not sent"),
    }
}

/// The DNS query in a request, or the status and reason to refuse it with.
async fn read_query(
    request: Request<h2::RecvStream>,
    path: &str,
) -> Result<Vec<u8>, (StatusCode, &'static str)> {
    if request.uri().path() != path {
        return Err((StatusCode::NOT_FOUND, "not a DNS endpoint"));
    }
    match *request.method() {
        Method::GET => {
            let param = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("dns="))
                .ok_or((StatusCode::BAD_REQUEST, "missing dns= parameter"))?;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(param.trim_end_matches('='))
                .map_err(|_| (StatusCode::BAD_REQUEST, "dns= is not base64url"))?;
            if decoded.len() > MAX_QUERY {
                return Err((StatusCode::PAYLOAD_TOO_LARGE, "query too large"));
            }
            Ok(decoded)
        }
        Method::POST => {
            let type_ok = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE))
                });
            if !type_ok {
                return Err((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type must be application/dns-message",
                ));
            }
            let mut body = request.into_body();
            let mut query = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|_| (StatusCode::BAD_REQUEST, "body not received"))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                query.extend_from_slice(&chunk);
                if query.len() > MAX_QUERY {
                    return Err((StatusCode::PAYLOAD_TOO_LARGE, "query too large"));
                }
            }
            Ok(query)
        }
        _ => Err((StatusCode::METHOD_NOT_ALLOWED, "use GET or POST")),
    }
}
