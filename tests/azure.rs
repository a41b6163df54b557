//! Azure OpenAI (`format: azure`): keygate in front of a recording upstream sends each model's
//! requests to its deployment (the deployments API with its `api-version`, or the v1 API) with
//! the provider's `api-key`, never the virtual key; usage and streams are booked as on OpenAI,
//! and Azure's own errors (a content filter's refusal) pass through.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, key_file, post_json, TestGateway};
use serde_json::{json, Value};

const PROVIDER_KEY: &str = "az-real-key";

fn policy(upstream: &str) -> String {
    format!(
        r#"audit_log: state/audit.jsonl
providers:
  az:
    format: azure
    api_key: {PROVIDER_KEY}
    endpoints:
      - {{url: "{upstream}"}}
  az-behind-a-proxy:
    format: azure
    api_key: {PROVIDER_KEY}
    endpoints:
      - {{url: "{upstream}/azure/"}}
models:
  gpt-4o:
    provider: az
    deployment: gpt4o-prod
    price: {{input_per_mtok: 2.5, output_per_mtok: 10}}
  gpt-4o-preview:
    provider: az
    deployment: gpt4o-prod
    api_version: 2025-04-01-preview
  gpt-4.1:
    provider: az
    deployment: gpt41-eu
    api_version: v1
  mini:
    provider: az-behind-a-proxy
workloads:
  app:
    models: [gpt-4o, gpt-4o-preview, gpt-4.1, mini]
"#
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_deployment_with_the_api_key() {
    let upstream = MockUpstream::start("azure", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&upstream.url()), &[("k".into(), yaml)]);

    let calls = [
        ("/v1/chat/completions", chat("gpt-4o")),
        ("/v1/chat/completions", chat("gpt-4o-preview")),
        ("/v1/chat/completions", chat("gpt-4.1")),
        ("/v1/chat/completions", chat("mini")),
        (
            "/v1/embeddings",
            json!({"model": "gpt-4o", "input": "hello"}),
        ),
        ("/v1/responses", json!({"model": "gpt-4o", "input": "hi"})),
        ("/v1/responses", json!({"model": "gpt-4.1", "input": "hi"})),
    ];
    for (path, body) in &calls {
        let resp = post_json(&gw.url(path), &secret, body).await;
        assert_eq!(resp.status(), 200, "{path} {body}");
    }
    // Azure's SDKs send the key as `api-key`; keygate reads it there too.
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("api-key", &secret)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let recorded = upstream.wait_for_requests(calls.len() + 1).await;
    let seen: Vec<(&str, Value)> = recorded
        .iter()
        .map(|r| (r.path.as_str(), r.json()["model"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
                json!("gpt4o-prod")
            ),
            (
                "/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-04-01-preview",
                json!("gpt4o-prod")
            ),
            ("/openai/v1/chat/completions", json!("gpt41-eu")),
            (
                "/azure/openai/deployments/mini/chat/completions?api-version=2024-10-21",
                json!("mini")
            ),
            (
                "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21",
                json!("gpt4o-prod")
            ),
            (
                "/openai/responses?api-version=2024-10-21",
                json!("gpt4o-prod")
            ),
            ("/openai/v1/responses", json!("gpt41-eu")),
            (
                "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
                json!("gpt4o-prod")
            ),
        ]
    );
    for r in &recorded {
        assert_eq!(r.header("api-key"), Some(PROVIDER_KEY), "{}", r.path);
        assert_eq!(r.header("authorization"), None, "{}", r.path);
        assert_eq!(r.header("x-api-key"), None, "{}", r.path);
        assert!(
            r.headers
                .values()
                .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(&secret)),
            "the virtual key reached Azure on {}",
            r.path
        );
    }
    // Usage is booked as on OpenAI: the mock's 7 prompt and 5 completion tokens, priced.
    let lines = gw.booked(calls.len() + 1).await;
    let first = &lines[0];
    assert_eq!(
        (
            &first["model"],
            &first["prompt_tokens"],
            &first["completion_tokens"]
        ),
        (&json!("gpt-4o"), &json!(7), &json!(5))
    );
    assert!((first["cost_usd"].as_f64().unwrap() - (7.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_booked_and_content_filter_errors_pass_through() {
    let upstream = MockUpstream::start("azure", Reply::chat_stream_ok("gpt4o-prod")).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&upstream.url()), &[("k".into(), yaml)]);

    let mut body = chat("gpt-4o");
    body["stream"] = json!(true);
    let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    // keygate asked for the usage the client did not, and kept it from the client.
    assert!(!text.contains("\"usage\""), "{text}");
    let recorded = upstream.wait_for_requests(1).await;
    assert_eq!(recorded[0].json()["stream_options"]["include_usage"], true);
    let lines = gw.booked(1).await;
    assert_eq!(
        (
            &lines[0]["prompt_tokens"],
            &lines[0]["completion_tokens"],
            &lines[0]["estimated"]
        ),
        (&json!(7), &json!(5), &json!(false))
    );

    let filtered = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation",
                       "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}}}});
    upstream.set_reply(Reply::Json {
        status: 400,
        body: filtered.clone(),
    });
    let resp = post_json(&gw.url("/v1/chat/completions"), &secret, &chat("gpt-4o")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap(), filtered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_models_are_not_served_on_the_messages_api() {
    let upstream = MockUpstream::start("azure", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&upstream.url()), &[("k".into(), yaml)]);
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(upstream.request_count(), 0);
}
