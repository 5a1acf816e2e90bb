//! Smoke test for the in-process DNS upstream used by the integration tests.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use common::upstream::{
    BlackHole, Upstream, build_query, exchange_tcp, exchange_udp, query_tcp, query_udp,
};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
use hickory_proto::rr::{RData, RecordType};

#[tokio::test]
async fn upstream_serves_test_zones() {
    let up = Upstream::start().await;

    // CNAME chain across the three zones
    let resp = query_udp(up.addr, "www.example.test.", RecordType::A, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::NoError,
        "www rcode"
    );
    assert!(resp.metadata.authoritative, "www: AA must be set");
    assert!(!resp.metadata.truncation, "www: not truncated");
    assert!(
        resp.edns.is_none(),
        "no OPT in response to a query without EDNS"
    );
    let ttls: Vec<u32> = resp.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(
        ttls,
        vec![300, 120, 60, 60],
        "www chain TTLs: {:?}",
        resp.answers
    );
    let types: Vec<RecordType> = resp.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        vec![
            RecordType::CNAME,
            RecordType::CNAME,
            RecordType::A,
            RecordType::A
        ],
        "www chain types"
    );
    let ips: Vec<Ipv4Addr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(
        ips,
        vec![Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)]
    );

    // AAAA at the end of the chain
    let resp = query_udp(up.addr, "www.example.test.", RecordType::AAAA, Some(1232)).await;
    let last = resp.answers.last().expect("www AAAA: answers");
    assert_eq!(
        last.data,
        RData::AAAA(hickory_proto::rr::rdata::AAAA(Ipv6Addr::new(
            0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10
        ))),
        "www AAAA"
    );
    let opt = resp
        .edns
        .as_ref()
        .expect("OPT in response to an EDNS query");
    assert_eq!(opt.max_payload(), 1232, "upstream advertises 1232");

    // big A over UDP without EDNS: truncated, empty answer
    let resp = query_udp(up.addr, "big.example.test.", RecordType::A, None).await;
    assert!(resp.metadata.truncation, "big A over UDP/512 must set TC");
    assert!(resp.answers.is_empty(), "truncated response has no answers");
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::NoError,
        "big TC rcode"
    );

    // big TXT over UDP with EDNS 1232: still truncated
    let resp = query_udp(up.addr, "big.example.test.", RecordType::TXT, Some(1232)).await;
    assert!(
        resp.metadata.truncation,
        "big TXT over UDP/1232 must set TC"
    );
    assert!(
        resp.answers.is_empty(),
        "truncated TXT response has no answers"
    );
    assert!(resp.edns.is_some(), "truncated response keeps the OPT");

    // huge A over UDP with EDNS 4096 (limit is min(4096, 1232))
    let resp = query_udp(up.addr, "huge.example.test.", RecordType::A, Some(4096)).await;
    assert!(resp.metadata.truncation, "huge A over UDP must set TC");

    // big A over UDP with EDNS 1232: 60 A records (~1 KB) fit
    let resp = query_udp(up.addr, "big.example.test.", RecordType::A, Some(1232)).await;
    assert!(!resp.metadata.truncation, "big A fits in 1232");
    assert_eq!(resp.answers.len(), 60, "big A over UDP/1232: 60 records");

    // big A over TCP: all 60
    let resp = query_tcp(up.addr, "big.example.test.", RecordType::A, None).await;
    assert!(!resp.metadata.truncation, "TCP response not truncated");
    assert_eq!(resp.answers.len(), 60, "big A over TCP: 60 records");
    assert!(resp.answers.iter().all(|r| r.ttl == 300), "big A TTLs");
    let resp = query_tcp(up.addr, "big.example.test.", RecordType::TXT, Some(1232)).await;
    assert_eq!(resp.answers.len(), 30, "big TXT over TCP: 30 records");

    // NXDOMAIN with SOA
    let resp = query_udp(up.addr, "nope.example.test.", RecordType::A, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::NXDomain,
        "nope rcode"
    );
    assert!(resp.answers.is_empty(), "nxdomain answers");
    let soa = resp
        .authorities
        .first()
        .expect("nxdomain: SOA in authority");
    assert_eq!(soa.ttl, 600, "SOA record TTL");
    let RData::SOA(soa_data) = &soa.data else {
        panic!("nxdomain authority is not a SOA: {soa:?}");
    };
    assert_eq!(soa_data.minimum, 300, "SOA minimum");
    assert_eq!(soa.name.to_ascii(), "example.test.", "SOA owner");

    // NODATA
    let resp = query_udp(up.addr, "nodata.example.test.", RecordType::A, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::NoError,
        "nodata rcode"
    );
    assert!(resp.answers.is_empty(), "nodata answers");
    assert_eq!(resp.authorities.len(), 1, "nodata: SOA in authority");

    // TTL edge cases
    let resp = query_udp(up.addr, "zero.example.test.", RecordType::A, None).await;
    assert_eq!(resp.answers[0].ttl, 0, "zero TTL");
    let resp = query_udp(up.addr, "short.example.test.", RecordType::A, None).await;
    assert_eq!(resp.answers[0].ttl, 2, "short TTL");

    // special rcodes
    let resp = query_udp(up.addr, "servfail.example.test.", RecordType::A, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::ServFail,
        "servfail"
    );
    let resp = query_udp(up.addr, "refused.example.test.", RecordType::AAAA, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::Refused,
        "refused"
    );
    let resp = query_udp(up.addr, "example.org.", RecordType::A, None).await;
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::Refused,
        "out of zone"
    );

    // HTTPS
    let resp = query_udp(
        up.addr,
        "https.example.test.",
        RecordType::HTTPS,
        Some(1232),
    )
    .await;
    assert_eq!(resp.answers.len(), 1, "https answers: {:?}", resp.answers);
    let RData::HTTPS(https) = &resp.answers[0].data else {
        panic!("not HTTPS rdata: {:?}", resp.answers[0]);
    };
    assert_eq!(https.0.svc_priority, 1, "svc priority");
    assert!(https.0.target_name.is_root(), "target .");
    let has_v4hint = https.0.svc_params.iter().any(|(k, v)| {
        *k == SvcParamKey::Ipv4Hint
            && matches!(v, SvcParamValue::Ipv4Hint(h) if h.0[0].0 == Ipv4Addr::new(192, 0, 2, 50))
    });
    assert!(has_v4hint, "ipv4hint present: {https:?}");

    // mixed case: question echoed exactly
    let query = build_query("A.ExAmPlE.TeSt.", RecordType::A, None);
    let resp = exchange_udp(up.addr, &query, Duration::from_secs(2))
        .await
        .expect("mixed case: response");
    assert_eq!(
        resp.queries[0].name().to_ascii(),
        "A.ExAmPlE.TeSt.",
        "question echoed"
    );
    assert_eq!(resp.answers.len(), 1, "mixed case answer");
    assert_eq!(resp.answers[0].ttl, 3600, "a TTL");
    let resp = exchange_tcp(up.addr, &query, Duration::from_secs(2))
        .await
        .expect("mixed case tcp: response");
    assert_eq!(resp.answers.len(), 1, "mixed case answer over TCP");

    // slow
    let started = Instant::now();
    let resp = query_udp(up.addr, "slow.example.test.", RecordType::A, None).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "slow delay"
    );
    assert_eq!(resp.answers.len(), 1, "slow answer");

    // counters
    assert_eq!(
        up.queries_for("a.example.test.", RecordType::A),
        2,
        "a count"
    );
    assert_eq!(
        up.queries_for("BIG.example.test", RecordType::A),
        3,
        "big A count"
    );
    assert_eq!(
        up.queries_for("www.example.test.", RecordType::A),
        1,
        "www count"
    );
    assert_eq!(
        up.queries_for("www.example.test.", RecordType::MX),
        0,
        "www MX count"
    );
    assert_eq!(up.queries(), 19, "total count");
    assert_eq!(up.tcp_queries(), 3, "tcp count");
    assert_eq!(up.udp_queries(), 16, "udp count");

    // concurrent slow queries are answered in parallel over UDP
    let started = Instant::now();
    let (a, b) = tokio::join!(
        query_udp(up.addr, "slow.example.test.", RecordType::A, None),
        query_udp(up.addr, "slow.example.test.", RecordType::A, None),
    );
    assert_eq!(a.answers.len() + b.answers.len(), 2, "slow answers");
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "slow queries run concurrently"
    );

    // dropping the upstream stops it
    let addr = up.addr;
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let query = build_query("a.example.test.", RecordType::A, None);
    let resp = exchange_udp(addr, &query, Duration::from_millis(200)).await;
    assert!(resp.is_none(), "dropped upstream still answers: {resp:?}");
}

#[test]
fn harness_types_are_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Upstream>();
    assert_send_sync::<BlackHole>();
}

#[tokio::test]
async fn blackhole_never_answers() {
    let hole = BlackHole::start().await;
    let query = build_query("a.example.test.", RecordType::A, None);

    let started = Instant::now();
    let resp = exchange_udp(hole.addr, &query, Duration::from_millis(200)).await;
    assert!(resp.is_none(), "blackhole answered over UDP: {resp:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "UDP timeout elapsed"
    );

    let resp = exchange_tcp(hole.addr, &query, Duration::from_millis(200)).await;
    assert!(resp.is_none(), "blackhole answered over TCP: {resp:?}");
    assert_eq!(hole.queries(), 2, "blackhole saw both queries");
}
