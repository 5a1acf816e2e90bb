//! The Apple catalogue (`zones/apple.toml`) against the table it was made from
//! (`tests/data/apple-hosts.tsv`, Apple's "Use Apple products on enterprise networks"), and the
//! bundled config that enables its MDM-fleet subset.
//!
//! The catalogue is built from `zones/apple.toml` alone: other zone files (for example the one
//! that blocks public DoH resolvers, doh.dns.apple.com among them) must not change what the
//! catalogue itself decides.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::pinhole::cli as pinhole;
use pinhole::config::{BlockAction, Config};
use pinhole::policy::zonefile::parse_file;
use pinhole::policy::{Action, Policy, PolicyBuilder, ZoneDef};

/// The generator, compiled into this test so that its output can be compared with the
/// checked-in zone file without running cargo.
#[allow(dead_code)]
#[path = "../examples/apple_zones.rs"]
mod apple_zones;

/// Rows in the reference table (`shared/reference/apple-hosts.tsv`, copied verbatim).
const REFERENCE_ROWS: usize = 170;

/// What a "per service" row (Apple's Firewalls section) opens: see docs/apple.md.
const PER_SERVICE: [&str; 6] = [
    "tcp/80", "tcp/443", "tcp/2197", "tcp/5223", "udp/123", "udp/443",
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// One row of the table, with its ports as zone files write them.
struct Row {
    line: usize,
    category: String,
    host: String,
    ports: BTreeSet<String>,
}

/// The table's ports column as zone-file ports, mapped independently of the generator:
/// `443` → tcp/443, `udp:443` → udp/443, `per service` → [`PER_SERVICE`].
fn ports_of(field: &str) -> BTreeSet<String> {
    if field == "per service" {
        return PER_SERVICE.iter().map(|p| p.to_string()).collect();
    }
    field
        .split(',')
        .map(|t| match t.trim().strip_prefix("udp:") {
            Some(n) => format!("udp/{n}"),
            None => format!("tcp/{}", t.trim()),
        })
        .collect()
}

/// Every data row of the table, and the number of non-empty data lines (to catch dropped rows).
fn table() -> (Vec<Row>, usize) {
    let text = read("tests/data/apple-hosts.tsv");
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().expect("header");
    assert!(
        header.starts_with("category\thost\tports\tprotocol"),
        "{header}"
    );
    let mut rows = Vec::new();
    let mut data_lines = 0;
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        data_lines += 1;
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 7 {
            rows.push(Row {
                line: i + 1,
                category: f[0].into(),
                host: f[1].trim().to_ascii_lowercase(),
                ports: ports_of(f[2].trim()),
            });
        }
    }
    (rows, data_lines)
}

fn is_network(host: &str) -> bool {
    host.contains('/')
}

/// The zones of `zones/apple.toml`, parsed on their own.
fn catalogue_zones() -> Vec<ZoneDef> {
    let path = repo("zones/apple.toml");
    let text = read("zones/apple.toml");
    let mut problems = Vec::new();
    let zones = parse_file(&path, &text, &mut problems);
    assert!(problems.is_empty(), "zones/apple.toml: {problems:?}");
    zones
}

/// Every catalogue zone enabled, nothing else.
fn catalogue() -> Policy {
    let mut builder = PolicyBuilder::new(BlockAction::Refuse);
    for z in catalogue_zones() {
        builder.add_zone(z);
    }
    builder.build()
}

fn port_strings(z: &ZoneDef) -> BTreeSet<String> {
    z.ports.iter().map(|p| p.to_string()).collect()
}

/// A name the row's pattern matches: the name itself, or `a1.x` for `*.x`.
fn sample(host: &str) -> String {
    match host.strip_prefix("*.") {
        Some(rest) => format!("a1.{rest}"),
        None => host.to_string(),
    }
}

#[test]
fn every_row_of_apples_table_is_allowed_with_its_ports() {
    let (rows, data_lines) = table();
    assert_eq!(
        data_lines, REFERENCE_ROWS,
        "the reference table has 170 rows"
    );
    let policy = catalogue();
    let mut failures = Vec::new();
    let (mut hosts, mut networks) = (0, 0);
    for row in &rows {
        if is_network(&row.host) {
            let net: ipnet::IpNet = row.host.parse().expect("network");
            let found = policy
                .zones()
                .iter()
                .any(|z| z.statics.contains(&net) && port_strings(z).is_superset(&row.ports));
            if !found {
                failures.push(format!(
                    "line {} ({}): no zone opens {} on {:?}",
                    row.line, row.category, row.host, row.ports
                ));
            }
            networks += 1;
            continue;
        }
        let name = sample(&row.host);
        let verdict = policy.decide(name.as_bytes());
        let opened: BTreeSet<String> = verdict
            .target
            .into_iter()
            .flat_map(|t| policy.target_zones(t))
            .flat_map(port_strings)
            .collect();
        if verdict.action != Action::Allow || !opened.is_superset(&row.ports) {
            failures.push(format!(
                "line {} ({}): {name} is {:?} on {opened:?}, the table says {:?}",
                row.line, row.category, verdict.action, row.ports
            ));
        }
        hosts += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(hosts + networks, data_lines, "every row is checked");
    assert_eq!((hosts, networks), (157, 13));
}

#[test]
fn the_catalogue_opens_exactly_what_the_table_lists() {
    // Per host pattern (and per network): the union of the ports of every row that lists it,
    // against the union of the ports of every catalogue zone that lists it.
    let (rows, _) = table();
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in &rows {
        want.entry(row.host.clone())
            .or_default()
            .extend(row.ports.iter().cloned());
    }
    let mut have: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for z in catalogue_zones() {
        assert_eq!(z.action.as_str(), "allow", "zone {}", z.name);
        assert!(z.name.starts_with("apple-"), "zone {}", z.name);
        assert!(
            !z.description.is_empty(),
            "zone {} has no description",
            z.name
        );
        let ports = port_strings(&z);
        let entries = z
            .patterns
            .iter()
            .map(|p| {
                if p.wildcard {
                    format!("*.{}", p.name)
                } else {
                    p.name.clone()
                }
            })
            .chain(z.statics.iter().map(|n| n.to_string()));
        for e in entries {
            have.entry(e).or_default().extend(ports.iter().cloned());
        }
    }
    assert_eq!(have, want);
}

#[test]
fn the_generator_reproduces_the_checked_in_zone_file() {
    let generated =
        apple_zones::render(&read("tests/data/apple-hosts.tsv")).expect("the table is valid");
    assert!(
        generated == read("zones/apple.toml"),
        "zones/apple.toml is not the generator's output; rerun: {}",
        apple_zones::RERUN
    );
}

#[test]
fn the_generator_names_the_line_of_a_bad_row() {
    let header = "category\thost\tports\tprotocol\tos\tproxy_ok\tnotes\n";
    let ok = "icloud\t*.icloud.com\t443\tTCP\tiOS\tno\tiCloud. more\n";
    for (bad, what) in [
        ("icloud\tx.apple.com\t44x\tTCP\tiOS\tno\tn\n", "44x"),
        (
            "icloud\tx.apple.com\tudp:443\tTCP\tiOS\tno\tn\n",
            "protocol",
        ),
        ("icloud\tbad host\t443\tTCP\tiOS\tno\tn\n", "bad host"),
        ("icloud\t17.0.0.0/33\t443\tTCP\tiOS\tno\tn\n", "prefix"),
        ("icloud\tx.apple.com\t443\n", "fields"),
    ] {
        let err = apple_zones::render(&format!("{header}{ok}{bad}")).expect_err(bad);
        assert!(err.starts_with("line 3: "), "{err}");
        assert!(err.contains(what), "{err}");
    }
    let out = apple_zones::render(&format!("{header}{ok}")).expect("valid");
    assert!(out.contains("\"*.icloud.com\", # iCloud.\n"), "{out}");
}

#[test]
fn the_bundled_config_enables_what_an_mdm_fleet_needs() {
    let config = Config::load(&repo("config.toml")).unwrap_or_else(|e| panic!("{e}"));
    let enabled: Vec<&str> = config
        .policy
        .enable
        .as_ref()
        .expect("config.toml lists the zones it enables")
        .iter()
        .map(|n| n.get_ref().as_str())
        .collect();
    assert_eq!(
        enabled,
        [
            "apple-device-setup",
            "apple-device-management",
            "apple-push-ranges",
            "apple-software-updates",
            "apple-app-store",
            "apple-certificate-validation",
            "apple-account",
            "apple-icloud",
            "encrypted-dns-resolvers",
        ]
    );
    let policy = Policy::load(&config).unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "albert.apple.com",
        "time.apple.com",
        "7-courier.push.apple.com",
        "mdmenrollment.apple.com",
        "mesu.apple.com",
        "swcdn.apple.com",
        "a1.itunes.apple.com",
        "ocsp.apple.com",
        "crl3.digicert.com",
        "idmsa.apple.com",
        "p42-contacts.icloud.com",
    ] {
        assert_eq!(
            policy.decide(name.as_bytes()).action,
            Action::Allow,
            "{name}"
        );
    }
    // Services an MDM fleet does not need stay closed until enabled.
    for name in [
        "guzzoni.apple.com",
        "upload.appleschoolcontent.com",
        "doh.dns.apple.com",
    ] {
        assert!(
            matches!(policy.decide(name.as_bytes()).action, Action::Block(_)),
            "{name}"
        );
    }
    // Public DoH resolvers, Apple's included, get NXDOMAIN from zones/encrypted-dns.toml.
    for name in [
        "doh.dns.apple.com",
        "dns.google",
        "cloudflare-dns.com",
        "dns.quad9.net",
    ] {
        assert_eq!(
            policy.decide(name.as_bytes()).action,
            Action::Block(BlockAction::Nxdomain),
            "{name}"
        );
    }
}

#[test]
fn check_passes_on_the_bundled_config() {
    let config = repo("config.toml");
    let (ok, out, err) = pinhole(&["check", "--config", config.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(out.contains(": ok ("), "{out}");
}

#[test]
fn explain_names_the_apple_service_and_its_ports() {
    let config = repo("config.toml");
    let config = config.to_str().expect("utf8");

    let (ok, out, err) = pinhole(&["explain", "1-courier.push.apple.com", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("zone:     apple-device-management ("), "{out}");
    assert!(
        out.contains("rule:     *.push.apple.com (wildcard), action allow"),
        "{out}"
    );
    assert!(
        out.contains("ports:    tcp/80, tcp/443, tcp/2197, tcp/5223"),
        "{out}"
    );

    let (ok, out, err) = pinhole(&["explain", "mesu.apple.com", "AAAA", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("zone:     apple-software-updates ("), "{out}");
    assert!(out.contains("rule:     mesu.apple.com (exact)"), "{out}");
    assert!(out.contains("ports:    tcp/80, tcp/443"), "{out}");

    let (ok, out, err) = pinhole(&["explain", "time.apple.com", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("zone:     apple-device-setup ("), "{out}");
    assert!(out.contains("ports:    udp/123"), "{out}");

    // Listed by two enabled services: both are named, each with its ports.
    let (ok, out, err) = pinhole(&["explain", "gs.apple.com", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("zone:     apple-device-setup ("), "{out}");
    assert!(out.contains("zone:     apple-software-updates ("), "{out}");
}

#[test]
fn ruleset_opens_the_apns_networks_of_the_bundled_config() {
    let config = repo("config.toml");
    let (ok, out, err) = pinhole(&["ruleset", "--config", config.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("# zone apple-push-ranges: static networks"),
        "{out}"
    );
    assert!(
        out.contains(
            "ip daddr { 17.249.0.0/16, 17.252.0.0/16, 17.57.144.0/22, 17.188.128.0/18, 17.188.20.0/23 } meta l4proto . th dport { tcp . 443, tcp . 2197, tcp . 5223 } counter accept"
        ),
        "{out}"
    );
    assert!(out.contains("ip6 daddr { 2620:149:a44::/48, "), "{out}");
    // The wide options are not enabled in the bundled config.
    assert!(!out.contains("17.0.0.0/8"), "{out}");
}
