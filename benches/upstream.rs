//! Endpoint selection cost per balance mode, with 1, 4 and 16 endpoints: one `select` plus the
//! attempt's in-flight guard, as `upstream_peer` pays per attempt (peer construction excluded).
//!
//! Run: `cargo bench --bench upstream`. Target: well under 1 µs per selection.

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::domain::ProviderFormat;
use keygate::upstream::balance::{self, Balance, Tried};
use keygate::upstream::state::UpstreamRegistry;
use keygate::upstream::{
    EndpointSpec, Provider, ProviderSpec, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
};
use std::hint::black_box;
use std::time::Duration;

fn provider(n: usize, balance: Balance) -> Provider {
    Provider::new(ProviderSpec {
        name: "bench".into(),
        format: ProviderFormat::Openai,
        api_key: Some("sk-bench".into()),
        anthropic_version: None,
        forward_headers: Vec::new(),
        endpoints: (0..n)
            .map(|i| EndpointSpec {
                url: format!("http://127.0.0.1:{}", 10000 + i),
                tls: false,
                host: "127.0.0.1".into(),
                port: 10000 + i as u16,
                base_path: String::new(),
                weight: 1 + (i as u32 % 3),
            })
            .collect(),
        extra_ca_der: Vec::new(),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        total_timeout: None,
        balance,
        retries: 2,
        health_check: None,
    })
    .expect("bench provider")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    group.measurement_time(Duration::from_secs(3));
    for (mode, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("least_requests", Balance::LeastRequests),
        ("p2c_latency", Balance::P2cLatency),
    ] {
        for n in [1usize, 4, 16] {
            let registry = UpstreamRegistry::new();
            let p = provider(n, balance);
            let states = registry.states(&p);
            for (i, s) in states.iter().enumerate() {
                s.record_latency(Duration::from_millis(50 + 10 * i as u64));
            }
            let tried = Tried::default();
            group.bench_function(format!("{mode}/{n}"), |b| {
                b.iter(|| {
                    let pick = balance::select(&p, states, black_box(&tried)).expect("a pick");
                    black_box(states[pick.index].begin(pick.trial));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
