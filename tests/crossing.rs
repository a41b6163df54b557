//! What crosses the gateway: the client headers that would choose the provider account stay
//! behind (unless a provider forwards them), the provider's account and rate-limit headers do not
//! reach tenants, a provider refusing keygate's credential is keygate's failure (not the tenant's
//! key), and a client's request id is kept only when it is short and printable.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{client, error_of, key_file, one_model_policy, post_json, TestGateway};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat_body() -> serde_json::Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refusing_keygates_credential_is_a_502_without_its_body() {
    // Two endpoints and retries: a refused credential is the same on every endpoint, so one
    // attempt is all the provider sees.
    let echo = json!({"error": {
        "message": "Incorrect API key provided: sk-real. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key",
    }});
    let a = MockUpstream::start(
        "a",
        Reply::Json {
            status: 401,
            body: echo.clone(),
        },
    )
    .await;
    let b = MockUpstream::start(
        "b",
        Reply::Json {
            status: 401,
            body: echo.clone(),
        },
    )
    .await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!(
            r#"providers:
  p1:
    format: openai
    api_key: sk-real
    retries: 2
    endpoints: [{{url: "{}"}}, {{url: "{}"}}]
models:
  m1: {{provider: p1}}
workloads:
  app: {{models: [m1]}}
"#,
            a.url(),
            b.url()
        ),
        &[("k".into(), yaml)],
    );
    let chat = gw.url("/v1/chat/completions");
    for status in [401, 403] {
        for up in [&a, &b] {
            up.set_reply(Reply::Json {
                status,
                body: echo.clone(),
            });
        }
        let before = a.request_count() + b.request_count();
        let resp = post_json(&chat, &secret, &chat_body()).await;
        let body = resp.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            !body.contains("sk-real"),
            "the provider's body reached the tenant: {body}"
        );
        assert_eq!(v["error"]["code"], "upstream_auth_failed", "{body}");
        assert_eq!(v["error"]["type"], "api_error", "{body}");
        assert_eq!(
            a.request_count() + b.request_count() - before,
            1,
            "after a {status}"
        );
    }
    let resp = post_json(&chat, &secret, &chat_body()).await;
    assert_eq!(error_of(resp).await.0, 502);

    let scrape = String::from_utf8(gw.handles().metrics.render()).unwrap();
    assert!(
        scrape.contains("keygate_upstream_auth_failures_total{provider=\"p1\"} 3"),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_kept_only_when_short_and_printable() {
    let up = MockUpstream::start("up", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&one_model_policy(&up.url(), ""), &[("k".into(), yaml)]);
    let cases = [
        ("a".repeat(64), true),
        ("b".repeat(65), false),
        ("c".repeat(128), false),
        ("with space".to_owned(), false),
        ("tab\there".to_owned(), false),
        ("trace-1234/abc:def".to_owned(), true),
    ];
    for (i, (id, kept)) in cases.iter().enumerate() {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .header("x-request-id", id.as_str())
            .json(&chat_body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answered = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let upstream = up.wait_for_requests(i + 1).await[i]
            .header("x-request-id")
            .unwrap()
            .to_owned();
        assert_eq!(answered, upstream, "the client and the provider see one id");
        if *kept {
            assert_eq!(&answered, id);
        } else {
            assert!(
                answered.starts_with("req_") && answered.len() <= 64,
                "{id:?} became {answered:?}"
            );
        }
    }
}
