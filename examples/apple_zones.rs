//! Generates `zones/apple.toml`, the Apple catalogue, from the table of Apple's enterprise
//! network guide (`tests/data/apple-hosts.tsv`, a copy of `shared/reference/apple-hosts.tsv`).
//!
//! Rerun after the table changes:
//!
//! ```sh
//! cargo run --example apple_zones -- tests/data/apple-hosts.tsv > zones/apple.toml
//! ```
//!
//! One `[[zone]]` per category of the table (one section of Apple's guide). Within a category,
//! hosts are grouped by their port set: the most common set is the zone's own `ports`, every
//! other set becomes a `[[zone.group]]`. Rows whose "host" is a network (APNs, notarization,
//! 17.0.0.0/8) become `static` entries of option zones that list no names. `tests/apple.rs`
//! includes this file and checks that the checked-in zone file is exactly its output.
//!
//! Only std: the example must build wherever the crate builds.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

/// The command that regenerates the zone file, printed into its header.
pub const RERUN: &str =
    "cargo run --example apple_zones -- tests/data/apple-hosts.tsv > zones/apple.toml";

/// What a "per service" row opens: every port Apple lists for any of its services except
/// TCP 22, which Apple gives only for upload.appleschoolcontent.com (not below apple.com).
/// Apple's Firewalls section says `*.apple.com` or 17.0.0.0/8 may replace the host lists, on
/// the ports each service needs; these are those ports.
pub const PER_SERVICE: &[Port] = &[
    Port::tcp(80),
    Port::tcp(443),
    Port::tcp(2197),
    Port::tcp(5223),
    Port::udp(123),
    Port::udp(443),
];

/// A port a zone opens, ordered TCP before UDP, then by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub udp: bool,
    pub number: u16,
}

impl Port {
    const fn tcp(number: u16) -> Port {
        Port { udp: false, number }
    }
    const fn udp(number: u16) -> Port {
        Port { udp: true, number }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{proto}/{}", self.number)
    }
}

/// How a category of the table becomes zones: the zone for its names, the option zone for its
/// networks, and the description both carry.
struct Category {
    tsv: &'static str,
    zone: &'static str,
    ranges_zone: &'static str,
    description: &'static str,
    ranges_description: &'static str,
}

/// Zone names and descriptions per category. A category missing here still gets zones
/// (`apple-<category>` and `apple-<category>-ranges`) with the category as description.
const CATEGORIES: &[Category] = &[
    Category {
        tsv: "device-setup",
        zone: "apple-device-setup",
        ranges_zone: "apple-device-setup-ranges",
        description: "Device setup: activation, captive-portal check, eSIM activation, date and time (NTP)",
        ranges_description: "",
    },
    Category {
        tsv: "device-management",
        zone: "apple-device-management",
        ranges_zone: "apple-device-management-ranges",
        description: "Device management and Apple Push Notification service (APNs): push, enrollment, MDM, Apps and Books licences",
        ranges_description: "",
    },
    Category {
        tsv: "apple-business-manager/apple-school-manager",
        zone: "apple-business-school-manager",
        ranges_zone: "apple-business-school-manager-ranges",
        description: "Apple Business Manager and Apple School Manager: portals, sign-in, Apps and Books, SFTP roster uploads",
        ranges_description: "",
    },
    Category {
        tsv: "apple-business-essentials-device-management",
        zone: "apple-business-essentials",
        ranges_zone: "apple-business-essentials-ranges",
        description: "Apple Business Essentials device management: enrollment, MDM, SCEP, Managed Lost Mode",
        ranges_description: "",
    },
    Category {
        tsv: "classroom-and-schoolwork",
        zone: "apple-classroom-schoolwork",
        ranges_zone: "apple-classroom-schoolwork-ranges",
        description: "Classroom and Schoolwork: device verification, class rosters, handouts",
        ranges_description: "",
    },
    Category {
        tsv: "software-updates",
        zone: "apple-software-updates",
        ranges_zone: "apple-software-updates-ranges",
        description: "Software updates: update catalogs and downloads, macOS Recovery, Rosetta 2",
        ranges_description: "",
    },
    Category {
        tsv: "app-store",
        zone: "apple-app-store",
        ranges_zone: "apple-app-store-ranges",
        description: "App Store and additional content: apps, books, enterprise app validation, XProtect",
        ranges_description: "",
    },
    Category {
        tsv: "app-features",
        zone: "apple-app-features",
        ranges_zone: "apple-app-features-ranges",
        description: "App features: notarization checks (CloudKit), App Attest, Touch ID and Face ID for websites",
        ranges_description: "",
    },
    Category {
        tsv: "app-notarization",
        zone: "apple-app-notarization",
        ranges_zone: "apple-notarization-ranges",
        description: "",
        ranges_description: "Option: the networks stapler fetches notarization tickets from (CloudKit), always open on tcp/443",
    },
    Category {
        tsv: "carrier-updates",
        zone: "apple-carrier-updates",
        ranges_zone: "apple-carrier-updates-ranges",
        description: "Carrier updates: cellular carrier settings bundles for iPhone and iPad",
        ranges_description: "",
    },
    Category {
        tsv: "content-caching",
        zone: "apple-content-caching",
        ranges_zone: "apple-content-caching-ranges",
        description: "Content caching: registration, configuration and client location of macOS content caches",
        ranges_description: "",
    },
    Category {
        tsv: "beta-updates",
        zone: "apple-beta-updates",
        ranges_zone: "apple-beta-updates-ranges",
        description: "Beta updates and Feedback Assistant",
        ranges_description: "",
    },
    Category {
        tsv: "apple-diagnostics",
        zone: "apple-diagnostics",
        ranges_zone: "apple-diagnostics-ranges",
        description: "Apple Diagnostics: hardware checks",
        ranges_description: "",
    },
    Category {
        tsv: "domain-name-system-resolution",
        zone: "apple-dns-resolution",
        ranges_zone: "apple-dns-resolution-ranges",
        description: "Apple's DNS over HTTPS resolver; enabling it lets clients resolve around pinhole (docs/apple.md)",
        ranges_description: "",
    },
    Category {
        tsv: "certificate-validation",
        zone: "apple-certificate-validation",
        ranges_zone: "apple-certificate-validation-ranges",
        description: "Certificate validation: OCSP and CRLs of Apple, DigiCert and Entrust",
        ranges_description: "",
    },
    Category {
        tsv: "apple-account",
        zone: "apple-account",
        ranges_zone: "apple-account-ranges",
        description: "Apple Account sign-in",
        ranges_description: "",
    },
    Category {
        tsv: "icloud",
        zone: "apple-icloud",
        ranges_zone: "apple-icloud-ranges",
        description: "iCloud: CloudKit, iCloud Drive and content, iWork, connection tests",
        ranges_description: "",
    },
    Category {
        tsv: "private-relay",
        zone: "apple-private-relay",
        ranges_zone: "apple-private-relay-ranges",
        description: "iCloud Private Relay; mask and mask-h2 take effect only with [special] private_relay = \"off\" (docs/apple.md)",
        ranges_description: "",
    },
    Category {
        tsv: "apple-intelligence-siri-and-search",
        zone: "apple-intelligence-siri-search",
        ranges_zone: "apple-intelligence-siri-search-ranges",
        description: "Apple Intelligence, Siri and Search, with the Private Cloud Compute relays",
        ranges_description: "",
    },
    Category {
        tsv: "associated-domains",
        zone: "apple-associated-domains",
        ranges_zone: "apple-associated-domains-ranges",
        description: "Associated domains: universal links, SSO extensions, passkeys",
        ranges_description: "",
    },
    Category {
        tsv: "tap-to-pay-on-iphone",
        zone: "apple-tap-to-pay",
        ranges_zone: "apple-tap-to-pay-ranges",
        description: "Tap to Pay on iPhone",
        ranges_description: "",
    },
    Category {
        tsv: "id-verifier-on-iphone",
        zone: "apple-id-verifier",
        ranges_zone: "apple-id-verifier-ranges",
        description: "ID Verifier on iPhone",
        ranges_description: "",
    },
    Category {
        tsv: "additional-content",
        zone: "apple-additional-content",
        ranges_zone: "apple-additional-content-ranges",
        description: "Additional content: GarageBand and Logic sounds, Xcode components, Swift Playgrounds, screen savers",
        ranges_description: "",
    },
    Category {
        tsv: "apple-push-notifications",
        zone: "apple-push-notifications",
        ranges_zone: "apple-push-ranges",
        description: "",
        ranges_description: "Option: the APNs networks (Apple 102266), always open on the APNs ports; pairs with apple-device-management",
    },
    Category {
        tsv: "firewalls",
        zone: "apple-com-wildcard",
        ranges_zone: "apple-network-17",
        description: "Option: every name below apple.com, on the ports of all Apple services (Apple's shortcut for hostname firewalls)",
        ranges_description: "Option: all of 17.0.0.0/8 (Apple's network), always open on the ports of all Apple services",
    },
];

/// One row of the table.
struct Row {
    line: usize,
    category: String,
    host: String,
    network: bool,
    ports: BTreeSet<Port>,
    note: String,
}

/// The hosts (or networks) of one zone part, all on the same ports.
struct Part {
    ports: BTreeSet<Port>,
    entries: Vec<(String, String)>,
}

/// A zone to write: its own part first, then its groups.
struct Zone {
    name: String,
    description: String,
    network: bool,
    parts: Vec<Part>,
}

/// Parses the ports column: `443`, `80,443`, `443,udp:443`, `udp:123`, `per service`.
fn parse_ports(field: &str, protocol: &str) -> Result<BTreeSet<Port>, String> {
    if field == "per service" {
        return Ok(PER_SERVICE.iter().copied().collect());
    }
    let mut ports = BTreeSet::new();
    for token in field.split(',').map(str::trim) {
        let (udp, number) = match token.split_once(':') {
            Some(("udp", n)) => (true, n),
            Some(("tcp", n)) => (false, n),
            Some(_) => return Err(format!("port {token:?} is not N, tcp:N or udp:N")),
            None => (false, token),
        };
        let number: u16 = number
            .parse()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("port {token:?} is not a number from 1 to 65535"))?;
        ports.insert(Port { udp, number });
    }
    let tcp = ports.iter().any(|p| !p.udp);
    let udp = ports.iter().any(|p| p.udp);
    let consistent = match protocol {
        "TCP" => tcp && !udp,
        "UDP" => udp && !tcp,
        "both" => tcp && udp,
        // Apple's copies give no protocol: the ports column says what is opened.
        "unknown" => true,
        _ => {
            return Err(format!(
                "protocol {protocol:?} is not TCP, UDP, both or unknown"
            ));
        }
    };
    if !consistent {
        return Err(format!(
            "ports {field:?} do not fit protocol {protocol:?} (write udp:N for UDP ports)"
        ));
    }
    Ok(ports)
}

/// Whether `host` is a network (`17.0.0.0/8`, `2620:149:a44::/48`); an error if it is one
/// that does not parse.
fn is_network(host: &str) -> Result<bool, String> {
    let Some((addr, len)) = host.split_once('/') else {
        return Ok(false);
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{host:?} is not a network"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(l) if l <= max => Ok(true),
        _ => Err(format!("{host:?} has a prefix length over {max}")),
    }
}

/// Checks a host pattern the way zone files accept it: `name` or `*.name`.
fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name or *.name"))
    }
}

/// The first sentence of a note, for the comment after its host. A period after one of the
/// abbreviations the notes use does not end a sentence.
fn first_sentence(note: &str) -> String {
    const ABBREVIATIONS: &[&str] = &["incl", "e.g", "i.e", "etc", "approx"];
    let mut from = 0;
    while let Some(i) = note[from..].find(". ").map(|i| from + i) {
        let word = note[..i].rsplit(' ').next().unwrap_or("");
        if !ABBREVIATIONS.contains(&word) {
            return note[..=i].trim().to_string();
        }
        from = i + 2;
    }
    note.trim().to_string()
}

fn parse(tsv: &str) -> Result<Vec<Row>, String> {
    let mut lines = tsv.lines().enumerate();
    let expected = [
        "category", "host", "ports", "protocol", "os", "proxy_ok", "notes",
    ];
    match lines.next() {
        Some((_, header)) if header.split('\t').eq(expected) => {}
        _ => {
            return Err(format!(
                "line 1: the header is not {}",
                expected.join("\\t")
            ));
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [category, host, ports, protocol, _os, _proxy, note] = fields[..] else {
            return Err(format!(
                "line {n}: {} fields, the header has 7",
                fields.len()
            ));
        };
        let at = |e: String| format!("line {n}: {e}");
        let network = is_network(host).map_err(at)?;
        if !network {
            check_host(host).map_err(at)?;
        }
        rows.push(Row {
            line: n,
            category: category.to_string(),
            host: host.to_ascii_lowercase(),
            network,
            ports: parse_ports(ports, protocol).map_err(at)?,
            note: first_sentence(note),
        });
    }
    Ok(rows)
}

/// The zones of one category: names grouped by port set, networks in their option zone.
fn category_zones(category: &str, rows: &[&Row]) -> Result<Vec<Zone>, String> {
    let known = CATEGORIES.iter().find(|c| c.tsv == category);
    let slug: String = category
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let (zone, ranges_zone, description, ranges_description) = match known {
        Some(c) => (
            c.zone.to_string(),
            c.ranges_zone.to_string(),
            c.description.to_string(),
            c.ranges_description.to_string(),
        ),
        None => (
            format!("apple-{slug}"),
            format!("apple-{slug}-ranges"),
            category.to_string(),
            category.to_string(),
        ),
    };
    let mut zones = Vec::new();

    let mut parts: Vec<Part> = Vec::new();
    for row in rows.iter().filter(|r| !r.network) {
        let part = match parts.iter_mut().position(|p| p.ports == row.ports) {
            Some(i) => &mut parts[i],
            None => {
                parts.push(Part {
                    ports: row.ports.clone(),
                    entries: Vec::new(),
                });
                parts.last_mut().expect("just pushed")
            }
        };
        if !part.entries.iter().any(|(h, _)| *h == row.host) {
            part.entries.push((row.host.clone(), row.note.clone()));
        }
    }
    if !parts.is_empty() {
        // The most common port set (the first on a tie) is the zone's own.
        let mut best = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.entries.len() > parts[best].entries.len() {
                best = i;
            }
        }
        let own = parts.remove(best);
        parts.insert(0, own);
        zones.push(Zone {
            name: zone,
            description,
            network: false,
            parts,
        });
    }

    let nets: Vec<&&Row> = rows.iter().filter(|r| r.network).collect();
    if let Some(first) = nets.first() {
        // Groups cannot carry networks, so all networks of a category share one port set.
        if let Some(other) = nets.iter().find(|r| r.ports != first.ports) {
            return Err(format!(
                "line {}: the networks of category {category:?} need one port set (line {} differs)",
                other.line, first.line
            ));
        }
        zones.push(Zone {
            name: ranges_zone,
            description: ranges_description,
            network: true,
            parts: vec![Part {
                ports: first.ports.clone(),
                entries: nets
                    .iter()
                    .map(|r| (r.host.clone(), r.note.clone()))
                    .collect(),
            }],
        });
    }
    Ok(zones)
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn ports_list(ports: &BTreeSet<Port>) -> String {
    let list: Vec<String> = ports.iter().map(|p| toml_str(&p.to_string())).collect();
    format!("[{}]", list.join(", "))
}

/// Writes `key = [ ... ]` with one entry a line and its note as a comment. When every entry
/// has the same note, it is written once above the list.
fn write_list(out: &mut String, key: &str, entries: &[(String, String)]) {
    let shared = entries.windows(2).all(|w| w[0].1 == w[1].1) && entries.len() > 1;
    if shared {
        let _ = writeln!(out, "# {}", entries[0].1);
    }
    let _ = writeln!(out, "{key} = [");
    let width = entries.iter().map(|(h, _)| h.len()).max().unwrap_or(0) + 3;
    for (host, note) in entries {
        let item = format!("{},", toml_str(host));
        if shared || note.is_empty() {
            let _ = writeln!(out, "  {item}");
        } else {
            let _ = writeln!(out, "  {item:<width$} # {note}");
        }
    }
    let _ = writeln!(out, "]");
}

fn port_words(ports: &BTreeSet<Port>) -> String {
    let mut words = Vec::new();
    for (udp, name) in [(false, "TCP"), (true, "UDP")] {
        let numbers: Vec<String> = ports
            .iter()
            .filter(|p| p.udp == udp)
            .map(|p| p.number.to_string())
            .collect();
        if !numbers.is_empty() {
            words.push(format!("{name} {}", numbers.join(", ")));
        }
    }
    words.join("; ")
}

/// The zone file for the table `tsv`, or the first problem found with its line.
pub fn render(tsv: &str) -> Result<String, String> {
    let rows = parse(tsv)?;
    let mut categories: Vec<&str> = Vec::new();
    for r in &rows {
        if !categories.contains(&r.category.as_str()) {
            categories.push(&r.category);
        }
    }
    let mut zones = Vec::new();
    for c in &categories {
        let of: Vec<&Row> = rows.iter().filter(|r| r.category == *c).collect();
        zones.extend(category_zones(c, &of)?);
    }
    let mut names = BTreeSet::new();
    for z in &zones {
        if !names.insert(z.name.as_str()) {
            return Err(format!("two categories make zone {:?}", z.name));
        }
    }
    let per_service: Vec<String> = PER_SERVICE.iter().map(Port::to_string).collect();

    let mut out = String::new();
    let _ = write!(
        out,
        "\
# Apple services, from Apple's \"Use Apple products on enterprise networks\"
# (https://support.apple.com/en-us/101555, formerly HT210060) with its APNs (102266) and
# notarization networks. One [[zone]] per section of Apple's guide: enable zones by name in
# config.toml ([policy] enable). docs/apple.md says which to enable for which deployment.
#
# GENERATED by examples/apple_zones.rs from tests/data/apple-hosts.tsv ({rows} rows).
# Do not edit by hand: change the table (or the generator) and rerun
#   {RERUN}
#
# Ports: \"443\" in the table is tcp/443, \"udp:443\" is udp/443 (QUIC), \"udp:123\" is NTP.
# Rows whose protocol no copy of Apple's guide shows (\"unknown\") open what the ports column
# says, TCP only. \"per service\" (Apple's Firewalls section: *.apple.com, 17.0.0.0/8) opens
# the ports of all Apple services: {per_service}.
# The comment after each host is the first sentence of the table's note for it.
# Zones named apple-*-ranges and apple-network-17 open fixed networks (static) and no names.
",
        rows = rows.len(),
        per_service = per_service.join(", ")
    );
    for z in &zones {
        let own = &z.parts[0];
        let _ = writeln!(out);
        let _ = writeln!(out, "[[zone]]");
        let _ = writeln!(out, "name = {}", toml_str(&z.name));
        let _ = writeln!(out, "description = {}", toml_str(&z.description));
        let _ = writeln!(out, "action = \"allow\"");
        let _ = writeln!(out, "ports = {}", ports_list(&own.ports));
        write_list(
            &mut out,
            if z.network { "static" } else { "hosts" },
            &own.entries,
        );
        for g in &z.parts[1..] {
            let _ = writeln!(out);
            let _ = writeln!(out, "[[zone.group]]");
            let _ = writeln!(
                out,
                "note = {}",
                toml_str(&format!("Apple lists these on {}", port_words(&g.ports)))
            );
            let _ = writeln!(out, "ports = {}", ports_list(&g.ports));
            write_list(&mut out, "hosts", &g.entries);
        }
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: {RERUN}");
        return std::process::ExitCode::FAILURE;
    };
    let tsv = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("apple_zones: cannot read {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match render(&tsv) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apple_zones: {path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
