//! Starting pinhole for a test: in-process (the library's `Server`) or as the real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinhole::config::Config;
use pinhole::dns::Server;
use pinhole::metrics::Metrics;
use pinhole::policy::Policy;

/// The zones every resolver test uses.
pub const TEST_ZONES: &str = r#"
[[zone]]
name = "test"
description = "the test upstream's names"
action = "allow"
ports = ["tcp/443"]
hosts = ["*.example.test", "example.test"]

[[zone]]
name = "blocked-nx"
action = "nxdomain"
hosts = ["nx.blocked.test"]

[[zone]]
name = "blocked-nodata"
action = "nodata"
hosts = ["nodata.blocked.test"]

[[zone]]
name = "blocked-sink"
action = "sinkhole"
hosts = ["*.sink.blocked.test"]

[[zone]]
name = "blocked-refuse"
action = "refuse"
hosts = ["refuse.example.test"]
"#;

/// A temporary folder with `config.toml` and `zones/test.toml`.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// `config` is the config text; `{upstreams}` in it is replaced by the given servers.
    pub fn new(config: &str, upstreams: &[SocketAddr], zones: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        let mut text = config.replace("{upstreams}", &list.join(", "));
        if !text.contains("[control]") {
            // Each test its own control socket.
            text.push_str(&format!(
                "\n[control]\nsocket = \"{}/control.sock\"\n",
                dir.path().display()
            ));
        }
        std::fs::write(dir.path().join("config.toml"), text).expect("write config");
        std::fs::create_dir(dir.path().join("zones")).expect("zones dir");
        std::fs::write(dir.path().join("zones/test.toml"), zones).expect("write zones");
        Setup { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn load(&self) -> (Config, Policy) {
        let config = Config::load(&self.config_path()).unwrap_or_else(|e| panic!("config: {e}"));
        let policy = Policy::load(&config).unwrap_or_else(|e| panic!("zones: {e}"));
        (config, policy)
    }
}

/// The default test config: loopback, random port, short timeouts.
pub fn config_text(extra_server: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nudp_sockets = 2\n{extra_server}\n\
         [upstream]\nservers = [{{upstreams}}]\ntimeout_ms = 1500\nattempt_timeout_ms = 500\n\
         {extra}\n"
    )
}

/// pinhole in-process; ready when this returns.
pub struct Running {
    pub server: Server,
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub setup: Setup,
}

pub async fn start(setup: Setup) -> Running {
    let (config, policy) = setup.load();
    let metrics = Arc::new(Metrics::default());
    let server = Server::start(&config, policy, None, Arc::clone(&metrics))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let addr = server.udp_addrs()[0];
    Running {
        server,
        addr,
        metrics,
        setup,
    }
}

/// Convenience: default config and zones against the given upstreams.
pub async fn start_default(upstreams: &[SocketAddr]) -> Running {
    start(Setup::new(&config_text("", ""), upstreams, TEST_ZONES)).await
}

pub fn metric(m: &Metrics, name: &str) -> u64 {
    m.snapshot()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The pinhole binary as a child process; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pinhole")
}

/// Runs the pinhole command line: (exit status success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run pinhole");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `pinhole run --config PATH` and waits for its "listening" log line, which carries the
/// bound address (the readiness signal).
pub fn spawn_daemon(config: &Path) -> Daemon {
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinhole");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("actual=").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = rx
        .recv_timeout(deadline - Instant::now())
        .expect("pinhole did not report its listening address");
    Daemon {
        child,
        addr: addr.parse().expect("address in log line"),
    }
}

/// pinhole in-process with its firewall writing into `ns` (managed mode).
pub async fn start_with_firewall(
    setup: Setup,
    ns: &super::netns::NetNs,
) -> (Running, Arc<pinhole::firewall::Firewall>) {
    start_with_firewall_in(setup, ns).await
}

/// Same, for any named namespace.
pub async fn start_with_firewall_in(
    setup: Setup,
    ns: &impl super::netns::Named,
) -> (Running, Arc<pinhole::firewall::Firewall>) {
    let (config, policy) = setup.load();
    let metrics = Arc::new(Metrics::default());
    let fw_cfg = config.firewall.clone();
    let state = fw_cfg.state_dir.clone();
    let m = Arc::clone(&metrics);
    let zones = policy.zones().to_vec();
    let fw = super::netns::run_in(ns, move || {
        pinhole::firewall::Firewall::start(&fw_cfg, &zones, state, m)
    })
    .unwrap_or_else(|e| panic!("firewall: {e}"));
    let fw = Arc::new(fw);
    let server = Server::start(&config, policy, Some(Arc::clone(&fw)), Arc::clone(&metrics))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let addr = server.udp_addrs()[0];
    (
        Running {
            server,
            addr,
            metrics,
            setup,
        },
        fw,
    )
}
