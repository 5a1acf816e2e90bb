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
    /// `"IP"` or `"IP:PORT"` (IPv6 as `"[::1]:53"`), tried in order of health.
    pub servers: Vec<Spanned<String>>,
    /// The whole time a client waits before getting SERVFAIL (milliseconds).
    pub timeout_ms: u64,
    /// The time one upstream has to answer before the next is tried (milliseconds).
    pub attempt_timeout_ms: u64,
    /// Resolved servers; filled in by validation.
    #[serde(skip)]
    pub resolved: Vec<SocketAddr>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            timeout_ms: 2500,
            attempt_timeout_ms: 800,
            resolved: Vec::new(),
        }
    }
}

impl UpstreamConfig {
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
}

impl BlockAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockAction::Refuse => "refuse",
            BlockAction::Nxdomain => "nxdomain",
            BlockAction::Nodata => "nodata",
            BlockAction::Sinkhole => "sinkhole",
            BlockAction::Forward => "forward",
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

/// The answer pinhole gives a special name itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecialAnswer {
    Nxdomain,
    Nodata,
    /// Not special: the name goes through the policy like any other.
    Off,
}

/// `[special]`: names answered locally and never forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpecialConfig {
    /// `resolver.arpa` and below (RFC 9462): NODATA.
    pub resolver_arpa: bool,
    /// `mask.icloud.com`, `mask-h2.icloud.com`: iCloud Private Relay's network opt-out signal.
    pub private_relay: SpecialAnswer,
    /// `use-application-dns.net`: the canary that turns off browsers' own DoH.
    pub application_dns_canary: bool,
}

impl Default for SpecialConfig {
    fn default() -> Self {
        SpecialConfig {
            resolver_arpa: true,
            private_relay: SpecialAnswer::Nxdomain,
            application_dns_canary: true,
        }
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
                Some(addr) => self.upstream.resolved.push(addr),
                None => problems.push(Diagnostic::at(
                    path,
                    text,
                    Some(s.span()),
                    format!(
                        "upstream server {:?} is not an IP address with an optional port",
                        s.get_ref()
                    ),
                    "write \"IP\" or \"IP:PORT\", IPv6 in brackets: \"[2001:db8::1]:53\"",
                )),
            }
        }
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
fn parse_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
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
        assert_eq!(c.upstream.resolved[0], "192.0.2.1:53".parse().unwrap());
        assert_eq!(c.upstream.resolved[1].port(), 5353);
        assert_eq!(c.policy.default_action, BlockAction::Refuse);
        assert_eq!(c.server.max_udp_payload, 1232);
    }
}
