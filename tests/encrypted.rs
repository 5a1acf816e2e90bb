//! Encrypted DNS: pinhole's own DoT and DoH listeners (kdig and pinhole's own client), DDR,
//! upstreams over DoT and DoH (hickory-server's encrypted listeners), the fallback policy,
//! certificate reload, and the simulated-failure answers. Certificates are made in the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::certs::{ServerCert, TestCa};
use common::pinhole::{self, Running, Setup, TEST_ZONES, config_text};
use common::upstream::{Upstream, addrs, build_query, exchange_udp, query_udp};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
use hickory_proto::rr::{RData, RecordType};

const FAILURE_ZONES: &str = r#"
[[zone]]
name = "sim-servfail"
action = "servfail"
hosts = ["servfail.sim.test"]

[[zone]]
name = "sim-drop"
action = "drop"
hosts = ["drop.sim.test"]
"#;

/// A `[tls]` section serving DoT and DoH on random loopback ports.
fn tls_section(cert: &ServerCert, extra: &str) -> String {
    format!(
        "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\ndot_listen = [\"127.0.0.1:0\"]\n\
         doh_listen = [\"127.0.0.1:0\"]\nhostname = \"dns.test\"\n{extra}\n",
        cert.cert.display(),
        cert.key.display()
    )
}

async fn start_tls(up: &Upstream, cert: &ServerCert, extra: &str) -> Running {
    let zones = format!("{TEST_ZONES}\n{FAILURE_ZONES}");
    let setup = Setup::new(
        &config_text("", &tls_section(cert, extra)),
        &[up.addr],
        &zones,
    );
    pinhole::start(setup).await
}

/// A test CA, a plain test upstream, and pinhole serving DoT and DoH with a certificate for
/// `dns.test` (file `file` in the CA's folder).
struct Tls {
    ca: TestCa,
    cert: ServerCert,
    up: Upstream,
    p: Running,
}

async fn tls_pinhole(file: &str, extra: &str) -> Tls {
    let ca = TestCa::new();
    let cert = ca.server("dns.test", file);
    let up = Upstream::start().await;
    let p = start_tls(&up, &cert, extra).await;
    Tls { ca, cert, up, p }
}

/// Output of kdig (run off the test's runtime, which serves pinhole).
async fn kdig(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kdig")
            .args(["+time=3", "+retry=0"])
            .args(&args)
            .output()
            .expect("kdig (Debian package knot-dnsutils)")
    })
    .await
    .expect("kdig task");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kdig_args(addr: SocketAddr, ca: &Path, host: &str, extra: &[&str], name: &str) -> Vec<String> {
    let mut v = vec![
        format!("@{}", addr.ip()),
        "-p".into(),
        addr.port().to_string(),
        format!("+tls-ca={}", ca.display()),
        format!("+tls-hostname={host}"),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend([name.to_string(), "A".to_string()]);
    v
}

/// kdig over DoT, expecting the server's certificate to carry `host`.
async fn kdig_dot(addr: SocketAddr, ca: &Path, host: &str, name: &str) -> String {
    kdig(kdig_args(addr, ca, host, &["+tls"], name)).await
}

/// The A addresses in kdig's answer section.
fn kdig_a(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[3] == "A").then(|| f[4].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdig_over_tls_and_https_gets_the_filtered_answers() {
    let Tls {
        ca,
        cert: _cert,
        up: _up,
        p,
    } = tls_pinhole("server", "").await;
    let dot = p.server.dot_addrs()[0];
    let doh = p.server.doh_addrs()[0];

    let out = kdig_dot(dot, &ca.ca_pem, "dns.test", "a.example.test").await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains(";; TLS session"), "kdig used TLS: {out}");
    assert_eq!(kdig_a(&out), ["192.0.2.1"], "{out}");
    // The same policy as on port 53: an unlisted name is refused.
    let out = kdig_dot(dot, &ca.ca_pem, "dns.test", "www.example.org").await;
    assert!(out.contains("status: REFUSED"), "{out}");

    for method in ["+https", "+https-get"] {
        let out = kdig(kdig_args(
            doh,
            &ca.ca_pem,
            "dns.test",
            &["+https", method],
            "short.example.test",
        ))
        .await;
        assert!(out.contains("status: NOERROR"), "{method}: {out}");
        assert!(
            out.contains(";; HTTP session"),
            "{method}: kdig used HTTP: {out}"
        );
        assert_eq!(kdig_a(&out), ["192.0.2.2"], "{method}: {out}");
    }
    // A client that expects another name refuses the certificate.
    let out = kdig_dot(dot, &ca.ca_pem, "other.test", "a.example.test").await;
    assert!(!out.contains("status: NOERROR"), "{out}");
    assert!(pinhole::metric(&p.metrics, "doh_requests_total") >= 2);
    assert!(pinhole::metric(&p.metrics, "dot_connections_total") >= 2);
}

#[tokio::test]
async fn ddr_names_pinholes_endpoints_and_is_never_forwarded() {
    let Tls {
        ca: _ca,
        cert: _cert,
        up,
        p,
    } = tls_pinhole("server", "").await;
    let dot = p.server.dot_addrs()[0];
    let doh = p.server.doh_addrs()[0];
    let m = query_udp(p.addr, "_dns.resolver.arpa.", RecordType::SVCB, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let mut seen = Vec::new();
    for r in &m.answers {
        let RData::SVCB(svcb) = &r.data else {
            panic!("not SVCB: {r:?}");
        };
        assert_eq!(svcb.target_name.to_string(), "dns.test.");
        let mut alpn = Vec::new();
        let (mut port, mut path, mut hints) = (None, None, Vec::new());
        for (key, value) in &svcb.svc_params {
            match (key, value) {
                (SvcParamKey::Alpn, SvcParamValue::Alpn(a)) => alpn = a.0.clone(),
                (SvcParamKey::Port, SvcParamValue::Port(p)) => port = Some(*p),
                (SvcParamKey::Ipv4Hint, SvcParamValue::Ipv4Hint(h)) => {
                    hints = h.0.iter().map(|a| a.0.to_string()).collect()
                }
                (SvcParamKey::Unknown(7), SvcParamValue::Unknown(v)) => {
                    path = Some(String::from_utf8_lossy(&v.0).to_string())
                }
                other => panic!("unexpected parameter {other:?}"),
            }
        }
        assert_eq!(hints, ["127.0.0.1"]);
        seen.push((svcb.svc_priority, alpn, port, path));
    }
    seen.sort();
    assert_eq!(seen.len(), 2, "{m:?}");
    assert_eq!(seen[0].0, 1);
    assert_eq!(seen[0].1, ["h2"]);
    assert_eq!(seen[0].2, Some(doh.port()));
    assert!(
        seen[0]
            .3
            .as_deref()
            .is_some_and(|p| p.contains("/dns-query{?dns}")),
        "{seen:?}"
    );
    assert_eq!(
        (seen[1].0, seen[1].1.clone(), seen[1].2),
        (2, vec!["dot".to_string()], Some(dot.port()))
    );
    assert_eq!(seen[1].3, None);
    // Another type, and another resolver.arpa name: NODATA. Nothing went upstream.
    let m = query_udp(p.addr, "_dns.resolver.arpa.", RecordType::A, None).await;
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(up.queries(), 0);

    // Without [tls] listeners there is no designated resolver: NODATA.
    let plain = pinhole::start_default(&[up.addr]).await;
    let m = query_udp(plain.addr, "_dns.resolver.arpa.", RecordType::SVCB, None).await;
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(up.queries(), 0);
}

/// Upstreams over DoT and DoH: hickory-server's encrypted listeners, and pinhole's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_dot_and_doh_are_verified_and_reused() {
    let ca = TestCa::new();
    let cert = ca.server("dns.test", "upstream");
    let up = Upstream::start_encrypted(&cert).await;
    let (dot, doh) = (up.dot.expect("dot"), up.doh.expect("doh"));
    let ca_line = format!("ca_file = \"{}\"\n", ca.ca_pem.display());
    for (server, name, counter) in [
        (
            format!("\"tls://{dot}#dns.test\""),
            "a.example.test.",
            "tls",
        ),
        (
            format!("\"https://{doh}/dns-query#dns.test\""),
            "short.example.test.",
            "https",
        ),
    ] {
        let text = config_text("", &ca_line).replace("{upstreams}", &server);
        let p = pinhole::start(Setup::new(&text, &[], TEST_ZONES)).await;
        let before = (up.tls_queries(), up.https_queries());
        // Several queries: the connection is made once and reused.
        for i in 0..3 {
            let q = format!("n{i}.many.example.test.");
            let m = query_udp(p.addr, &q, RecordType::A, None).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{counter} {q}"
            );
        }
        let m = query_udp(p.addr, name, RecordType::A, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{counter}");
        assert_eq!(addrs(&m.answers).len(), 1, "{counter}: {m:?}");
        let after = (up.tls_queries(), up.https_queries());
        let sent = if counter == "tls" {
            after.0 - before.0
        } else {
            after.1 - before.1
        };
        assert_eq!(sent, 4, "{counter}: all four over the encrypted transport");
        assert_eq!(
            pinhole::metric(&p.metrics, "upstream_connections_total"),
            1,
            "{counter}: one connection, reused"
        );
        assert_eq!(
            up.udp_queries() + up.tcp_queries(),
            0,
            "nothing in plain text"
        );
        assert_eq!(pinhole::metric(&p.metrics, "upstream_errors_total"), 0);
    }
    // A certificate for another name is refused: SERVFAIL, never an unverified answer.
    let text =
        config_text("", &ca_line).replace("{upstreams}", &format!("\"tls://{dot}#wrong.test\""));
    let p = pinhole::start(Setup::new(&text, &[], TEST_ZONES)).await;
    let m = query_udp(p.addr, "c.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(pinhole::metric(&p.metrics, "upstream_errors_total") >= 1);

    // pinhole as the DoT/DoH upstream of another pinhole: both ends are pinhole's code.
    let front_cert = ca.server("dns.test", "front");
    let plain_up = Upstream::start().await;
    let back = start_tls(&plain_up, &front_cert, "").await;
    for server in [
        format!("\"tls://{}#dns.test\"", back.server.dot_addrs()[0]),
        format!(
            "\"https://{}/dns-query#dns.test\"",
            back.server.doh_addrs()[0]
        ),
    ] {
        let text = config_text("", &ca_line).replace("{upstreams}", &server);
        let p = pinhole::start(Setup::new(&text, &[], TEST_ZONES)).await;
        let m = query_udp(p.addr, "www.example.test.", RecordType::A, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{server}");
        assert_eq!(addrs(&m.answers).len(), 2, "{server}: {m:?}");
    }
}

#[tokio::test]
async fn fallback_to_plain_only_when_allowed() {
    let ca = TestCa::new();
    // An encrypted upstream that is down: a port nothing listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let up = Upstream::start().await;
    let servers = format!("\"tls://{down}#dns.test\", \"{}\"", up.addr);
    let ca_line = format!("ca_file = \"{}\"\n", ca.ca_pem.display());

    let text =
        config_text("", &format!("{ca_line}fallback = true\n")).replace("{upstreams}", &servers);
    let p = pinhole::start(Setup::new(&text, &[], TEST_ZONES)).await;
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(pinhole::metric(&p.metrics, "upstream_fallbacks_total"), 1);
    assert_eq!(up.queries_for("a.example.test.", RecordType::A), 1);

    let text = config_text("", &ca_line).replace("{upstreams}", &servers);
    let p = pinhole::start(Setup::new(&text, &[], TEST_ZONES)).await;
    let m = query_udp(p.addr, "b.example.test.", RecordType::A, None).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "no silent downgrade"
    );
    assert_eq!(pinhole::metric(&p.metrics, "upstream_fallbacks_total"), 0);
    assert_eq!(pinhole::metric(&p.metrics, "upstream_no_fallback_total"), 1);
    assert_eq!(
        up.queries_for("b.example.test.", RecordType::A),
        0,
        "the plain server was never asked"
    );
}

/// Polls a counter until it reaches `want` (the reload's own signal), at most 10 s.
async fn wait_metric(p: &Running, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinhole::metric(&p.metrics, name) < want {
        assert!(Instant::now() < deadline, "{name} never reached {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_on_change_and_on_sighup() {
    let Tls { ca, cert, up, p } = tls_pinhole("live", "reload_check_s = 1").await;
    let dot = p.server.dot_addrs()[0];
    let as_dns2 = || kdig_dot(dot, &ca.ca_pem, "dns2.test", "a.example.test");
    assert!(
        !as_dns2().await.contains("status: NOERROR"),
        "dns2.test not yet served"
    );
    // A broken file is refused and the old certificate stays.
    std::fs::write(&cert.key, "not a key").expect("break key");
    wait_metric(&p, "tls_reload_errors_total", 1).await;
    let out = kdig_dot(dot, &ca.ca_pem, "dns.test", "a.example.test").await;
    assert!(
        out.contains("status: NOERROR"),
        "old certificate still in use: {out}"
    );
    // The new pair is picked up without a restart.
    ca.server("dns2.test", "live");
    wait_metric(&p, "tls_reloads_total", 1).await;
    let out = as_dns2().await;
    assert!(out.contains("status: NOERROR"), "{out}");

    // SIGHUP reloads at once, without waiting for a file check.
    let q = start_tls(&up, &ca.server("dns.test", "hup"), "reload_check_s = 0").await;
    // SAFETY: signalling our own process; pinhole's SIGHUP handler is installed (it started).
    let rc = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(rc, 0);
    wait_metric(&q, "tls_reloads_total", 1).await;
}

#[tokio::test]
async fn simulated_failures_for_zones_and_special_names() {
    let up = Upstream::start().await;
    let zones = format!("{TEST_ZONES}\n{FAILURE_ZONES}");
    let special = "[special]\nresolver_arpa = \"servfail\"\nprivate_relay = \"refuse\"\napplication_dns_canary = \"drop\"\n";
    let p = pinhole::start(Setup::new(&config_text("", special), &[up.addr], &zones)).await;
    let m = query_udp(p.addr, "servfail.sim.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = query_udp(p.addr, "_dns.resolver.arpa.", RecordType::SVCB, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = query_udp(p.addr, "mask.icloud.com.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // No answer at all: the client times out.
    for name in ["drop.sim.test.", "use-application-dns.net."] {
        let q = build_query(name, RecordType::A, None);
        let got: Option<Message> = exchange_udp(p.addr, &q, Duration::from_millis(700)).await;
        assert!(got.is_none(), "{name}: expected no answer, got {got:?}");
    }
    assert_eq!(up.queries(), 0, "simulations never go upstream");
}

/// The HTTP status of one request to pinhole's DoH listener (HTTP/2 over TLS).
async fn doh_status(addr: SocketAddr, ca: &Path, method: &str, uri: &str, ctype: &str) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("dns.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS");
    let (sender, conn) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut sender = sender.ready().await.expect("ready");
    let request = http::Request::builder()
        .method(method)
        .uri(format!("https://dns.test{uri}"))
        .header("content-type", ctype)
        .body(())
        .expect("request");
    let with_body = method != "GET";
    let (response, mut body) = sender.send_request(request, !with_body).expect("send");
    if with_body {
        let query = build_query("a.example.test.", RecordType::A, None)
            .to_vec()
            .expect("query");
        // A server that refuses the request may answer and close the stream before the body
        // is sent; the status is what counts.
        let _ = body.send_data(bytes::Bytes::from(query), true);
    }
    response.await.expect("response").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_answers_http_errors_for_what_is_not_a_dns_query() {
    let Tls {
        ca,
        cert: _cert,
        up: _up,
        p,
    } = tls_pinhole("server", "").await;
    let doh = p.server.doh_addrs()[0];
    let ct = "application/dns-message";
    let ca = &ca.ca_pem;
    assert_eq!(doh_status(doh, ca, "POST", "/dns-query", ct).await, 200);
    assert_eq!(doh_status(doh, ca, "POST", "/other", ct).await, 404);
    assert_eq!(
        doh_status(doh, ca, "POST", "/dns-query", "text/plain").await,
        415
    );
    assert_eq!(doh_status(doh, ca, "PUT", "/dns-query", ct).await, 405);
    assert_eq!(
        doh_status(doh, ca, "GET", "/dns-query?dns=%%%", ct).await,
        400
    );
    assert_eq!(doh_status(doh, ca, "GET", "/dns-query", ct).await, 400);
    assert_eq!(pinhole::metric(&p.metrics, "doh_bad_requests_total"), 5);
}

/// The allowlist applies to encrypted clients too: a DoT answer's address is in the set first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_answer_opens_its_address_like_any_other() {
    use ::pinhole::firewall::nft::{Family, ListedKey, Nft};
    let ns = common::netns::NetNs::new();
    let state = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new();
    let cert = ca.server("dns.test", "server");
    let up = Upstream::start().await;
    let text = format!(
        "{}[firewall]\nmode = \"managed\"\nstate_dir = \"{}\"\n",
        config_text("", &tls_section(&cert, "")),
        state.path().display()
    );
    let (p, _fw) =
        pinhole::start_with_firewall(Setup::new(&text, &[up.addr], TEST_ZONES), &ns).await;
    let dot = p.server.dot_addrs()[0];
    let out = kdig_dot(dot, &ca.ca_pem, "dns.test", "a.example.test").await;
    assert_eq!(kdig_a(&out), ["192.0.2.1"], "{out}");
    let listed = ns.run(|| {
        Nft::open()
            .expect("netlink")
            .list_elements(Family::Inet, "pinhole", "allow4")
            .expect("list")
    });
    let keys: Vec<ListedKey> = listed.into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [ListedKey::Port {
            addr: "192.0.2.1".parse().expect("ip"),
            proto: 6,
            port: 443
        }]
    );
}
