//! The cost of recording one finished request in the metrics: the key's and model's handles
//! (resolved once), a status-class counter, token and cost counters and three histograms. This is
//! the whole per-request metrics work on the proxy path; compare it with the CPU per request of
//! the end-to-end run (`benches/e2e.sh`) for the share metrics take. Also the scrape: rendering
//! the text exposition of 1,000 keys' series.
//!
//! Run: `cargo bench --bench metrics`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{self, LoadOptions};
use keygate::metrics::{Metrics, RequestFigures};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = common::write_policy(
        dir.path(),
        1000,
        0,
        "listen: 127.0.0.1:1",
        "http://127.0.0.1:9",
    );
    let policy = config::load(&written.config_path, LoadOptions { resolve_dns: false })
        .expect("a valid policy");
    let key = policy.keys_by_id.values().next().expect("a key").clone();
    let model = policy.models[0].clone();
    let models = policy.models.len();
    let metrics = Metrics::new();
    let figures = RequestFigures {
        status: 200,
        refusal: None,
        prompt_tokens: 231,
        completion_tokens: 19,
        cached_tokens: 0,
        cache_write_tokens: 0,
        cost_usd: 0.0000462,
        duration: Duration::from_micros(850),
        upstream_duration: Some(Duration::from_micros(700)),
        time_to_first_byte: None,
    };
    c.bench_function("metrics/record_request", |b| {
        b.iter(|| {
            metrics.started(black_box(&key).metrics_ref(), models);
            metrics.finished(
                Some(key.metrics_ref()),
                Some(model.metrics_ref()),
                models,
                true,
                black_box(&figures),
            );
        })
    });
    c.bench_function("metrics/record_request_disabled_baseline", |b| {
        b.iter(|| black_box((&key, &model, &figures)))
    });

    for k in policy.keys_by_id.values() {
        metrics.started(k.metrics_ref(), models);
        metrics.finished(
            Some(k.metrics_ref()),
            Some(model.metrics_ref()),
            models,
            true,
            &figures,
        );
    }
    c.bench_function("metrics/render_1000_keys", |b| {
        b.iter(|| black_box(metrics.render().len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
