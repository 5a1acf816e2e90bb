//! Allowlist enforcement with the real kernel: every address pinhole hands out for an approved
//! name is in the nftables set of a test's own network namespace before the answer arrives.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ::pinhole::firewall::nft::{Family, ListedKey, Nft};
use common::netns::NetNs;
use common::pinhole::{self, Setup};
use common::upstream::{
    Upstream, addrs, build_query, exchange_tcp, exchange_udp, many_addr, query_udp,
};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const ZONES: &str = r#"
[[zone]]
name = "test"
action = "allow"
ports = ["tcp/443", "udp/443"]
hosts = ["*.example.test"]

[[zone]]
name = "fwd"
action = "forward"
hosts = ["fwd.example.test"]
"#;

fn fw_config(state: &std::path::Path, extra: &str) -> String {
    fw_config_with(state, 30, 40, extra)
}

fn fw_config_with(state: &std::path::Path, grace: u32, floor: u32, extra: &str) -> String {
    // Generous upstream timeouts: the in-process test upstream shares the test's runtime and
    // answers 1,000 concurrent queries slowly in a debug build.
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\
         [upstream]\nservers = [{{upstreams}}]\ntimeout_ms = 9000\nattempt_timeout_ms = 1500\n\
         [firewall]\nmode = \"managed\"\ntable = \"pinhole\"\ngrace_s = {grace}\ntimeout_floor_s = {floor}\n\
         state_dir = \"{}\"\nwrite_deadline_ms = 2000\n{extra}\n",
        state.display()
    )
}

/// The error text of a firewall start-up that must fail.
fn start_error(ns: &NetNs, setup: &Setup) -> String {
    let (config, policy) = setup.load();
    let zones = policy.zones().to_vec();
    ns.run(move || {
        ::pinhole::firewall::Firewall::start(&config.firewall, &zones, None, Default::default())
            .err()
            .map(|e| e.to_string())
    })
    .expect("start must fail")
}

/// (addr, proto, port) → (timeout, expires) of every element of allow4 and allow6.
type Listed = HashMap<(IpAddr, u8, u16), (Option<Duration>, Option<Duration>)>;

fn elements(ns: &NetNs) -> Listed {
    ns.run(|| {
        let mut nft = Nft::open().expect("netlink");
        let mut all = HashMap::new();
        for set in ["allow4", "allow6"] {
            for e in nft
                .list_elements(Family::Inet, "pinhole", set)
                .expect("list")
            {
                if let ListedKey::Port { addr, proto, port } = e.key {
                    all.insert((addr, proto, port), (e.timeout, e.expires));
                }
            }
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_address_is_in_the_set_when_the_answer_arrives() {
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let setup = Setup::new(&fw_config(state.path(), ""), &[up.addr], ZONES);
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    // One netlink socket in the namespace for the checking clients.
    let checker = std::sync::Arc::new(std::sync::Mutex::new(
        ns.run(|| Nft::open().expect("netlink")),
    ));
    let mut tasks = Vec::new();
    for i in 0..1000u16 {
        let (addr, checker) = (p.addr, std::sync::Arc::clone(&checker));
        tasks.push(tokio::spawn(async move {
            let name = format!("n{i}.many.example.test.");
            let (rtype, wait) = if i % 2 == 0 {
                (RecordType::A, 12)
            } else {
                (RecordType::AAAA, 12)
            };
            let q = build_query(&name, rtype, None);
            let m = if i % 2 == 0 {
                exchange_udp(addr, &q, Duration::from_secs(wait)).await
            } else {
                exchange_tcp(addr, &q, Duration::from_secs(wait)).await
            }
            .unwrap_or_else(|| panic!("no answer for {name}"));
            // Right away, before anything else: is the address in the set?
            let listed = tokio::task::spawn_blocking(move || {
                let mut nft = checker.lock().expect("lock");
                let set = if i % 2 == 0 { "allow4" } else { "allow6" };
                nft.list_elements(Family::Inet, "pinhole", set)
                    .expect("list")
            })
            .await
            .expect("check");
            let got = addrs(&m.answers);
            let (v4, v6) = many_addr(i);
            let want = if i % 2 == 0 {
                IpAddr::V4(v4)
            } else {
                IpAddr::V6(v6)
            };
            assert_eq!(got, [want], "{name}: {:?}", m.metadata.response_code);
            for port in [443u16] {
                for proto in [6u8, 17] {
                    let present = listed.iter().any(|e| {
                        e.key
                            == ListedKey::Port {
                                addr: want,
                                proto,
                                port,
                            }
                    });
                    assert!(
                        present,
                        "{want} {proto}/{port} missing from the set when {name} was answered"
                    );
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(
        failed,
        0,
        "clients failed; metrics: {:?}",
        p.metrics.snapshot()
    );
    let all = elements(&ns);
    assert_eq!(all.len(), 2000, "one element per address and port");
    let batches = pinhole::metric(&p.metrics, "nft_batches_total");
    assert!(
        batches < 1000,
        "writes were batched: {batches} batches for 2000 elements"
    );
}

#[tokio::test]
async fn timeouts_are_ttl_plus_grace_and_chains_and_ipv6_are_opened() {
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let setup = Setup::new(&fw_config(state.path(), ""), &[up.addr], ZONES);
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    // www.example.test → www.cdn.test → e1.edge.test A 192.0.2.10, .11 (TTL 60): 60 + 30 grace.
    let m = query_udp(p.addr, "www.example.test.", RecordType::A, None).await;
    assert_eq!(m.answers.len(), 4);
    let m6 = query_udp(p.addr, "www.example.test.", RecordType::AAAA, None).await;
    assert_eq!(m6.answers.len(), 3);
    // a.example.test A 192.0.2.1 TTL 3600: 3630 s.
    query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    // short.example.test TTL 2: the floor (40 s) applies.
    query_udp(p.addr, "short.example.test.", RecordType::A, None).await;
    // HTTPS hints are opened too.
    query_udp(p.addr, "https.example.test.", RecordType::HTTPS, None).await;
    let all = elements(&ns);
    let check = |addr: &str, secs: u64| {
        let ip: IpAddr = addr.parse().expect("ip");
        for proto in [6u8, 17] {
            let (timeout, expires) = all
                .get(&(ip, proto, 443))
                .unwrap_or_else(|| panic!("{addr} proto {proto} missing: {all:?}"));
            let t = timeout.expect("timeout");
            assert!(
                t.as_secs_f64() > secs as f64 - 1.0 && t.as_secs_f64() <= secs as f64 + 0.01,
                "{addr}: timeout {t:?}, want {secs} s"
            );
            let e = expires.expect("expires");
            assert!(e.as_secs_f64() > secs as f64 - 2.0, "{addr}: expires {e:?}");
        }
    };
    check("192.0.2.10", 90);
    check("192.0.2.11", 90);
    check("2001:db8::10", 90);
    check("192.0.2.1", 3630);
    check("192.0.2.2", 40);
    check("192.0.2.50", 330);
    check("2001:db8::50", 330);
    assert!(!all.keys().any(|k| k.2 != 443), "only the zone's ports");
    // A forward-only zone and blocked names open nothing.
    query_udp(p.addr, "fwd.example.test.", RecordType::A, None).await;
    let m = query_udp(p.addr, "www.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(elements(&ns).len(), all.len());
}

#[tokio::test]
async fn stripped_https_hints_reach_no_client_and_open_nothing() {
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::svcb::SvcParamKey;
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let setup = Setup::new(
        &fw_config(state.path(), "https_hints = \"strip\""),
        &[up.addr],
        ZONES,
    );
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    for round in ["from upstream", "from cache"] {
        let m = query_udp(p.addr, "https.example.test.", RecordType::HTTPS, None).await;
        let Some(RData::HTTPS(h)) = m.answers.first().map(|r| &r.data) else {
            panic!("{round}: no HTTPS answer: {m:?}");
        };
        let keys: Vec<SvcParamKey> = h.0.svc_params.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [SvcParamKey::Alpn],
            "{round}: hints stripped, alpn kept"
        );
    }
    let all = elements(&ns);
    let hint4: IpAddr = "192.0.2.50".parse().expect("ip");
    let hint6: IpAddr = "2001:db8::50".parse().expect("ip");
    assert!(
        !all.keys().any(|k| k.0 == hint4 || k.0 == hint6),
        "a stripped hint is not opened: {all:?}"
    );
    // The client's A lookup that follows opens the address as usual.
    query_udp(p.addr, "https.example.test.", RecordType::A, None).await;
    assert!(elements(&ns).contains_key(&(hint4, 6, 443)));
}

#[test]
fn the_kernel_probe_matches_the_kernel_version() {
    let ns = NetNs::new();
    let in_place = ns
        .run(|| Nft::open().expect("netlink").probe_timeout_update())
        .expect("probe");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).expect("major");
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).expect("minor");
    // Element timeout update arrived in Linux 6.10.
    assert_eq!(in_place, (major, minor) >= (6, 10), "kernel {release}");
    // The scratch table is gone again.
    let tables = ns.exec("nft", &["list", "tables"]);
    assert!(!tables.contains("pinhole_probe"), "{tables}");
}

#[tokio::test]
async fn ttls_are_capped_below_the_element_lifetime() {
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let setup = Setup::new(
        &fw_config(state.path(), "timeout_ceiling_s = 600"),
        &[up.addr],
        ZONES,
    );
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.answers[0].ttl, 570, "TTL capped at ceiling - grace");
    let all = elements(&ns);
    let (t, _) = all[&("192.0.2.1".parse().expect("ip"), 6, 443)];
    assert_eq!(t.map(|t| t.as_secs()), Some(600));
}

#[tokio::test]
async fn restart_restores_and_flush_is_repaired() {
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    {
        let setup = Setup::new(&fw_config(state.path(), ""), &[up.addr], ZONES);
        let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
        query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
        // Flush the whole ruleset, as a firewall reload does: repaired within a second.
        ns.exec("nft", &["flush", "ruleset"]);
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        loop {
            let listed = ns.run(|| {
                Nft::open()
                    .expect("nl")
                    .list_elements(Family::Inet, "pinhole", "allow4")
            });
            if listed.as_ref().is_ok_and(|l| l.len() == 2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not repaired within a second: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pinhole::metric(&p.metrics, "nft_repairs_total") >= 1);
    }
    // A new pinhole (a restart, or a reboot that emptied the kernel) restores from the journal.
    ns.exec("nft", &["delete", "table", "inet", "pinhole"]);
    let setup = Setup::new(&fw_config(state.path(), ""), &[up.addr], ZONES);
    let (_p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    let all = elements(&ns);
    let (t, e) = all[&("192.0.2.1".parse().expect("ip"), 6, 443)];
    assert!(t.is_some());
    assert!(
        e.expect("expires").as_secs() > 3600,
        "the time left is restored, not reset to zero"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_refreshes_an_element_about_to_expire_and_status_shows_it() {
    refresh_test("auto").await;
}

/// The refresh used by kernels before 6.10 (delete and add in one batch), forced here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_and_add_refresh_for_older_kernels_works_too() {
    refresh_test("replace").await;
}

async fn refresh_test(method: &str) {
    let ns = NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let setup = Setup::new(
        &fw_config_with(
            state.path(),
            4,
            1,
            &format!("timeout_ceiling_s = 10\nrefresh = \"{method}\""),
        ),
        &[up.addr],
        ZONES,
    );
    let control = setup.dir.path().join("control.sock");
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    // a.example.test: TTL 3600, capped at ceiling 10 − grace 4 = 6 s; element timeout 10 s.
    // A hit needs the element to live TTL + half the grace = 8 s more.
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.answers[0].ttl, 6, "TTL capped");
    let ip: IpAddr = "192.0.2.1".parse().expect("ip");
    let batches = pinhole::metric(&p.metrics, "nft_batches_total");
    // A cache hit right away: 10 s left ≥ 8 s needed, no kernel write.
    query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(
        pinhole::metric(&p.metrics, "nft_batches_total"),
        batches,
        "fresh element: no write"
    );
    // 2.5 s later only 7.5 s are left: the cache hit refreshes the element before answering.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.answers[0].ttl, 6);
    assert_eq!(
        up.queries_for("a.example.test.", RecordType::A),
        1,
        "from the cache"
    );
    assert_eq!(
        pinhole::metric(&p.metrics, "nft_batches_total"),
        batches + 1,
        "one refresh write"
    );
    let (t, e) = elements(&ns)[&(ip, 6, 443)];
    assert_eq!(t.map(|t| t.as_secs()), Some(10));
    let e = e.expect("expires");
    assert!(
        e > Duration::from_millis(9000),
        "refreshed ({method}): expires in {e:?}"
    );
    assert_eq!(pinhole::metric(&p.metrics, "nft_errors_total"), 0);
    // pinhole status over the control socket, as root.
    // The daemon runs on this test's runtime: run the client off it.
    let config_path = p.setup.config_path();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pinhole::binary())
            .args(["status", "--config"])
            .arg(config_path)
            .output()
            .expect("status")
    })
    .await
    .expect("status task");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("192.0.2.1 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("tcp/443,udp/443"), "{row}");
    assert!(
        row.contains(" test ") && row.contains("a.example.test"),
        "{row}"
    );
    assert!(control.exists());
}

#[tokio::test]
async fn external_sets_are_checked_written_and_a_deleted_set_fails_closed() {
    let ns = NetNs::new();
    ns.exec(
        "nft",
        &["add table inet filter; add set inet filter apple4 { type ipv4_addr; flags timeout; }; add set inet filter apple6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }"],
    );
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    let zones = r#"
[[zone]]
name = "ext"
ports = ["tcp/443"]
hosts = ["*.example.test"]
sets = ["inet filter apple4", "inet filter apple6"]
"#;
    let cfg = fw_config(state.path(), "").replace("mode = \"managed\"", "mode = \"external\"");
    // A zone naming a set that does not exist: start-up fails and says how to fix it.
    let bad = Setup::new(&cfg, &[up.addr], &zones.replace("apple6", "nosuch"));
    let err = start_error(&ns, &bad);
    assert!(
        err.contains("set inet filter nosuch does not exist"),
        "{err}"
    );
    assert!(err.contains("nft add set inet filter nosuch"), "{err}");

    let setup = Setup::new(&cfg, &[up.addr], zones);
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    query_udp(p.addr, "www.example.test.", RecordType::AAAA, None).await;
    let listed = ns.run(|| {
        let mut nft = Nft::open().expect("nl");
        (
            nft.list_elements(Family::Inet, "filter", "apple4")
                .expect("list4"),
            nft.list_elements(Family::Inet, "filter", "apple6")
                .expect("list6"),
        )
    });
    assert_eq!(listed.0.len(), 1);
    assert_eq!(
        listed.0[0].key,
        ListedKey::Addr("192.0.2.1".parse().expect("ip"))
    );
    assert!(listed.0[0].timeout.is_some());
    assert_eq!(
        listed.1.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        [ListedKey::Port {
            addr: "2001:db8::10".parse().expect("ip"),
            proto: 6,
            port: 443
        }]
    );
    // The administrator deletes a set: answers that need it get SERVFAIL (fail-closed).
    ns.exec("nft", &["delete", "set", "inet", "filter", "apple4"]);
    let m = query_udp(p.addr, "short.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(pinhole::metric(&p.metrics, "firewall_failures_total") >= 1);
    assert!(pinhole::metric(&p.metrics, "nft_errors_total") >= 1);
    // IPv6 still works: its set is there.
    let m = query_udp(p.addr, "www.example.test.", RecordType::AAAA, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn external_interval_sets_take_static_networks_and_single_addresses() {
    let ns = NetNs::new();
    ns.exec(
        "nft",
        &["add table inet filter; add set inet filter apple4 { type ipv4_addr . inet_proto . inet_service; flags interval, timeout; }; add set inet filter apple6 { type ipv6_addr; flags interval, timeout; }; add set inet filter plain4 { type ipv4_addr; flags timeout; }"],
    );
    let state = tempfile::tempdir().expect("tmp");
    let up = Upstream::start().await;
    // 17.249.0.0/16 lies inside 17.0.0.0/8 (an interval set refuses overlaps: only the /8
    // is written); 192.0.2.0/25 covers a.example.test's 192.0.2.1, which is then not written.
    let zones = r#"
[[zone]]
name = "ext"
ports = ["tcp/443", "tcp/5223"]
hosts = ["*.example.test"]
sets = ["inet filter apple4", "inet filter apple6"]
static = ["17.0.0.0/8", "17.249.0.0/16", "192.0.2.0/25", "2620:149:a44::/48"]
"#;
    let cfg = fw_config(state.path(), "").replace("mode = \"managed\"", "mode = \"external\"");
    // Static networks need interval sets: a plain set is refused with the fix.
    let bad = Setup::new(&cfg, &[up.addr], &zones.replace("apple4", "plain4"));
    let err = start_error(&ns, &bad);
    assert!(
        err.contains(
            "static network 17.0.0.0/8 needs set inet filter plain4 to have `flags interval`"
        ),
        "{err}"
    );
    assert!(err.contains("flags interval, timeout;"), "{err}");

    let setup = Setup::new(&cfg, &[up.addr], zones);
    let (p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
    for (name, rtype) in [
        ("a.example.test.", RecordType::A),
        ("n7.many.example.test.", RecordType::A),
        ("www.example.test.", RecordType::AAAA),
    ] {
        let m = query_udp(p.addr, name, rtype, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
    }
    let (v4, v6) = ns.run(|| {
        let mut nft = Nft::open().expect("nl");
        (
            nft.list_elements(Family::Inet, "filter", "apple4")
                .expect("list4"),
            nft.list_elements(Family::Inet, "filter", "apple6")
                .expect("list6"),
        )
    });
    let port = |addr: &str, port: u16| ListedKey::Port {
        addr: addr.parse().expect("ip"),
        proto: 6,
        port,
    };
    let mut ranges: Vec<(ListedKey, Option<ListedKey>, bool)> = v4
        .iter()
        .map(|e| (e.key.clone(), e.key_end.clone(), e.timeout.is_some()))
        .collect();
    ranges.sort_by_key(|r| format!("{r:?}"));
    let (n7, _) = many_addr(7);
    let n7 = n7.to_string();
    let mut want = vec![
        (
            port("17.0.0.0", 443),
            Some(port("17.255.255.255", 443)),
            false,
        ),
        (
            port("17.0.0.0", 5223),
            Some(port("17.255.255.255", 5223)),
            false,
        ),
        (
            port("192.0.2.0", 443),
            Some(port("192.0.2.127", 443)),
            false,
        ),
        (
            port("192.0.2.0", 5223),
            Some(port("192.0.2.127", 5223)),
            false,
        ),
        (port(&n7, 443), Some(port(&n7, 443)), true),
        (port(&n7, 5223), Some(port(&n7, 5223)), true),
    ];
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(ranges, want, "statics without timeout, one address with it");
    // The IPv6 set is a plain interval set: start and end elements.
    let v6_keys: Vec<(ListedKey, bool, bool)> = v6
        .iter()
        .map(|e| (e.key.clone(), e.interval_end, e.timeout.is_some()))
        .collect();
    let addr = |a: &str| ListedKey::Addr(a.parse().expect("ip"));
    for want in [
        (addr("2620:149:a44::"), false, false),
        (addr("2620:149:a45::"), true, false),
        (addr("2001:db8::10"), false, true),
        (addr("2001:db8::11"), true, false),
    ] {
        assert!(v6_keys.contains(&want), "{want:?} in {v6_keys:?}");
    }
    assert_eq!(pinhole::metric(&p.metrics, "nft_errors_total"), 0);
    // A restart writes the same statics again without error.
    drop(p);
    let setup = Setup::new(&cfg, &[up.addr], zones);
    let (_p, _fw) = pinhole::start_with_firewall(setup, &ns).await;
}

#[test]
fn the_printed_ruleset_loads_into_the_kernel_with_static_networks_on_their_ports() {
    let ns = NetNs::new();
    let zones = r#"
[[zone]]
name = "apns"
ports = ["tcp/443", "tcp/5223"]
hosts = ["*.push.apple.com"]
static = ["17.0.0.0/8", "2620:149:a44::/48"]
"#;
    let cfg = "[server]\nlisten = [\"192.0.2.53:53\"]\n[upstream]\nservers = [{upstreams}]\n";
    let setup = Setup::new(cfg, &["127.0.0.1:53".parse().expect("addr")], zones);
    let out = std::process::Command::new(pinhole::binary())
        .args(["ruleset", "--config"])
        .arg(setup.config_path())
        .output()
        .expect("ruleset");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = setup.dir.path().join("rules.nft");
    std::fs::write(&path, &out.stdout).expect("write");
    let p = path.to_str().expect("utf8");
    ns.exec("nft", &["-f", p]);
    // Twice: loading it again must work and must not duplicate rules.
    ns.exec("nft", &["-f", p]);
    let chain = ns.exec("nft", &["list", "chain", "inet", "pinhole", "forward"]);
    let line = chain
        .lines()
        .find(|l| l.contains("ip daddr 17.0.0.0/8"))
        .unwrap_or_else(|| panic!("{chain}"));
    assert!(
        line.contains("tcp . 443") && line.contains("tcp . 5223") && line.contains("accept"),
        "{line}"
    );
    assert!(chain.contains("ip6 daddr 2620:149:a44::/48"), "{chain}");
    assert_eq!(chain.matches("policy drop").count(), 1, "{chain}");
    assert_eq!(chain.matches("@allow4").count(), 1, "{chain}");
    let resolvers = ns.exec("nft", &["list", "set", "inet", "pinhole", "resolvers4"]);
    assert!(resolvers.contains("192.0.2.53"), "{resolvers}");
}
