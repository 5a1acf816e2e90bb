//! The core resolver, asserted on the answers a real client receives: a real upstream (hickory
//! authoritative server on loopback), pinhole in-process or as the binary, and hickory-proto /
//! kdig as clients.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::pinhole::{self, Setup, TEST_ZONES, config_text, metric};
use common::upstream::{
    self, BlackHole, Upstream, addrs, build_query, exchange_tcp, exchange_udp, query_tcp, query_udp,
};
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(3);

fn ttls(m: &Message) -> Vec<u32> {
    m.answers.iter().map(|r| r.ttl).collect()
}

/// The Extended DNS Error code in an answer, if any.
fn ede(m: &Message) -> Option<u16> {
    let opt = m.edns.as_ref()?.option(EdnsCode::from(15))?;
    match opt {
        EdnsOption::Unknown(15, data) if data.len() >= 2 => {
            Some(u16::from_be_bytes([data[0], data[1]]))
        }
        _ => None,
    }
}

fn soa_in_authority(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

#[tokio::test]
async fn forwards_the_whole_cname_chain_with_upstream_ttls_and_flags() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    let m = query_udp(p.addr, "www.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.metadata.authoritative,
        "AA from the upstream is passed on"
    );
    assert!(m.metadata.recursion_desired);
    let types: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        [
            RecordType::CNAME,
            RecordType::CNAME,
            RecordType::A,
            RecordType::A
        ]
    );
    assert_eq!(ttls(&m), [300, 120, 60, 60]);
    assert_eq!(
        addrs(&m.answers),
        [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11))
        ]
    );
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    // AAAA through the same chain.
    let m = query_udp(p.addr, "www.example.test.", RecordType::AAAA, None).await;
    assert_eq!(
        addrs(&m.answers),
        [IpAddr::V6("2001:db8::10".parse().expect("v6"))]
    );
    assert!(m.edns.is_none(), "no OPT for a client without EDNS");
}

#[tokio::test]
async fn cache_counts_ttls_down_and_asks_upstream_once() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    let first = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(ttls(&first), [3600]);
    // Let the clock pass one whole second: the cached TTL must then be lower.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A different letter case is the same cache entry, and the question is echoed as asked.
    let second = query_udp(p.addr, "A.Example.TEST.", RecordType::A, None).await;
    assert_eq!(second.queries[0].name().to_ascii(), "A.Example.TEST.");
    let ttl = second.answers[0].ttl;
    assert!(
        (3598..=3599).contains(&ttl),
        "ttl {ttl} should have counted down"
    );
    assert_eq!(up.queries_for("a.example.test.", RecordType::A), 1);
    assert_eq!(metric(&p.metrics, "cache_hits_total"), 1);
    // Over TCP the same cache serves.
    let third = query_tcp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(addrs(&third.answers), addrs(&first.answers));
    assert_eq!(up.queries_for("a.example.test.", RecordType::A), 1);
}

#[tokio::test]
async fn zero_ttl_is_not_cached_and_do_bit_is_a_separate_entry() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    for _ in 0..2 {
        let m = query_udp(p.addr, "zero.example.test.", RecordType::A, None).await;
        assert_eq!(ttls(&m), [0]);
    }
    assert_eq!(up.queries_for("zero.example.test.", RecordType::A), 2);
    query_udp(p.addr, "a.example.test.", RecordType::A, Some(1232)).await;
    let mut q = build_query("a.example.test.", RecordType::A, None);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_dnssec_ok(true);
    q.set_edns(e);
    let m = exchange_udp(p.addr, &q, T).await.expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        up.queries_for("a.example.test.", RecordType::A),
        2,
        "DO=1 is its own cache entry"
    );
}

#[tokio::test]
async fn negative_answers_keep_rcode_and_soa_and_are_cached_from_the_soa() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    for _ in 0..2 {
        let m = query_udp(p.addr, "missing.example.test.", RecordType::A, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert!(soa_in_authority(&m));
        assert!(m.authorities[0].ttl <= 600);
        let m = query_udp(p.addr, "nodata.example.test.", RecordType::A, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(soa_in_authority(&m));
    }
    assert_eq!(up.queries_for("missing.example.test.", RecordType::A), 1);
    assert_eq!(up.queries_for("nodata.example.test.", RecordType::A), 1);
}

#[tokio::test]
async fn upstream_servfail_and_refused_are_passed_on() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    let m = query_udp(p.addr, "servfail.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = query_udp(p.addr, "refused.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn large_answers_truncate_for_udp_clients_and_come_whole_over_tcp() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    // 100 A records (~1.6 kB): the upstream truncates over UDP, pinhole retries over TCP.
    let udp = query_udp(p.addr, "huge.example.test.", RecordType::A, Some(1232)).await;
    assert!(
        udp.metadata.truncation,
        "TC for a UDP client whose limit is 1232"
    );
    assert!(udp.answers.is_empty());
    assert!(up.tcp_queries() >= 1, "pinhole retried over TCP");
    let tcp = query_tcp(p.addr, "huge.example.test.", RecordType::A, Some(1232)).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    // 60 A records (~1 kB): fits 1232 with EDNS, not 512 without.
    let plain = query_udp(p.addr, "big.example.test.", RecordType::A, None).await;
    assert!(
        plain.metadata.truncation,
        "a client without EDNS gets at most 512 bytes"
    );
    let edns = query_udp(p.addr, "big.example.test.", RecordType::A, Some(1232)).await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 60);
    assert!(metric(&p.metrics, "truncated_total") >= 2);
}

#[tokio::test]
async fn silent_upstream_gives_servfail_within_the_timeout() {
    let hole = BlackHole::start().await;
    let p = pinhole::start_default(&[hole.addr]).await;
    let started = Instant::now();
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, Some(1232)).await;
    let took = started.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(took < Duration::from_millis(1500 + 300), "took {took:?}");
    assert!(metric(&p.metrics, "upstream_timeouts_total") >= 1);
    // TCP clients get the (briefly cached) SERVFAIL too, never a hang.
    let m = query_tcp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn fails_over_to_the_next_upstream() {
    let hole = BlackHole::start().await;
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[hole.addr, up.addr]).await;
    let started = Instant::now();
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(addrs(&m.answers), [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    assert!(started.elapsed() < Duration::from_millis(1200));
    // The failed server now ranks last: the next query goes straight to the good one.
    let started = Instant::now();
    query_udp(p.addr, "www.example.test.", RecordType::A, None).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "healthy server first"
    );
}

#[tokio::test]
async fn identical_queries_in_flight_go_upstream_once() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                query_udp(addr, "slow.example.test.", RecordType::A, None).await
            } else {
                query_tcp(addr, "SLOW.example.test.", RecordType::A, None).await
            }
        }));
    }
    for t in tasks {
        let m = t.await.expect("task");
        assert_eq!(
            addrs(&m.answers),
            [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))]
        );
    }
    assert_eq!(up.queries_for("slow.example.test.", RecordType::A), 1);
}

#[tokio::test]
async fn block_actions_answer_as_configured_with_ede_and_soa() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    // Unlisted: default refuse, EDE 15 for EDNS clients only.
    let m = query_udp(p.addr, "www.example.org.", RecordType::A, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(ede(&m), Some(15));
    let m = query_udp(p.addr, "www.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.edns.is_none());
    // A zone with refuse beats the wider allow zone (exact is more specific).
    let m = query_udp(p.addr, "refuse.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = query_udp(p.addr, "nx.blocked.test.", RecordType::AAAA, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(soa_in_authority(&m));
    assert_eq!(ede(&m), Some(15));
    let m = query_udp(p.addr, "nodata.blocked.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && soa_in_authority(&m));
    let m = query_udp(p.addr, "x.sink.blocked.test.", RecordType::A, None).await;
    assert_eq!(addrs(&m.answers), [IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    let m = query_udp(p.addr, "x.sink.blocked.test.", RecordType::AAAA, None).await;
    assert_eq!(addrs(&m.answers), [IpAddr::V6(Ipv6Addr::UNSPECIFIED)]);
    for t in [RecordType::HTTPS, RecordType::MX, RecordType::TXT] {
        let m = query_udp(p.addr, "x.sink.blocked.test.", t, None).await;
        assert!(m.answers.is_empty(), "never an A record to a {t} query");
        assert!(soa_in_authority(&m));
    }
    assert_eq!(up.queries(), 0, "blocked names are never forwarded");
    assert_eq!(metric(&p.metrics, "blocked_total"), 10);
}

#[tokio::test]
async fn default_actions_and_sinkhole_addresses_are_configurable() {
    let up = Upstream::start().await;
    let cfg = config_text(
        "",
        "[policy]\ndefault_action = \"sinkhole\"\nsinkhole_ipv4 = \"192.0.2.254\"\nblock_ttl = 33\n",
    );
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let m = query_udp(p.addr, "ads.example.org.", RecordType::A, None).await;
    assert_eq!(
        addrs(&m.answers),
        [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254))]
    );
    assert_eq!(ttls(&m), [33]);
    let cfg = config_text("", "[policy]\ndefault_action = \"nxdomain\"\n");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let m = query_udp(p.addr, "ads.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // forward: resolved (the test upstream refuses names it does not serve), not blocked.
    let cfg = config_text("", "[policy]\ndefault_action = \"forward\"\n");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    query_udp(p.addr, "ads.example.org.", RecordType::A, None).await;
    assert_eq!(up.queries_for("ads.example.org.", RecordType::A), 1);
}

#[tokio::test]
async fn special_names_are_answered_locally() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    for t in [RecordType::A, RecordType::AAAA, RecordType::HTTPS] {
        for name in ["mask.icloud.com.", "mask-h2.icloud.com."] {
            let m = query_udp(p.addr, name, t, Some(1232)).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} {t}"
            );
            assert!(soa_in_authority(&m));
        }
    }
    let m = query_udp(p.addr, "use-application-dns.net.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = query_udp(p.addr, "_dns.resolver.arpa.", RecordType::SVCB, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && soa_in_authority(&m));
    assert_eq!(up.queries(), 0);

    // Switched off, they go through the policy like any name (here: default refuse).
    let cfg = config_text(
        "",
        "[special]\nresolver_arpa = false\nprivate_relay = \"off\"\napplication_dns_canary = false\n",
    );
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    for name in [
        "mask.icloud.com.",
        "use-application-dns.net.",
        "_dns.resolver.arpa.",
    ] {
        let m = query_udp(p.addr, name, RecordType::A, None).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
    }
    let cfg = config_text("", "[special]\nprivate_relay = \"nodata\"\n");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let m = query_udp(p.addr, "mask.icloud.com.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[tokio::test]
async fn clients_outside_the_acl_are_refused() {
    let up = Upstream::start().await;
    let cfg = config_text("allow_clients = [\"10.0.0.0/8\"]", "");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(ede(&m), Some(18));
    assert_eq!(up.queries(), 0);
    assert_eq!(metric(&p.metrics, "refused_acl_total"), 1);
}

async fn raw_udp(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn bad_input_gets_formerr_notimp_or_nothing_and_never_a_crash() {
    let up = Upstream::start().await;
    let p = pinhole::start_default(&[up.addr]).await;
    assert_eq!(
        raw_udp(p.addr, &[1, 2, 3, 4, 5]).await,
        None,
        "runt packet dropped"
    );
    // Two questions: FORMERR.
    let mut q = build_query("a.example.test.", RecordType::A, None);
    q.add_query(hickory_proto::op::Query::query(
        "b.example.test.".parse().expect("n"),
        RecordType::A,
    ));
    let r = exchange_udp(p.addr, &q, T).await.expect("answer");
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Truncated question: FORMERR.
    let bytes = build_query("a.example.test.", RecordType::A, None)
        .to_vec()
        .expect("enc");
    let r = raw_udp(p.addr, &bytes[..bytes.len() - 3])
        .await
        .expect("answer");
    assert_eq!(r[3] & 0x0f, 1);
    // Opcode STATUS (2): NOTIMP.
    let mut bytes = bytes.clone();
    bytes[2] |= 2 << 3;
    let r = raw_udp(p.addr, &bytes).await.expect("answer");
    assert_eq!(r[3] & 0x0f, 4);
    // A response sent to pinhole is dropped (no reflection loops).
    let mut resp = build_query("a.example.test.", RecordType::A, None)
        .to_vec()
        .expect("enc");
    resp[2] |= 0x80;
    assert_eq!(raw_udp(p.addr, &resp).await, None);
    // ANY: RFC 8482 minimal answer; AXFR: refused.
    let m = query_udp(p.addr, "a.example.test.", RecordType::ANY, None).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
    let m = query_udp(p.addr, "a.example.test.", RecordType::AXFR, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // Random garbage of every length: the server stays up and keeps answering.
    let mut seed = 0x2545_f491_u32;
    for len in 0..300usize {
        let pkt: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.send_to(&pkt, p.addr).await.expect("send");
    }
    let m = query_udp(p.addr, "a.example.test.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(metric(&p.metrics, "formerr_total") >= 2);
}

#[tokio::test]
async fn tcp_answers_pipelined_queries_concurrently_and_closes_idle_connections() {
    let up = Upstream::start().await;
    let cfg = config_text("tcp_idle_timeout_ms = 400", "");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let connected = Instant::now();
    let mut stream = TcpStream::connect(p.addr).await.expect("connect");
    let slow = build_query("slow.example.test.", RecordType::A, None);
    let fast = build_query("a.example.test.", RecordType::A, None);
    let blocked = build_query("www.example.org.", RecordType::A, None);
    let mut framed = Vec::new();
    for q in [&slow, &fast, &blocked] {
        let b = q.to_vec().expect("enc");
        framed.extend_from_slice(&(b.len() as u16).to_be_bytes());
        framed.extend_from_slice(&b);
    }
    stream.write_all(&framed).await.expect("write");
    let mut order = Vec::new();
    for _ in 0..3 {
        let len = tokio::time::timeout(T, stream.read_u16())
            .await
            .expect("in time")
            .expect("len");
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.expect("body");
        order.push(Message::from_vec(&buf).expect("dec").metadata.id);
    }
    assert_eq!(order.len(), 3);
    assert_eq!(
        order[2], slow.metadata.id,
        "the slow answer comes last: {order:?}"
    );
    // Idle: the server closes the connection tcp_idle_timeout_ms after the last query.
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(T, stream.read(&mut b))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(connected.elapsed() >= Duration::from_millis(400));
    assert_eq!(metric(&p.metrics, "tcp_idle_closed_total"), 1);
}

#[tokio::test]
async fn tcp_connection_limit_is_enforced() {
    let up = Upstream::start().await;
    let cfg = config_text("tcp_max_connections = 1", "");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    let q = build_query("a.example.test.", RecordType::A, None);
    let b = q.to_vec().expect("enc");
    // The first connection is accepted and served, and stays open.
    let mut first = TcpStream::connect(p.addr).await.expect("connect");
    first
        .write_all(&(b.len() as u16).to_be_bytes())
        .await
        .expect("w");
    first.write_all(&b).await.expect("w");
    let len = tokio::time::timeout(T, first.read_u16())
        .await
        .expect("in time")
        .expect("answer");
    assert!(len > 12);
    let mut second = TcpStream::connect(p.addr).await.expect("connect");
    let _ = second.write_all(&(b.len() as u16).to_be_bytes()).await;
    let _ = second.write_all(&b).await;
    let mut buf = [0u8; 2];
    let r = tokio::time::timeout(T, second.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "second connection is closed: {r:?}"
    );
    assert!(metric(&p.metrics, "tcp_rejected_total") >= 1);
    drop(first);
}

#[tokio::test]
async fn serves_ipv6_listeners() {
    let up = Upstream::start().await;
    let cfg = "[server]\nlisten = [\"[::1]:0\"]\n[upstream]\nservers = [{upstreams}]\n";
    let p = pinhole::start(Setup::new(cfg, &[up.addr], TEST_ZONES)).await;
    assert!(p.addr.is_ipv6());
    let sock = UdpSocket::bind("[::1]:0").await.expect("bind v6");
    let q = build_query("a.example.test.", RecordType::A, None);
    sock.send_to(&q.to_vec().expect("enc"), p.addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(T, sock.recv(&mut buf))
        .await
        .expect("in time")
        .expect("recv");
    let m = Message::from_vec(&buf[..n]).expect("dec");
    assert_eq!(addrs(&m.answers), [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    let m = exchange_tcp(p.addr, &q, T).await.expect("tcp v6");
    assert_eq!(m.answers.len(), 1);
}

/// The binary with kdig as the client: what an administrator would type.
#[tokio::test]
async fn binary_serves_kdig() {
    let up = Upstream::start().await;
    let setup = Setup::new(&config_text("", ""), &[up.addr], TEST_ZONES);
    let daemon = pinhole::spawn_daemon(&setup.config_path());
    let port = daemon.addr.port().to_string();
    let kdig = move |args: &[&str]| {
        let out = std::process::Command::new("kdig")
            .args(["@127.0.0.1", "-p", &port, "+timeout=2", "+retry=0"])
            .args(args)
            .output()
            .expect("kdig (apt-get install knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let short = tokio::task::spawn_blocking(move || {
        (
            kdig(&["+short", "www.example.test", "A"]),
            kdig(&["+tcp", "mask.icloud.com", "AAAA"]),
            kdig(&["www.example.org", "A"]),
        )
    })
    .await
    .expect("kdig task");
    assert_eq!(
        short.0.lines().collect::<Vec<_>>(),
        ["www.cdn.test.", "e1.edge.test.", "192.0.2.10", "192.0.2.11"]
    );
    assert!(short.1.contains("status: NXDOMAIN"), "{}", short.1);
    assert!(short.2.contains("status: REFUSED"), "{}", short.2);
    drop(daemon);
    let _ = upstream::SLOW_DELAY;
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let up = Upstream::start().await;
    let cfg = config_text("", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let p = pinhole::start(Setup::new(&cfg, &[up.addr], TEST_ZONES)).await;
    query_udp(p.addr, "www.example.org.", RecordType::A, None).await;
    let addr = p.server.metrics_addr().expect("metrics listener");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut body))
        .await
        .expect("in time")
        .expect("read");
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.contains("pinhole_blocked_total 1\n"), "{body}");
    assert!(
        body.contains("# TYPE pinhole_upstream_timeouts_total counter"),
        "{body}"
    );
}
