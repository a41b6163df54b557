//! Observability end to end: the metrics a live gateway exports (cross-checked with the names the
//! docker/ dashboard and alerts may use), readiness, JSON logs carrying request ids, and the
//! SIGTERM drain of a gateway started as its own process.

mod common;

use common::upstream::{dead_port, free_port, MockUpstream, Reply};
use common::{client, get_text, key_file, keygate_bin, post_json, TestGateway};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn exported_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/exported-metrics.txt"),
    )
    .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Metric family names in a Prometheus text scrape.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The value of the series whose line starts with `prefix` (name and labels as exported).
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| {
            l[name.len()..].starts_with('{')
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_dashboard_names_are_exactly_what_keygate_exports() {
    let metrics = keygate::metrics::Metrics::new();
    let code: BTreeSet<String> = metrics.family_names().into_iter().collect();
    assert_eq!(
        code,
        exported_names(),
        "docker/exported-metrics.txt (used by the dashboard checks) and the registry disagree"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gateway_exports_the_metrics_of_its_traffic() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let admin_port = free_port();
    let (secret, yaml) = key_file(
        "app",
        "rate_limits: [{requests: 2, per: 1m}]\nbudget: {daily_usd: 10}\n",
    );
    let config = format!(
        r#"admin_listen: 127.0.0.1:{admin_port}
providers:
  p1:
    format: openai
    api_key: sk-real
    endpoints:
      - {{url: "{}"}}
      - {{url: "http://127.0.0.1:{dead}"}}
models:
  m1:
    provider: p1
    price: {{input_per_mtok: 1000, output_per_mtok: 2000}}
workloads:
  app:
    models: [m1]
    budget: {{monthly_usd: 100}}
"#,
        up.url(),
        dead = dead_port(),
    );
    let (other, other_yaml) = key_file("app", "");
    let gw = TestGateway::start(&config, &[("k1".into(), yaml), ("k2".into(), other_yaml)]);
    let admin = format!("http://127.0.0.1:{admin_port}");

    let ready = client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    let url = gw.url("/v1/chat/completions");
    let body =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        assert_eq!(post_json(&url, &secret, &body).await.status(), 200);
    }
    assert_eq!(post_json(&url, &secret, &body).await.status(), 429); // rate
    assert_eq!(post_json(&url, "kg_wrong", &body).await.status(), 401); // auth, no key known
    let unknown = json!({"model": "nope", "messages": []});
    assert_eq!(post_json(&url, &secret, &unknown).await.status(), 404); // model
    let broken = client()
        .post(&url)
        .bearer_auth(&secret)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400); // invalid
    let stream =
        json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post_json(&url, &other, &stream).await.status(), 200);
    // let the logging phase of the last request run
    tokio::time::sleep(Duration::from_millis(100)).await;

    let scrape = get_text(&format!("{admin}/metrics")).await;
    let exported = exported_names();
    for family in families(&scrape) {
        assert!(
            exported.contains(&family),
            "{family} is exported but not in docker/exported-metrics.txt"
        );
    }
    let ok = [
        ("key", "k1"),
        ("workload", "app"),
        ("model", "m1"),
        ("provider", "p1"),
        ("status_class", "2xx"),
    ];
    assert_eq!(value(&scrape, "keygate_requests_total", &ok), Some(2.0));
    let limited = [("key", "k1"), ("status_class", "4xx")];
    assert_eq!(
        value(&scrape, "keygate_requests_total", &limited),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "keygate_refusals_total",
            &[("key", "k1"), ("reason", "rate_limit_exceeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "keygate_refusals_total",
            &[("key", "-"), ("reason", "invalid_api_key")]
        ),
        Some(1.0)
    );
    for reason in ["model_not_found", "invalid_request"] {
        assert_eq!(
            value(
                &scrape,
                "keygate_refusals_total",
                &[("key", "k1"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    // only the stream observed a time to first byte
    assert_eq!(
        value(
            &scrape,
            "keygate_time_to_first_byte_seconds_count",
            &[("model", "m1"), ("provider", "p1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "keygate_requests_total",
            &[("key", "k2"), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    let usage = [("key", "k1"), ("workload", "app"), ("model", "m1")];
    assert_eq!(
        value(&scrape, "keygate_prompt_tokens_total", &usage),
        Some(14.0)
    );
    assert_eq!(
        value(&scrape, "keygate_completion_tokens_total", &usage),
        Some(10.0)
    );
    // 2 × (7 × $0.001 + 5 × $0.002)
    let cost = value(&scrape, "keygate_cost_usd_total", &usage).unwrap();
    assert!((cost - 0.034).abs() < 1e-9, "{cost}");
    assert_eq!(
        value(&scrape, "keygate_in_flight_requests", &[("key", "k1")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &scrape,
            "keygate_request_duration_seconds_count",
            &[("model", "m1"), ("provider", "p1")]
        ),
        Some(4.0)
    );
    let spent = value(
        &scrape,
        "keygate_budget_spent_usd",
        &[("scope", "key"), ("name", "k1"), ("period", "daily")],
    )
    .unwrap();
    assert!((spent - 0.034).abs() < 1e-9);
    assert_eq!(
        value(
            &scrape,
            "keygate_budget_limit_usd",
            &[
                ("scope", "workload"),
                ("name", "app"),
                ("period", "monthly")
            ]
        ),
        Some(100.0)
    );
    assert!(scrape.contains("keygate_policy_info{digest="));
    assert_eq!(
        value(&scrape, "keygate_keys", &[("status", "active")]),
        Some(2.0)
    );
    // Upstream: the live endpoint is up and its connections pooled; one request met the dead
    // endpoint first and was retried.
    assert_eq!(
        value(
            &scrape,
            "keygate_upstream_health",
            &[("provider", "p1"), ("endpoint", &up.url())]
        ),
        Some(1.0)
    );
    let connect_errors: f64 = scrape
        .lines()
        .filter(|l| {
            l.starts_with("keygate_upstream_errors_total{") && l.contains("kind=\"connect\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(connect_errors >= 1.0, "{scrape}");
    assert!(
        value(
            &scrape,
            "keygate_upstream_retries_total",
            &[("provider", "p1")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &scrape,
            "keygate_upstream_connections_total",
            &[("provider", "p1"), ("reused", "false")]
        )
        .unwrap()
            >= 1.0
    );
    // the secret presented never becomes a label
    assert!(!scrape.contains("kg_wrong") && !scrape.contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_once_the_last_stream_ends() {
    let (admin_port, mock_port) = (free_port(), free_port());
    let (secret, yaml) = key_file("app", "");
    // The embedded mock streams 13 events 150 ms apart: a ~2 s stream. One thread: the
    // single-threaded runtime that only a gateway with its own process runs.
    let gw = TestGateway::prepare(
        &format!(
            r#"admin_listen: 127.0.0.1:{admin_port}
state_dir: state
audit_log: state/audit.jsonl
server: {{threads: 1, grace_period: 20s, drain_delay: 500ms}}
mock_provider: {{listen: "127.0.0.1:{mock_port}", stream_delay: 150ms}}
providers:
  mock:
    format: openai
    endpoints:
      - {{url: "http://127.0.0.1:{mock_port}"}}
models:
  m1:
    provider: mock
workloads:
  app:
    models: [m1]
"#
        ),
        &[("k".into(), yaml)],
    );
    let mut child = Command::new(keygate_bin())
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&gw.config_path)
        .env("KEYGATE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = log.clone();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client().get(format!("{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stream starts; SIGTERM arrives while it runs.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("x-request-id", "drain-test-1")
        .json(&json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let term_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = client()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 503, "draining instances report not ready");
    let during: Value = during.json().await.unwrap();
    assert_eq!(during["status"], "draining");
    assert_eq!(during["in_flight"], 1);
    // still serving during the drain delay
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post_json(&gw.url("/v1/chat/completions"), &secret, &body)
            .await
            .status(),
        200
    );

    // The stream finishes intact, and the process exits soon after, well before the grace period.
    let text = resp.text().await.expect("the stream completed");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    assert!(
        term_at.elapsed() < Duration::from_secs(10),
        "exited after draining, not after the 20 s grace period"
    );

    // Accounting was flushed before exiting.
    let audit = std::fs::read_to_string(gw.dir.path().join("state/audit.jsonl")).unwrap();
    let line = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["request_id"] == "drain-test-1")
        .expect("the drained stream was audited");
    assert_eq!(line["estimated"], false);
    assert!(line["completion_tokens"].as_u64().unwrap() > 0);

    // Logs are JSON, and the request's lines carry its id; no secret is logged.
    let lines = log.lock().unwrap().clone();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(parsed
        .iter()
        .any(|v| v["fields"]["request_id"] == "drain-test-1"));
    assert!(!lines.iter().any(|l| l.contains(&secret)));
}
