//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API, its
//! message object and its SSE event sequence (`message_start`, `content_block_start`, `ping`,
//! `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop`), with the
//! errors in Anthropic's shape.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::response::{Meta, MockResponse};
use super::stream::{sse_event, sse_response};
use super::tokens::{approx_tokens, chat_prompt_bytes, content_text_bytes, Reply};

/// Anthropic's error body: `{"type":"error","error":{"type":…,"message":…}}`.
pub(super) fn anthropic_error(status: u16, kind: &str, message: &str) -> MockResponse {
    MockResponse::json(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn invalid(message: &str) -> MockResponse {
    anthropic_error(400, "invalid_request_error", message)
}

/// The JSON object body, its `model` and the prompt's tokens (`system` and every message).
fn read(body: &[u8]) -> Result<(Map<String, Value>, String, u64), MockResponse> {
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => req,
        _ => return Err(invalid("The request body is not a valid JSON object.")),
    };
    let model = match req.get("model").and_then(Value::as_str) {
        Some(model) if !model.is_empty() => model.to_owned(),
        _ => return Err(invalid("model: Field required")),
    };
    let messages = match req.get("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
        None => return Err(invalid("messages: Field required")),
    };
    let system = req.get("system").map_or(0, content_text_bytes);
    let prompt = approx_tokens(system + chat_prompt_bytes(messages));
    Ok((req, model, prompt))
}

/// `POST /v1/messages`.
pub(super) fn messages(body: &[u8], meta: &Meta) -> MockResponse {
    let (req, model, prompt) = match read(body) {
        Ok(read) => read,
        Err(rejection) => return rejection,
    };
    // The Messages API requires max_tokens, and counts from 1.
    let max_tokens = match req.get("max_tokens") {
        None | Some(Value::Null) => return invalid("max_tokens: Field required"),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return invalid("max_tokens: Input should be a valid integer greater than 0"),
        },
    };
    let reply = Reply::new(Some(max_tokens));
    let stop_reason = if reply.truncated {
        "max_tokens"
    } else {
        "end_turn"
    };
    let message = Message {
        id: format!("msg_{}", meta.id),
        model: &model,
        prompt,
        stop_reason,
    };
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        sse_response(message.events(&reply))
    } else {
        MockResponse::json(200, &message.json(&reply))
    }
}

/// `POST /v1/messages/count_tokens`.
pub(super) fn count_tokens(body: &[u8]) -> MockResponse {
    match read(body) {
        Ok((_, _, prompt)) => MockResponse::json(200, &json!({"input_tokens": prompt})),
        Err(rejection) => rejection,
    }
}

struct Message<'a> {
    id: String,
    model: &'a str,
    prompt: u64,
    stop_reason: &'static str,
}

impl Message<'_> {
    fn usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.prompt,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
        })
    }

    fn json(&self, reply: &Reply) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": reply.text()}],
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage(reply.tokens()),
        })
    }

    /// The real event order: the empty message with the input count, one text block streamed
    /// a word per delta, then the stop reason with the final (cumulative) output count.
    fn events(&self, reply: &Reply) -> Vec<Bytes> {
        let mut start = self.json(&Reply::new(Some(0)));
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["usage"] = self.usage(1);
        let mut events = Vec::with_capacity(reply.words.len() + 6);
        events.push(sse_event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ));
        events.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ));
        events.push(sse_event("ping", &json!({"type": "ping"})));
        for delta in reply.deltas() {
            events.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": delta}}),
            ));
        }
        events.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(sse_event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": reply.tokens()}}),
        ));
        events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_provider::routes::Route;
    use crate::mock_provider::test_support::{body_json, data_payloads, post, sse_events};

    #[test]
    fn message_shape_and_usage() {
        let resp = post(
            Route::Messages,
            json!({"model": "claude-mock", "max_tokens": 100, "system": "Be brief.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world!"}]}]}),
        );
        assert_eq!(resp.status, 200);
        let v = body_json(&resp);
        assert_eq!(v["id"], "msg_test");
        assert_eq!(
            (&v["type"], &v["role"]),
            (&json!("message"), &json!("assistant"))
        );
        assert_eq!(v["content"][0]["text"], Reply::new(None).text());
        assert_eq!(v["stop_reason"], "end_turn");
        // "Be brief." + "hello world!" = 21 bytes: 6 tokens; the reply is 9 words.
        assert_eq!(v["usage"]["input_tokens"], 6);
        assert_eq!(v["usage"]["output_tokens"], 9);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
    }

    #[test]
    fn stream_is_the_real_event_sequence() {
        let resp = post(
            Route::Messages,
            json!({"model": "m", "max_tokens": 2, "stream": true,
                   "messages": [{"role": "user", "content": "hi"}]}),
        );
        let events = sse_events(&resp);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e.lines().next().unwrap().strip_prefix("event: ").unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data = data_payloads(&events);
        assert!(data.iter().zip(&names).all(|(d, n)| d["type"] == *n));
        assert_eq!(data[0]["message"]["usage"]["input_tokens"], 1);
        assert_eq!(data[0]["message"]["content"], json!([]));
        assert_eq!(data[3]["delta"]["text"], "This");
        assert_eq!(data[4]["delta"]["text"], " is");
        assert_eq!(data[6]["delta"]["stop_reason"], "max_tokens");
        assert_eq!(data[6]["usage"]["output_tokens"], 2);
    }

    #[test]
    fn count_tokens_and_errors() {
        let v = body_json(&post(
            Route::CountTokens,
            json!({"model": "m", "messages": [{"role": "user", "content": "12345678"}]}),
        ));
        assert_eq!(v, json!({"input_tokens": 2}));
        for (body, message) in [
            (json!({"model": "m", "messages": []}), "max_tokens"),
            (
                json!({"model": "m", "max_tokens": 0, "messages": []}),
                "max_tokens",
            ),
            (json!({"max_tokens": 1, "messages": []}), "model"),
            (json!({"model": "m", "max_tokens": 1}), "messages"),
        ] {
            let resp = post(Route::Messages, body);
            assert_eq!(resp.status, 400);
            let v = body_json(&resp);
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].as_str().unwrap().starts_with(message));
        }
    }
}
