//! What crosses the gateway: the client headers that would choose the provider account stay
//! behind (unless a provider forwards them), the provider's account and rate-limit headers do not
//! reach tenants, a provider refusing keygate's credential is keygate's failure (not the tenant's
//! key), and a client's request id is kept only when it is short and printable.

mod common;

use common::upstream::{read_request, MockUpstream, Reply};
use common::{client, error_of, key_file, one_model_policy, post_json, TestGateway};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn chat_body() -> serde_json::Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
}

/// The account-steering headers of OpenAI, Azure and Google, in a client's spelling.
const ACCOUNT_HEADERS: [(&str, &str); 5] = [
    ("OpenAI-Organization", "org-tenant"),
    ("OpenAI-Project", "proj_tenant"),
    ("Ocp-Apim-Subscription-Key", "tenant-subscription"),
    ("azureml-model-deployment", "pricey-deployment"),
    ("x-goog-user-project", "tenant-project"),
];

async fn chat_with_account_headers(gw: &TestGateway, secret: &str, model: &str) -> u16 {
    let mut request = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("OpenAI-Beta", "assistants=v2")
        .json(&json!({"model": model, "messages": []}));
    for (name, value) in ACCOUNT_HEADERS {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_headers_stay_behind_unless_the_provider_forwards_them() {
    let plain = MockUpstream::start("plain", Reply::chat_ok()).await;
    let forwarding = MockUpstream::start("forwarding", Reply::chat_ok()).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(
        &format!(
            r#"providers:
  plain:
    format: openai
    api_key: sk-real
    endpoints: [{{url: "{}"}}]
  forwarding:
    format: openai
    api_key: sk-real
    forward_headers: [OpenAI-Organization, x-goog-user-project]
    endpoints: [{{url: "{}"}}]
models:
  m1: {{provider: plain}}
  m2: {{provider: forwarding}}
workloads:
  app: {{models: [m1, m2]}}
"#,
            plain.url(),
            forwarding.url()
        ),
        &[("k".into(), yaml)],
    );

    assert_eq!(chat_with_account_headers(&gw, &secret, "m1").await, 200);
    let seen = &plain.wait_for_requests(1).await[0];
    for (name, _) in ACCOUNT_HEADERS {
        assert_eq!(seen.header(name), None, "{name} reached the provider");
    }
    // every other client header still goes through
    assert_eq!(seen.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(seen.header("authorization"), Some("Bearer sk-real"));

    assert_eq!(chat_with_account_headers(&gw, &secret, "m2").await, 200);
    let seen = &forwarding.wait_for_requests(1).await[0];
    assert_eq!(seen.header("openai-organization"), Some("org-tenant"));
    assert_eq!(seen.header("x-goog-user-project"), Some("tenant-project"));
    for name in [
        "openai-project",
        "ocp-apim-subscription-key",
        "azureml-model-deployment",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the provider");
    }
}

#[test]
fn forward_headers_names_only_headers_keygate_withholds() {
    let config = one_model_policy("http://127.0.0.1:9", "").replace(
        "api_key: sk-real",
        "api_key: sk-real\n    forward_headers: [OpenAI-Beta, \"bad header\", Authorization]",
    );
    let gw = TestGateway::prepare(&config, &[]);
    let problems = match keygate::server::load_policy(&gw.config_path) {
        Ok(_) => panic!("the policy loaded"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "providers.p1.forward_headers[0]",
        "`OpenAI-Beta` is not an account header keygate withholds",
        "providers.p1.forward_headers[1]",
        "`bad header` is not a header name",
        "providers.p1.forward_headers[2]",
        "`Authorization` is not an account header keygate withholds",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in {problems}"
        );
    }
}

/// A provider answering every request with `head` (its status line and headers, without the
/// length) and a small chat completion.
async fn raw_provider(head: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if read_request(&mut socket, &mut Vec::new()).await.is_none() {
                    return;
                }
                let body = json!({
                    "id": "chatcmpl-raw", "object": "chat.completion", "model": "m1",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                })
                .to_string();
                let response = format!(
                    "{head}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

const PROVIDER_HEAD: &str = "HTTP/1.1 200 OK\r\n\
openai-organization: org-gateway-account\r\n\
openai-project: proj_gateway\r\n\
openai-processing-ms: 12\r\n\
x-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-limit-tokens: 30000000\r\n\
x-ratelimit-remaining-tokens: 29999990\r\n\
x-ratelimit-reset-tokens: 0s\r\n\
x-ratelimit-limit-tokens_usage_based: 30000000\r\n\
anthropic-ratelimit-requests-limit: 4000\r\n\
anthropic-ratelimit-input-tokens-remaining: 399000\r\n\
anthropic-organization-id: 0b0b0b0b-gateway\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_account_and_limits_do_not_reach_tenants() {
    let url = raw_provider(PROVIDER_HEAD).await;
    let (plain, plain_yaml) = key_file("app", "");
    let (limited, limited_yaml) = key_file("app", "rate_limits: [{requests: 40, per: 1m}]\n");
    let gw = TestGateway::start(
        &one_model_policy(&url, ""),
        &[
            ("plain".into(), plain_yaml),
            ("limited".into(), limited_yaml),
        ],
    );
    let chat = gw.url("/v1/chat/completions");

    let resp = post_json(&chat, &plain, &chat_body()).await;
    assert_eq!(resp.status(), 200);
    let provider_only = |name: &str| {
        name.starts_with("x-ratelimit-")
            || name.starts_with("anthropic-ratelimit-")
            || matches!(
                name,
                "openai-organization" | "openai-project" | "anthropic-organization-id"
            )
    };
    let leaked: Vec<_> = resp
        .headers()
        .keys()
        .map(|n| n.as_str())
        .filter(|n| provider_only(n))
        .collect();
    assert!(
        leaked.is_empty(),
        "reached a tenant without limits: {leaked:?}"
    );
    assert_eq!(resp.headers()["openai-processing-ms"], "12");
    resp.bytes().await.unwrap();

    // A key with limits reads keygate's figures, and only those.
    let resp = post_json(&chat, &limited, &chat_body()).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "40");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "39");
    assert!(headers.contains_key("x-ratelimit-reset-requests"));
    let limits: Vec<_> = headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| provider_only(n))
        .collect();
    assert_eq!(
        limits,
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests"
        ],
        "{headers:?}"
    );
    assert_eq!(
        headers.get_all("x-ratelimit-limit-requests").iter().count(),
        1
    );
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
