//! Accounting end to end: usage on streams the client did not ask usage for, budgets under
//! concurrency, cut streams charged as estimated, the audit log, the usage reports, and spend that
//! survives a `kill -9`.

mod common;

use common::upstream::{free_port, read_request, MockUpstream, Reply};
use common::{client, error_of, key_file, keygate_bin, post_json, TestGateway};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const ADMIN_TOKEN: &str = "ops:admin-secret-token-0123456789";

/// One model `m1` at `upstream` priced $1000/Mtok in and out (a token costs $0.001), with usage
/// persisted and audited under the test's directory.
fn priced_policy(upstream: &str, admin_port: u16, workload_extra: &str) -> String {
    format!(
        r#"admin_listen: 127.0.0.1:{admin_port}
state_dir: state
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
workloads:
  app:
    models: [m1]
{workload_extra}"#
    )
}

/// GET on the admin API with the test's admin token.
async fn admin_get(url: String) -> reqwest::Response {
    client()
        .get(url)
        .bearer_auth("admin-secret-token-0123456789")
        .send()
        .await
        .unwrap()
}

/// A chunk as OpenAI streams it; `usage` is the member a provider adds when asked for usage.
fn chunk(content: Option<&str>, finish: Option<&str>, usage: Option<Value>) -> String {
    let mut v = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": content.map_or(json!({}), |c| json!({"content": c})),
                     "finish_reason": finish}],
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    format!("data: {v}\n\n")
}

/// The stream a provider sends with `include_usage`, and the one it sends without.
fn streams() -> (Vec<String>, String) {
    let with: Vec<String> = vec![
        chunk(Some("Hel"), None, Some(Value::Null)),
        chunk(Some("lo é"), None, Some(Value::Null)),
        chunk(None, Some("stop"), Some(Value::Null)),
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": "m1", "choices": [],
                   "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                             "prompt_tokens_details": {"cached_tokens": 4}}})
        ),
        "data: [DONE]\n\n".to_owned(),
    ];
    let without = [
        chunk(Some("Hel"), None, None),
        chunk(Some("lo é"), None, None),
        chunk(None, Some("stop"), None),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    (with, without)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_usage_upstream_and_the_client_sees_what_it_asked_for() {
    let (with_usage, without_usage) = streams();
    let up = MockUpstream::start(
        "up",
        Reply::Sse {
            events: with_usage.clone(),
            interval: Duration::from_millis(5),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &priced_policy(&up.url(), free_port(), ""),
        &[("k".into(), yaml)],
    );
    let url = gw.url("/v1/chat/completions");

    // The client did not ask for usage: keygate asks, counts, and hides it.
    let resp = post_json(
        &url,
        &secret,
        &json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), without_usage);
    let sent = up.requests()[0].clone();
    assert_eq!(
        sent.json()["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(sent.header("accept-encoding"), Some("identity"));

    // It asked: the provider's bytes reach it unchanged.
    let resp = post_json(
        &url,
        &secret,
        &json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.text().await.unwrap(), with_usage.concat());
    assert_eq!(
        up.requests()[1].json()["stream_options"],
        json!({"include_usage": true})
    );

    let lines = gw.booked(2).await;
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["prompt_tokens"], 11);
        assert_eq!(line["completion_tokens"], 3);
        assert_eq!(line["cached_tokens"], 4);
        assert_eq!(line["estimated"], false);
        assert_eq!(line["stream"], true);
        // 11 prompt (4 cached, no separate cached price) + 3 completion tokens at $0.001
        assert!((line["cost_usd"].as_f64().unwrap() - 0.014).abs() < 1e-12);
        assert!(line["ttfb_ms"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_holds_under_fifty_concurrent_requests() {
    let up = MockUpstream::start(
        "up",
        Reply::Delayed {
            delay: Duration::from_millis(50),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let admin_port = free_port();
    // Each request really costs (7 + 5) × $0.001 = $0.012; the cap fits ten of them.
    let (secret, yaml) = key_file(
        "app",
        "budget: {daily_usd: 0.12, monthly_usd: 100, alert_at: [0.5]}\n",
    );
    let gw = TestGateway::prepare(
        &priced_policy(&up.url(), admin_port, ""),
        &[("capped".into(), yaml)],
    )
    .boot_with_admin(Some(ADMIN_TOKEN));
    let url = gw.url("/v1/chat/completions");
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, secret, body) = (url.clone(), secret.clone(), body.clone());
            tokio::spawn(async move { post_json(&url, &secret, &body).await })
        })
        .collect();
    let mut admitted = 0u64;
    let mut refused = 0u64;
    for t in tasks {
        let resp = t.await.unwrap();
        if resp.status() == 200 {
            admitted += 1;
            continue;
        }
        assert_eq!(
            resp.headers()
                .get("x-should-retry")
                .and_then(|v| v.to_str().ok()),
            Some("false")
        );
        let (status, kind, code) = error_of(resp).await;
        assert_eq!(
            (status, kind.as_str(), code.as_str()),
            (429, "insufficient_quota", "budget_exceeded")
        );
        refused += 1;
    }
    assert_eq!(admitted + refused, 50);
    assert!(
        (1..=10).contains(&admitted),
        "admitted {admitted} requests under a cap that fits 10"
    );
    assert_eq!(
        up.requests().len() as u64,
        admitted,
        "refusals never reach the provider"
    );

    // Persisted spend is exactly what was admitted, and never over the cap.
    assert_eq!(gw.booked(50).await.len(), 50);
    let admin = format!("http://127.0.0.1:{admin_port}/admin");
    let key_usage: Value = admin_get(format!("{admin}/keys/capped/usage?by=day"))
        .await
        .json()
        .await
        .unwrap();
    let daily = &key_usage["budget"]["periods"]["daily"];
    let spent = daily["spent_usd"].as_f64().unwrap();
    assert!(
        (spent - admitted as f64 * 0.012).abs() < 1e-9,
        "{key_usage}"
    );
    assert!(spent <= 0.12 + 1e-9);
    assert_eq!(daily["limit_usd"], 0.12);
    assert_eq!(daily["reserved_usd"], 0.0);
    assert!((daily["remaining_usd"].as_f64().unwrap() - (0.12 - spent)).abs() < 1e-9);
    assert_eq!(key_usage["usage"]["total"]["requests"], admitted);
    assert_eq!(key_usage["usage"]["total"]["cache_write_tokens"], 0);
    assert!(
        (key_usage["usage"]["total"]["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "the database agrees with the live spend: {key_usage}"
    );
    assert_eq!(key_usage["usage"]["rows"].as_array().unwrap().len(), 1);
    assert_eq!(key_usage["workload"], "app");

    let workload_usage: Value = admin_get(format!("{admin}/workloads/app/usage"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(workload_usage["usage"]["total"]["requests"], admitted);
    assert!(workload_usage["budget"]["mode"].is_null());
    let bad = admin_get(format!("{admin}/workloads/app/usage?since=yesterday")).await;
    assert_eq!(bad.status(), 400);
    let missing = admin_get(format!("{admin}/keys/nope/usage")).await;
    assert_eq!(missing.status(), 404);

    // The CLI reads the same database.
    let out = Command::new(keygate_bin())
        .args(["usage", "--by", "key", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("capped"))
        .unwrap_or_else(|| panic!("no row for the key:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], admitted.to_string());
    // CACHED and CACHE_WRITE: an OpenAI model writes no prompt cache.
    assert_eq!(cols[4..6], ["0", "0"]);
    assert_eq!(cols[6], format!("{:.6}", admitted as f64 * 0.012));

    // Refusals are audited with their reason; admitted requests with their cost.
    let lines = gw.audit_lines();
    assert_eq!(lines.len(), 50);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["refusal"] == "budget_exceeded")
            .count() as u64,
        refused
    );
}

/// An upstream that answers with SSE headers and two chunks, then drops the connection.
async fn cutting_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut sock, &mut Vec::new()).await.is_none() {
                    return;
                }
                let mut out = Vec::new();
                out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for text in ["abcdefgh", "ijklmnop"] {
                    let event = chunk(Some(text), None, Some(Value::Null));
                    out.extend_from_slice(format!("{:X}\r\n{event}\r\n", event.len()).as_bytes());
                }
                let _ = sock.write_all(&out).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // dropped here: the stream is cut without its usage or a terminating chunk
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_charged_what_was_seen_and_marked_estimated() {
    let upstream = cutting_upstream().await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &priced_policy(&upstream, free_port(), ""),
        &[("k".into(), yaml)],
    );
    let body =
        json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.is_err(), "the client sees the stream cut");

    let lines = gw.booked(1).await;
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["estimated"], true);
    // 16 streamed characters at about four a token
    assert_eq!(line["completion_tokens"], 4);
    let prompt = line["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0, "the prompt is estimated from the body size");
    assert!((line["cost_usd"].as_f64().unwrap() - (prompt + 4) as f64 * 0.001).abs() < 1e-12);
    assert_eq!(line["status"], 200);
    assert!(
        !line["error"].is_null(),
        "a cut stream is not a success: {line}"
    );

    let out = Command::new(keygate_bin())
        .args(["usage", "--json", "--by", "model", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["estimated_requests"], 1);
    assert_eq!(report["total"]["completion_tokens"], 4);
}

/// A gateway started as its own process, so it can be killed with SIGKILL.
struct Process {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Process {
    fn start(config: &Path, port: u16) -> Process {
        let mut child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("KEYGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
            let mut rest = String::new();
            let _ = pipe.read_to_string(&mut rest);
        });
        common::wait_until_listening(port);
        Process { child, stderr }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_kill_9_and_the_budget_still_holds() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (free_secret, free_yaml) = key_file("app", "");
    let (capped_secret, capped_yaml) = key_file("app", "budget: {daily_usd: 0.05}\n");
    // One thread: the single-threaded runtime that only a gateway with its own process runs.
    let gw = TestGateway::prepare(
        &format!(
            "server: {{threads: 1}}\n{}",
            priced_policy(&up.url(), free_port(), "")
        ),
        &[("free".into(), free_yaml), ("capped".into(), capped_yaml)],
    );
    let url = gw.url("/v1/chat/completions");
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let mut gateway = Process::start(&gw.config_path, gw.port);

    // The capped key spends until refused.
    let mut capped_ok = 0;
    loop {
        let resp = post_json(&url, &capped_secret, &body).await;
        if resp.status() == 429 {
            assert_eq!(error_of(resp).await.2, "budget_exceeded");
            break;
        }
        assert_eq!(resp.status(), 200);
        capped_ok += 1;
        assert!(capped_ok < 100, "the budget never refused");
    }
    // Then two seconds of traffic on another key, and SIGKILL right after the last response.
    let mut done_at = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let resp = post_json(&url, &free_secret, &body).await;
        assert_eq!(resp.status(), 200);
        done_at.push(Instant::now());
    }
    gateway.kill9();
    let killed_at = Instant::now();
    let first_log = gateway.stderr.lock().unwrap().clone();
    let truth = done_at.len() as u64;
    let last_second = done_at
        .iter()
        .filter(|t| killed_at.duration_since(**t) <= Duration::from_secs(1))
        .count() as u64;

    let usage = |key: &str| {
        let out = Command::new(keygate_bin())
            .args(["usage", "--json", "--key", key, "--config"])
            .arg(&gw.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["total"].clone()
    };
    let persisted = usage("free")["requests"].as_u64().unwrap();
    assert!(
        persisted <= truth && persisted + last_second >= truth,
        "persisted {persisted} of {truth} requests; at most the last second ({last_second}) may be lost"
    );
    assert_eq!(usage("capped")["requests"], capped_ok);

    // After a restart the budget starts from the persisted spend, not zero.
    let mut gateway = Process::start(&gw.config_path, gw.port);
    let resp = post_json(&url, &capped_secret, &body).await;
    if resp.status() == 200 {
        gateway.kill9();
        panic!(
            "budget not enforced after restart: {}",
            gateway.stderr.lock().unwrap()
        );
    }
    assert_eq!(error_of(resp).await.2, "budget_exceeded");
    assert_eq!(
        post_json(&url, &free_secret, &body).await.status(),
        200,
        "other keys are unaffected"
    );
    gateway.kill9();

    // No secret in the audit log or the logs, at debug level.
    let audit = std::fs::read_to_string(gw.dir.path().join("state/audit.jsonl")).unwrap();
    let stderr = first_log + &gateway.stderr.lock().unwrap();
    assert!(stderr.contains("keygate starting"), "the log was captured");
    for secret in [&free_secret, &capped_secret, "sk-provider-secret-123"] {
        assert!(!audit.contains(secret), "a secret is in the audit log");
        assert!(!stderr.contains(secret), "a secret is in the gateway's log");
    }
    // Every audit line has every field.
    let fields = [
        "ts",
        "request_id",
        "key_id",
        "workload",
        "owner",
        "client_ip",
        "method",
        "path",
        "model",
        "provider",
        "endpoint",
        "stream",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "cost_usd",
        "estimated",
        "latency_ms",
        "ttfb_ms",
        "refusal",
        "error",
        "guardrails",
    ];
    let mut lines = 0;
    for line in audit.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let obj = v.as_object().unwrap();
        for f in fields {
            assert!(obj.contains_key(f), "audit line lacks `{f}`: {line}");
        }
        assert_eq!(obj.len(), fields.len(), "unexpected fields: {line}");
        lines += 1;
    }
    assert!(lines as u64 > persisted + capped_ok);
}
