//! Usage extraction and request inspection: the per-byte and per-request work keygate adds to
//! every proxied call.
//!
//! - SSE usage parser throughput on a realistic chat stream (MB/s; target over 1 GB/s), beside
//!   a floor measured in the same run (memchr finding the line ends);
//! - the same through the usage-chunk stripper (streams whose client did not ask for usage);
//! - JSON usage extraction per 1 KiB chat completion;
//! - request-body `model`/`stream`/`max_tokens` extraction per request.
//!
//! Run: `cargo bench --bench usage`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keygate::proxy::body;
use keygate::usage::{BodyKind, ContentEncoding, UsageChunkStripper, UsageExtractor};
use serde_json::json;
use std::hint::black_box;

/// A chat stream as OpenAI sends it with include_usage: ~1 MiB of token deltas, then usage.
/// Written out by hand rather than with `json!` so that the members come in OpenAI's wire order
/// (serde_json would sort them), which is what the parser meets in production.
fn chat_stream() -> Vec<u8> {
    const HEAD: &str = r#"{"id":"chatcmpl-AbCdEf0123456789","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_0123456789","choices":"#;
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < 1 << 20 {
        out.extend_from_slice(
            format!(
                "data: {HEAD}[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .as_bytes(),
        );
        i += 1;
    }
    let usage = json!({"prompt_tokens": 812, "completion_tokens": i, "total_tokens": 812 + i});
    out.extend_from_slice(
        format!("data: {HEAD}[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n").as_bytes(),
    );
    out
}

fn completion_json() -> Vec<u8> {
    let content = "The quick brown fox jumps over the lazy dog. ".repeat(16);
    serde_json::to_vec(&json!({
        "id": "chatcmpl-AbCdEf0123456789", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                     "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 170, "total_tokens": 982,
                  "prompt_tokens_details": {"cached_tokens": 512, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": "fp_0123456789",
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let stream = chat_stream();
    // Upstream reads arrive in TCP-sized pieces that split events anywhere.
    let pieces: Vec<&[u8]> = stream.chunks(1460).collect();
    let mut check = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
    for p in &pieces {
        check.feed(p);
    }
    let found = check.finish().expect("the stream's usage is found");
    assert_eq!(
        found.prompt_tokens, 812,
        "the bench stream is parsed correctly"
    );

    let mut g = c.benchmark_group("usage");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    // A floor measured in the same run: only finding the line ends, which any SSE parser must.
    g.bench_function("baseline_memchr_lines_1MiB", |b| {
        b.iter(|| {
            let lines: usize = pieces
                .iter()
                .map(|p| memchr::memchr_iter(b'\n', black_box(p)).count())
                .sum();
            black_box(lines)
        })
    });
    g.bench_function("sse_extract_1MiB", |b| {
        b.iter(|| {
            let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
            for p in &pieces {
                x.feed(black_box(p));
            }
            black_box(x.finish())
        })
    });
    g.bench_function("sse_extract_and_strip_1MiB", |b| {
        b.iter(|| {
            let mut x = UsageExtractor::new(BodyKind::Sse, ContentEncoding::Identity);
            let mut s = UsageChunkStripper::new();
            let mut sent = 0;
            for p in &pieces {
                x.feed(p);
                sent += s.filter(black_box(p)).len();
            }
            sent += s.finish().len();
            black_box((x.finish(), sent))
        })
    });
    g.finish();

    let json_body = completion_json();
    let mut g = c.benchmark_group("usage");
    g.throughput(Throughput::Bytes(json_body.len() as u64));
    g.bench_function("json_extract_chat_completion", |b| {
        b.iter(|| {
            let mut x = UsageExtractor::new(BodyKind::Json, ContentEncoding::Identity);
            x.feed(black_box(&json_body));
            black_box(x.finish())
        })
    });
    g.finish();

    let request = serde_json::to_vec(&json!({
        "model": "gpt-4o-mini", "stream": true, "max_tokens": 512, "temperature": 0.2,
        "messages": [{"role": "system", "content": "You are a helpful assistant. ".repeat(8)},
                     {"role": "user", "content": "Summarise the following text. ".repeat(20)}],
    }))
    .unwrap();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(request.len() as u64));
    // What a full parse costs at the least: serde checking the JSON and keeping nothing.
    g.bench_function("baseline_serde_validate_only", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&request)).unwrap())
        })
    });
    g.bench_function("inspect_model_stream_max_tokens", |b| {
        b.iter(|| black_box(body::inspect(black_box(&request)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
