//! Zone files (`zones/*.toml`): parsing and validation with file:line:column diagnostics.
//!
//! Owns the on-disk format of zones. It produces plain `ZoneDef` values and never builds the
//! matcher itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::config::BlockAction;
use crate::diag::Diagnostic;

/// What a zone does with the names it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneAction {
    /// Forward, and (with the firewall) allow the answered addresses on the zone's ports.
    Allow,
    Refuse,
    Nxdomain,
    Nodata,
    Sinkhole,
    /// Forward, but allow nothing in the firewall.
    Forward,
    /// SERVFAIL: simulates a failing resolver (encrypted-DNS fallback tests).
    Servfail,
    /// No answer at all: simulates a resolver that times out.
    Drop,
}

impl ZoneAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneAction::Allow => "allow",
            ZoneAction::Refuse => "refuse",
            ZoneAction::Nxdomain => "nxdomain",
            ZoneAction::Nodata => "nodata",
            ZoneAction::Sinkhole => "sinkhole",
            ZoneAction::Forward => "forward",
            ZoneAction::Servfail => "servfail",
            ZoneAction::Drop => "drop",
        }
    }

    /// The block (or forward-only) action, or `None` for `allow`.
    pub fn block(self) -> Option<BlockAction> {
        match self {
            ZoneAction::Allow => None,
            ZoneAction::Refuse => Some(BlockAction::Refuse),
            ZoneAction::Nxdomain => Some(BlockAction::Nxdomain),
            ZoneAction::Nodata => Some(BlockAction::Nodata),
            ZoneAction::Sinkhole => Some(BlockAction::Sinkhole),
            ZoneAction::Forward => Some(BlockAction::Forward),
            ZoneAction::Servfail => Some(BlockAction::Servfail),
            ZoneAction::Drop => Some(BlockAction::Drop),
        }
    }
}

/// Transport protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One `proto/port` a zone's addresses are opened on, e.g. `tcp/443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    pub proto: Proto,
    pub port: u16,
}

impl std::fmt::Display for PortRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{p}/{}", self.port)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    zone: Vec<RawZone>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "default_action")]
    action: ZoneAction,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    sets: Vec<Spanned<String>>,
    #[serde(default, rename = "static")]
    statics: Vec<Spanned<String>>,
    /// More hosts of the same service that are opened on other ports.
    #[serde(default)]
    group: Vec<RawGroup>,
}

/// `[[zone.group]]`: hosts of a zone's service that have their own ports.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    /// Free text for the reader (e.g. where the hosts come from); not used by pinhole.
    #[serde(default, rename = "note")]
    _note: String,
    ports: Vec<Spanned<String>>,
    hosts: Vec<Spanned<String>>,
}

fn default_action() -> ZoneAction {
    ZoneAction::Allow
}

/// A host pattern: a normalized name and whether it is `*.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub name: String,
    pub wildcard: bool,
}

/// A zone as written in a file, validated.
#[derive(Debug, Clone)]
pub struct ZoneDef {
    pub name: String,
    pub description: String,
    pub action: ZoneAction,
    pub ports: Vec<PortRule>,
    pub patterns: Vec<Pattern>,
    /// External firewall mode: the sets (`family table set`) that receive this zone's addresses.
    pub sets: Vec<String>,
    /// Networks always open on this zone's ports (e.g. 17.0.0.0/8), without timeout.
    pub statics: Vec<ipnet::IpNet>,
    pub file: PathBuf,
    /// Line of the zone's `name` key (or of its `[[zone.group]]`'s first host), for `explain`.
    pub line: usize,
    /// 0 for the zone's own `hosts`/`ports`; n for its n-th `[[zone.group]]`, which shares the
    /// zone's name, action and sets but has its own hosts and ports.
    pub part: u16,
}

/// Parses one zone file. Every problem is pushed to `problems`; valid zones are returned.
pub fn parse_file(path: &Path, text: &str, problems: &mut Vec<Diagnostic>) -> Vec<ZoneDef> {
    let file: FileDef = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            problems.push(Diagnostic::from_toml(path, text, &e));
            return Vec::new();
        }
    };
    let mut zones = Vec::with_capacity(file.zone.len());
    for raw in file.zone {
        // This zone's problems, reported in file order.
        let mut found = Vec::new();
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            found.push(Diagnostic::at(
                path,
                text,
                Some(raw.name.span()),
                format!("zone name {:?} is not a simple name", raw.name.get_ref()),
                "use letters, digits, '-' and '_' only, e.g. name = \"apple-push\"",
            ));
        }
        let (ports, patterns) =
            parse_hosts_and_ports(path, text, &raw.ports, &raw.hosts, &mut found);
        let mut groups = Vec::with_capacity(raw.group.len());
        for g in &raw.group {
            let (gports, gpatterns) =
                parse_hosts_and_ports(path, text, &g.ports, &g.hosts, &mut found);
            if gports.is_empty() || gpatterns.is_empty() {
                found.push(Diagnostic::at(
                    path,
                    text,
                    Some(raw.name.span()),
                    format!(
                        "a [[zone.group]] of zone {:?} lists no {}",
                        raw.name.get_ref(),
                        if gports.is_empty() { "ports" } else { "hosts" }
                    ),
                    "give every group both hosts = [...] and ports = [...], or remove it",
                ));
            }
            let line = g
                .hosts
                .first()
                .map_or(0, |h| crate::diag::line_col(text, h.span().start).0);
            groups.push((gports, gpatterns, line));
        }
        let mut sets = Vec::with_capacity(raw.sets.len());
        for set in &raw.sets {
            if crate::firewall::parse_set_label(set.get_ref()).is_some() {
                sets.push(
                    set.get_ref()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            } else {
                found.push(Diagnostic::at(
                    path,
                    text,
                    Some(set.span()),
                    format!("set {:?} is not \"family table set\"", set.get_ref()),
                    "write e.g. \"inet filter apple4\" (family inet, ip or ip6)",
                ));
            }
        }
        let mut statics = Vec::with_capacity(raw.statics.len());
        for net in &raw.statics {
            match net.get_ref().trim().parse::<ipnet::IpNet>() {
                Ok(n) => statics.push(n.trunc()),
                Err(_) => found.push(Diagnostic::at(
                    path,
                    text,
                    Some(net.span()),
                    format!("static entry {:?} is not a network", net.get_ref()),
                    "write a CIDR such as \"17.0.0.0/8\" or \"2620:149:a44::/48\"",
                )),
            }
        }
        let ok = found.is_empty();
        found.sort_by_key(|d| (d.line, d.column));
        problems.append(&mut found);
        if ok {
            let (line, _) = crate::diag::line_col(text, raw.name.span().start);
            let first = ZoneDef {
                name,
                description: raw.description,
                action: raw.action,
                ports,
                patterns,
                sets,
                statics,
                file: path.to_path_buf(),
                line,
                part: 0,
            };
            let parts: Vec<ZoneDef> = groups
                .into_iter()
                .enumerate()
                .map(|(n, (ports, patterns, line))| ZoneDef {
                    ports,
                    patterns,
                    statics: Vec::new(),
                    line,
                    part: u16::try_from(n + 1).unwrap_or(u16::MAX),
                    ..first.clone()
                })
                .collect();
            zones.push(first);
            zones.extend(parts);
        }
    }
    zones
}

/// Parses a host list and its port list, pushing located problems to `found`.
fn parse_hosts_and_ports(
    path: &Path,
    text: &str,
    raw_ports: &[Spanned<String>],
    raw_hosts: &[Spanned<String>],
    found: &mut Vec<Diagnostic>,
) -> (Vec<PortRule>, Vec<Pattern>) {
    let mut ports = Vec::with_capacity(raw_ports.len());
    for p in raw_ports {
        match parse_port(p.get_ref()) {
            Some(rule) => {
                if !ports.contains(&rule) {
                    ports.push(rule)
                }
            }
            None => found.push(Diagnostic::at(
                path,
                text,
                Some(p.span()),
                format!("port {:?} is not of the form proto/port", p.get_ref()),
                "write \"tcp/443\" or \"udp/123\" (one port a string, 1-65535)",
            )),
        }
    }
    let mut patterns = Vec::with_capacity(raw_hosts.len());
    for h in raw_hosts {
        match parse_pattern(h.get_ref()) {
            Ok(p) => patterns.push(p),
            Err((what, fix)) => found.push(Diagnostic::at(path, text, Some(h.span()), what, fix)),
        }
    }
    (ports, patterns)
}

fn parse_port(s: &str) -> Option<PortRule> {
    let (proto, port) = s.trim().split_once('/')?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let port: u16 = port.parse().ok()?;
    (port != 0).then_some(PortRule { proto, port })
}

/// Validates and normalizes a host pattern: `name` or `*.name`, case folded, trailing dot removed.
pub fn parse_pattern(s: &str) -> Result<Pattern, (String, String)> {
    let trimmed = s.trim();
    let (wildcard, rest) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    let bad = |what: String| {
        Err((
            what,
            "write a host name (\"host.example.com\") or a wildcard for every name below one (\"*.example.com\"); internationalized names in their xn-- form".to_string(),
        ))
    };
    if rest.is_empty() {
        return bad(format!("host pattern {s:?} names no domain"));
    }
    if rest.len() > 253 {
        return bad(format!("host pattern {s:?} is longer than 253 characters"));
    }
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad(format!(
                "host pattern {s:?} has an empty label or one longer than 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "host pattern {s:?} has a character other than letters, digits, '-' and '_' (a '*' may only stand alone as the first label)"
            ));
        }
    }
    Ok(Pattern {
        name: rest.to_ascii_lowercase(),
        wildcard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_normalize() {
        assert_eq!(
            parse_pattern("*.Push.Apple.COM."),
            Ok(Pattern {
                name: "push.apple.com".into(),
                wildcard: true
            })
        );
        assert!(parse_pattern("*").is_err());
        assert!(parse_pattern("a.*.com").is_err());
        assert!(parse_pattern("bücher.de").is_err());
        assert!(parse_pattern("a..b").is_err());
    }

    #[test]
    fn bad_host_is_located() {
        let text = "[[zone]]\nname = \"z\"\nhosts = [\"ok.test\",\n  \"bad host\"]\nports = [\"tcp/443\", \"sctp/1\"]\n";
        let mut problems = Vec::new();
        let zones = parse_file(Path::new("zones/z.toml"), text, &mut problems);
        assert!(zones.is_empty());
        assert_eq!(problems.len(), 2);
        assert_eq!((problems[0].line, problems[0].column), (4, 3));
        assert_eq!(problems[1].line, 5);
    }

    #[test]
    fn groups_become_parts_with_their_own_ports() {
        let text = "[[zone]]\nname = \"svc\"\nports = [\"tcp/443\"]\nhosts = [\"a.test\"]\nsets = [\"inet filter s4\"]\n\n[[zone.group]]\nnote = \"time\"\nports = [\"udp/123\", \"udp/123\"]\nhosts = [\"time.test\"]\n";
        let mut problems = Vec::new();
        let zones = parse_file(Path::new("zones/z.toml"), text, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(zones.len(), 2);
        assert_eq!((zones[0].name.as_str(), zones[0].part), ("svc", 0));
        assert_eq!((zones[1].name.as_str(), zones[1].part), ("svc", 1));
        assert_eq!(
            zones[1].ports,
            [PortRule {
                proto: Proto::Udp,
                port: 123
            }]
        );
        assert_eq!(zones[1].patterns[0].name, "time.test");
        assert_eq!(zones[1].sets, zones[0].sets);
        assert_eq!(zones[1].line, 10);

        let bad = "[[zone]]\nname = \"svc\"\n[[zone.group]]\nports = []\nhosts = [\"a.test\"]\n";
        let mut problems = Vec::new();
        assert!(parse_file(Path::new("zones/z.toml"), bad, &mut problems).is_empty());
        assert!(problems[0].what.contains("lists no ports"), "{problems:?}");
    }
}
