//! Limiter check-and-count cost: one key with a request window, a token window and a
//! concurrency cap, plus its workload's window — uncontended, and with two threads on one key;
//! and the same with daily/monthly budgets on both scopes (reserve at admission, settle the
//! real cost at the end).
//!
//! Also what a rate-limited key's response pays on top of any other: the six `x-ratelimit-*`
//! headers added to the provider's response head (as Pingora parsed it, with the original case of
//! each name kept), written out to the client and dropped; against the same head without them.
//!
//! Run: `cargo bench --bench limits`. Target: under 200 ns per check uncontended.

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::limits::budget::{BudgetMode, BudgetSpec};
use keygate::limits::{
    Demand, LimitKind, LimitSpec, LimitState, MemoryLimits, RateStatus, ScopeRef, WindowSpec,
    WindowStatus,
};
use keygate::proxy::head;
use keygate::usage::cost::UsdNanos;
use pingora::http::ResponseHeader;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The allocator the `keygate` binary uses: header work is mostly allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let slots = limits.hold_slots(black_box(&scopes), now).unwrap();
    let mut admission = limits.admit(&scopes, demand, slots, now).unwrap();
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

/// A provider's response head as Pingora hands it to the gateway: names in their original case.
fn provider_head() -> ResponseHeader {
    let mut head = ResponseHeader::build(200, Some(6)).unwrap();
    for (name, value) in [
        ("Server", "nginx"),
        ("Date", "Tue, 24 Nov 2026 03:22:30 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Length", "540"),
        ("Connection", "keep-alive"),
        ("x-request-id", "mock-1"),
    ] {
        head.append_header(name.to_owned(), value).unwrap();
    }
    head
}

/// What the gateway does to every response head, then writes it out and drops it.
fn respond(provider: &ResponseHeader, rate: Option<&RateStatus>, wire: &mut Vec<u8>) {
    let mut response = provider.clone();
    head::edit_response(
        &mut response,
        "0123456789abcdef0123456789abcdef",
        rate,
        0,
        |_, _| Ok(()),
    )
    .unwrap();
    wire.clear();
    response.header_to_h1_wire(wire);
    black_box(&wire);
}

fn response_headers(c: &mut Criterion) {
    let head = provider_head();
    let window = |limit, remaining, reset_ms| WindowStatus {
        limit,
        remaining,
        reset: Duration::from_millis(reset_ms),
    };
    let rate = RateStatus {
        requests: Some(window(600, 431, 6_250)),
        tokens: Some(window(200_000, 118_774, 35_140)),
    };
    let mut wire = Vec::with_capacity(1024);
    c.bench_function("response_head/without_rate_headers", |b| {
        b.iter(|| respond(&head, None, &mut wire))
    });
    c.bench_function("response_head/with_rate_headers", |b| {
        b.iter(|| respond(&head, Some(&rate), &mut wire))
    });
}

criterion_group!(benches, bench, response_headers);
criterion_main!(benches);
