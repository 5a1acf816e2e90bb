//! TLS client settings for encrypted upstreams: the trusted roots (the system's, or a
//! configured CA file) and the protocol versions. Server names are checked by rustls against
//! each server's configured name (or IP address).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsClientError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {0} holds no usable certificate")]
    EmptyCaFile(String),
    #[error("no system CA certificates found ({0})")]
    NoSystemRoots(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider pinhole uses everywhere (ring: no C toolchain beyond a C compiler).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client settings trusting `ca_file`'s certificates, or the system's roots without one.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsClientError::CaFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsClientError::CaFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsClientError::EmptyCaFile(shown));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or_else(
                    || "the system store is empty".to_string(),
                    |e| e.to_string(),
                );
                return Err(TlsClientError::NoSystemRoots(why));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A copy of `base` that offers the given ALPN protocols.
pub fn with_alpn(base: &rustls::ClientConfig, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut c = base.clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A TCP connection to `addr` with TLS on top, the server's certificate checked for `name`.
pub async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: Option<&rustls_pki_types::ServerName<'static>>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = name.cloned().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid server name")
    })?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    connector.connect(name, tcp).await
}
