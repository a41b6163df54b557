//! `POST /v1/completions`, the legacy text completions: the `text_completion` object, or its
//! chunk stream.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::request::{include_usage, is_stream, token_limit};
use super::response::{Meta, MockResponse};
use super::stream::{completion_chunk, sse_response, SSE_DONE};
use super::tokens::{approx_tokens, completion_prompt_bytes, Reply, Usage};

pub(super) fn completions(
    req: &Map<String, Value>,
    model: &str,
    meta: &Meta,
) -> Result<MockResponse, MockResponse> {
    let reply = Reply::new(token_limit(req, &["max_tokens"])?);
    let usage = Usage {
        prompt: approx_tokens(completion_prompt_bytes(req.get("prompt"))),
        completion: reply.tokens(),
    };
    Ok(if is_stream(req) {
        sse_response(completion_stream_events(
            meta,
            model,
            &reply,
            usage,
            include_usage(req),
        ))
    } else {
        MockResponse::json(200, &completion_json(meta, model, &reply, usage))
    })
}

fn completion_json(meta: &Meta, model: &str, reply: &Reply, usage: Usage) -> Value {
    json!({
        "id": format!("cmpl-{}", meta.id),
        "object": "text_completion",
        "created": meta.created,
        "model": model,
        "choices": [{
            "text": reply.text(),
            "index": 0,
            "logprobs": null,
            "finish_reason": reply.finish_reason()
        }],
        "usage": usage.chat_json(),
        "system_fingerprint": null
    })
}

/// One chunk per word, a final empty-text chunk with the finish reason, the optional usage
/// chunk, and `[DONE]`. Legacy completions have no role chunk.
fn completion_stream_events(
    meta: &Meta,
    model: &str,
    reply: &Reply,
    usage: Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    let id = format!("cmpl-{}", meta.id);
    let chunk = |choices: Value, usage_value: Option<Value>| {
        completion_chunk(&id, "text_completion", meta, model, choices, usage_value)
    };
    let choice = |text: &str, finish: Value| {
        json!([{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish
        }])
    };
    let null_usage = || include_usage.then_some(Value::Null);

    let mut events = Vec::with_capacity(reply.words.len() + 3);
    for delta in reply.deltas() {
        events.push(chunk(choice(&delta, Value::Null), null_usage()));
    }
    events.push(chunk(
        choice("", json!(reply.finish_reason())),
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
    fn completions_shapes() {
        let resp = post(
            Route::Completions,
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["abcd", "efgh"], "max_tokens": 4}),
        );
        let v = body_json(&resp);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-test");
        assert_eq!(v["choices"][0]["text"], "This is a mock");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens"], 4);

        let resp = post(
            Route::Completions,
            json!({"model": "m", "prompt": "x", "stream": true, "max_tokens": 1,
                   "stream_options": {"include_usage": true}}),
        );
        let events = sse_events(&resp);
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let chunks = data_payloads(&events);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0]["choices"][0]["text"], "This");
        assert_eq!(chunks[0]["usage"], Value::Null);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[2]["choices"], json!([]));
        assert_eq!(chunks[2]["usage"]["total_tokens"], 2);
    }
}
