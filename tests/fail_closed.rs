//! Accounting that fails closed: usage never silently becomes $0. The provider is asked only for
//! encodings keygate reads; a response whose usage cannot be read, or a request the client left
//! before the response, is charged an estimate; budget reservations cover every choice a request
//! asks for; hostile token counts are clamped and never break the usage database.

mod common;

use common::upstream::{dead_port, read_request, MockUpstream, Reply};
use common::{client, error_of, key_file, keygate_bin, post_json, TestGateway};
use keygate::server::RunningGateway;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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

fn chat(content: &str) -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": content}]})
}

/// The prompt estimate keygate charges for `body` as reqwest sends it.
fn prompt_estimate(body: &Value) -> u64 {
    (serde_json::to_vec(body).unwrap().len() as u64).div_ceil(4)
}

/// The request heads an [`raw_upstream`] received, lower-cased.
type Heads = Arc<Mutex<Vec<String>>>;

/// An upstream that reads each request (head and Content-Length body) and answers with the
/// bytes `answer` makes from the request head; one request per connection.
async fn raw_upstream(answer: fn(&str) -> Vec<u8>) -> (String, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_request(&mut sock, &mut Vec::new()).await else {
                    return;
                };
                seen.lock().unwrap().push(head.clone());
                let _ = sock.write_all(&answer(&head)).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), heads)
}

/// A 200 response head with `content-type` and `content-encoding` (none when empty) and `body`.
fn response(content_type: &str, content_encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if !content_encoding.is_empty() {
        out.push_str(&format!("content-encoding: {content_encoding}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

const USAGE_BODY: &str = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;

/// What a provider does with `Accept-Encoding`: the first coding it supports that the request
/// accepts. This one speaks zstd, which keygate cannot read, and gzip.
fn negotiating_provider(head: &str) -> Vec<u8> {
    let accepted = head
        .lines()
        .find_map(|l| l.strip_prefix("accept-encoding:"))
        .unwrap_or("");
    if accepted.contains("zstd") {
        // Not real zstd: nothing keygate could read either way.
        response("application/json", "zstd", b"\x28\xb5\x2f\xfd opaque frame")
    } else if accepted.contains("gzip") {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(USAGE_BODY.as_bytes()).unwrap();
        response("application/json", "gzip", &gz.finish().unwrap())
    } else {
        response("application/json", "", USAGE_BODY.as_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_is_asked_only_for_encodings_keygate_reads() {
    let (upstream, heads) = raw_upstream(negotiating_provider).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&priced_policy(&upstream), &[("k".into(), yaml)]);
    let url = gw.url("/v1/chat/completions");
    let cases = [
        // (the client's Accept-Encoding, what the provider must be asked for)
        (Some("zstd"), "identity"),
        (Some("zstd, gzip;q=0.5, compress"), "gzip"),
        (Some("br;q=0, gzip"), "gzip"),
        (None, "identity"),
    ];
    for (i, (client_accepts, upstream_asked)) in cases.iter().enumerate() {
        let mut req = client().post(&url).bearer_auth(&secret).json(&chat("hi"));
        if let Some(value) = client_accepts {
            req = req.header("accept-encoding", *value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let head = heads.lock().unwrap()[i].clone();
        let sent = head
            .lines()
            .find_map(|l| l.strip_prefix("accept-encoding:"))
            .map(str::trim);
        assert_eq!(
            sent,
            Some(*upstream_asked),
            "client sent {client_accepts:?}"
        );
    }
    let lines = gw.booked(cases.len()).await;
    assert_eq!(lines.len(), cases.len());
    for line in &lines {
        assert_eq!(
            (&line["prompt_tokens"], &line["completion_tokens"]),
            (&json!(7), &json!(5)),
            "the provider's usage was read: {line}"
        );
        assert_eq!(line["estimated"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_whose_usage_cannot_be_read_is_charged_the_estimate() {
    fn unreadable(head: &str) -> Vec<u8> {
        if head.contains("/v1/embeddings") {
            // gzip magic, then garbage: a corrupt body
            response("application/json", "gzip", b"\x1f\x8b\x08\x00garbage")
        } else if head.contains("/v1/completions") {
            // well-formed, without a usage object
            response("application/json", "", br#"{"choices":[{"text":"hi"}]}"#)
        } else {
            response("application/json", "zstd", b"\x28\xb5\x2f\xfd opaque frame")
        }
    }
    let (upstream, _) = raw_upstream(unreadable).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&priced_policy(&upstream), &[("k".into(), yaml)]);
    let requests = [
        (
            "/v1/chat/completions",
            chat("an encoding keygate cannot decode"),
        ),
        (
            "/v1/embeddings",
            json!({"model": "m1", "input": "a corrupt gzip body"}),
        ),
        (
            "/v1/completions",
            json!({"model": "m1", "prompt": "a body without usage"}),
        ),
    ];
    for (path, body) in &requests {
        let resp = post_json(&gw.url(path), &secret, body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let _ = resp.bytes().await;
    }
    let lines = gw.booked(requests.len()).await;
    assert_eq!(lines.len(), requests.len());
    for (line, (path, body)) in lines.iter().zip(&requests) {
        assert_eq!(line["estimated"], true, "{path}: {line}");
        let prompt = line["prompt_tokens"].as_u64().unwrap();
        assert_eq!(prompt, prompt_estimate(body), "{path}: {line}");
        let completion = line["completion_tokens"].as_u64().unwrap();
        let cost = line["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - (prompt + completion) as f64 * 0.001).abs() < 1e-9,
            "{path}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_response_is_charged_the_prompt() {
    let slow = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay: Duration::from_secs(3),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "budget: {daily_usd: 100}\n");
    let gw = TestGateway::start(&priced_policy(&slow.url()), &[("k".into(), yaml)]);
    let body = chat("a long question the provider reads and bills");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up before the response");
    slow.wait_for_requests(1).await;

    let lines = gw.booked(1).await;
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["status"], 0, "{line}");
    assert_eq!(line["estimated"], true, "{line}");
    let prompt = prompt_estimate(&body);
    assert_eq!(line["prompt_tokens"], prompt, "{line}");
    assert_eq!(line["completion_tokens"], 0, "{line}");
    let cost = prompt as f64 * 0.001;
    assert!((line["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    let [daily, _] = gw
        .handles()
        .limits
        .spend("key", "k", keygate::limits::now_ms());
    assert!(
        (daily.spent.as_usd() - cost).abs() < 1e-9,
        "the budget is charged: {daily:?}"
    );

    // A request that never reached a provider costs nothing.
    let (secret2, yaml2) = key_file("app", "");
    drop(gw);
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let gw = TestGateway::start(&priced_policy(&dead), &[("k2".into(), yaml2)]);
    let resp = post_json(&gw.url("/v1/chat/completions"), &secret2, &body).await;
    assert_eq!(resp.status(), 502);
    let lines = gw.booked(1).await;
    assert_eq!(
        (&lines[0]["prompt_tokens"], &lines[0]["estimated"]),
        (&json!(0), &json!(false)),
        "{}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_reservations_cover_every_choice_and_reasoning() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    // $5 a day: 5,000 tokens at $0.001.
    let (secret, yaml) = key_file("app", "budget: {daily_usd: 5}\n");
    let gw = TestGateway::start(&priced_policy(&up.url()), &[("k".into(), yaml)]);
    let url = gw.url("/v1/chat/completions");
    let completions = gw.url("/v1/completions");
    let cases = [
        // (url, body, admitted)
        (
            &url,
            json!({"model": "m1", "max_tokens": 1000, "n": 2, "messages": []}),
            true,
        ),
        (
            &url,
            json!({"model": "m1", "max_tokens": 1000, "n": 8, "messages": []}),
            false,
        ),
        (
            &completions,
            json!({"model": "m1", "max_tokens": 1000, "best_of": 8, "prompt": "x"}),
            false,
        ),
        (
            &completions,
            json!({"model": "m1", "max_tokens": 1000, "n": 1, "best_of": 3, "prompt": "x"}),
            true,
        ),
        // No output bound: 4,096 tokens for a chat model, more for a reasoning model.
        (&url, json!({"model": "m1", "messages": []}), true),
        (&url, json!({"model": "o3-mini", "messages": []}), false),
        (
            &url,
            json!({"model": "o3-mini", "max_completion_tokens": 2000, "messages": []}),
            true,
        ),
    ];
    for (url, body, admitted) in cases {
        let resp = post_json(url, &secret, &body).await;
        let expected = if admitted { 200 } else { 429 };
        assert_eq!(resp.status(), expected, "{body}");
        if !admitted {
            assert_eq!(error_of(resp).await.2, "budget_exceeded", "{body}");
        }
    }
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
        assert_eq!(gw.booked(n).await.len(), n);
    }
    let line = &gw.audit_lines()[0];
    assert_eq!(line["prompt_tokens"], 1_000_000_000u64, "clamped: {line}");

    // The next start reads the stored totals back.
    gw.running.take().unwrap().shutdown();
    gw.running =
        Some(RunningGateway::start(&gw.config_path, None).expect("the gateway starts again"));
    assert_eq!(post_json(&url, &secret, &chat("hi")).await.status(), 200);
    assert_eq!(gw.booked(4).await.len(), 4);
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
    assert_eq!(report["total"]["requests"], 4);
    assert_eq!(report["total"]["prompt_tokens"], 4_000_000_000u64);
    assert_eq!(report["total"]["completion_tokens"], 4);
}
