//! `POST /v1/chat/completions`: the chat completion object, or its chunk stream.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::request::{include_usage, is_stream, token_limit};
use super::response::{invalid_request, Meta, MockResponse};
use super::stream::{completion_chunk, sse_response, SSE_DONE};
use super::tokens::{approx_tokens, chat_prompt_bytes, Reply, Usage};

pub(super) fn chat_completions(
    req: &Map<String, Value>,
    model: &str,
    meta: &Meta,
) -> Result<MockResponse, MockResponse> {
    let messages = match req.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(invalid_request(
                "Invalid type for 'messages': expected an array of objects.",
                Some("messages"),
                Some("invalid_type"),
            ))
        }
        None => {
            return Err(invalid_request(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ))
        }
    };
    let reply = Reply::new(token_limit(req, &["max_completion_tokens", "max_tokens"])?);
    let usage = Usage {
        prompt: approx_tokens(chat_prompt_bytes(messages)),
        completion: reply.tokens(),
    };
    Ok(if is_stream(req) {
        sse_response(chat_stream_events(
            meta,
            model,
            &reply,
            usage,
            include_usage(req),
        ))
    } else {
        MockResponse::json(200, &chat_completion_json(meta, model, &reply, usage))
    })
}

fn chat_completion_json(meta: &Meta, model: &str, reply: &Reply, usage: Usage) -> Value {
    json!({
        "id": format!("chatcmpl-{}", meta.id),
        "object": "chat.completion",
        "created": meta.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": reply.text(),
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": reply.finish_reason()
        }],
        "usage": usage.chat_json(),
        "system_fingerprint": null
    })
}

/// Role chunk, one chunk per word, the finish chunk, the usage chunk (only when asked for, and
/// then every other chunk carries `"usage": null`, as OpenAI does), and `[DONE]`.
fn chat_stream_events(
    meta: &Meta,
    model: &str,
    reply: &Reply,
    usage: Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    let id = format!("chatcmpl-{}", meta.id);
    let chunk = |choices: Value, usage_value: Option<Value>| {
        completion_chunk(
            &id,
            "chat.completion.chunk",
            meta,
            model,
            choices,
            usage_value,
        )
    };
    let choice = |delta: Value, finish: Value| {
        json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish
        }])
    };
    let null_usage = || include_usage.then_some(Value::Null);

    let mut events = Vec::with_capacity(reply.words.len() + 4);
    events.push(chunk(
        choice(json!({"role": "assistant", "content": ""}), Value::Null),
        null_usage(),
    ));
    for delta in reply.deltas() {
        events.push(chunk(
            choice(json!({"content": delta}), Value::Null),
            null_usage(),
        ));
    }
    events.push(chunk(
        choice(json!({}), json!(reply.finish_reason())),
        null_usage(),
    ));
    if include_usage {
        events.push(chunk(json!([]), Some(usage.chat_json())));
    }
    events.push(Bytes::from_static(SSE_DONE));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_provider::routes::Route;
    use crate::mock_provider::test_support::{body_json, data_payloads, post, sse_events};

    #[test]
    fn chat_completion_shape() {
        let resp = post(
            Route::ChatCompletions,
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "hello world!"}]
            }),
        );
        assert_eq!(resp.status, 200);
        let v = body_json(&resp);
        assert_eq!(v["id"], "chatcmpl-test");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_700_000_000u64);
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "This is a mock response from keygate's embedded provider."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 9);
        assert_eq!(v["usage"]["total_tokens"], 12);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn chat_stream_without_usage() {
        let resp = post(
            Route::ChatCompletions,
            json!({"model": "m", "stream": true, "max_tokens": 2,
                   "messages": [{"role": "user", "content": "hi"}]}),
        );
        let events = sse_events(&resp);
        // role, 2 words, finish, [DONE]
        assert_eq!(events.len(), 5);
        assert!(events.iter().all(|e| e.ends_with("\n\n")));
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let chunks = data_payloads(&events);
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-test"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "This");
        assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " is");
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn chat_stream_with_usage() {
        let resp = post(
            Route::ChatCompletions,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "12345"}]}),
        );
        let events = sse_events(&resp);
        assert_eq!(events.len(), 1 + 9 + 1 + 1 + 1);
        let chunks = data_payloads(&events);
        let (usage_chunk, rest) = chunks.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|c| c["usage"] == Value::Null && c.as_object().unwrap().contains_key("usage")));
        assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 9);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 11);
        let text: String = rest
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, Reply::new(None).text());
    }
}
