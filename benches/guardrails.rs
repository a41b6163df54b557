//! Guardrail scanning throughput: the shipped default set (pii-basic, no-secrets, injection at
//! medium) plus a keyword list and a regex, over realistic prompts of 1 KB, 100 KB and 1 MB —
//! mostly clean prose, code and numbers, with a hit every few kilobytes.
//!
//! - `target_set`: keywords, regex, PII and secrets together (the issue's target: 200 MB/s);
//! - `default_set`: the same plus prompt injection;
//! - each detector alone, to see where the time goes;
//! - `stream_default_set`: the default set fed to a `StreamScanner` in 1,460-byte deltas;
//! - `guardrails_chat`: the shipped default set, and each of its detectors, over the four messages of the load benches'
//!   chat request (`benches/load/chat.lua`), scanned one message at a time as a request is:
//!   short texts without a hit, where per-scan costs weigh more than per-byte ones;
//! - `baseline_memchr_newlines`: a floor measured in the same run (memchr counting line ends),
//!   against which the others are read as ratios.
//!
//! Run: `cargo bench --bench guardrails`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keygate::guardrails::{
    Action, ApplyTo, Detector, Findings, GuardrailSpec, PiiKind, Scanner, SecretKind, Side,
    StreamScanner, Threshold,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const PROSE: [&str; 16] = [
    "The quarterly report shows revenue up 12% to $4.2 million, with 1,250 new customers in 14 regions. ",
    "Please summarise the attached meeting notes from 2024-03-15 and list the action items by owner. ",
    "We deployed version 2.14.3 of the billing service on Tuesday; latency dropped from 180 ms to 95 ms. ",
    "Customer feedback mentions slow page loads on mobile, especially in the checkout flow after step 3. ",
    "fn main() { let total: u64 = items.iter().map(|i| i.price * i.qty).sum(); println!(\"{total}\"); }\n",
    "See https://docs.example.com/guides/setup?section=install#step-2 for the installation steps. ",
    "The migration moved 3,400,000 rows in 42 minutes; the index rebuild took another 7 minutes. ",
    "Our support team answered 98.5% of tickets within 24 hours last month, up from 96.1% in May. ",
    "Translate the following paragraph into French, keeping the product names in English. ",
    "Kubernetes pods restarted 17 times between 02:00 and 04:30 UTC because of memory pressure. ",
    "SELECT id, name, created_at FROM orders WHERE status = 'open' AND total > 100 ORDER BY id;\n",
    "The committee will vote on the proposal at the next session, scheduled for 10 June at 14:00. ",
    "Error: connection refused (os error 111) while connecting to the cache at port 6379. ",
    "Write a short, friendly email declining the invitation and proposing a call next week instead. ",
    "Inventory counts: 340 units in warehouse A, 1,120 in B, and 75 awaiting inspection in C. ",
    "The algorithm runs in O(n log n) time and uses O(n) extra space for the merge buffer. ",
];

const HITS: [&str; 8] = [
    "Contact me at jordan.miller@example.com if anything is unclear. ",
    "My phone is +1 415 555 2671, call after five. ",
    "Charge the card 4111 1111 1111 1111 for the renewal. ",
    "Refund to DE89 3704 0044 0532 0130 00 please. ",
    "The ticket is TCK-204518 in the tracker. ",
    "Do not share anything about project-falcon outside the team. ",
    "Our deploy key is AKIAIOSFODNN7EXAMPLE, rotate it later. ",
    "Applicant SSN 123-45-6789 on file. ",
];

/// `len` bytes of prose with one hit every ~4 KB (and one in any text of 1 KB).
fn prompt(len: usize) -> String {
    let mut out = String::with_capacity(len + 256);
    let mut seed: u32 = 0x2545_f491;
    let mut next_hit = 700;
    let mut hit = 0;
    while out.len() < len {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        if out.len() >= next_hit {
            out.push_str(HITS[hit % HITS.len()]);
            hit += 1;
            next_hit += 4096;
        } else {
            out.push_str(PROSE[(seed >> 16) as usize % PROSE.len()]);
        }
    }
    out
}

fn spec(name: &str, detector: Detector, action: Action) -> GuardrailSpec {
    GuardrailSpec {
        name: Arc::from(name),
        detector,
        action,
        apply_to: ApplyTo::BOTH,
    }
}

fn pii() -> GuardrailSpec {
    let kinds = vec![
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
    ];
    spec("pii-basic", Detector::Pii(kinds), Action::Redact)
}

fn secrets() -> GuardrailSpec {
    spec(
        "no-secrets",
        Detector::Secrets(SecretKind::ALL.to_vec()),
        Action::Block,
    )
}

fn injection() -> GuardrailSpec {
    let threshold = Threshold::Medium;
    spec(
        "injection",
        Detector::PromptInjection { threshold },
        Action::Block,
    )
}

fn keywords() -> GuardrailSpec {
    let words = vec!["project-falcon".into(), "internal only".into()];
    spec(
        "banned-words",
        Detector::Keywords {
            words,
            whole_word: true,
        },
        Action::Block,
    )
}

fn regex() -> GuardrailSpec {
    spec(
        "ticket-ids",
        Detector::Regex(vec![r"TCK-\d{6}".into()]),
        Action::Redact,
    )
}

/// The message texts of `benches/load/chat.lua`'s request.
const CHAT: [&str; 4] = [
    "You are a concise, helpful assistant for an online hardware store. Answer in plain English, keep answers under 120 words, cite the product SKU when you mention a product, never invent prices, and if the user asks about orders, ask for the order number first. If a question is outside the store's domain, politely decline and suggest contacting support.",
    "Hi! I'm renovating a small bathroom (about 2 by 2.5 metres) and I need a quiet extractor fan. The ceiling is plasterboard and there is roughly 30 cm of space above it.",
    "For a bathroom that size, a 100 mm inline or ceiling fan moving around 80-90 m3/h is enough. Low-noise models (under 25 dB) with a humidity sensor work well; SKU FAN-100-QH is a common choice.",
    "Thanks. Does FAN-100-QH need a separate isolator switch, can I run it from the lighting circuit, and what duct length can it handle before the airflow drops noticeably? Please answer briefly.",
];

fn bench(c: &mut Criterion) {
    let sets: Vec<(&str, Scanner)> = vec![
        ("keywords", Scanner::compile(&[keywords()]).unwrap()),
        ("regex", Scanner::compile(&[regex()]).unwrap()),
        ("pii", Scanner::compile(&[pii()]).unwrap()),
        ("secrets", Scanner::compile(&[secrets()]).unwrap()),
        ("injection", Scanner::compile(&[injection()]).unwrap()),
        (
            "target_set",
            Scanner::compile(&[pii(), secrets(), keywords(), regex()]).unwrap(),
        ),
        (
            "default_set",
            Scanner::compile(&[pii(), secrets(), injection(), keywords(), regex()]).unwrap(),
        ),
    ];

    let mut findings = Findings::new();
    let mut g = c.benchmark_group("guardrails_chat");
    g.throughput(Throughput::Bytes(CHAT.iter().map(|t| t.len() as u64).sum()));
    for (name, set) in [
        ("shipped_set", vec![pii(), secrets(), injection()]),
        ("pii", vec![pii()]),
        ("secrets", vec![secrets()]),
        ("injection", vec![injection()]),
    ] {
        let scanner = Scanner::compile(&set).unwrap();
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                for text in CHAT {
                    findings.clear();
                    scanner.scan(black_box(text), Side::Request, &mut findings);
                    assert!(findings.is_empty());
                }
            })
        });
    }
    g.finish();

    for (label, len) in [("1KB", 1 << 10), ("100KB", 100 << 10), ("1MB", 1 << 20)] {
        let text = prompt(len);
        sets[6].1.scan(&text, Side::Request, &mut findings);
        assert!(
            findings.len() > len / 4096 / 2,
            "the bench prompt carries its hits"
        );

        let mut g = c.benchmark_group(format!("guardrails_{label}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("baseline_memchr_newlines", |b| {
            b.iter(|| black_box(memchr::memchr_iter(b'\n', black_box(text.as_bytes())).count()))
        });
        for (name, scanner) in &sets {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    findings.clear();
                    scanner.scan(black_box(&text), Side::Request, &mut findings);
                    black_box(findings.len())
                })
            });
        }
        if len > 1 << 10 {
            g.bench_function("stream_default_set", |b| {
                b.iter(|| {
                    findings.clear();
                    let mut stream = StreamScanner::new(Side::Response);
                    for piece in text.as_bytes().chunks(1460) {
                        // The prompt is ASCII, so byte chunks are whole characters.
                        let piece = std::str::from_utf8(piece).unwrap();
                        stream.push(&sets[6].1, piece, &mut findings);
                    }
                    stream.finish(&sets[6].1, &mut findings);
                    black_box(findings.len())
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
