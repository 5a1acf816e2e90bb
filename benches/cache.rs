//! The cache-hit answer path: a query packet in, the answer bytes out, through the whole
//! request path (parse, access check, special names, policy, cache, TTL rewrite, EDNS).
//! Run: cargo bench --bench cache

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pinhole::cache::Entry;
use pinhole::config::Config;
use pinhole::dns::wire::{self, Query};
use pinhole::dns::{Handler, Step, Transport};
use pinhole::metrics::Metrics;
use pinhole::policy::{PolicyBuilder, ZoneAction, ZoneDef, zonefile::parse_pattern};

fn query(name: &str, edns: bool) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    wire::encode_name(name, &mut q);
    q.extend_from_slice(&[0, 1, 0, 1]);
    if edns {
        wire::push_opt(&mut q, 1232, false, 0, None);
    }
    q
}

fn handler() -> Handler {
    let config = Config::parse(
        Path::new("bench.toml"),
        "[upstream]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .expect("config");
    let mut b = PolicyBuilder::new(config.policy.default_action);
    b.add_zone(ZoneDef {
        name: "bench".into(),
        description: String::new(),
        action: ZoneAction::Allow,
        ports: vec![],
        patterns: vec![parse_pattern("*.bench.test").expect("pattern")],
        sets: vec![],
        statics: vec![],
        file: "bench".into(),
        line: 1,
        part: 0,
    });
    Handler::new(&config, b.build(), None, Arc::new(Metrics::default()))
}

fn bench(c: &mut Criterion) {
    let h = handler();
    // An upstream-like answer: www.bench.test CNAME e.bench.test, two A records.
    let q = query("www.bench.test", false);
    let parsed = Query::parse(&q).expect("query");
    let mut resp = Vec::new();
    wire::start_response(&mut resp, &parsed, 0, false);
    let mut cname = Vec::new();
    wire::encode_name("e.bench.test", &mut cname);
    wire::push_record(&mut resp, wire::ANSWER_COUNT, 5, 300, &cname);
    wire::push_record(&mut resp, wire::ANSWER_COUNT, 1, 60, &[192, 0, 2, 1]);
    wire::push_record(&mut resp, wire::ANSWER_COUNT, 1, 60, &[192, 0, 2, 2]);
    let scan = wire::scan_response(&resp).expect("scan");
    let key = h.cache().key(&parsed);
    let entry = Entry::from_response(
        &key,
        parsed.name(),
        &resp,
        &scan,
        parsed.question_end,
        &h.cache().limits,
        Instant::now(),
    )
    .expect("entry");
    h.cache().insert(&key, Arc::new(entry));

    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("answer_path");
    g.throughput(Throughput::Elements(1));
    for (label, pkt) in [
        ("cache_hit", query("WWW.bench.test", false)),
        ("cache_hit_edns", query("www.bench.test", true)),
        ("blocked_refuse", query("www.example.org", true)),
    ] {
        assert_eq!(
            h.answer_local(&pkt, client, Transport::Udp, &mut out),
            Step::Answered
        );
        g.bench_function(label, |b| {
            b.iter(|| h.answer_local(&pkt, client, Transport::Udp, &mut out))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
