//! `config.toml`: every setting with its default and its meaning, in one place.
//!
//! Owns: reading and validating the configuration file, reporting each problem with file, line,
//! column and a fix. Does not touch: zone files (see `policy`), sockets or the firewall; it only
//! describes what the other modules should build.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::diag::{Diagnostic, Diagnostics};

/// The whole configuration. Every section is optional; defaults are what a small office gateway
/// wants, except `upstream.servers`, which must name at least one server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub policy: PolicyConfig,
    pub special: SpecialConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub firewall: FirewallConfig,
    pub control: ControlConfig,
    pub tls: TlsConfig,
    /// Where the file was read from; relative paths inside it are resolved against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[server]`: where pinhole listens and who may ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to serve plain DNS on, UDP and TCP, e.g. `["0.0.0.0:53", "[::]:53"]`.
    pub listen: Vec<SocketAddr>,
    /// UDP sockets per listen address (SO_REUSEPORT); 0 = one per CPU core.
    pub udp_sockets: usize,
    /// Largest UDP answer to an EDNS client (bytes); clients without EDNS always get at most 512.
    pub max_udp_payload: u16,
    /// A TCP connection with no query for this long is closed (milliseconds).
    pub tcp_idle_timeout_ms: u64,
    /// Open TCP connections at most; further connections are closed at once.
    pub tcp_max_connections: usize,
    /// Queries in flight on one TCP connection at most (pipelining).
    pub tcp_max_inflight: usize,
    /// Networks that may query. Others get REFUSED.
    pub allow_clients: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 53)),
            ],
            udp_sockets: 0,
            max_udp_payload: 1232,
            tcp_idle_timeout_ms: 10_000,
            tcp_max_connections: 1024,
            tcp_max_inflight: 64,
            allow_clients: default_allow_clients(),
        }
    }
}

/// Loopback, RFC 1918, CGNAT, link-local and unique-local networks.
fn default_allow_clients() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// `[upstream]`: the servers pinhole forwards approved queries to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Plain: `"IP"` or `"IP:PORT"` (IPv6 as `"[::1]:53"`). DNS over TLS:
    /// `"tls://IP[:PORT]#NAME"`. DNS over HTTPS: `"https://IP[:PORT]/PATH#NAME"`. NAME is the
    /// name the server's certificate must carry (sent as SNI); without it, the IP address.
    /// Encrypted servers are tried first, in order of health; plain ones only when
    /// `fallback` allows it (or when no encrypted server is listed).
    pub servers: Vec<Spanned<String>>,
    /// When every encrypted server fails: ask the plain servers of the list (true), or answer
    /// SERVFAIL (false, the default: never a silent downgrade).
    pub fallback: bool,
    /// PEM file of the CAs that sign the encrypted servers' certificates; absent = the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The whole time a client waits before getting SERVFAIL (milliseconds).
    pub timeout_ms: u64,
    /// The time one upstream has to answer before the next is tried (milliseconds).
    pub attempt_timeout_ms: u64,
    /// Resolved servers; filled in by validation.
    #[serde(skip)]
    pub resolved: Vec<UpstreamServer>,
    /// TLS client settings for encrypted servers (roots loaded); filled in by validation.
    #[serde(skip)]
    pub tls_client: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// How pinhole talks to one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProto {
    /// UDP, TCP when the answer is truncated.
    Plain,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484), HTTP/2.
    Https,
}

/// One upstream server as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    pub proto: UpstreamProto,
    pub addr: SocketAddr,
    /// The name the certificate must carry (and SNI); `None`: the IP address.
    pub name: Option<String>,
    /// DoH path, e.g. `/dns-query`.
    pub path: String,
}

impl UpstreamServer {
    pub fn is_encrypted(&self) -> bool {
        self.proto != UpstreamProto::Plain
    }
}

impl std::fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .name
            .as_deref()
            .map(|n| format!("#{n}"))
            .unwrap_or_default();
        match self.proto {
            UpstreamProto::Plain => write!(f, "{}", self.addr),
            UpstreamProto::Tls => write!(f, "tls://{}{name}", self.addr),
            UpstreamProto::Https => write!(f, "https://{}{}{name}", self.addr, self.path),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            fallback: false,
            ca_file: None,
            timeout_ms: 2500,
            attempt_timeout_ms: 800,
            resolved: Vec::new(),
            tls_client: None,
        }
    }
}

impl UpstreamConfig {
    /// Plain servers listed next to encrypted ones without `fallback`: never asked.
    pub fn unused_plain_servers(&self) -> bool {
        !self.fallback
            && self.resolved.iter().any(UpstreamServer::is_encrypted)
            && self.resolved.iter().any(|s| !s.is_encrypted())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
}

/// `[cache]`: the answer cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Answers kept at most (least recently used go first). 0 turns the cache off.
    pub max_entries: usize,
    /// Longest time any answer is kept (seconds); TTLs handed out never exceed upstream's.
    pub max_ttl: u32,
    /// Longest time a negative answer (NXDOMAIN/NODATA) is kept (seconds).
    pub negative_max_ttl: u32,
    /// How long SERVFAIL and answers without usable TTLs are kept (seconds).
    pub servfail_ttl: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_ttl: 86_400,
            negative_max_ttl: 3_600,
            servfail_ttl: 5,
        }
    }
}

/// What a client gets for a name that is not approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    /// RCODE REFUSED.
    Refuse,
    /// NXDOMAIN with a synthesized SOA.
    Nxdomain,
    /// NOERROR with no records and a synthesized SOA.
    Nodata,
    /// A/AAAA get the sinkhole addresses, every other type NODATA.
    Sinkhole,
    /// Resolve upstream and answer, but nothing is allowed in the firewall.
    Forward,
    /// RCODE SERVFAIL: simulates a failing resolver (encrypted-DNS fallback tests).
    Servfail,
    /// No answer at all: simulates a resolver that times out.
    Drop,
}

impl BlockAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockAction::Refuse => "refuse",
            BlockAction::Nxdomain => "nxdomain",
            BlockAction::Nodata => "nodata",
            BlockAction::Sinkhole => "sinkhole",
            BlockAction::Forward => "forward",
            BlockAction::Servfail => "servfail",
            BlockAction::Drop => "drop",
        }
    }
}

/// `[policy]`: zones and the answer for everything else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Folder of zone files (`*.toml`), relative to the config file.
    pub zones_dir: PathBuf,
    /// Zones to enable by name; absent = every zone found in `zones_dir`.
    pub enable: Option<Vec<Spanned<String>>>,
    /// The answer for names no zone lists.
    pub default_action: BlockAction,
    /// TTL of block answers and of their synthesized SOA (seconds).
    pub block_ttl: u32,
    /// Address for A queries under the `sinkhole` action.
    pub sinkhole_ipv4: Ipv4Addr,
    /// Address for AAAA queries under the `sinkhole` action.
    pub sinkhole_ipv6: Ipv6Addr,
    /// Add an Extended DNS Error (RFC 8914) to block answers for EDNS clients.
    pub extended_errors: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            zones_dir: PathBuf::from("zones"),
            enable: None,
            default_action: BlockAction::Refuse,
            block_ttl: 60,
            sinkhole_ipv4: Ipv4Addr::UNSPECIFIED,
            sinkhole_ipv6: Ipv6Addr::UNSPECIFIED,
            extended_errors: true,
        }
    }
}

/// The answer for a special name: its usual one, a simulated failure, or none (not special).
/// In the file: `true` (the usual answer), `false` or `"off"` (not special: the policy
/// decides), or one of `"nxdomain"`, `"nodata"`, `"refuse"`, `"servfail"`, `"drop"` (no
/// answer at all), to watch how clients fall back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SpecialSetting")]
pub enum SpecialAnswer {
    /// The name's usual answer (DDR for `_dns.resolver.arpa`, NXDOMAIN for the canaries).
    Usual,
    Nxdomain,
    Nodata,
    Refuse,
    Servfail,
    Drop,
    /// Not special: the name goes through the policy like any other.
    Off,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpecialSetting {
    Switch(bool),
    Answer(String),
}

impl TryFrom<SpecialSetting> for SpecialAnswer {
    type Error = String;
    fn try_from(v: SpecialSetting) -> Result<Self, String> {
        Ok(match v {
            SpecialSetting::Switch(true) => SpecialAnswer::Usual,
            SpecialSetting::Switch(false) => SpecialAnswer::Off,
            SpecialSetting::Answer(a) => match a.as_str() {
                "nxdomain" => SpecialAnswer::Nxdomain,
                "nodata" => SpecialAnswer::Nodata,
                "refuse" => SpecialAnswer::Refuse,
                "servfail" => SpecialAnswer::Servfail,
                "drop" => SpecialAnswer::Drop,
                "off" => SpecialAnswer::Off,
                other => {
                    return Err(format!(
                        "{other:?} is not a special-name answer: use true, false, \"nxdomain\", \"nodata\", \"refuse\", \"servfail\", \"drop\" or \"off\""
                    ));
                }
            },
        })
    }
}

/// `[special]`: names answered locally and never forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpecialConfig {
    /// `resolver.arpa` and below (RFC 9462): DDR for `_dns.resolver.arpa` SVCB when `[tls]`
    /// listeners exist, NODATA otherwise.
    pub resolver_arpa: SpecialAnswer,
    /// `mask.icloud.com`, `mask-h2.icloud.com`: iCloud Private Relay's network opt-out signal
    /// (usual answer: NXDOMAIN).
    pub private_relay: SpecialAnswer,
    /// `use-application-dns.net`: the canary that turns off browsers' own DoH (usual answer:
    /// NXDOMAIN).
    pub application_dns_canary: SpecialAnswer,
}

impl Default for SpecialConfig {
    fn default() -> Self {
        SpecialConfig {
            resolver_arpa: SpecialAnswer::Usual,
            private_relay: SpecialAnswer::Nxdomain,
            application_dns_canary: SpecialAnswer::Usual,
        }
    }
}

/// `[tls]`: pinhole's own DNS over TLS and DNS over HTTPS listeners, and what DDR advertises.
/// Absent (no listeners): no encrypted serving, and `_dns.resolver.arpa` gets NODATA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (relative to the config file's folder).
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<PathBuf>,
    /// DNS over TLS listeners, e.g. `["0.0.0.0:853"]`.
    pub dot_listen: Vec<SocketAddr>,
    /// DNS over HTTPS (HTTP/2) listeners, e.g. `["0.0.0.0:443"]`.
    pub doh_listen: Vec<SocketAddr>,
    /// The DoH path (RFC 8484 `dohpath` without the `{?dns}` template).
    pub doh_path: String,
    /// The resolver's name in DDR answers (SVCB TargetName); the certificate must carry it.
    pub hostname: Option<String>,
    /// Addresses DDR advertises as `ipv4hint`/`ipv6hint`; empty = the listen addresses that
    /// are not wildcards.
    pub ddr_addresses: Vec<IpAddr>,
    /// How often the certificate and key files are checked for changes (seconds); 0 = only
    /// on SIGHUP.
    pub reload_check_s: u64,
    /// A TLS handshake that takes longer is abandoned (milliseconds).
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificate: None,
            private_key: None,
            dot_listen: Vec::new(),
            doh_listen: Vec::new(),
            doh_path: "/dns-query".into(),
            hostname: None,
            ddr_addresses: Vec::new(),
            reload_check_s: 5,
            handshake_timeout_ms: 5000,
        }
    }
}

impl TlsConfig {
    /// Whether any encrypted listener is configured.
    pub fn enabled(&self) -> bool {
        !self.dot_listen.is_empty() || !self.doh_listen.is_empty()
    }
}

/// How the firewall sets are owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallMode {
    /// No set writes: pinhole is a filtering resolver only.
    Off,
    /// pinhole creates `table inet <table>` with its sets; `pinhole ruleset` prints the rules.
    Managed,
    /// Zones name existing sets (`sets = ["inet filter apple4"]`), as dnsmasq's `--nftset`
    /// does; pinhole checks them at start and never creates or repairs them.
    External,
}

/// What happens to an answer when its set write fails or misses the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// SERVFAIL (with an Extended DNS Error): the client never gets an address the firewall
    /// would drop.
    Closed,
    /// Answer anyway; the fault is counted and logged.
    Open,
}

/// How an element that is already in a set gets its new timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshMethod {
    /// Probe the kernel at start-up: `update` where it updates timeouts in place, else `replace`.
    Auto,
    /// Add the element again with its new timeout and expiration (kernel 6.10+).
    Update,
    /// Delete and add it in one atomic batch (any kernel).
    Replace,
}

/// What to do with `ipv4hint`/`ipv6hint` in HTTPS/SVCB answers for approved names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HintPolicy {
    /// Open the hinted addresses like A/AAAA records.
    Allow,
    /// Remove the hints from every forwarded answer (clients then look up A/AAAA, which are
    /// opened). Breaks DNSSEC signatures over those records for validating clients.
    Strip,
}

/// `[firewall]`: nftables sets that receive every address handed out for approved names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    pub mode: FirewallMode,
    /// Managed mode: the name of `table inet <table>`.
    pub table: String,
    /// Seconds an element outlives the TTL handed to the client.
    pub grace_s: u32,
    /// Shortest element timeout (seconds), for short or zero TTLs.
    pub timeout_floor_s: u32,
    /// Longest element timeout (seconds); TTLs handed out are capped at ceiling - grace.
    pub timeout_ceiling_s: u32,
    /// How long an answer waits for its set write (milliseconds).
    pub write_deadline_ms: u64,
    pub on_failure: FailMode,
    pub https_hints: HintPolicy,
    pub refresh: RefreshMethod,
    /// Folder for the allowlist journal (restored after a restart); absent = no journal.
    pub state_dir: Option<PathBuf>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            mode: FirewallMode::Off,
            table: "pinhole".to_string(),
            grace_s: 60,
            timeout_floor_s: 60,
            timeout_ceiling_s: 86_400,
            write_deadline_ms: 250,
            on_failure: FailMode::Closed,
            https_hints: HintPolicy::Allow,
            refresh: RefreshMethod::Auto,
            state_dir: Some(PathBuf::from("/var/lib/pinhole")),
        }
    }
}

/// `[control]`: the local socket `pinhole status` talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket path (mode 0600, root only); absent = no control socket.
    pub socket: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: Some(PathBuf::from("/run/pinhole/control.sock")),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus text at `http://ADDR/metrics`, e.g. `"127.0.0.1:9153"`. Off when absent.
    pub listen: Option<SocketAddr>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,pinhole::upstream=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
        }
    }
}

impl Config {
    /// Reads and validates `path`. All problems are reported together.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::file(
                path,
                format!("cannot read the configuration: {e}"),
                "check the path given with --config (default ./config.toml)",
            )])
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| Diagnostics(vec![Diagnostic::from_toml(path, text, &e)]))?;
        config.path = path.to_path_buf();
        let mut problems = Vec::new();
        config.validate(path, text, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Diagnostics(problems))
        }
    }

    fn validate(&mut self, path: &Path, text: &str, problems: &mut Vec<Diagnostic>) {
        let whole = |what: &str, fix: &str| Diagnostic::at(path, text, None, what, fix);
        if self.server.listen.is_empty() {
            problems.push(whole(
                "[server] listen is empty: pinhole would serve nobody",
                "add an address, e.g. listen = [\"0.0.0.0:53\", \"[::]:53\"]",
            ));
        }
        if self.server.max_udp_payload < 512 {
            problems.push(whole(
                "[server] max_udp_payload is below 512",
                "use a value from 512 to 4096; 1232 avoids IP fragmentation",
            ));
        }
        if self.server.tcp_max_connections == 0 || self.server.tcp_max_inflight == 0 {
            problems.push(whole(
                "[server] tcp_max_connections and tcp_max_inflight must be at least 1",
                "remove them to get the defaults (1024 and 64)",
            ));
        }
        if self.upstream.servers.is_empty() {
            problems.push(whole(
                "[upstream] servers is empty: approved names could not be resolved",
                "add at least one server, e.g. servers = [\"192.0.2.53\"] in an [upstream] section",
            ));
        }
        self.upstream.resolved.clear();
        for s in &self.upstream.servers {
            match parse_server(s.get_ref()) {
                Ok(server) => self.upstream.resolved.push(server),
                Err(fix) => problems.push(Diagnostic::at(
                    path,
                    text,
                    Some(s.span()),
                    format!("upstream server {:?} cannot be read", s.get_ref()),
                    fix,
                )),
            }
        }
        let encrypted = self
            .upstream
            .resolved
            .iter()
            .any(UpstreamServer::is_encrypted);
        let plain = self.upstream.resolved.iter().any(|s| !s.is_encrypted());
        if self.upstream.fallback && !(encrypted && plain) {
            problems.push(whole(
                "[upstream] fallback = true needs both encrypted (tls://, https://) and plain servers in the list",
                "list the plain servers to fall back to after the encrypted ones, or remove fallback",
            ));
        }
        if encrypted && plain && !self.upstream.fallback {
            tracing::warn!(
                "[upstream] lists plain servers but fallback = false: they are never asked while encrypted servers are listed"
            );
        }
        if encrypted {
            let ca = self.upstream.ca_file.as_ref().map(|f| self.relative(f));
            match crate::upstream::tls::client_config(ca.as_deref()) {
                Ok(c) => self.upstream.tls_client = Some(c),
                Err(e) => problems.push(whole(
                    &format!("[upstream] cannot set up TLS for the encrypted servers: {e}"),
                    "set ca_file to a readable PEM file of CA certificates, or install the system's (Debian: ca-certificates)",
                )),
            }
        }
        self.validate_tls(path, text, problems);
        if self.upstream.timeout_ms == 0 || self.upstream.attempt_timeout_ms == 0 {
            problems.push(whole(
                "[upstream] timeout_ms and attempt_timeout_ms must be positive",
                "remove them to get the defaults (2500 and 800)",
            ));
        }
        if self.upstream.attempt_timeout_ms > self.upstream.timeout_ms {
            problems.push(whole(
                "[upstream] attempt_timeout_ms is longer than timeout_ms: no second server would ever be tried",
                "make attempt_timeout_ms at most timeout_ms",
            ));
        }
        let fw = &self.firewall;
        if fw.timeout_floor_s > fw.timeout_ceiling_s || fw.grace_s >= fw.timeout_ceiling_s {
            problems.push(whole(
                "[firewall] needs timeout_floor_s <= timeout_ceiling_s and grace_s < timeout_ceiling_s",
                "remove them to get the defaults (floor 60, ceiling 86400, grace 60)",
            ));
        }
        if fw.table.is_empty()
            || !fw
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            problems.push(whole(
                "[firewall] table must be a simple nftables name",
                "use letters, digits, '_' and '-', e.g. table = \"pinhole\"",
            ));
        }
        if let Some(enable) = &self.policy.enable {
            for name in enable {
                if name.get_ref().trim().is_empty() {
                    problems.push(Diagnostic::at(
                        path,
                        text,
                        Some(name.span()),
                        "an empty zone name in [policy] enable",
                        "remove the empty string",
                    ));
                }
            }
        }
    }

    /// A path from the file, resolved against the config file's folder.
    pub fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
    }

    fn validate_tls(&mut self, path: &Path, text: &str, problems: &mut Vec<Diagnostic>) {
        let whole = |what: &str, fix: &str| Diagnostic::at(path, text, None, what, fix);
        let tls = &self.tls;
        if !tls.enabled() {
            return;
        }
        if !tls.doh_path.starts_with('/') || tls.doh_path.contains(['?', '{', ' ']) {
            problems.push(whole(
                &format!(
                    "[tls] doh_path {:?} is not a plain absolute path",
                    tls.doh_path
                ),
                "write e.g. doh_path = \"/dns-query\"",
            ));
        }
        match &tls.hostname {
            Some(h) if crate::policy::zonefile::parse_pattern(h).is_ok() && !h.starts_with("*.") => {}
            _ => problems.push(whole(
                "[tls] hostname is missing or not a host name: DDR must name the resolver, and clients check it against the certificate",
                "set hostname = \"dns.example.net\", a name the certificate carries",
            )),
        }
        match (&tls.certificate, &tls.private_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.relative(cert), self.relative(key));
                if let Err(e) = crate::dns::tls::CertStore::load(&cert, &key) {
                    problems.push(whole(
                        &format!("[tls] {e}"),
                        "point certificate and private_key at readable PEM files of one key pair (chain leaf first)",
                    ));
                }
            }
            _ => problems.push(whole(
                "[tls] dot_listen/doh_listen need certificate and private_key",
                "set certificate = \"/etc/pinhole/tls/fullchain.pem\" and private_key = \"/etc/pinhole/tls/key.pem\"",
            )),
        }
        if tls.handshake_timeout_ms == 0 {
            problems.push(whole(
                "[tls] handshake_timeout_ms must be positive",
                "remove it to get the default (5000)",
            ));
        }
    }

    /// The zones folder, resolved against the config file's folder.
    pub fn zones_dir(&self) -> PathBuf {
        if self.policy.zones_dir.is_absolute() {
            return self.policy.zones_dir.clone();
        }
        let base = self.path.parent().unwrap_or_else(|| Path::new("."));
        base.join(&self.policy.zones_dir)
    }

    /// Span of the `enable` entry naming `zone`, for diagnostics about unknown zones.
    pub fn enable_span(&self, zone: &str) -> Option<std::ops::Range<usize>> {
        self.policy
            .enable
            .as_ref()?
            .iter()
            .find(|s| s.get_ref() == zone)
            .map(|s| s.span())
    }
}

/// `"IP"` → IP:53, `"IP:PORT"`, `"[v6]:PORT"`.
/// Reads one `[upstream] servers` entry; the error is the fix to print.
fn parse_server(s: &str) -> Result<UpstreamServer, String> {
    let s = s.trim();
    let addr = |hostport: &str, default_port: u16| -> Option<SocketAddr> {
        if let Ok(a) = hostport.parse::<SocketAddr>() {
            return Some(a);
        }
        let bare = hostport.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    };
    let name_of = |rest: &str| -> Result<(String, Option<String>), String> {
        match rest.split_once('#') {
            Some((r, n)) if !n.is_empty() && crate::policy::zonefile::parse_pattern(n).is_ok() => {
                Ok((r.to_string(), Some(n.trim_end_matches('.').to_ascii_lowercase())))
            }
            Some(_) => Err("after '#' write the name the server's certificate carries, e.g. \"tls://9.9.9.9#dns.quad9.net\"".into()),
            None => Ok((rest.to_string(), None)),
        }
    };
    if let Some(rest) = s.strip_prefix("tls://") {
        let (hostport, name) = name_of(rest)?;
        let addr = addr(&hostport, 853).ok_or("write tls://IP[:PORT]#NAME with an IP address (pinhole does not resolve its upstreams' names), e.g. \"tls://9.9.9.9:853#dns.quad9.net\"")?;
        return Ok(UpstreamServer {
            proto: UpstreamProto::Tls,
            addr,
            name,
            path: String::new(),
        });
    }
    if let Some(rest) = s.strip_prefix("https://") {
        let (rest, name) = name_of(rest)?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest.as_str(), "/dns-query".to_string()),
        };
        let addr = addr(hostport, 443).ok_or("write https://IP[:PORT]/PATH#NAME with an IP address (pinhole does not resolve its upstreams' names), e.g. \"https://9.9.9.9/dns-query#dns.quad9.net\"")?;
        if path.contains('{') || path.contains('?') {
            return Err(
                "give the DoH path without a query or URI template, e.g. /dns-query".into(),
            );
        }
        return Ok(UpstreamServer {
            proto: UpstreamProto::Https,
            addr,
            name,
            path,
        });
    }
    addr(s, 53)
        .map(|addr| UpstreamServer {
            proto: UpstreamProto::Plain,
            addr,
            name: None,
            path: String::new(),
        })
        .ok_or_else(|| "write \"IP\" or \"IP:PORT\" (IPv6 in brackets: \"[2001:db8::1]:53\"), \"tls://IP#NAME\" or \"https://IP/dns-query#NAME\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_fix() {
        let text = "[server]\nlisten = [\"127.0.0.1:53\"]\nlistn = 1\n";
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err();
        let d = &err.0[0];
        assert_eq!((d.line, d.column), (3, 1));
        assert!(d.what.contains("unknown field"), "{}", d.what);
        assert!(err.to_string().starts_with("c.toml:3:1: error:"));
    }

    #[test]
    fn bad_upstream_is_located() {
        let text = "[upstream]\nservers = [\"1.2.3.4\", \"nonsense\"]\n";
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!((err.0[0].line, err.0[0].column), (2, 23));
    }

    #[test]
    fn defaults_and_port_53() {
        let text = "[upstream]\nservers = [\"192.0.2.1\", \"[2001:db8::1]:5353\"]\n";
        let c = Config::parse(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.upstream.resolved[0].addr, "192.0.2.1:53".parse().unwrap());
        assert_eq!(c.upstream.resolved[1].addr.port(), 5353);
        assert_eq!(c.policy.default_action, BlockAction::Refuse);
        assert_eq!(c.server.max_udp_payload, 1232);
    }

    #[test]
    fn encrypted_upstreams_are_read_with_their_names() {
        let tls = parse_server("tls://9.9.9.9#dns.quad9.net").expect("tls");
        assert_eq!(tls.proto, UpstreamProto::Tls);
        assert_eq!(tls.addr, "9.9.9.9:853".parse().unwrap());
        assert_eq!(tls.name.as_deref(), Some("dns.quad9.net"));
        let doh = parse_server("https://[2620:fe::fe]:8443/dns-query#dns.quad9.net").expect("doh");
        assert_eq!(doh.proto, UpstreamProto::Https);
        assert_eq!(doh.addr, "[2620:fe::fe]:8443".parse().unwrap());
        assert_eq!(doh.path, "/dns-query");
        assert_eq!(
            doh.to_string(),
            "https://[2620:fe::fe]:8443/dns-query#dns.quad9.net"
        );
        let bare = parse_server("https://1.1.1.1").expect("default path");
        assert_eq!(
            (bare.addr.port(), bare.path.as_str(), bare.name),
            (443, "/dns-query", None)
        );
        assert!(
            parse_server("tls://dns.quad9.net")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(parse_server("tls://9.9.9.9#").is_err());
        assert!(parse_server("https://9.9.9.9/dns-query{?dns}").is_err());
    }

    #[test]
    fn special_names_take_switches_or_failure_answers() {
        let text = "[upstream]\nservers = [\"192.0.2.1\"]\n[special]\nresolver_arpa = \"drop\"\nprivate_relay = false\napplication_dns_canary = true\n";
        let c = Config::parse(Path::new("c.toml"), text).expect("parses");
        assert_eq!(c.special.resolver_arpa, SpecialAnswer::Drop);
        assert_eq!(c.special.private_relay, SpecialAnswer::Off);
        assert_eq!(c.special.application_dns_canary, SpecialAnswer::Usual);
        let bad = text.replace("\"drop\"", "\"timeout\"");
        let err = Config::parse(Path::new("c.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml:4:"), "{err}");
        assert!(err.contains("\"servfail\""), "{err}");
    }

    #[test]
    fn fallback_needs_both_kinds_and_tls_listeners_need_a_certificate() {
        let text = "[upstream]\nservers = [\"192.0.2.1\"]\nfallback = true\n[tls]\ndot_listen = [\"127.0.0.1:853\"]\n";
        let err = Config::parse(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fallback = true needs both"), "{err}");
        assert!(err.contains("need certificate and private_key"), "{err}");
        assert!(err.contains("[tls] hostname is missing"), "{err}");
    }
}
