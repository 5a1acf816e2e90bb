//! The local control socket: `pinhole status` asks the running daemon for its live allowlist.
//!
//! Owns the socket (a Unix socket created with mode 0600 and checked with SO_PEERCRED, so only
//! root can use it) and the text of the status table. It reads the firewall's table and the
//! counters; it changes nothing.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::firewall::{Firewall, now_ms};
use crate::metrics::Metrics;

/// Binds the control socket at `path` (replacing a stale one), readable and writable by root
/// only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `status` requests until the task is aborted.
pub async fn serve(listener: UnixListener, firewall: Option<Arc<Firewall>>, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // The file mode already keeps others out; the peer check makes it explicit.
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(0) {
            let _ = stream
                .write_all(b"pinhole: the control socket is for root only\n")
                .await;
            continue;
        }
        let firewall = firewall.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut req = [0u8; 64];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(2),
                stream.read(&mut req),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let reply = match std::str::from_utf8(&req[..n]).map(str::trim) {
                Ok("status") => status_text(firewall.as_deref(), &metrics),
                Ok("metrics") => metrics.render(),
                _ => "unknown request; try: status\n".to_string(),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The live allowlist: one line per address, zone and name, with its ports and time left.
pub fn status_text(firewall: Option<&Firewall>, metrics: &Metrics) -> String {
    let mut out = String::new();
    let Some(fw) = firewall else {
        out.push_str("firewall: off ([firewall] mode = \"off\"); no set elements\n");
        return out;
    };
    let now = now_ms();
    let live = fw.snapshot();
    // Group ports of the same address, zone and name.
    let mut rows: Vec<(String, String, String, String, u64)> = Vec::new();
    for (k, l) in &live {
        let port = match k.proto {
            6 => format!("tcp/{}", k.port),
            17 => format!("udp/{}", k.port),
            _ => "any".to_string(),
        };
        let secs = l.expires_ms.saturating_sub(now) / 1000;
        match rows
            .iter_mut()
            .find(|r| r.0 == k.addr.to_string() && *r.2 == *l.zone && *r.3 == *l.name)
        {
            Some(r) => {
                r.1.push(',');
                r.1.push_str(&port);
                r.4 = r.4.min(secs);
            }
            None => rows.push((
                k.addr.to_string(),
                port,
                l.zone.to_string(),
                l.name.to_string(),
                secs,
            )),
        }
    }
    let sets: Vec<String> = fw.sets().iter().map(|s| s.label()).collect();
    let _ = writeln!(
        out,
        "sets {}: {} live elements, {} batches, {} errors",
        sets.join(", "),
        live.len(),
        metrics
            .nft_batches_total
            .load(std::sync::atomic::Ordering::Relaxed),
        metrics
            .nft_errors_total
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "{:<40} {:<24} {:<28} {:<40} EXPIRES IN",
        "ADDRESS", "PORTS", "ZONE", "NAME"
    );
    for (addr, ports, zone, name, secs) in rows {
        let _ = writeln!(out, "{addr:<40} {ports:<24} {zone:<28} {name:<40} {secs}s");
    }
    out
}

/// Asks the daemon at `path` for `request` and returns its reply (within 5 seconds).
pub async fn ask(path: &Path, request: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = UnixStream::connect(path).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.shutdown().await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok(reply)
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the daemon did not answer within 5 s",
            )
        })?
}
