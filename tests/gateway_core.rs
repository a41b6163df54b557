//! The gateway core end to end: keys, authorization, routing, forwarding, streaming, errors.

mod common;

use common::upstream::{dead_port, MockUpstream, Reply, TestCa};
use common::{client, error_of, key_file, TestGateway};
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

const PROVIDER_SECRET: &str = "sk-provider-real-credential";

fn policy(endpoint_urls: &[(&str, u32)], extra: &str) -> String {
    let endpoints: String = endpoint_urls
        .iter()
        .map(|(u, w)| format!("      - {{url: \"{u}\", weight: {w}}}\n"))
        .collect();
    format!(
        r#"max_body_bytes: 8388608
providers:
  p1:
    format: openai
    api_key: {PROVIDER_SECRET}
    endpoints:
{endpoints}    timeouts: {{connect: 1s, idle: 2s}}
models:
  gpt-4o-mini:
    provider: p1
  alias-model:
    provider: p1
    upstream_model: real-upstream-model
  other-model:
    provider: p1
workloads:
  app:
    models: [gpt-4o-mini, alias-model, other-model]
    operations: [chat, completions, responses]
  narrow:
    models: [gpt-4o-mini]
    operations: [chat]
{extra}"#
    )
}

struct Fixture {
    gw: TestGateway,
    up: MockUpstream,
    secret: String,
}

async fn fixture(reply: Reply) -> Fixture {
    let up = MockUpstream::start("up", reply).await;
    let (secret, yaml) = key_file("app", "owner: team-a\n");
    let gw = TestGateway::start(&policy(&[(&up.url(), 1)], ""), &[("k1".into(), yaml)]);
    Fixture { gw, up, secret }
}

fn chat_body(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_with_provider_credential_and_never_the_virtual_key() {
    let f = fixture(Reply::chat_ok()).await;
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .header("x-request-id", "client-chosen-id")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["total_tokens"], 12);

    let reqs = f.up.wait_for_requests(1).await;
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {PROVIDER_SECRET}").as_str())
    );
    assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(
        r.header("host"),
        Some(format!("127.0.0.1:{}", f.up.addr().port()).as_str())
    );
    for (name, value) in r.headers.iter() {
        assert!(
            !value
                .as_bytes()
                .windows(f.secret.len())
                .any(|w| w == f.secret.as_bytes()),
            "virtual key leaked in header {name}"
        );
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(&f.secret));
    assert_eq!(r.json(), chat_body("gpt-4o-mini"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_path_prefixes_the_forwarded_path_and_the_client_headers_go_along() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let url = format!("{}/openai", up.url());
    let gw = TestGateway::start(&policy(&[(&url, 1)], ""), &[("k1".into(), yaml)]);
    let resp = client()
        .post(gw.url("/v1/chat/completions?api-version=2024-10-21"))
        .bearer_auth(&secret)
        .header("X-Api-Key", &secret)
        .header("OpenAI-Beta", "assistants=v2")
        .header("Expect", "100-continue")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = &up.wait_for_requests(1).await[0];
    assert_eq!(r.path, "/openai/v1/chat/completions?api-version=2024-10-21");
    assert_eq!(r.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-api-key").is_none() && r.header("expect").is_none());
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {PROVIDER_SECRET}").as_str())
    );
    assert_eq!(r.json(), chat_body("gpt-4o-mini"));
}

#[tokio::test(flavor = "multi_thread")]
async fn key_accepted_from_x_api_key_and_api_key_headers() {
    let f = fixture(Reply::chat_ok()).await;
    for header in ["x-api-key", "api-key"] {
        let resp = client()
            .post(f.gw.url("/v1/chat/completions"))
            .header(header, &f.secret)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
        assert!(resp.headers().contains_key("x-request-id"));
    }
    for r in f.up.wait_for_requests(2).await {
        assert!(r.header("x-api-key").is_none() && r.header("api-key").is_none());
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {PROVIDER_SECRET}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn model_is_rewritten_and_the_rest_of_the_body_forwarded_byte_for_byte() {
    let f = fixture(Reply::chat_ok()).await;
    let raw = "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9 \u{1F600}\"}],  \"model\" : \"alias-model\",\"temperature\":0.70}";
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = &f.up.wait_for_requests(1).await[0];
    let expected = raw.replace("\"alias-model\"", "\"real-upstream-model\"");
    assert_eq!(std::str::from_utf8(&r.body).unwrap(), expected);
    assert_eq!(
        r.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn small_large_and_chunked_bodies_arrive_intact() {
    let f = fixture(Reply::chat_ok()).await;
    let padding = |n: usize| "x".repeat(n);
    for size in [1024usize, 5 * 1024 * 1024] {
        let body = json!({"model": "gpt-4o-mini", "input": padding(size)}).to_string();
        let resp = client()
            .post(f.gw.url("/v1/chat/completions"))
            .bearer_auth(&f.secret)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "size {size}");
        let reqs = f.up.requests();
        assert_eq!(reqs.last().unwrap().body, body.as_bytes(), "size {size}");
    }
    // chunked (no content-length): a streamed body
    let body = json!({"model": "gpt-4o-mini", "input": padding(20_000)}).to_string();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(3000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let last = f.up.requests().pop().unwrap();
    assert_eq!(last.body, body.as_bytes());
    assert_eq!(
        last.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(last.header("transfer-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_reaches_the_client_chunk_by_chunk() {
    let events: Vec<String> = (0..5)
        .map(|i| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"w{i}\"}}}}]}}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect();
    let interval = Duration::from_millis(150);
    let f = fixture(Reply::Sse {
        events: events.clone(),
        interval,
    })
    .await;
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let started = Instant::now();
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.unwrap());
        arrivals.push(started.elapsed());
    }
    assert_eq!(String::from_utf8(received).unwrap(), events.concat());
    let upstream_total = interval * (events.len() as u32 - 1);
    assert!(
        arrivals[0] < upstream_total / 2,
        "first chunk at {:?}, upstream ends at {upstream_total:?}",
        arrivals[0]
    );
    assert!(
        arrivals.len() >= events.len() - 1,
        "events were coalesced: {} chunks",
        arrivals.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_round_robin_over_three_endpoints() {
    let a = MockUpstream::start("a", Reply::chat_ok()).await;
    let b = MockUpstream::start("b", Reply::chat_ok()).await;
    let c = MockUpstream::start("c", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&[(&a.url(), 3), (&b.url(), 1), (&c.url(), 1)], ""),
        &[("k".into(), yaml)],
    );
    let total = 1000;
    let http = client();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (http, url, secret) = (http.clone(), gw.url("/v1/chat/completions"), secret.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / 4 {
                let r = http
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&chat_body("gpt-4o-mini"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "worker {worker}");
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = [a.request_count(), b.request_count(), c.request_count()];
    assert_eq!(counts.iter().sum::<usize>(), total);
    for (count, weight) in counts.iter().zip([3.0, 1.0, 1.0]) {
        let expected = total as f64 * weight / 5.0;
        assert!(
            (*count as f64 - expected).abs() <= expected * 0.10,
            "counts {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_endpoint_lists_only_what_the_key_may_use() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (wide, wide_yaml) = key_file("app", "");
    let (narrow, narrow_yaml) = key_file("app", "models: [alias-model]\n");
    let gw = TestGateway::start(
        &policy(&[(&up.url(), 1)], ""),
        &[("wide".into(), wide_yaml), ("narrow".into(), narrow_yaml)],
    );
    let ids = |v: serde_json::Value| {
        let mut ids: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let v: serde_json::Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&wide)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(ids(v), ["alias-model", "gpt-4o-mini", "other-model"]);
    let v: serde_json::Value = client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(v), ["alias-model"]);
    let resp = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(error_of(resp).await.2, "missing_api_key");
    assert_eq!(up.request_count(), 0, "/v1/models is answered by keygate");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_has_its_status_type_and_code() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (ok, ok_yaml) = key_file("app", "");
    let (expired, expired_yaml) = key_file("app", "expires_at: 2020-01-01T00:00:00Z\n");
    let (paused, paused_yaml) = key_file("app", "status: paused\n");
    let (narrow, narrow_yaml) = key_file("narrow", "");
    let gw = TestGateway::start(
        &policy(&[(&up.url(), 1)], ""),
        &[
            ("ok".into(), ok_yaml),
            ("expired".into(), expired_yaml),
            ("paused".into(), paused_yaml),
            ("narrow".into(), narrow_yaml),
        ],
    );
    let http = client();
    let chat = gw.url("/v1/chat/completions");
    let post = |key: Option<&str>, body: String| {
        let mut r = http
            .post(&chat)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r
    };
    let good = chat_body("gpt-4o-mini").to_string();
    let mut bad_checksum = ok.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let unknown = keygate::keys::secret::generate().unwrap().secret;

    let cases: Vec<(&str, reqwest::RequestBuilder, (u16, &str, &str))> = vec![
        (
            "no key",
            post(None, good.clone()),
            (401, "authentication_error", "missing_api_key"),
        ),
        (
            "bad checksum",
            post(Some(&bad_checksum), good.clone()),
            (401, "authentication_error", "invalid_api_key"),
        ),
        (
            "not a keygate key",
            post(Some("sk-1234"), good.clone()),
            (401, "authentication_error", "invalid_api_key"),
        ),
        (
            "unknown key",
            post(Some(&unknown), good.clone()),
            (401, "authentication_error", "invalid_api_key"),
        ),
        (
            "expired",
            post(Some(&expired), good.clone()),
            (401, "authentication_error", "key_expired"),
        ),
        (
            "paused",
            post(Some(&paused), good.clone()),
            (403, "permission_error", "key_paused"),
        ),
        (
            "model not allowed",
            post(Some(&narrow), chat_body("other-model").to_string()),
            (403, "permission_error", "model_not_allowed"),
        ),
        (
            "operation not allowed",
            http.post(gw.url("/v1/embeddings"))
                .bearer_auth(&ok)
                .json(&json!({"model":"gpt-4o-mini","input":"x"})),
            (403, "permission_error", "operation_not_allowed"),
        ),
        (
            "unknown model",
            post(Some(&ok), chat_body("no-such-model").to_string()),
            (404, "not_found_error", "model_not_found"),
        ),
        (
            "malformed json",
            post(Some(&ok), "{\"model\": \"gpt-4o-mini\",".into()),
            (400, "invalid_request_error", "invalid_request"),
        ),
        (
            "missing model",
            post(Some(&ok), "{\"messages\": []}".into()),
            (400, "invalid_request_error", "invalid_request"),
        ),
        (
            "too large",
            post(
                Some(&ok),
                json!({"model": "gpt-4o-mini", "input": "x".repeat(9 * 1024 * 1024)}).to_string(),
            ),
            (413, "invalid_request_error", "request_too_large"),
        ),
        (
            "unknown path",
            http.post(gw.url("/v1/fine_tuning/jobs"))
                .bearer_auth(&ok)
                .json(&good),
            (404, "not_found_error", "unknown_route"),
        ),
    ];
    for (name, request, (status, kind, code)) in cases {
        let resp = request.send().await.unwrap();
        assert!(
            resp.headers().contains_key("x-request-id"),
            "{name}: x-request-id"
        );
        assert_eq!(
            error_of(resp).await,
            (status, kind.to_owned(), code.to_owned()),
            "{name}"
        );
    }
    assert_eq!(
        up.request_count(),
        0,
        "no refused request reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let (secret, yaml) = key_file("app", "");
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let gw = TestGateway::start(&policy(&[(&dead, 1)], ""), &[("k".into(), yaml.clone())]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (502, "api_error".into(), "upstream_unavailable".into())
    );
    drop(gw);

    let slow = MockUpstream::start(
        "slow",
        Reply::Delayed {
            delay: Duration::from_secs(5),
            reply: Box::new(Reply::chat_ok()),
        },
    )
    .await;
    let gw = TestGateway::start(&policy(&[(&slow.url(), 1)], ""), &[("k".into(), yaml)]);
    let started = Instant::now();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (504, "api_error".into(), "upstream_timeout".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 2s idle timeout fired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_is_skipped_for_a_live_one() {
    let live = MockUpstream::start("live", Reply::chat_ok()).await;
    let dead = format!("http://127.0.0.1:{}", dead_port());
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &policy(&[(&dead, 1), (&live.url(), 1)], ""),
        &[("k".into(), yaml)],
    );
    for _ in 0..6 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(live.request_count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_errors_pass_through_with_status_and_body() {
    let body = json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
    let f = fixture(Reply::Json {
        status: 429,
        body: body.clone(),
    })
    .await;
    let resp = client()
        .post(f.gw.url("/v1/chat/completions"))
        .bearer_auth(&f.secret)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_verified_with_the_providers_ca_file() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls("tls", Reply::chat_ok(), &ca, "localhost").await;
    let (secret, yaml) = key_file("app", "");
    let url = format!("https://localhost:{}", up.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_pem(dir.path());
    let with_ca = policy(&[(&url, 1)], "").replace(
        "    timeouts:",
        &format!("    ca_file: {}\n    timeouts:", ca_path.display()),
    );
    let gw = TestGateway::start(&with_ca, &[("k".into(), yaml.clone())]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = &up.wait_for_requests(1).await[0];
    assert_eq!(
        r.header("host"),
        Some(format!("localhost:{}", up.addr().port()).as_str())
    );
    drop(gw);

    // Without the CA the same endpoint is untrusted.
    let gw = TestGateway::start(&policy(&[(&url, 1)], ""), &[("k".into(), yaml)]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 502);
    assert_eq!(up.request_count(), 1);
}
