//! Policy matching against a 1,000,000-pattern zone: build time, memory, lookups per second.
//! Run: cargo bench --bench policy

use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pinhole::config::BlockAction;
use pinhole::policy::{Pattern, Policy, PolicyBuilder, ZoneAction, ZoneDef};

const PATTERNS: usize = 1_000_000;

/// Half exact names, half wildcards, over 10,000 registrable domains.
fn zone() -> ZoneDef {
    let patterns = (0..PATTERNS)
        .map(|i| Pattern {
            name: format!("host{i}.svc{}.domain{}.test", i % 97, i % 10_000),
            wildcard: i % 2 == 1,
        })
        .collect();
    ZoneDef {
        name: "big".into(),
        description: String::new(),
        action: ZoneAction::Allow,
        ports: vec![],
        patterns,
        sets: vec![],
        statics: vec![],
        file: PathBuf::from("bench"),
        line: 1,
        part: 0,
    }
}

fn build() -> Policy {
    let mut b = PolicyBuilder::new(BlockAction::Refuse);
    b.add_zone(zone());
    b.build()
}

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let policy = build();
    eprintln!(
        "policy: {} patterns built in {:.2?}; matcher heap {:.1} MiB",
        policy.matcher().len(),
        t.elapsed(),
        policy.matcher().heap_bytes() as f64 / (1024.0 * 1024.0)
    );
    let names: Vec<Vec<u8>> = (0..4096)
        .map(|i: usize| match i % 4 {
            0 => format!("host{i}.svc{}.domain{}.test", i % 97, i % 10_000),
            1 => format!("a.b.host{i}.svc{}.domain{}.test", i % 97, i % 10_000),
            2 => format!("miss{i}.example.org"),
            _ => format!("x.y.z.host{}.svc1.domain3.test", i * 7),
        })
        .map(String::into_bytes)
        .collect();
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("decide_1m_patterns_x4096", |b| {
        b.iter(|| {
            let mut allowed = 0usize;
            for n in &names {
                if policy.decide(n).target.is_some() {
                    allowed += 1;
                }
            }
            allowed
        })
    });
    g.finish();
    let mut g = c.benchmark_group("policy_build");
    g.sample_size(10);
    g.bench_function("build_1m_patterns", |b| b.iter(build));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
