//! The certificate pinhole's DoT and DoH listeners present, and its reload without a restart.
//!
//! Owns reading the PEM files, the key pair in use, and the reload on SIGHUP or when the files
//! change. A reload that fails keeps the pair in use, and is logged and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::metrics::Metrics;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read private key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate file {0} holds no certificate")]
    NoCertificate(String),
    #[error(
        "the key in {key} does not fit the certificate in {cert}, or is of an unsupported kind: {reason}"
    )]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Size and modification time of the two files, to notice a change.
type Stamp = [Option<(SystemTime, u64)>; 2];

/// The key pair in use, swappable while connections are being accepted.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn stamp_of(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(cert), one(key)]
}

impl CertStore {
    /// Reads the pair; fails with what is wrong with which file.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let stamp = stamp_of(cert, key);
        let pair = read_pair(cert, key)?;
        Ok(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            stamp: Mutex::new(stamp),
        })
    }

    /// Whether either file changed since the last (attempted) load.
    pub fn changed(&self) -> bool {
        let now = stamp_of(&self.cert, &self.key);
        self.stamp.lock().map(|s| *s != now).unwrap_or(true)
    }

    /// Reads the files again and, if they hold a usable pair, uses it for new handshakes.
    pub fn reload(&self) -> Result<(), TlsError> {
        if let Ok(mut s) = self.stamp.lock() {
            *s = stamp_of(&self.cert, &self.key);
        }
        let pair = read_pair(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(pair);
        }
        Ok(())
    }

    /// Server settings presenting this store's pair and offering `alpn`.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(crate::upstream::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: cert.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = crate::upstream::tls::provider();
    CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
    })
}

/// The SIGHUP stream for [`watch`]. Made before the listeners are announced, so that a
/// SIGHUP sent once pinhole is ready is never missed.
pub fn hangup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates reload on file change only");
            None
        }
    }
}

/// Reloads the pair on SIGHUP, and when the files change (checked every `interval`, if any).
/// Runs until the task is aborted.
pub async fn watch(
    store: Arc<CertStore>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    interval: Option<Duration>,
    metrics: Arc<Metrics>,
) {
    loop {
        let by_signal = tokio::select! {
            _ = async {
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = async {
                match interval {
                    Some(i) => tokio::time::sleep(i).await,
                    None => std::future::pending::<()>().await,
                }
            } => false,
        };
        if !by_signal && !store.changed() {
            continue;
        }
        match store.reload() {
            Ok(()) => {
                Metrics::inc(&metrics.tls_reloads_total);
                tracing::info!(certificate = %store.cert.display(), by_signal, "TLS certificate reloaded");
            }
            Err(e) => {
                Metrics::inc(&metrics.tls_reload_errors_total);
                tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in use");
            }
        }
    }
}
