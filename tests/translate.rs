//! OpenAI-format clients on an Anthropic model: the official `openai` Python SDK
//! (tests/sdk/openai_on_claude.py) calls `/v1/chat/completions` for a model of a
//! `format: anthropic` provider. A recording upstream answers as Anthropic's Messages API does, and
//! the tests compare the Messages body it received with the request Anthropic's documentation
//! specifies (https://docs.anthropic.com/en/api/messages): `system` at the top level, `max_tokens`
//! always present, content blocks of type `text`, `image` (`source` of type `base64` with
//! `media_type` and `data`, or `url`), `tool_use` (`id`, `name`, `input` object) and
//! `tool_result` (`tool_use_id`, `content`) in a user turn; tools as `name`, `description`,
//! `input_schema`; `stop_sequences`; `x-api-key` and `anthropic-version` headers.

mod common;

use common::upstream::{MockUpstream, Reply};
use common::{body_with_its_length, key_file, TestGateway};
use serde_json::{json, Value};
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_on_claude.py");

/// Model `claude` of the Anthropic provider at `upstream`, priced as Claude Sonnet, usable by
/// workload `app`.
fn policy(upstream: &str) -> String {
    format!(
        r#"state_dir: state
audit_log: state/audit.jsonl
providers:
  anthropic:
    format: anthropic
    api_key: sk-ant-provider-secret
    endpoints:
      - {{url: "{upstream}"}}
models:
  claude:
    provider: anthropic
    upstream_model: claude-sonnet-4-5
    max_output_tokens: 2048
    price: {{input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.30, cache_write_per_mtok: 3.75}}
workloads:
  app:
    models: [claude]
"#
    )
}

async fn setup(reply: Reply) -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start("anthropic", reply).await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&upstream.url()), &[("k1".into(), yaml)]);
    (upstream, gw, secret)
}

/// Runs one scenario of the SDK script; returns what it printed.
async fn sdk(gw: &TestGateway, secret: &str, scenario: &str) -> Value {
    let run = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .arg(scenario)
        .env("KEYGATE_URL", gw.url("/v1"))
        .env("KEYGATE_KEY", secret)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK script finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{scenario} printed no JSON ({e}): {stdout}"))
}

fn message(content: Value, stop_reason: &str, usage: Value) -> Reply {
    Reply::Json {
        status: 200,
        body: json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage,
        }),
    }
}

/// An event stream as the Messages API sends it: `message_start`, a text block with a ping, a
/// tool call in two fragments, two cumulative `message_delta`s, `message_stop`.
fn messages_stream(with_tool: bool) -> Reply {
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_stream", "type": "message", "role": "assistant",
            "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from Claude"}}),
        json!({"type": "content_block_stop", "index": 0}),
    ];
    if with_tool {
        events.extend([
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
        ]);
    }
    let stop = if with_tool { "tool_use" } else { "end_turn" };
    events.extend([
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 6}}),
        json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 8}}),
        json!({"type": "message_stop"}),
    ]);
    Reply::Sse {
        events: events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect(),
        interval: Duration::from_millis(5),
    }
}

/// The one Messages request the upstream received: its path and credentials checked.
async fn received(upstream: &MockUpstream, n: usize) -> Vec<Value> {
    let requests = upstream.wait_for_requests(n).await;
    requests
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/v1/messages");
            assert_eq!(r.header("x-api-key"), Some("sk-ant-provider-secret"));
            assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(
                r.header("authorization"),
                None,
                "the virtual key stays home"
            );
            assert_eq!(r.header("content-type"), Some("application/json"));
            r.json()
        })
        .collect()
}

#[tokio::test]
async fn a_plain_completion_is_translated_both_ways() {
    let (upstream, gw, secret) = setup(message(
        json!([{"type": "text", "text": "Hello!"}]),
        "end_turn",
        json!({"input_tokens": 20, "output_tokens": 5, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 100}),
    ))
    .await;
    let r = sdk(&gw, &secret, "plain").await;
    assert_eq!(
        received(&upstream, 1).await[0],
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello"}],
            "stop_sequences": ["END"],
            "temperature": 0.2
        })
    );
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(r["model"], "claude-sonnet-4-5-20250929");
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello!");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(r["usage"]["prompt_tokens"], 124);
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["usage"]["total_tokens"], 129);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
}

#[tokio::test]
async fn a_stream_is_translated_chunk_by_chunk_with_usage_when_asked() {
    let (upstream, gw, secret) = setup(messages_stream(false)).await;
    let r = sdk(&gw, &secret, "stream").await;
    let body = &received(&upstream, 1).await[0];
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 2048, "the model's max_output_tokens");
    assert!(body.get("stream_options").is_none());
    assert_eq!(r["text"], "Hello from Claude");
    assert_eq!(r["finish_reason"], "stop");
    // message_delta usage is cumulative: the last one counts, not their sum.
    let usage = &r["usage"];
    assert_eq!(
        [
            &usage["prompt_tokens"],
            &usage["completion_tokens"],
            &usage["total_tokens"],
            &usage["prompt_tokens_details"]["cached_tokens"]
        ],
        [&json!(30), &json!(8), &json!(38), &json!(0)]
    );

    upstream.set_reply(messages_stream(false));
    let r = sdk(&gw, &secret, "stream_without_usage").await;
    assert_eq!(r, json!({"text": "Hello from Claude", "usage_chunks": 0}));
}

#[tokio::test]
async fn a_tool_call_and_its_result_round_trip() {
    let (upstream, gw, secret) = setup(message(
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}}
        ]),
        "tool_use",
        json!({"input_tokens": 300, "output_tokens": 40}),
    ))
    .await;
    let r = sdk(&gw, &secret, "tools").await;
    assert_eq!(r["finish_reason"], "tool_calls");
    assert_eq!(r["call_id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(r["name"], "get_weather");
    assert_eq!(r["arguments"], json!({"city": "Paris"}));
    let bodies = received(&upstream, 2).await;
    let tool = json!({"name": "get_weather", "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}});
    assert_eq!(bodies[0]["tools"], json!([tool]));
    assert_eq!(bodies[0]["tool_choice"], json!({"type": "auto"}));
    assert_eq!(
        bodies[1]["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "18C and sunny"}
            ]}
        ])
    );
    assert!(bodies[1].get("tool_choice").is_none());
    assert_eq!(gw.booked(2).await.len(), 2);
}

#[tokio::test]
async fn a_streamed_tool_call_arrives_in_fragments() {
    let (_upstream, gw, secret) = setup(messages_stream(true)).await;
    let r = sdk(&gw, &secret, "stream_tools").await;
    assert_eq!(r["finish_reason"], "tool_calls");
    assert_eq!(
        r["calls"],
        json!([{"id": "toolu_9", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}])
    );
}

#[tokio::test]
async fn image_parts_become_image_blocks() {
    let (upstream, gw, secret) = setup(message(
        json!([{"type": "text", "text": "A cat."}]),
        "end_turn",
        json!({"input_tokens": 1500, "output_tokens": 3}),
    ))
    .await;
    let r = sdk(&gw, &secret, "image").await;
    assert_eq!(r["content"], "A cat.");
    assert_eq!(
        received(&upstream, 1).await[0]["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "What is in these images?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
        ]}])
    );
}

#[tokio::test]
async fn unsupported_parameters_are_refused_before_the_provider() {
    let (upstream, gw, secret) = setup(Reply::chat_ok()).await;
    let r = sdk(&gw, &secret, "unsupported").await;
    for (raised, param) in r.as_array().unwrap().iter().zip(["logprobs", "n"]) {
        assert_eq!(raised["exception"], "BadRequestError", "{raised}");
        assert_eq!(raised["status"], 400);
        assert_eq!(raised["body"]["param"], param);
        assert_eq!(raised["body"]["code"], "invalid_request");
        assert!(raised["body"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("`{param}`")));
    }
    let lines = gw.booked(2).await;
    assert!(lines.iter().all(|l| l["refusal"] == "invalid_request"));
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn provider_errors_reach_the_sdk_as_its_exceptions() {
    let (upstream, gw, secret) = setup(Reply::Json {
        status: 429,
        body: json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}, "request_id": "req_011"}),
    })
    .await;
    let r = sdk(&gw, &secret, "upstream_error").await;
    assert_eq!(r["exception"], "RateLimitError");
    assert_eq!(r["status"], 429);
    assert_eq!(
        r["body"],
        json!({"message": "Number of request tokens has exceeded your per-minute rate limit",
               "type": "rate_limit_error", "param": null, "code": "rate_limit_error"})
    );
    upstream.set_reply(Reply::Json {
        status: 400,
        body: json!({"type": "error", "error": {"type": "invalid_request_error", "message": "temperature: range: 0..1"}}),
    });
    let r = sdk(&gw, &secret, "upstream_error").await;
    assert_eq!(r["exception"], "BadRequestError");
    assert_eq!(r["body"]["message"], "temperature: range: 0..1");
    upstream.set_reply(Reply::Json {
        status: 529,
        body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    });
    let r = sdk(&gw, &secret, "upstream_error").await;
    assert_eq!(r["exception"], "InternalServerError");
    assert_eq!(r["body"]["code"], "overloaded_error");

    // After a 200, the error arrives as an event, and the SDK raises it.
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_e", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ];
    upstream.set_reply(Reply::Sse {
        events: events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect(),
        interval: Duration::from_millis(5),
    });
    let r = sdk(&gw, &secret, "stream_error").await;
    assert_eq!(r["exception"], "APIError", "{r}");
    assert_eq!(r["message"], "Overloaded");
    assert_eq!(r["body"]["code"], "overloaded_error");
}

#[tokio::test]
async fn a_json_response_has_a_right_length_without_the_sdk() {
    // Framing checked on the wire: the translated body is not the provider's length.
    let (_upstream, gw, secret) = setup(message(
        json!([{"type": "text", "text": "Hi"}]),
        "max_tokens",
        json!({"input_tokens": 2, "output_tokens": 1}),
    ))
    .await;
    let resp = common::post_json(
        &gw.url("/v1/chat/completions"),
        &secret,
        &json!({"model": "claude", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    // Held until translated, then sent with its own length, as a passthrough answer is.
    let v: Value = serde_json::from_slice(&body_with_its_length(resp).await).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "Hi");
}

#[tokio::test]
async fn usage_and_cost_book_as_on_native_routes() {
    let (upstream, gw, secret) = setup(message(
        json!([{"type": "text", "text": "Hello!"}]),
        "end_turn",
        json!({"input_tokens": 20, "output_tokens": 5, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 100}),
    ))
    .await;
    sdk(&gw, &secret, "plain").await;
    let line = &gw.booked(1).await[0];
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["model"], "claude");
    assert_eq!(
        (&line["status"], &line["estimated"]),
        (&json!(200), &json!(false))
    );
    assert_eq!(
        [
            &line["prompt_tokens"],
            &line["completion_tokens"],
            &line["cached_tokens"],
            &line["cache_write_tokens"]
        ],
        [&json!(124), &json!(5), &json!(100), &json!(4)]
    );
    // 20 × $3 + 4 × $3.75 + 100 × $0.30 + 5 × $15, per million tokens
    let cost = line["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.00018).abs() < 1e-12, "{cost}");

    // A stream: input from message_start, output from the last (cumulative) message_delta.
    upstream.set_reply(messages_stream(false));
    sdk(&gw, &secret, "stream").await;
    let line = &gw.booked(2).await[1];
    assert_eq!(
        (&line["stream"], &line["estimated"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(
        [&line["prompt_tokens"], &line["completion_tokens"]],
        [&json!(30), &json!(8)]
    );
}

#[tokio::test]
async fn a_cut_stream_keeps_what_was_translated_and_is_estimated() {
    let Reply::Sse { events, interval } = messages_stream(false) else {
        unreachable!("messages_stream is an event stream")
    };
    let cut = events
        .iter()
        .position(|e| e.starts_with("event: message_delta"))
        .unwrap();
    let (_upstream, gw, secret) = setup(Reply::SseThenReset {
        events: events[..cut].to_vec(),
        interval,
    })
    .await;
    let mut resp = common::post_json(
        &gw.url("/v1/chat/completions"),
        &secret,
        &json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    let cut_short = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(cut_short, "the client sees the stream end abnormally");
    let text = String::from_utf8(received).unwrap();
    assert!(text.contains(r#""content":" from Claude""#), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let line = &gw.booked(1).await[0];
    // The input from message_start; the output estimated from "Hello from Claude" (17 chars).
    assert_eq!(
        [
            &line["prompt_tokens"],
            &line["completion_tokens"],
            &line["estimated"]
        ],
        [&json!(30), &json!(5), &json!(true)],
        "{line}"
    );
}

/// An upstream that sends a Messages answer's head and part of its body, then drops the
/// connection.
async fn cut_json_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"Hel",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_cut_mid_body_is_an_error_not_a_truncated_body() {
    // The translated answer is held until complete, so a cut one can still become an error.
    let upstream = cut_json_upstream().await;
    let (secret, yaml) = key_file("app", "");
    let gw = TestGateway::start(&policy(&upstream), &[("k1".into(), yaml)]);
    let resp = common::post_json(
        &gw.url("/v1/chat/completions"),
        &secret,
        &json!({"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.expect("a whole error body");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    let lines = gw.booked(1).await;
    assert_eq!(lines[0]["status"], 502);
    assert_eq!(lines[0]["estimated"], true, "{}", lines[0]);
}
