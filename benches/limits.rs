//! Limiter check-and-count cost: one key with a request window, a token window and a
//! concurrency cap, plus its workload's window — uncontended, and with two threads on one key.
//!
//! Run: `cargo bench --bench limits`. Target: under 200 ns per check uncontended.

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::limits::{LimitKind, LimitSpec, LimitState, MemoryLimits, ScopeRef, WindowSpec};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn spec(max_concurrent: Option<u32>) -> LimitSpec {
    LimitSpec::new(
        vec![
            WindowSpec {
                kind: LimitKind::Requests,
                limit: u64::MAX / 4,
                per: Duration::from_secs(60),
            },
            WindowSpec {
                kind: LimitKind::Tokens,
                limit: u64::MAX / 4,
                per: Duration::from_secs(60),
            },
        ],
        max_concurrent,
        None,
    )
}

fn bench(c: &mut Criterion) {
    let limits = Arc::new(MemoryLimits::new());
    let key = spec(Some(1_000_000));
    let workload = spec(None);
    let scopes = [
        ScopeRef {
            kind: "key",
            name: "k",
            spec: &key,
        },
        ScopeRef {
            kind: "workload",
            name: "w",
            spec: &workload,
        },
    ];
    c.bench_function("limiter/admit_and_release/uncontended", |b| {
        b.iter(|| {
            let admission = limits
                .admit(black_box(&scopes), 25, keygate::limits::now_ms())
                .unwrap();
            drop(black_box(admission));
        })
    });

    // A second thread hammering the same key and workload for the duration of the measurement.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (limits, stop) = (limits.clone(), stop.clone());
        std::thread::spawn(move || {
            let key = spec(Some(1_000_000));
            let workload = spec(None);
            let scopes = [
                ScopeRef {
                    kind: "key",
                    name: "k",
                    spec: &key,
                },
                ScopeRef {
                    kind: "workload",
                    name: "w",
                    spec: &workload,
                },
            ];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(
                    limits
                        .admit(&scopes, 25, keygate::limits::now_ms())
                        .unwrap(),
                );
            }
        })
    };
    c.bench_function("limiter/admit_and_release/two_threads_one_key", |b| {
        b.iter(|| {
            let admission = limits
                .admit(black_box(&scopes), 25, keygate::limits::now_ms())
                .unwrap();
            drop(black_box(admission));
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
