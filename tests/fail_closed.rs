//! Accounting that fails closed: usage never silently becomes $0. The provider is asked only for
//! encodings keygate reads; a response whose usage cannot be read, or a request the client left
//! before the response, is charged an estimate; budget reservations cover every choice a request
//! asks for; hostile token counts are clamped and never break the usage database.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{key_file, keygate_bin, post_json, TestGateway};
use keygate::server::RunningGateway;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// Models `m1` and `o3-mini` at `upstream`, priced $1000/Mtok in and out (a token costs $0.001),
/// with usage persisted and audited under the test's directory.
fn priced_policy(upstream: &str) -> String {
    format!(
        r#"state_dir: state
audit_log: state/audit.jsonl
providers:
  p1:
    format: openai
    api_key: sk-provider-secret-123
    endpoints:
      - {{url: "{upstream}"}}
models:
  m1:
    provider: p1
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
  o3-mini:
    provider: p1
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
workloads:
  app:
    models: [m1, o3-mini]
"#
    )
}

fn audit_lines(gw: &TestGateway) -> Vec<Value> {
    gw.handles().recorder.flush();
    let text = std::fs::read_to_string(gw.dir.path().join("state/audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

/// Waits until `n` requests are booked: the gateway's `logging` phase runs a moment after the
/// client has its response (or has left).
async fn booked(gw: &TestGateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = audit_lines(gw);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(content: &str) -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": content}]})
}

/// A provider that reports 1.8e19 tokens.
fn hostile_usage() -> Reply {
    Reply::Json {
        status: 200,
        body: json!({
            "id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 18_000_000_000_000_000_000u64, "completion_tokens": 1}
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_counts_are_clamped_and_the_database_still_opens() {
    let up = MockUpstream::start("up", hostile_usage()).await;
    let (secret, yaml) = key_file("app", "budget: {monthly_usd: 100, mode: track}\n");
    let mut gw = TestGateway::start(&priced_policy(&up.url()), &[("k".into(), yaml)]);
    let url = gw.url("/v1/chat/completions");
    for n in 1..=3 {
        assert_eq!(post_json(&url, &secret, &chat("hi")).await.status(), 200);
        // each in its own batch, so the database itself adds them up
        assert_eq!(booked(&gw, n).await.len(), n);
    }
    let line = &audit_lines(&gw)[0];
    assert_eq!(line["prompt_tokens"], 1_000_000_000u64, "clamped: {line}");

    // The next start reads the stored totals back.
    gw.running.take().unwrap().shutdown();
    gw.running =
        Some(RunningGateway::start(&gw.config_path, None).expect("the gateway starts again"));
    assert_eq!(post_json(&url, &secret, &chat("hi")).await.status(), 200);
    let out = Command::new(keygate_bin())
        .args(["usage", "--json", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["requests"], 3);
    assert_eq!(report["total"]["prompt_tokens"], 3_000_000_000u64);
    assert_eq!(report["total"]["completion_tokens"], 3);
}
