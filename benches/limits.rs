//! Limiter check-and-count cost: one key with a request window, a token window and a
//! concurrency cap, plus its workload's window — uncontended, and with two threads on one key;
//! and the same with daily/monthly budgets on both scopes (reserve at admission, settle the
//! real cost at the end).
//!
//! Run: `cargo bench --bench limits`. Target: under 200 ns per check uncontended.

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::limits::budget::{BudgetMode, BudgetSpec};
use keygate::limits::{
    Demand, LimitKind, LimitSpec, LimitState, MemoryLimits, ScopeRef, WindowSpec,
};
use keygate::usage::cost::UsdNanos;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn spec(max_concurrent: Option<u32>, budget: Option<BudgetSpec>) -> LimitSpec {
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
        budget,
    )
}

fn budget() -> BudgetSpec {
    BudgetSpec {
        daily: Some(UsdNanos(u64::MAX / 4)),
        monthly: Some(UsdNanos(u64::MAX / 4)),
        mode: BudgetMode::Enforce,
        alert_at: Default::default(),
    }
}

/// One admission for key `k` of workload `w`, released at once: what a request costs the limiter.
fn admit_and_release(limits: &MemoryLimits, key: &LimitSpec, workload: &LimitSpec) {
    let scopes = [
        ScopeRef {
            kind: "key",
            name: "k",
            spec: key,
        },
        ScopeRef {
            kind: "workload",
            name: "w",
            spec: workload,
        },
    ];
    let demand = Demand {
        tokens: 25,
        cost: UsdNanos(30_000),
    };
    let now = keygate::limits::now_ms();
    let mut admission = limits.admit(black_box(&scopes), demand, now).unwrap();
    if key.budget.is_some() {
        black_box(limits.settle_cost(&mut admission, UsdNanos(12_000), now));
    }
    drop(black_box(admission));
}

fn bench(c: &mut Criterion) {
    let limits = Arc::new(MemoryLimits::new());
    let specs = Arc::new((spec(Some(1_000_000), None), spec(None, None)));
    c.bench_function("limiter/admit_and_release/uncontended", |b| {
        b.iter(|| admit_and_release(&limits, &specs.0, &specs.1))
    });
    let budgeted = (
        spec(Some(1_000_000), Some(budget())),
        spec(None, Some(budget())),
    );
    c.bench_function("limiter/admit_settle_release/with_budgets", |b| {
        b.iter(|| admit_and_release(&limits, &budgeted.0, &budgeted.1))
    });

    // A second thread hammering the same key and workload for the duration of the measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (limits, specs, stop) = (limits.clone(), specs.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                admit_and_release(&limits, &specs.0, &specs.1);
            }
        })
    };
    c.bench_function("limiter/admit_and_release/two_threads_one_key", |b| {
        b.iter(|| admit_and_release(&limits, &specs.0, &specs.1))
    });
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
