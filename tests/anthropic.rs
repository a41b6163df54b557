//! Anthropic's Messages API served natively (`format: anthropic`): the official `anthropic` SDK
//! and raw HTTP against keygate in front of a recording Anthropic-format upstream. What the
//! upstream receives (its credential, never the virtual key; `anthropic-version`,
//! `anthropic-beta`), what keygate books (cache tokens included, cumulative deltas not added up,
//! cut streams estimated), what `keygate usage` reads back, and what clients see of keygate's
//! own errors (Anthropic's shape).

mod common;

use common::upstream::{MockUpstream, RecordedRequest, Reply};
use common::{client, key_file, keygate_bin, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

const MODEL: &str = "claude-test";
const UPSTREAM_MODEL: &str = "claude-sonnet-4-5";
const PROVIDER_KEY: &str = "sk-ant-real";

/// Claude Sonnet's prices per million tokens: input, output, cache read, cache write.
const PRICE: (f64, f64, f64, f64) = (3.0, 15.0, 0.3, 3.75);

fn policy(upstream: &str) -> String {
    let (input, output, read, write) = PRICE;
    format!(
        r#"state_dir: state
audit_log: state/audit.jsonl
providers:
  claude:
    format: anthropic
    api_key: {PROVIDER_KEY}
    endpoints:
      - {{url: "{upstream}"}}
  openai:
    format: openai
    api_key: sk-openai
    endpoints:
      - {{url: "{upstream}"}}
models:
  {MODEL}:
    provider: claude
    upstream_model: {UPSTREAM_MODEL}
    price: {{input_per_mtok: {input}, output_per_mtok: {output}, cached_input_per_mtok: {read}, cache_write_per_mtok: {write}}}
  gpt:
    provider: openai
workloads:
  app:
    models: [{MODEL}, gpt]
  limited:
    models: [{MODEL}]
    rate_limits: [{{requests: 1, per: 2s}}]
  broke:
    models: [{MODEL}]
    budget: {{daily_usd: 0.000001}}
  chat_only:
    models: [{MODEL}]
    operations: [chat]
"#
    )
}

/// A Messages API response: "Hello from Claude", 7 plain input tokens, 30 written to the cache
/// and 200 read from it, 12 output tokens.
fn message() -> Value {
    json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL,
        "content": [{"type": "text", "text": "Hello from Claude"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 7, "cache_creation_input_tokens": 30,
                  "cache_read_input_tokens": 200, "output_tokens": 12}
    })
}

/// Anthropic's event sequence for "Hello there": 5 input tokens, then two `message_delta`s with
/// cumulative output counts 9 and 15 (15 is the total; 24 would be double counting).
fn stream_events() -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_02", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": " there"}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null},
                   "usage": {"output_tokens": 9}}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": 15}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
}

/// What an Anthropic upstream answers: a token count, a stream, or a message.
fn anthropic_upstream(path: &str, body: &Value) -> Reply {
    if path.starts_with("/v1/messages/count_tokens") {
        Reply::Json {
            status: 200,
            body: json!({"input_tokens": 42}),
        }
    } else if body["stream"] == true {
        Reply::Sse {
            events: stream_events(),
            interval: Duration::from_millis(5),
        }
    } else {
        Reply::Json {
            status: 200,
            body: message(),
        }
    }
}

/// The cost of `tokens` at `per_mtok` USD per million.
fn usd(tokens: u64, per_mtok: f64) -> f64 {
    tokens as f64 * per_mtok / 1e6
}

struct Setup {
    upstream: MockUpstream,
    gw: TestGateway,
    /// Secrets by workload.
    keys: Vec<(&'static str, String)>,
}

impl Setup {
    async fn start(reply: Reply) -> Setup {
        let upstream = MockUpstream::start("anthropic", reply).await;
        let mut files = Vec::new();
        let mut keys = Vec::new();
        for workload in ["app", "limited", "broke", "chat_only"] {
            let (secret, yaml) = key_file(workload, "");
            files.push((format!("k-{workload}"), yaml));
            keys.push((workload, secret));
        }
        let gw = TestGateway::start(&policy(&upstream.url()), &files);
        Setup { upstream, gw, keys }
    }

    fn key(&self, workload: &str) -> &str {
        &self.keys.iter().find(|(w, _)| *w == workload).unwrap().1
    }

    /// POSTs `body` to `path` as the Anthropic SDKs do: the key in `x-api-key`.
    async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        client()
            .post(self.gw.url(path))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Every recorded request carried the provider's key and no virtual key, in any header.
    fn assert_no_virtual_key_upstream(&self) {
        for r in self.upstream.requests() {
            assert_eq!(r.header("x-api-key"), Some(PROVIDER_KEY), "{}", r.path);
            assert_eq!(r.header("authorization"), None, "{}", r.path);
            for (_, secret) in &self.keys {
                assert!(
                    r.headers.values().all(|v| !v
                        .as_bytes()
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes())),
                    "a virtual key reached the upstream on {}",
                    r.path
                );
            }
        }
    }
}

/// The audit lines of `key`'s workload.
fn lines_of<'a>(lines: &'a [Value], workload: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["workload"] == workload).collect()
}

fn assert_close(got: &Value, want: f64) {
    let got = got.as_f64().unwrap_or(f64::NAN);
    assert!((got - want).abs() < 1e-12, "cost {got} != {want}");
}

fn requests_to(upstream: &MockUpstream, path: &str) -> Vec<RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_through_keygate() {
    let s = Setup::start(Reply::Pick(anthropic_upstream)).await;
    let keys: serde_json::Map<String, Value> = s
        .keys
        .iter()
        .map(|(w, k)| (w.to_string(), Value::from(k.as_str())))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/anthropic_sdk.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .env("KEYGATE_URL", format!("http://127.0.0.1:{}", s.gw.port))
        .env("KEYGATE_KEYS", Value::Object(keys).to_string())
        .env("KEYGATE_MODEL", MODEL)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDK script finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sdk: 11 passed, 0 failed"), "{stdout}");

    // Upstream: the provider's credential and the SDK's version, the upstream model name.
    s.assert_no_virtual_key_upstream();
    let sdk_version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("anthropic-version: "))
        .expect("the script prints the SDK's anthropic-version");
    let messages = requests_to(&s.upstream, "/v1/messages");
    assert!(!messages.is_empty());
    for r in &messages {
        assert_eq!(r.header("anthropic-version"), Some(sdk_version));
        assert_eq!(r.json()["model"], UPSTREAM_MODEL);
        assert!(r.json()["max_tokens"].is_u64());
    }
    let beta: Vec<_> = s
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.header("anthropic-beta").is_some())
        .collect();
    assert_eq!(beta.len(), 1);
    assert!(beta[0].path.starts_with("/v1/messages"), "{}", beta[0].path);
    assert_eq!(
        beta[0].header("anthropic-beta"),
        Some("keygate-test-2025-01-01")
    );
    let counts = s.upstream.requests();
    let counts: Vec<_> = counts
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages/count_tokens"))
        .collect();
    assert_eq!(
        counts.len(),
        1,
        "{:?}",
        s.upstream
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );

    // Booked: create (cache tokens included and priced apart), the streams (the last
    // cumulative delta, not the sum of both), count_tokens (nothing).
    let (input, output, read, write) = PRICE;
    // 13 requests, or 14 when the SDK's retry was refused once more before it got through; the
    // script has all its answers, and the last lines follow within moments.
    s.gw.booked(13).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = s.gw.audit_lines();
    let app = lines_of(&lines, "app");
    let create = app
        .iter()
        .find(|l| l["path"] == "/v1/messages" && l["stream"] == false && l["status"] == 200)
        .expect("the create is booked");
    assert_eq!(
        (
            &create["prompt_tokens"],
            &create["completion_tokens"],
            &create["cached_tokens"],
            &create["cache_write_tokens"],
            &create["estimated"],
        ),
        (
            &json!(237),
            &json!(12),
            &json!(200),
            &json!(30),
            &json!(false)
        )
    );
    assert_close(
        &create["cost_usd"],
        usd(7, input) + usd(200, read) + usd(30, write) + usd(12, output),
    );

    // Persisted: per workload, each created message's 200 cache reads and 30 cache writes (app:
    // the create and the beta create; limited: its two admitted creates), streams none.
    let usage = |args: &[&str]| {
        let out = std::process::Command::new(keygate_bin())
            .arg("usage")
            .args(args)
            .arg("--config")
            .arg(&s.gw.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let app_usage: Value = serde_json::from_str(&usage(&["--json", "--workload", "app"])).unwrap();
    let total = &app_usage["total"];
    assert_eq!(
        (
            &total["prompt_tokens"],
            &total["cached_tokens"],
            &total["cache_write_tokens"]
        ),
        (&json!(2 * 237 + 2 * 5), &json!(400), &json!(60)),
        "{app_usage}"
    );
    let table = usage(&["--by", "workload"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let cell = |group: &str, column: &str| {
        let at = header.iter().position(|h| *h == column).unwrap();
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols[0] == group)
            .map(|cols| cols[at].to_owned())
    };
    for (group, written) in [("app", "60"), ("limited", "60"), ("total", "120")] {
        assert_eq!(
            cell(group, "CACHE_WRITE").as_deref(),
            Some(written),
            "{table}"
        );
    }
    assert_eq!(cell("total", "CACHED").as_deref(), Some("800"), "{table}");
    let streams: Vec<_> = app.iter().filter(|l| l["stream"] == true).collect();
    assert_eq!(streams.len(), 2, "messages.stream and stream=True");
    for l in streams {
        assert_eq!(
            (
                &l["prompt_tokens"],
                &l["completion_tokens"],
                &l["estimated"]
            ),
            (&json!(5), &json!(15), &json!(false)),
            "{l}"
        );
        assert_close(&l["cost_usd"], usd(5, input) + usd(15, output));
    }
    let count = app
        .iter()
        .find(|l| l["path"] == "/v1/messages/count_tokens")
        .expect("count_tokens is booked");
    assert_eq!(
        (
            &count["status"],
            &count["prompt_tokens"],
            &count["cost_usd"]
        ),
        (&json!(200), &json!(0), &json!(0.0))
    );

    // Refusals, by reason: the SDK's exception classes came from these.
    let reason = |workload: &str| -> Vec<Value> {
        lines_of(&lines, workload)
            .iter()
            .map(|l| l["refusal"].clone())
            .collect()
    };
    assert_eq!(reason("chat_only"), [json!("operation_not_allowed")]);
    assert_eq!(
        reason("broke"),
        [json!("budget_exceeded")],
        "no retry of a budget"
    );
    // The limited key: admitted, refused, then the SDK's retry admitted after retry-after.
    let limited = reason("limited");
    assert_eq!(limited[..2], [Value::Null, json!("rate_limit_exceeded")]);
    assert_eq!(limited.last(), Some(&Value::Null), "{limited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygate_errors_on_anthropic_routes_have_anthropic_shape() {
    let s = Setup::start(Reply::Pick(anthropic_upstream)).await;
    let body = json!({"model": MODEL, "max_tokens": 10, "messages": []});
    // No key at all, and a path keygate does not serve under /v1/messages.
    let cases = [
        (
            client()
                .post(s.gw.url("/v1/messages"))
                .json(&body)
                .send()
                .await
                .unwrap(),
            401,
            "authentication_error",
        ),
        (
            s.post("/v1/messages/batches", s.key("app"), &body).await,
            404,
            "not_found_error",
        ),
        (
            s.post(
                "/v1/messages",
                s.key("app"),
                &json!({"model": "gpt", "max_tokens": 1, "messages": []}),
            )
            .await,
            400,
            "invalid_request_error",
        ),
    ];
    for (resp, status, kind) in cases {
        assert_eq!(resp.status().as_u16(), status);
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(v["request_id"], request_id.as_str());
    }
    // The same refusal on an OpenAI route keeps OpenAI's shape.
    let resp = client()
        .post(s.gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "missing_api_key", "{v}");
    assert!(v.get("type").is_none(), "{v}");
    // The key may be sent as a Bearer token too, as by an OpenAI-style client.
    let resp = client()
        .post(s.gw.url("/v1/messages"))
        .bearer_auth(s.key("app"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The model-list shapes: Anthropic's for its SDK's headers, OpenAI's otherwise.
    let list: Value = client()
        .get(s.gw.url("/v1/models"))
        .header("x-api-key", s.key("app"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!({"data": [{"type": "model", "id": MODEL, "display_name": MODEL,
                         "created_at": "1970-01-01T00:00:00Z"}],
               "has_more": false, "first_id": MODEL, "last_id": MODEL})
    );
    let list: Value = client()
        .get(s.gw.url("/v1/models"))
        .bearer_auth(s.key("app"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, "gpt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_credential_refusal_and_rate_limit_headers() {
    let s = Setup::start(Reply::WithHeaders {
        headers: vec![
            ("anthropic-ratelimit-requests-remaining".into(), "49".into()),
            (
                "anthropic-ratelimit-tokens-reset".into(),
                "2026-01-01T00:00:00Z".into(),
            ),
            ("anthropic-organization-id".into(), "org-secret".into()),
            ("request-id".into(), "req_upstream".into()),
        ],
        reply: Box::new(Reply::Json {
            status: 200,
            body: message(),
        }),
    })
    .await;
    let body =
        json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let resp = s.post("/v1/messages", s.key("app"), &body).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert!(
        headers
            .keys()
            .all(|h| !h.as_str().starts_with("anthropic-")),
        "the provider's account headers are stripped: {headers:?}"
    );
    assert_eq!(headers["request-id"], "req_upstream");
    // A client's own anthropic-version goes upstream as sent; without one, the default.
    let resp = client()
        .post(s.gw.url("/v1/messages"))
        .header("x-api-key", s.key("app"))
        .header("anthropic-version", "2099-01-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(s.gw.url("/v1/messages"))
        .header("x-api-key", s.key("app"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let versions: Vec<_> = s
        .upstream
        .requests()
        .iter()
        .map(|r| r.header("anthropic-version").map(str::to_owned))
        .collect();
    assert_eq!(
        versions,
        [
            Some("2023-06-01".to_owned()),
            Some("2099-01-01".to_owned()),
            Some("2023-06-01".to_owned())
        ]
    );
    s.assert_no_virtual_key_upstream();

    // The provider refuses keygate's credential: 502 upstream_auth_failed, in Anthropic's shape.
    s.upstream.set_reply(Reply::Json {
        status: 401,
        body: json!({"type": "error", "error": {"type": "authentication_error",
                     "message": "invalid x-api-key sk-ant-real"}}),
    });
    let resp = s.post("/v1/messages", s.key("app"), &body).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(PROVIDER_KEY), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&v["type"], &v["error"]["type"]),
        (&json!("error"), &json!("api_error"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refused the gateway's own credential"));
    // Other provider errors pass through as the provider wrote them.
    let overloaded = json!({"type": "error", "error": {"type": "invalid_request_error",
                             "message": "max_tokens: field required"}});
    s.upstream.set_reply(Reply::Json {
        status: 400,
        body: overloaded.clone(),
    });
    let resp = s.post("/v1/messages", s.key("app"), &body).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap(), overloaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_anthropic_streams_are_estimated() {
    // Cut after the text, before any message_delta: the input is message_start's, the output
    // is estimated from the text ("Hello there", 11 characters: 3 tokens), not the 1 reported.
    let events = stream_events();
    let cut = events
        .iter()
        .position(|e| e.starts_with("event: message_delta"))
        .unwrap();
    let s = Setup::start(Reply::SseThenReset {
        events: events[..cut].to_vec(),
        interval: Duration::from_millis(5),
    })
    .await;
    let body = json!({"model": MODEL, "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = s.post("/v1/messages", s.key("app"), &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.is_err(), "the stream is cut");
    let lines = s.gw.booked(1).await;
    let line = &lines[0];
    assert_eq!(
        (
            &line["prompt_tokens"],
            &line["completion_tokens"],
            &line["estimated"]
        ),
        (&json!(5), &json!(3), &json!(true)),
        "{line}"
    );
    let (input, output, _, _) = PRICE;
    assert_close(&line["cost_usd"], usd(5, input) + usd(3, output));

    // Cut after the first of the two message_deltas: its count is the provider's own.
    let cut = events
        .iter()
        .rposition(|e| e.starts_with("event: message_delta"))
        .unwrap();
    s.upstream.set_reply(Reply::SseThenReset {
        events: events[..cut].to_vec(),
        interval: Duration::from_millis(5),
    });
    let resp = s.post("/v1/messages", s.key("app"), &body).await;
    assert!(resp.text().await.is_err(), "the stream is cut");
    let lines = s.gw.booked(2).await;
    assert_eq!(
        (&lines[1]["prompt_tokens"], &lines[1]["completion_tokens"]),
        (&json!(5), &json!(9)),
        "{}",
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mock_speaks_the_messages_api() {
    let mock_port = common::upstream::free_port();
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!(
            r#"audit_log: state/audit.jsonl
mock_provider: {{listen: "127.0.0.1:{mock_port}", api_key: mock-secret, stream_delay: 1ms}}
providers:
  mock-anthropic:
    format: anthropic
    api_key: mock-secret
    endpoints:
      - {{url: "http://127.0.0.1:{mock_port}"}}
models:
  claude-mock:
    provider: mock-anthropic
workloads:
  app:
    models: [claude-mock]
"#
        ),
        &[("k".into(), yaml)],
    );
    let post = |body: Value| {
        client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", &secret)
            .json(&body)
            .send()
    };
    // "12345678": 2 prompt tokens; max_tokens 4: the mock's first 4 words.
    let body = json!({"model": "claude-mock", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "12345678"}]});
    let resp = post(body.clone()).await.unwrap();
    assert_eq!(resp.status(), 200, "the mock took keygate's x-api-key");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            &v["stop_reason"],
            &v["usage"]["input_tokens"],
            &v["usage"]["output_tokens"]
        ),
        (&json!("max_tokens"), &json!(2), &json!(4))
    );
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let text = post(streamed).await.unwrap().text().await.unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    let lines = gw.booked(2).await;
    for line in &lines {
        assert_eq!(
            (
                &line["prompt_tokens"],
                &line["completion_tokens"],
                &line["estimated"]
            ),
            (&json!(2), &json!(4), &json!(false)),
            "{line}"
        );
    }
}
